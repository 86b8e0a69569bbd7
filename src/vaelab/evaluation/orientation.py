"""The orientation test: does the model prefer an image to its own flips and rotations?

A model trained on upright images learns which way up they go: it gives an in-distribution image a
higher ELBO than the same image turned upside down, mirrored or rotated a quarter turn. An image from
elsewhere (a digit under a clothing model, a picture scanned upside down, noise) earns no such
preference. Self-supervised detectors exploit the same fact with a classifier of transformations
(Golan & El-Yaniv 2018; Hendrycks et al. 2019); here the generative model itself is the judge, and no
other model is trained.

    prefer_T(x) = ELBO(x) - ELBO(T x)    for each symmetry T of the pixel grid

(`preference_statistics`: `samples` draws of z ~ q(z|x) per image, the same draws for x and T x, so the
difference is not swamped by sampling noise). The grid's symmetries are the dihedral group's seven
non-trivial elements for a square image, the two flips and the half turn otherwise.

Which T count is decided on the run's validation images alone (`orientation_transforms`): those the
model prefers the original to in at least PREFERENCE_RATE of them. A transform the training data is
nearly invariant to (left-right mirroring for Fashion-MNIST: preferred in 83% of images) carries no
orientation and is left out. The statistic is the smallest preference, `orientation_statistic`, and an
image is atypical when it is low (one-sided).

`tail_log_p` turns a score into the log of its upper-tail p-value among reference (validation) scores,
with an exponential tail beyond the largest of them so that scores past every reference stay ordered;
`combined_score` is Tippett's combination of two such tests (the smaller p-value), the union test that
DoSE+orientation (vaelab.evaluation.oodrun) reports.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from vaelab.data import batches
from vaelab.models import eval_mode

PREFIX = "prefer_"
PREFERENCE_RATE = 0.9  # a transform counts when the model prefers the original in at least this share of images
TAIL_FRACTION = 0.05  # the top share of reference scores whose mean excess sets the exponential tail's scale

SYMMETRIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-2, -1),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(1, (-2, -1)).flip(-1),
}
RECTANGLE = ("hflip", "vflip", "rot180")  # the symmetries of a grid that is not square


def grid_symmetries(image_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The non-trivial symmetries of an (…, H, W) pixel grid: seven when H == W, else three."""
    h, w = image_shape[-2:]
    return tuple(SYMMETRIES) if h == w else RECTANGLE


def _elbo(model: Any, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """The ELBO of each image from `samples` draws, seeded per batch (the same draws for any x of one shape)."""
    return model.log_weights(x, samples, generator=torch.Generator().manual_seed(seed)).double().mean(0)


@torch.no_grad()
def preference_statistics(model: Any, images: torch.Tensor, *, samples: int = 8, seed: int = 0,
                          batch_size: int = 64, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """prefer_T = ELBO(x) - ELBO(T x) per image (N,) for each grid symmetry T, nats (common random numbers)."""
    names = grid_symmetries(tuple(images.shape))
    parts: dict[str, list[np.ndarray]] = {PREFIX + n: [] for n in names}
    with eval_mode(model):
        for i, x in enumerate(batches(images, max(1, batch_size), device=device)):
            base = _elbo(model, x, samples, seed + i)
            for n in names:
                moved = SYMMETRIES[n](x).contiguous()
                parts[PREFIX + n].append((base - _elbo(model, moved, samples, seed + i)).cpu().numpy())
    return {name: np.concatenate(v) for name, v in parts.items()}


def orientation_transforms(columns: dict[str, np.ndarray], rate: float = PREFERENCE_RATE) -> tuple[str, ...]:
    """The preference columns of validation statistics whose transform the model resists: prefer_T > 0 in at
    least `rate` of the images (empty when no column qualifies or none was computed)."""
    return tuple(n for n, v in columns.items() if n.startswith(PREFIX) and len(v) and float(np.mean(v > 0)) >= rate)


def orientation_statistic(columns: dict[str, np.ndarray], transforms: tuple[str, ...]) -> np.ndarray:
    """The smallest preference over `transforms` of each image (N,): low = the model has no favourite way up."""
    return np.min(np.stack([columns[n] for n in transforms]), axis=0)


def _tail_scale(ref: np.ndarray, tail: float) -> float:
    """The mean excess over the (1 - tail) quantile of sorted `ref`: the exponential tail's scale."""
    q = ref[int(np.floor((1 - tail) * (len(ref) - 1)))]
    return max(float(np.mean(ref[ref >= q] - q)), 1e-12)


def tail_log_p(reference: np.ndarray, scores: np.ndarray, tail: float = TAIL_FRACTION) -> np.ndarray:
    """log of each score's upper-tail p-value among `reference`, (count of reference >= score + 1) / (n + 1),
    continued past the largest reference by an exponential tail whose scale is the mean excess of the top
    `tail` share (so scores beyond every reference keep their order instead of tying)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    x = np.asarray(scores, dtype=np.float64)
    n = len(ref)
    p = (n - np.searchsorted(ref, x, side="left") + 1) / (n + 1)
    return np.where(x > ref[-1], -(x - ref[-1]) / _tail_scale(ref, tail) - np.log(n + 1), np.log(p))


def held_out_tail_log_p(reference: np.ndarray, tail: float = TAIL_FRACTION) -> np.ndarray:
    """`tail_log_p` of each reference score among the *other* reference scores: what a new image from the same
    distribution gets, so percentiles of new images' combined scores among the reference's are fair (an
    in-sample p-value would stop at 1/(n + 1), a new image's does not)."""
    x = np.asarray(reference, dtype=np.float64)
    ref = np.sort(x)
    n = len(ref)
    if n < 3:
        raise ValueError(f"held-out tail p-values need at least 3 reference scores, got {n}")
    others_ge = n - np.searchsorted(ref, x, side="left") - 1  # the other scores >= x (x itself left out)
    log_p = np.log((others_ge + 1) / n)
    top = x == ref[-1]
    if top.sum() == 1:  # the largest lies past all the others: the tail of the others continues it
        log_p[top] = -(x[top] - ref[-2]) / _tail_scale(ref[:-1], tail) - np.log(n)
    return log_p


def combined_score(log_p: list[np.ndarray]) -> np.ndarray:
    """Tippett's combination of one-sided tests: -log of the smallest p-value (higher = more atypical)."""
    return -np.min(np.stack(log_p), axis=0)


__all__ = ["PREFERENCE_RATE", "PREFIX", "SYMMETRIES", "combined_score", "grid_symmetries", "held_out_tail_log_p",
           "orientation_statistic",
           "orientation_transforms", "preference_statistics", "tail_log_p"]
