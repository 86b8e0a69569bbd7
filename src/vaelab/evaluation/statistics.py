"""Per-image statistics of one trained model, the inputs of density-of-states OOD scores (DoSE).

Morningstar et al. 2021 ("Density of states estimation for out-of-distribution detection", AISTATS)
score an image by how typical the *summary statistics* a generative model gives it are, not by its
likelihood alone: a Fashion-MNIST VAE gives MNIST digits a high log p(x), but with a posterior, a KL
and a reconstruction term unlike those of its own images. `compute_statistics` computes, in one call
and for any model of vaelab's `Model` protocol (vaelab.models.base), one value per image of each of:

    log_px            the importance-sampled bound L_k on log p(x) (Burda et al. 2015), nats
    elbo              the ELBO: the mean of the same k log-weights, nats
    recon             -log p(x|z), z ~ q(z|x), averaged over `samples` draws, nats (the autoencoder: z = f(x))
    kl                KL(q(z|x) || p(z)), averaged over the same draws (summed over layers), nats
    kl_1 ... kl_L     hierarchical VAEs: the KL of each stochastic layer, bottom to top
    llr_1 ... llr_L-1 hierarchical VAEs: Havtorn et al. 2021's LLR>j = L - L>j, nats
    png_bits          L(x), the PNG code length of the image in bits (Serra et al. 2020)
    complexity        Serra et al.'s complexity-corrected score -log2 p(x) - L(x), bits (derived)
    post_mean_norm    the Euclidean norm of the posterior mean (the top layer's for an HVAE)
    post_logvar_mean  the mean log-variance of the posterior (the top layer's for an HVAE)
    post_mean_1 ...   the posterior's mean and log-variance of each latent unit (the top layer's for an
    post_logvar_1 ... HVAE), when it has at most UNIT_COLUMNS units: where the image's code lies among the
                      codes of the training distribution (the aggregate posterior), the one-layer
                      counterpart of LPath's statistics along the inference path
    code_norm         an autoencoder's code norm (it has no posterior)
    prefer_T          ELBO(x) - ELBO(T x) for each symmetry T of the pixel grid (flips, rotations): how much
                      the model prefers the image the way up it came (vaelab.evaluation.orientation). Not a
                      density feature: the orientation test combines its own one-sided p-value with DoSE's

Statistics a model cannot give are skipped: an autoencoder has no log_px, elbo, KL or LLR; a model
known only through `log_weights` (a ForeignScorer) gives log_px, elbo and the complexity terms. The
values are those `vaelab evaluate --on` computes: the same importance sampler (and seed, k and batch
size give the same numbers), the same PNG code length.

`ImageStatistics.save` / `load` keep them per image in a safetensors file (no pickle) with their
protocol in its metadata; `cached_statistics` reuses such a file when its protocol and images match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.data import DatasetSplits, as_uint8_images, batches
from vaelab.errors import CheckpointError, ConfigError
from vaelab.evaluation.likelihood import (NLL_SEED, ImportanceEstimate, LikelihoodRatio, importance_sampled,
                                          llr_scores)
from vaelab.evaluation.ood import complexity_corrected_score, png_code_length_bits
from vaelab.evaluation.orientation import PREFIX, preference_statistics
from vaelab.evaluation.unseen import load_eval_set
from vaelab.fileio import atomic_write
from vaelab.models import Model, as_scorer, eval_mode, use_channels_last

FORMAT = "vaelab-image-statistics"
VERSION = 3  # 2: the per-unit posterior columns; 3: the orientation preferences
UNIT_COLUMNS = 64  # per-unit posterior columns for posteriors of at most this many units (two columns each)
VALIDATION = "val"  # the label of statistics of the run's validation split: the only ones a density is fitted on
COLUMN_NOTES = {
    "log_px": "importance-sampled bound L_k on log p(x), nats",
    "elbo": "ELBO, the mean of the same k log-weights, nats",
    "recon": "-log p(x|z), z ~ q(z|x), mean over the forward draws, nats",
    "kl": "KL(q(z|x) || p(z)), mean over the forward draws, nats",
    "png_bits": "L(x): PNG code length of the image, bits (Serra et al. 2020)",
    "complexity": "-log2 p(x) - L(x), bits (Serra et al. 2020)",
    "post_mean_norm": "norm of the posterior mean (top layer)",
    "post_logvar_mean": "mean log-variance of the posterior (top layer)",
    "code_norm": "norm of the autoencoder's code",
    "post_mean_J": "posterior mean of latent unit J (top layer)",
    "post_logvar_J": "posterior log-variance of latent unit J (top layer)",
    "prefer_T": "ELBO(x) - ELBO(T x) for the grid symmetry T (flip, rotation), nats",
}
# the protocol entries two sets of statistics must share to be scored by one density
PROTOCOL_KEYS = ("statistics_version", "k", "seed", "batch_size", "samples", "llr_mode", "discrete", "binary",
                 "model", "orientation")


@dataclass(frozen=True)
class ImageStatistics:
    """Named per-image statistics (float64 arrays of one length) of one set of images.

    `split` says which images they describe: "val" (the run's validation split, the only statistics a
    density is fitted on), "test", or the name of another dataset. `protocol` says how they were
    computed (k, seed, batch size, forward draws, the model, the images' SHA-256)."""

    split: str
    columns: dict[str, np.ndarray]
    protocol: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cols = {}
        for name, values in self.columns.items():
            arr = np.ascontiguousarray(values, dtype=np.float64)
            if arr.ndim != 1:
                raise ValueError(f"statistic {name!r} must be 1-D (one value per image), got {arr.shape}")
            cols[str(name)] = arr
        lengths = {len(a) for a in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"statistics of one set must have one length each, got {sorted(lengths)}")
        object.__setattr__(self, "columns", cols)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def features(self) -> tuple[str, ...]:
        """The columns a density is fitted on: every one that is not a function of the others, and not an
        orientation preference (the orientation test's own, one-sided)."""
        layered = any(n.startswith("kl_") for n in self.columns)
        return tuple(n for n in self.columns if n != "complexity" and not (n == "kl" and layered)
                     and not n.startswith(PREFIX))

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """(N, len(names)) float64, columns in the order given."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ConfigError(f"the statistics of {self.split} lack {', '.join(missing)} (they have "
                              f"{', '.join(self.columns)}); compute them with the same model and protocol")
        return np.stack([self.columns[n] for n in names], axis=1) if names else np.zeros((len(self), 0))

    def subset(self, index: np.ndarray | Sequence[int]) -> "ImageStatistics":
        idx = np.asarray(index, dtype=np.int64)
        return ImageStatistics(self.split, {n: v[idx] for n, v in self.columns.items()},
                               {**self.protocol, "n": int(len(idx)), "subset_of": self.protocol.get("n")})

    def save(self, path: str | Path) -> Path:
        """One safetensors file: a float64 tensor per statistic; split and protocol as JSON metadata."""
        from safetensors.numpy import save

        meta = {"format": FORMAT, "version": str(VERSION), "split": self.split, "columns": json.dumps(self.names),
                "protocol": json.dumps(self.protocol, sort_keys=True)}
        return atomic_write(path, save(dict(self.columns), metadata=meta), "the image statistics")

    @classmethod
    def load(cls, path: str | Path) -> "ImageStatistics":
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                columns = {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # OSError, or safetensors' SafetensorError (an Exception) for a damaged file
            raise CheckpointError(f"{path}: not a readable statistics file ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a vaelab statistics file (format {meta.get('format')!r})")
        order = json.loads(meta.get("columns", "[]"))  # the file keeps tensors sorted by name; restore the order
        order = [n for n in order if n in columns] + sorted(set(columns) - set(order))
        return cls(meta.get("split", ""), {n: columns[n] for n in order}, json.loads(meta.get("protocol", "{}")))


def images_digest(images: torch.Tensor) -> str:
    """SHA-256 of the uint8 images and their shape: what a cached statistics file must match."""
    x = images.detach().cpu().contiguous()
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def _prepare(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return images.cpu()
    return as_uint8_images(images).cpu()


def _llr_layers(model: Any, llr_layers: Sequence[int] | None) -> list[int]:
    layers = int(getattr(model, "n_layers", 1) or 1)
    if layers < 2:
        return []
    js = list(range(1, layers)) if llr_layers is None else [int(j) for j in llr_layers]
    bad = [j for j in js if not 1 <= j < layers]
    if bad:
        raise ConfigError(f"LLR>j needs 1 <= j < {layers} (the model's layers), got {bad}")
    return js


def statistics_protocol(model: Any, images: torch.Tensor, *, k: int, seed: int, batch_size: int, samples: int,
                        llr_mode: str, llr_layers: Sequence[int] | None, model_tag: str = "",
                        binary: bool | None = None, orientation: bool = True) -> dict[str, Any]:
    """What `compute_statistics` will record for these arguments (without computing anything); `binary`
    None is decided from the images (all 0 or 255)."""
    scorer = as_scorer(model)
    if binary is None:
        binary = bool(((images == 0) | (images == 255)).all())
    return {"statistics_version": VERSION, "k": int(k), "seed": int(seed), "batch_size": int(batch_size),
            "samples": int(samples), "llr_mode": llr_mode, "llr_layers": _llr_layers(scorer, llr_layers),
            "discrete": True, "binary": bool(binary), "orientation": bool(orientation),
            "model": model_tag or type(getattr(scorer, "obj", scorer)).__name__, "n": int(len(images)),
            "images_sha256": images_digest(images)}


@torch.no_grad()
def _forward_statistics(model: Model, images: torch.Tensor, *, samples: int, seed: int, batch_size: int,
                        device: torch.device | str) -> dict[str, np.ndarray]:
    """recon, KL (per layer), posterior statistics from `samples` forward passes per image (seeded)."""
    gen = torch.Generator().manual_seed(seed + 1)  # the forward draws: a stream apart from the importance samples
    lik = model.likelihood
    memory_format = torch.channels_last if use_channels_last(model) else torch.contiguous_format
    parts: dict[str, list[np.ndarray]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        parts.setdefault(name, []).append(value.detach().double().cpu().numpy())

    with eval_mode(model):
        for x in batches(images, max(1, batch_size), device=device, memory_format=memory_format):
            b = x.shape[0]
            xs = x.repeat(samples, 1, 1, 1).contiguous(memory_format=memory_format)
            out = model(xs, generator=gen)
            log_px_z = lik.discrete_log_prob(xs, out.x_params) if hasattr(lik, "discrete_log_prob") \
                else lik.log_prob(xs, out.x_params)
            add("recon", -log_px_z.double().view(samples, b).mean(0))
            if model.variational:
                add("kl", out.kl.double().view(samples, b).mean(0))
                if out.kl_layers is not None and out.kl_layers.shape[1] > 1:
                    kl_layers = out.kl_layers.double().view(samples, b, -1).mean(0)
                    for i in range(kl_layers.shape[1]):
                        add(f"kl_{i + 1}", kl_layers[:, i])
            if out.posterior is not None:
                mean, logvar = out.posterior.mean[:b].flatten(1).double(), out.posterior.logvar[:b].flatten(1).double()
                add("post_mean_norm", mean.norm(dim=1))
                add("post_logvar_mean", logvar.mean(1))
                if mean.shape[1] <= UNIT_COLUMNS:
                    for j in range(mean.shape[1]):
                        add(f"post_mean_{j + 1}", mean[:, j])
                    for j in range(mean.shape[1]):
                        add(f"post_logvar_{j + 1}", logvar[:, j])
            elif not model.variational:
                add("code_norm", out.z[:b].flatten(1).double().norm(dim=1))
    return {name: np.concatenate(v) for name, v in parts.items()}


def compute_statistics(model: Any, images: Any, *, split: str, k: int = 100, seed: int = NLL_SEED,
                       batch_size: int = 64, samples: int = 8, llr_mode: str = "mode",
                       llr_layers: Sequence[int] | None = None, binary: bool | None = None,
                       device: torch.device | str = "cpu", model_tag: str = "", orientation: bool = True,
                       log: Callable[[str], None] | None = None, estimate: ImportanceEstimate | None = None,
                       ratios: dict[int, LikelihoodRatio] | None = None) -> ImageStatistics:
    """Every statistic the model can give of each image (uint8 (N, C, H, W), prepared as the run scores
    them: binarized once when it binarizes). See the module docstring for the columns.

    `k`, `seed`, `batch_size`: the importance sampler's (the same three give the numbers of `vaelab
    evaluate --on`); `samples`: forward draws averaged for recon and KL, and the ELBO draws of each
    orientation preference; `llr_mode`: how L>j takes its j lowest layers from the prior ("mode": the
    conditional prior's mean, "sample": a draw);
    `llr_layers`: the j of LLR>j (None: every j from 1 to layers - 1); `binary`: whether L(x) is the
    code length of a 1-bit PNG (None: decided from the images); `model_tag`: what identifies the model
    in the protocol (e.g. its checkpoint's hash), so cached statistics of another model are not reused;
    `orientation`: whether the prefer_T columns are computed (7 or 3 transforms x `samples` ELBO draws).

    `estimate` and `ratios` ({j: LLR>j}): the importance-sampled pass (and LLR>j) of these images when the
    caller already made it with the same k, seed, batch size and device (`vaelab evaluate --on` does): they
    are used as they are instead of being computed again, so the statistics cost the forward draws alone."""
    if llr_mode not in ("mode", "sample"):
        raise ConfigError(f"llr_mode must be mode or sample, got {llr_mode!r}")
    if samples < 1:
        raise ConfigError(f"samples (forward draws per image) must be >= 1, got {samples}")
    x8 = _prepare(images)
    scorer = as_scorer(model)
    protocol = statistics_protocol(scorer, x8, k=k, seed=seed, batch_size=batch_size, samples=samples,
                                   llr_mode=llr_mode, llr_layers=llr_layers, model_tag=model_tag, binary=binary,
                                   orientation=orientation)
    say = log or (lambda _msg: None)
    cols: dict[str, np.ndarray] = {}
    if scorer.variational:
        est = estimate
        if est is None:
            say(f"  {split}: log p(x), k={k}, {len(x8)} images ...")
            est = importance_sampled(scorer, x8, k=k, seed=seed, batch_size=batch_size, device=device)
        elif est.k != k or est.prior_layers != 0 or len(est.log_px) != len(x8):
            raise ValueError("estimate must be the ordinary bound (prior_layers 0) of the same images with the same k")
        cols["log_px"], cols["elbo"] = est.log_px.numpy(), est.elbo.numpy()
        for j in protocol["llr_layers"]:
            ratio = (ratios or {}).get(j)
            if ratio is None:
                say(f"  {split}: L>{j} ({llr_mode}) ...")
                ratio = llr_scores(scorer, x8, prior_layers=j, k=k, batch_size=batch_size, seed=seed,
                                   device=device, log_px=est, prior_mode=llr_mode == "mode")
            cols[f"llr_{j}"] = ratio.llr.numpy()
    if isinstance(scorer, Model):
        cols.update(_forward_statistics(scorer, x8, samples=samples, seed=seed, batch_size=batch_size,
                                        device=device))
        if scorer.variational and orientation:
            say(f"  {split}: orientation preferences ({samples} draws per image and transform) ...")
            cols.update(preference_statistics(scorer, x8, samples=samples, seed=seed + 2, batch_size=batch_size,
                                              device=device))
    cols["png_bits"] = png_code_length_bits(x8, binary=protocol["binary"] and x8.shape[1] == 1).astype(np.float64)
    if "log_px" in cols:
        cols["complexity"] = complexity_corrected_score(-cols["log_px"], cols["png_bits"])
    return ImageStatistics(split, cols, protocol)


def cached_statistics(path: str | Path, model: Any, images: Any, *, split: str, k: int = 100,
                      seed: int = NLL_SEED, batch_size: int = 64, samples: int = 8, llr_mode: str = "mode",
                      llr_layers: Sequence[int] | None = None, model_tag: str = "", binary: bool | None = None,
                      orientation: bool = True, **kwargs: Any) -> ImageStatistics:
    """The statistics in `path` when they were computed with the same protocol of the same images and
    split (a damaged or different file is recomputed); else `compute_statistics(...)`, saved to `path`.
    `kwargs`: compute_statistics' other arguments (device, log)."""
    path = Path(path)
    x8 = _prepare(images)
    protocol = dict(k=k, seed=seed, batch_size=batch_size, samples=samples, llr_mode=llr_mode,
                    llr_layers=llr_layers, model_tag=model_tag, binary=binary, orientation=orientation)
    if path.is_file():
        expect = statistics_protocol(model, x8, **protocol)
        try:
            cached = ImageStatistics.load(path)
        except CheckpointError:
            cached = None
        if cached is not None and cached.split == split and cached.protocol == expect:
            return cached
    stats = compute_statistics(model, x8, split=split, **protocol, **kwargs)
    stats.save(path)
    return stats


# --------------------------------------------------------------------------- a run's statistics


def run_statistics(model: Any, cfg: RunConfig, images: torch.Tensor, split: str, **kwargs: Any) -> ImageStatistics:
    """`compute_statistics` with a run's protocol: k = eval.ood_k, seed = eval.seed, batch size =
    eval.nll_batch_size, LLR>j as eval.llr_mode says; the images prepared as `vaelab evaluate --on`
    prepares them (vaelab.evaluation.unseen.load_eval_set)."""
    ec = cfg.eval
    return compute_statistics(model, images, split=split, k=ec.ood_k, seed=ec.seed, batch_size=ec.nll_batch_size,
                              llr_mode=ec.llr_mode, binary=cfg.data.binarize != "none", **kwargs)


def validation_images(cfg: RunConfig, splits: DatasetSplits, n: int | None = None) -> torch.Tensor:
    """The validation images a density is fitted on: at most `n` (eval.dose_images) of the validation split,
    a seeded choice, binarized once as every evaluation of that split is. Nothing else of `splits` is read."""
    if not len(splits.val):
        raise ConfigError("DoSE and the typicality test are fitted on the validation split, and this run has "
                          "none: train with data.val_size > 0")
    n = cfg.eval.dose_images if n is None else n
    return load_eval_set(VALIDATION, cfg, splits, n, cfg.eval.seed + 30).images


def validation_statistics(model: Any, cfg: RunConfig, splits: DatasetSplits, n: int | None = None,
                          **kwargs: Any) -> ImageStatistics:
    """Statistics of the run's validation images (`validation_images`), labelled "val": the only
    statistics `fit_dose` and `fit_typicality` accept."""
    return run_statistics(model, cfg, validation_images(cfg, splits, n), VALIDATION, **kwargs)


__all__ = ["COLUMN_NOTES", "UNIT_COLUMNS", "run_statistics", "validation_images", "validation_statistics",
           "ImageStatistics", "PROTOCOL_KEYS", "VALIDATION", "cached_statistics", "compute_statistics", "images_digest",
           "statistics_protocol"]
