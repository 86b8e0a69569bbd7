"""What an export says about itself: export.json (versions, the model, each part's inputs and outputs, the
files and how to use them without vaelab) and the strings stored inside each file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vaelab.export.formats import FORMATS, SUFFIX, TOLERANCE, VERIFY_BATCHES, opset_of
from vaelab.export.graphs import PARTS
from vaelab.models import HVAE, VAE, Autoencoder, MLPEncoder, Model

MANIFEST = "export.json"
# the settings of each likelihood (by its name) that export.json records beside the name
LIKELIHOOD_SETTINGS = {"gaussian": ("std",), "logistic_mixture": ("components",)}


@dataclass(frozen=True)
class ExportedFile:
    part: str  # decoder | encoder
    format: str  # onnx | torchscript
    path: Path
    bytes: int
    sha256: str
    seconds: float  # building and checking the file
    max_abs_diff: float  # largest |exported - PyTorch| over the check's inputs and outputs


def model_kind(model: Model) -> str:
    """hvae (more than one stochastic layer), ae (not variational) or vae, from the Model protocol."""
    if model.n_layers > 1:
        return "hvae"
    return "vae" if model.variational else "ae"


def model_arch(model: Model) -> str:
    """conv or mlp (model.arch); the HVAE has its own residual convolutional networks."""
    if isinstance(model, HVAE):
        return "hvae residual conv"
    return "mlp" if isinstance(model.encoder, MLPEncoder) else "conv"


def latent_description(model: Model) -> dict[str, Any]:
    """How to draw codes z that the decoder turns into samples of the model."""
    if isinstance(model, Autoencoder):  # the Gaussian its fit_codes fitted to the training codes
        return {"distribution": "normal", "mean": model.code_mean.tolist(), "std": model.code_std.tolist(),
                "note": "vaelab samples an autoencoder from the diagonal Gaussian fitted to its training codes: "
                        "z = mean + std * eps, eps ~ N(0, I)"}
    if model.n_layers > 1:
        return {"distribution": "standard normal",
                "note": "z is the top layer's code, z_L ~ N(0, I); the decoder sets every lower layer to its "
                        "conditional prior mean (deterministic decoding, as Run.decode, vaelab reconstruct and "
                        "interpolate); the ancestral sampling of vaelab sample, with noise in every layer, is "
                        "not exported"}
    if isinstance(model, VAE) and model.prior == "vamp":  # the VAE's prior option
        return {"distribution": "VampPrior (not exported)",
                "note": "the prior is a mixture of the posteriors of learned pseudo-inputs; N(0, I) codes still "
                        "decode to images, but they are not samples of this model's prior"}
    return {"distribution": "standard normal", "note": "z ~ N(0, I); scale the std (temperature) below 1 "
                                                     "for smoother samples"}


def likelihood_description(model: Model) -> dict[str, Any]:
    """The likelihood's name and, for those that have them, its settings (the Gaussian's std, the mixture's
    component count)."""
    lik = model.likelihood
    return {"name": lik.name, **{key: getattr(lik, key) for key in LIKELIHOOD_SETTINGS.get(lik.name, ())}}


def usage(model: Model, parts: Sequence[str], fmt: str) -> list[str]:
    """A short example (at most five lines) that runs the exported files from the export directory, without vaelab."""
    c, h, w = model.image_shape
    d = model.latent_dim
    outs = "mean, logvar" if model.variational else "(code,)" if fmt == "onnx" else "code"
    what = "q(z|x)" if model.variational else "the code"
    if fmt == "onnx":
        lines = ["import numpy as np, onnxruntime as ort", "rng = np.random.default_rng(0)"]
        if "decoder" in parts:
            lines += ["decoder = ort.InferenceSession('decoder.onnx')",
                      f"(image,) = decoder.run(None, {{'z': rng.standard_normal((16, {d}), dtype=np.float32)}})"
                      f"  # (16, {c}, {h}, {w}) in [0, 1]"]
        else:
            lines += [f"image = rng.random((16, {c}, {h}, {w}), dtype=np.float32)  # your images, in [0, 1]"]
        if "encoder" in parts:
            lines += [f"{outs} = ort.InferenceSession('encoder.onnx').run(None, {{'image': image}})"
                      f"  # {what}: (16, {d})"]
        return lines
    lines = ["import torch", "gen = torch.Generator().manual_seed(0)"]
    if "decoder" in parts:
        lines += ["decoder = torch.jit.load('decoder.pt')",
                  f"image = decoder(torch.randn(16, {d}, generator=gen))  # (16, {c}, {h}, {w}) in [0, 1]"]
    else:
        lines += [f"image = torch.rand(16, {c}, {h}, {w}, generator=gen)  # your images, in [0, 1]"]
    if "encoder" in parts:
        lines += [f"{outs} = torch.jit.load('encoder.pt')(image)  # {what}: (16, {d})"]
    return lines


def build_manifest(model: Model, formats: Sequence[str], parts: Sequence[str], opset: int | None,
                   versions: dict[str, str], specs: dict[str, Any], files: list[ExportedFile],
                   info: dict[str, Any]) -> dict[str, Any]:
    """What export.json says: versions, the model, each part's inputs and outputs, the files, how to use them."""
    by_format = {f: {"exporter": "torch.onnx.export(dynamo=True)" if f == "onnx" else "torch.jit.trace",
                     "usage": usage(model, parts, f)} for f in formats}
    if "torchscript" in formats:
        by_format["torchscript"]["note"] = ("torch.jit is deprecated upstream (it still loads in torch "
                                            f"{torch.__version__}); the ONNX files are the long-lived format")
    if "onnx" in formats:
        by_format["onnx"]["opset"] = opset if opset is not None else _onnx_opset(files)
    return {
        "format": "vaelab-export", "versions": versions, **info,
        "model": {"kind": model_kind(model), "arch": model_arch(model), "latent_dim": model.latent_dim,
                  "image_shape": list(model.image_shape), "pixel_range": [0.0, 1.0],
                  "likelihood": likelihood_description(model)},
        "latent": latent_description(model),
        "parts": {part: {**specs[part], "files": {f.format: f.path.name for f in files if f.part == part}}
                  for part in parts},
        "formats": by_format,
        "files": [{"path": f.path.name, "part": f.part, "format": f.format, "bytes": f.bytes, "sha256": f.sha256,
                   "seconds": round(f.seconds, 3), "max_abs_diff": f.max_abs_diff} for f in files],
        "check": {"tolerance": TOLERANCE, "batch_sizes": list(VERIFY_BATCHES),
                  "what": "each file, loaded from its bytes, against vaelab's PyTorch model on random inputs "
                          "(decoder: z ~ N(0, I); encoder: images uniform in [0, 1])"},
    }


def file_metadata(model: Model, part: str, versions: dict[str, str]) -> dict[str, str]:
    """Strings stored inside each file (ONNX metadata_props; TorchScript's extra file vaelab.json)."""
    return {"description": f"vaelab {model_kind(model)} {part}: "
                           + ("z -> the mean image of p(x|z) in [0, 1]" if part == "decoder"
                              else "image in [0, 1] -> q(z|x)" if model.variational else "image in [0, 1] -> code"),
            "vaelab_version": versions["vaelab"], "torch_version": versions["torch"], "part": part,
            "model_kind": model_kind(model), "latent_dim": str(model.latent_dim),
            "image_shape": "x".join(map(str, model.image_shape)), "pixel_range": "0,1",
            "likelihood": model.likelihood.name}


def stale_files(out: Path, files: list[ExportedFile]) -> list[Path]:
    """Exported files in `out` that this export did not write (left from an earlier one), in name order."""
    written = {f.path.name for f in files}
    return [out / name for name in sorted(f"{p}{SUFFIX[f]}" for p in PARTS for f in FORMATS)
            if name not in written and (out / name).exists()]


def _onnx_opset(files: list[ExportedFile]) -> int | None:
    import onnx

    for f in files:
        if f.format == "onnx":
            return opset_of(onnx.load(str(f.path), load_external_data=False))
    return None
