"""Loading a trained run for inference (`load_run`); the run directory's layout is in `vaelab.runs.paths`.

`load_run(path)` needs only the checkpoint (its meta.json carries the config
and image shape), so a run copied to another machine loads without the data.
`load_run("pretrained:NAME")` loads a model shipped with vaelab (`vaelab.runs.pretrained`),
`load_run("hf:OWNER/NAME[@REVISION]")` a run shared on the Hugging Face Hub (`vaelab.runs.hub`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vaelab.config import RunConfig, from_dict
from vaelab.data import load_dataset
from vaelab.errors import CheckpointError, DataError
from vaelab.models import Model, build_model, check_model, eval_mode, generate
from vaelab.runs.checkpoint import check_name, load_checkpoint
from vaelab.runs.paths import RunPaths, resolve_device
from vaelab.runs.pretrained import resolve_run_path


def model_from_checkpoint(meta: dict[str, Any], weights: dict[str, torch.Tensor], origin: str,
                          model: torch.nn.Module | None = None) -> tuple[Model, RunConfig]:
    """Rebuild the model described by a checkpoint's meta (or take `model`, a model of your own, freshly
    built) and load its weights, checking every shape."""
    shape = meta.get("image_shape")
    if not (isinstance(meta.get("config"), dict) and isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in shape)):
        raise CheckpointError(f"checkpoint {origin}: meta.json lacks a valid config or image_shape "
                              "(three positive integers C, H, W)")
    config = from_dict(meta["config"], origin=f"{origin} meta.json")
    image_shape = tuple(shape)
    if model is not None:
        check_model(model)
    elif meta.get("model_class"):
        raise CheckpointError(f"checkpoint {origin} holds a model of your own ({meta['model_class']}); pass one "
                              "to load its weights into: load_run(path, model=YourModel(...))")
    else:
        try:
            model = build_model(config.model, image_shape)
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {origin}: its config does not describe a buildable model "
                                  f"({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {origin}: weights do not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the files were mixed up or altered"
        )
    for key, tensor in expected.items():
        if weights[key].shape != tensor.shape or weights[key].dtype != tensor.dtype:
            raise CheckpointError(
                f"checkpoint {origin}: {key} has shape {tuple(weights[key].shape)} {weights[key].dtype}, "
                f"the config needs {tuple(tensor.shape)} {tensor.dtype}"
            )
    model.load_state_dict(weights)
    return model, config


class Run:
    """A trained model loaded from its run directory, for inference from Python.

    >>> run = load_run("runs/my-vae")              # doctest: +SKIP
    >>> images = run.sample(16, temperature=0.8)   # (16, C, H, W) in [0, 1]
    >>> q = run.encode(images)                     # DiagonalGaussian (mean, logvar)
    """

    def __init__(self, path: Path, model: Model, config: RunConfig, meta: dict[str, Any], device: torch.device):
        self.path = path
        self.model = model.to(device).eval()
        self.config = config
        self.meta = meta
        self.device = device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.model.image_shape

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.image_shape:
            shape = "x".join(map(str, self.image_shape))
            raise DataError(
                f"images have shape {'x'.join(map(str, x.shape[1:]))} but this model was trained on {shape} "
                "(channels x height x width); resize them first"
            )
        return x.float().to(self.device)

    def encode(self, x: torch.Tensor):
        """q(z|x) as a DiagonalGaussian for a VAE; the code tensor for an autoencoder."""
        with eval_mode(self.model):
            return self.model.encode(self._images(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] in [0, 1] for latent codes z (N, latent_dim)."""
        with eval_mode(self.model):
            return self.model.decode_mean(torch.as_tensor(z, dtype=torch.float32).to(self.device))

    def sample(self, n: int = 64, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return generate.sample(self.model, n, temperature, gen)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return generate.reconstruct(self.model, self._images(x))

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10, method: str = "slerp") -> torch.Tensor:
        pair = self._images(torch.stack([torch.as_tensor(x0), torch.as_tensor(x1)]))
        return generate.interpolate(self.model, pair[0], pair[1], steps, method)

    def __repr__(self) -> str:
        kind = self.config.model.kind
        return f"Run({str(self.path)!r}, {kind}, image_shape={self.image_shape}, epoch={self.meta.get('epoch')})"


def find_checkpoint(path: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint directory of a run (or `path` itself if it is a checkpoint); "pretrained:NAME" is the
    shipped model's copy in the user's cache, "hf:OWNER/NAME[@REVISION]" the Hub repository's pulled copy."""
    check_name(checkpoint)  # a name such as ../../x would reach outside the run
    path = resolve_run_path(path)
    if (path / "meta.json").is_file() or path.name in ("best", "last") and path.parent.name == "checkpoints":
        return path
    if not path.exists():
        raise CheckpointError(f"run directory {path} does not exist; pass the directory `vaelab train` wrote")
    ckpt_root = RunPaths(path).checkpoints
    if not ckpt_root.is_dir():
        raise CheckpointError(f"{path} is not a vaelab run directory (no checkpoints/ inside)")
    candidate = ckpt_root / checkpoint
    if not candidate.exists() and not (ckpt_root / f"{checkpoint}.old").exists():
        available = sorted(p.name for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise CheckpointError(f"run {path} has no checkpoint {checkpoint!r}; available: {', '.join(available) or 'none'}")
    return candidate


def load_run(path: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             model: torch.nn.Module | None = None) -> Run:
    """Load a trained run for inference: one call, from its directory (or "pretrained:NAME", a model shipped
    with vaelab: `vaelab pretrained` lists them; or "hf:OWNER/NAME[@REVISION]", a run shared on the Hugging
    Face Hub, pulled into the cache: needs vaelab[hub]), no dataset needed.

    `checkpoint` is "best" (lowest validation loss; the last epoch's weights
    when the run had no validation split) or "last". With train.ema, both give
    the averaged weights. A run of a model of your own: pass a freshly built one as `model`.
    """
    ckpt_path = find_checkpoint(path, checkpoint)
    loaded = load_checkpoint(ckpt_path)
    # a `last` checkpoint of a run with train.ema holds the average beside the trained weights: use it
    weights = loaded.tensors.get("ema", loaded.tensors["model"])
    model, config = model_from_checkpoint(loaded.meta, weights, str(ckpt_path), model)
    root = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path
    dev = resolve_device(device, "device") if isinstance(device, str) else device
    return Run(root, model, config, loaded.meta, dev)


def load_run_data(run: Run, data_dir: str | Path | None = None, *, download: bool = True):
    """The run's own dataset and splits on this machine, loaded as in training (grey values).

    `data_dir` says where the dataset's files are here, when not where the run found them (for a
    `folder:` dataset: the directory holding the folder, which is then looked up there by its name).
    `download=False` never fetches anything (a report should not wait on a download). DataError when
    the data is missing or its images differ in shape from the run's.
    """
    dc = run.config.data if download else replace(run.config.data, download=False)
    if data_dir is not None:
        dc = replace(dc, data_dir=str(data_dir))
        if dc.dataset.startswith("folder:") and Path(dc.dataset[len("folder:"):]).is_absolute():
            # the folder moved with its data dir: look it up there by its name
            dc = replace(dc, dataset=f"folder:{Path(dc.dataset[len('folder:'):]).name}")
    splits = load_dataset(dc)
    if splits.image_shape != run.image_shape:
        have, want = ("x".join(map(str, s)) for s in (splits.image_shape, run.image_shape))
        raise DataError(f"the data found for {splits.name} ({splits.source}) has images of shape {have}, "
                        f"but the run was trained on {want}; point --data-dir at the run's dataset")
    return splits
