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

DoSE+orientation (vaelab.evaluation.oodrun) joins this test to the density by Tippett's rule, with the
tail p-values of vaelab.evaluation.tails.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from vaelab.data import batches
from vaelab.models import eval_mode

PREFIX = "prefer_"
PREFERENCE_RATE = 0.9  # a transform counts when the model prefers the original in at least this share of images

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


__all__ = ["PREFERENCE_RATE", "PREFIX", "SYMMETRIES", "grid_symmetries", "orientation_statistic",
           "orientation_transforms", "preference_statistics"]
