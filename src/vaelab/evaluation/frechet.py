"""Sample fidelity: how close a model's samples are to real images, as a Frechet distance in PCA space.

A pixel-space proxy for FID, cheap and deterministic: the features are the top principal components of
training images, and the floor is what real training images get against the same test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vaelab.data import DatasetSplits, spread_index, to_float
from vaelab.models import Model
from vaelab.models.generate import sample

EVAL_SEED = 2024  # the same seed as the -ELBO's (vaelab.evaluation.elbo)

SAMPLE_FD_IMAGES = 10_000
SAMPLE_FD_DIMS = 64
MIN_FD_DIMS = 8  # below 80 test images no score is given


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mean1, cov1) and N(mean2, cov2).

    |m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2), with the matrix square roots taken
    by symmetric eigendecompositions (float64; tiny negative eigenvalues from rounding are clipped).
    """
    m1, m2, c1, c2 = (t.double() for t in (mean1, mean2, cov1, cov2))
    w, v = torch.linalg.eigh((c1 + c1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root1 @ c2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross)


@dataclass(frozen=True)
class PcaFeatures:
    """Projection of flattened images onto the top principal components of a reference set."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (D, k)

    @classmethod
    def fit(cls, images: torch.Tensor, k: int, seed: int = 0) -> "PcaFeatures":
        """Fit on float images (N, C, H, W) in [0, 1] (randomized SVD, reproducible with `seed`)."""
        x = images.flatten(1).double()
        k = min(k, x.shape[0] - 1, x.shape[1])
        mean = x.mean(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(x - mean, q=min(k + 10, *x.shape), center=False, niter=6)
        return cls(mean, v[:, :k])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1).double().cpu() - self.mean) @ self.components


def sample_fidelity(model: Model, splits: DatasetSplits, *, n: int = SAMPLE_FD_IMAGES, dims: int = SAMPLE_FD_DIMS,
                    seed: int = EVAL_SEED, batch_size: int = 1000) -> dict[str, Any]:
    """How close the model's samples are to the test images, as a Frechet distance in PCA space.

    Features: the top `dims` principal components of (up to n) training images, grey values in [0, 1]
    (fewer components when there are fewer than 10 images per component; no score below 80 images).
    `fd_samples_test`: n samples from the prior (decoded means) against n test images.
    `fd_train_test`: n real training images against the same test images: the value a perfect
    generator would get with this many images (the floor). Lower is better for both. A pixel-space
    proxy, cheap and deterministic; not the Inception-network FID of natural-image papers.
    """
    n = min(n, len(splits.test), len(splits.train))
    dims = min(dims, n // 10)  # at least 10 images per feature dimension, or the covariances mean little
    if dims < MIN_FD_DIMS:
        return {}
    train = to_float(splits.train.images[spread_index(len(splits.train), n, seed)])
    test = to_float(splits.test.images[spread_index(len(splits.test), n, seed + 1)])
    features = PcaFeatures.fit(train, dims, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    samples = torch.cat([sample(model, min(batch_size, n - i), 1.0, gen).cpu() for i in range(0, n, batch_size)])
    test_stats = gaussian_stats(features(test))
    return {
        "fd_samples_test": frechet_distance(*gaussian_stats(features(samples)), *test_stats),
        "fd_train_test": frechet_distance(*gaussian_stats(features(train)), *test_stats),
        "images": n, "pca_dims": features.components.shape[1],
        "protocol": f"Frechet distance between Gaussians fitted to {n} images each, in the space of the top "
                    f"{features.components.shape[1]} principal components of {n} training images (grey values "
                    "in [0, 1]); samples are decoded means at temperature 1; fd_train_test is real training "
                    "images against the same test images (the floor); lower is better",
    }
