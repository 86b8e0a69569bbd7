"""What a sweep optimizes: metrics of a trained model computed on the validation split only, and the
sealed test split (not to be confused with `vaelab.objectives`, the loss math of the models).

The test split chooses nothing: it is sealed for the whole sweep (`seal_test`), and every
objective below reads the validation split (val_gap also the training split). Numbers follow
vaelab's conventions (nats per image, summed over pixels and latent dimensions), and each is
computed exactly as `vaelab evaluate` computes the validation row of the same quantity, so a
trial's objective can be checked against its run directory:

- val_nll: the importance-sampled NLL (eval.nll_k samples per image) of eval.nll_images
  validation images, the subset `vaelab evaluate` draws for the validation row;
- val_bits_per_dim: the same in bits per dimension;
- val_nelbo: -ELBO of the whole validation split (one sample per image, fixed seed);
- val_loss: recon + beta * KL there (what training minimizes; depends on train.beta);
- val_recon: the reconstruction term there;
- val_gap: the generalization gap, validation minus training -ELBO on equal-size image sets;
- val_active_units: active latent units on the validation split (Burda et al. 2015; maximized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data import SPLITS, DatasetSplits, ImageSet, eval_view, spread_index
from vaelab.errors import ConfigError
from vaelab.evaluation.elbo import evaluate_images, generalization_gap
from vaelab.evaluation.frechet import sample_fidelity
from vaelab.evaluation.likelihood import estimate_nll
from vaelab.evaluation.posterior import collapse_report
from vaelab.evaluation.unseen import has_likelihood


class SealedTestSplitError(RuntimeError):
    """Something in the sweep path touched the test images: a bug, never a user's mistake."""


class SealedSplit(ImageSet):
    """A stand-in for the test split during a sweep: it knows its size and image shape (run.json
    reports them) but any read of its images or labels raises `SealedTestSplitError`."""

    def __init__(self, n: int, image_shape: tuple[int, int, int]) -> None:  # no images: nothing to read
        object.__setattr__(self, "_n", n)
        object.__setattr__(self, "_shape", tuple(image_shape))

    def __getattribute__(self, name: str) -> Any:
        if name in ("images", "labels", "subset"):
            raise SealedTestSplitError("the test split was read during a sweep; a sweep chooses on the validation "
                                "split only (this is a bug in vaelab)")
        return object.__getattribute__(self, name)

    def __len__(self) -> int:
        return self._n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"SealedSplit({self._n} images, sealed)"


def seal_test(splits: DatasetSplits) -> DatasetSplits:
    """The same splits with the test images replaced by a `SealedSplit` of the same size."""
    if isinstance(splits.test, SealedSplit):
        return splits
    return replace(splits, test=SealedSplit(len(splits.test), splits.test.image_shape))


# --------------------------------------------------------------------------- the objectives


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "minimize" | "maximize"
    help: str
    needs_likelihood: bool  # a VAE with a likelihood (not a Bernoulli decoder on grey pixels)
    variational: bool  # a VAE (the autoencoder has no KL, no posterior)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("val_nll", "minimize", "importance-sampled NLL of eval.nll_images validation images "
              "(eval.nll_k samples)", True, True),
    Objective("val_bits_per_dim", "minimize", "the same NLL in bits per dimension", True, True),
    Objective("val_nelbo", "minimize", "-ELBO of the validation split (nats per image)", False, True),
    Objective("val_loss", "minimize", "recon + beta * KL on the validation split (depends on train.beta)",
              False, False),
    Objective("val_recon", "minimize", "the reconstruction term on the validation split", False, False),
    Objective("val_gap", "minimize", "validation minus training -ELBO on equal-size image sets (nats)",
              False, False),
    Objective("val_active_units", "maximize", "active latent units on the validation split", False, True),
    Objective("val_fd", "minimize", "how well the model generates: Frechet distance of prior samples to the "
              "validation images in PCA pixel space (vaelab's sample fidelity)", False, False),
)}


def check_objective(cfg: RunConfig, name: str) -> None:
    """Raise ConfigError when `cfg` cannot have the objective (checked before a trial trains)."""
    objective = OBJECTIVES[name]
    if objective.variational and cfg.model.kind == "ae":
        raise ConfigError(f"objective {name} needs a VAE, and model.kind = 'ae' is a plain autoencoder")
    if objective.needs_likelihood and not has_likelihood(cfg):
        raise ConfigError(f"objective {name} needs a likelihood, and a Bernoulli decoder on grey pixels "
                          "(data.binarize = 'none') has none; use val_nelbo, or binarize")
    if name in ("val_nll", "val_bits_per_dim") and cfg.eval.nll_images == 0:
        raise ConfigError(f"objective {name} scores eval.nll_images validation images, and eval.nll_images "
                          "is 0; set it > 0 (e.g. 500)")
    if cfg.data.val_size == 0:
        raise ConfigError("a sweep chooses on the validation split, and data.val_size = 0 leaves none; "
                          "leave data.val_size unset or give it > 0")


def validation_nll(model, cfg: RunConfig, splits: DatasetSplits, device: torch.device | str = "cpu"):
    """The NllSummary of eval.nll_images validation images: the subset and seed of `vaelab evaluate`'s val row."""
    ec, dc = cfg.eval, cfg.data
    view = eval_view(splits.val, "val", dc.binarize, dc.binarize_seed)  # binarized as a whole, then the subset
    # evaluate's rule (`nll_on_splits`): equal subsets of every non-empty split, seeded by the split's place
    # among them; the sealed test split still tells its size, which is all this reads of it
    present = [name for name in SPLITS if len(splits.split(name))]
    n = min([ec.nll_images] + [len(splits.split(name)) for name in present])
    if n < len(view):
        view = view.subset(spread_index(len(view), n, ec.seed + present.index("val")))
    summary, _ = estimate_nll(model, view.images, likelihood=cfg.model.likelihood, binarize=dc.binarize,
                              binarize_seed=dc.binarize_seed, k=ec.nll_k, batch_size=ec.nll_batch_size,
                              seed=ec.seed, device=device, compile=ec.compile)
    return summary


def validation_metrics(model, cfg: RunConfig, splits: DatasetSplits, objective: str,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """`objective` (and the cheap -ELBO terms of the validation split) for a trained model.

    Returns {"val_nelbo", "val_loss", "val_recon", objective: value}; `val_nelbo` is None for an autoencoder.
    """
    dc, tc = cfg.data, cfg.train
    if not len(splits.val):
        raise ConfigError("the validation split is empty; a sweep chooses on it (raise data.val_size)")
    val = eval_view(splits.val, "val", dc.binarize, dc.binarize_seed)
    terms = evaluate_images(model, val, beta=tc.beta, batch_size=tc.eval_batch_size, device=device)
    out: dict[str, Any] = {"val_nelbo": terms.nelbo, "val_loss": terms.loss, "val_recon": terms.recon}
    if objective in ("val_nll", "val_bits_per_dim"):
        summary = validation_nll(model, cfg, splits, device)
        out["val_nll"], out["val_bits_per_dim"] = summary.nll, summary.bits_per_dim
    elif objective == "val_gap":
        n = min(len(val), len(splits.train))
        train = eval_view(splits.train, "train", dc.binarize, dc.binarize_seed).subset(
            spread_index(len(splits.train), n, tc.seed + 5))  # the recipe of the trainer's per-epoch monitor subsets
        val_n = val if n == len(val) else val.subset(spread_index(len(val), n, tc.seed + 6))
        out["val_gap"] = generalization_gap(
            evaluate_images(model, train, beta=tc.beta, batch_size=tc.eval_batch_size, device=device),
            evaluate_images(model, val_n, beta=tc.beta, batch_size=tc.eval_batch_size, device=device))
    elif objective == "val_fd":
        # the sample-fidelity score of the final evaluation, with the validation images in the test images' place
        fidelity = sample_fidelity(model, replace(splits, test=splits.val), seed=cfg.eval.seed,
                                   batch_size=tc.eval_batch_size)
        if not fidelity:
            raise ConfigError("val_fd needs at least 80 validation and training images (raise data.val_size)")
        out["val_fd"] = fidelity["fd_samples_test"]
    elif objective == "val_active_units":
        out["val_active_units"] = float(collapse_report(model, val.images, batch_size=tc.eval_batch_size,
                                                        device=device)["active_units"])
    value = out[objective]
    if value is None or not math.isfinite(value):
        raise ConfigError(f"the objective {objective} came out {value} (the weights diverged?)")
    return out


def intermediate_value(record: dict[str, Any]) -> float | None:
    """What the pruner compares after each epoch: the validation -ELBO (independent of train.beta), or the
    validation loss of an autoencoder; None without a validation split."""
    val = record.get("val")
    if not val:
        return None
    return val["nelbo"] if val.get("nelbo") is not None else val["loss"]


__all__ = ["OBJECTIVES", "Objective", "SealedSplit", "SealedTestSplitError", "check_objective", "intermediate_value",
           "seal_test", "validation_metrics", "validation_nll"]
