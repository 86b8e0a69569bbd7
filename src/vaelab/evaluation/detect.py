"""Out-of-distribution scores of any model that gives importance weights: vaelab's, yours, or one trained
elsewhere (an object with `log_weights(x, k, generator=None) -> (k, B)`, see vaelab.models.base).

`image_scores` gives per-image scores (higher = more out-of-distribution); `detect_ood` scores the images a
model was trained on beside unseen ones and measures how well each score tells them apart. `vaelab
evaluate --on` computes the same scores with the run's own protocol (vaelab.evaluation.unseen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaelab.data import as_uint8_images
from vaelab.evaluation.likelihood import NLL_SEED, ImportanceEstimate, importance_sampled
from vaelab.evaluation.ood import (DetectionMetrics, balanced_index, complexity_corrected_score, detection_metrics,
                                   png_code_length_bits)

SCORE_NAMES = ("-log p(x)", "-ELBO", "complexity-corrected")


def scores_from_estimate(est: ImportanceEstimate, images: torch.Tensor, binary: bool,
                         bits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """-log p(x), -ELBO, Serra et al.'s complexity-corrected score and bits/dim per image (N,) each (`bits`:
    the images' PNG code lengths when the caller has them)."""
    nll = (-est.log_px).numpy()
    if bits is None:
        bits = png_code_length_bits(images, binary=binary and images.shape[1] == 1)
    return {"-log p(x)": nll, "-ELBO": (-est.elbo).numpy(),
            "complexity-corrected": complexity_corrected_score(nll, bits),
            "bits/dim": nll / (math.prod(images.shape[1:]) * math.log(2))}


def image_scores(model: Any, images: Any, *, k: int = 100, seed: int = NLL_SEED, batch_size: int = 64,
                 device: torch.device | str = "cpu", binary: bool | None = None) -> dict[str, np.ndarray]:
    """Per-image OOD scores of `images` (uint8, (N, C, H, W) or anything vaelab.data.as_uint8_images takes).

    `binary`: whether the images are binary (0 or 255 only; the PNG code length of L(x) is then taken of a
    1-bit image); None: decided from the images."""
    x = images if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 else as_uint8_images(images)
    if binary is None:
        binary = bool(((x == 0) | (x == 255)).all())
    est = importance_sampled(model, x, k=k, seed=seed, batch_size=batch_size, device=device, discrete=True)
    return scores_from_estimate(est, x, binary)


@dataclass(frozen=True)
class OodDetection:
    """Per-image scores of the in- and out-of-distribution images, and each score's detection metrics
    (on balanced sizes: the smaller of the two sets, a seeded choice from the larger)."""

    scores_in: dict[str, np.ndarray]
    scores_out: dict[str, np.ndarray]
    metrics: dict[str, DetectionMetrics]


def detect_ood(model: Any, images_in: Any, images_out: Any, *, k: int = 100, seed: int = NLL_SEED,
               batch_size: int = 64, device: torch.device | str = "cpu") -> OodDetection:
    """Score held-out images of the training distribution (`images_in`) and unseen ones (`images_out`), and
    measure how well each score detects the unseen ones (AUROC, AUPRC, FPR at 80% TPR)."""
    a = image_scores(model, images_in, k=k, seed=seed, batch_size=batch_size, device=device)
    b = image_scores(model, images_out, k=k, seed=seed, batch_size=batch_size, device=device)
    i_in, i_out = balanced_index(len(a[SCORE_NAMES[0]]), len(b[SCORE_NAMES[0]]), seed)
    metrics = {name: detection_metrics(a[name][i_in], b[name][i_out]) for name in SCORE_NAMES}
    return OodDetection(a, b, metrics)


__all__ = ["OodDetection", "SCORE_NAMES", "detect_ood", "image_scores", "scores_from_estimate"]
