"""Synthetic distribution shifts: OOD sets made from nothing or from a run's own test images.

Each shift returns uint8 images (N, C, H, W), the same for the same seed. What
each one probes in an OOD detector (see `vaelab.evaluation.ood`):

- `noise`: every pixel uniform over 0..255. The most complex images there are
  (incompressible): a sanity check that any likelihood-based score must pass
  (AUROC near 1); failing it means the scores are broken, not subtle.
- `constant`: one grey level per image. The simplest images there are: the
  classic failure case of likelihood scores, which give them a *higher*
  likelihood than the training data (Nalisnick et al. 2019, "Do deep
  generative models know what they don't know?"; Serra et al. 2020 use both
  Noise and Constant sets). A complexity correction should fix it.
- `inverted`: 255 - x, the test images with light and dark swapped: the same
  shapes and strokes on a white background. Probes whether the score looks at
  content or is dominated by background pixel statistics.
- `flipped`: the test images upside down: the same pixel statistics and
  complexity as the test set, only the semantics (orientation) are wrong. The
  hardest of the four; a likelihood that only counts simple pixel statistics
  cannot see it at all.

`inverted` and `flipped` start from the run's own test images, so the OOD set
has exactly the in-distribution image shape, binarization aside.
"""

from __future__ import annotations

from typing import Callable

import torch

from vaelab.errors import DataError
from vaelab.data.splits import spread_index


def _check_shape(n: int, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1 or n < 0:
        raise ValueError(f"want n >= 0 and image_shape (C, H, W) of positive sizes, got n={n}, {image_shape}")
    return shape  # type: ignore[return-value]


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"want uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")


def uniform_noise(n: int, image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """`n` images of independent pixels, each uniform over 0..255 (every channel drawn separately)."""
    shape = _check_shape(n, image_shape)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)


def constant_images(n: int, image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """`n` images, each a single grey level drawn uniformly from 0..255 (all pixels and channels equal)."""
    shape = _check_shape(n, image_shape)
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (n, 1, 1, 1), generator=gen, dtype=torch.uint8)
    return levels.expand(n, *shape).contiguous()


def inverted(images: torch.Tensor) -> torch.Tensor:
    """255 - x: light and dark swapped. Its own inverse."""
    _check_images(images)
    return 255 - images


def flipped(images: torch.Tensor) -> torch.Tensor:
    """The images upside down (reversed along H). Its own inverse.

    Vertical, not horizontal: most Fashion-MNIST garments (T-shirts, trousers,
    dresses, coats, bags) are close to mirror-symmetric, so a left-right flip
    gives a garment of the same class that could be in the training set,
    nearly in-distribution. Upside down, collars sit at the bottom and shoes
    stand on their uppers: never seen in training. (Digits symmetric about the
    horizontal axis, such as 0, 1, 3 and 8, survive it; on MNIST part of this
    set stays in-distribution.)
    """
    _check_images(images)
    return torch.flip(images, dims=(2,))


SHIFTS: dict[str, Callable[..., torch.Tensor]] = {
    "noise": uniform_noise,
    "constant": constant_images,
    "inverted": inverted,
    "flipped": flipped,
}
_FROM_REFERENCE = ("inverted", "flipped")


def make_shift(name: str, reference: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` images of the shift `name`, shaped like `reference`, the run's own uint8 test images.

    `noise` and `constant` take only their shape from `reference`; `inverted`
    and `flipped` transform a random subset of `n` of its images (drawn with
    `seed`, kept in order), or all of them if it holds fewer than `n`.
    """
    if name not in SHIFTS:
        raise DataError(f"unknown distribution shift {name!r}; choose one of {', '.join(SHIFTS)}")
    _check_images(reference)
    if n < 0:
        raise DataError(f"the number of shifted images must be >= 0, got {n}")
    if name in _FROM_REFERENCE:
        if not len(reference):
            raise DataError(f"the {name!r} shift needs test images to transform, and the test split is empty")
        return SHIFTS[name](reference[spread_index(len(reference), n, seed)])
    return SHIFTS[name](n, tuple(reference.shape[1:]), seed)
