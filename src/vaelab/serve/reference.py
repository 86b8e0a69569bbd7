"""What an uploaded image is measured against, and the verdict.

At start-up the explorer scores `reference_images` training and test images (picked at random,
reproducibly). An upload is then placed among them:

- its NLL (importance-sampled, k samples; nats per image) against the NLLs of training images;
- its OOD score S(x) = NLL / ln 2 - PNG code length (Serra et al. 2020, `vaelab.evaluation.ood`; bits per image,
  higher = more out-of-distribution) against the scores of test images, which also gives the verdict:
  the plain likelihood rates simple images (flat, few strokes) as likely whatever the training data,
  the complexity-corrected score does not;
- its reconstruction error (mean squared, pixels in [0, 1]) against training images: the only yardstick
  of a model without a likelihood (an autoencoder).

Images are scored as the evaluation protocol scores them: the training and test references are the
fixed evaluation views of their splits (`vaelab.data.eval_view`), binarized if the run binarizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data import ImageSet, eval_view, spread_index, to_float
from vaelab.evaluation.likelihood import NLL_SEED, importance_sampled
from vaelab.evaluation.ood import complexity_corrected_score, png_code_length_bits
from vaelab.models import eval_mode
from vaelab.models.base import Model

UNUSUAL_PERCENTILE = 99.0  # above this percentile of the reference scores: "unusual"
TYPICAL = "typical of the training data"
UNUSUAL = "unusual"


@dataclass(frozen=True)
class Measures:
    """Per-image numbers of a set of images, float64 (N,); the likelihood ones None without a likelihood."""

    recon_error: np.ndarray  # mean squared error of the reconstruction, pixels in [0, 1]
    nll: np.ndarray | None = None  # -L_k, nats per image
    png_bits: np.ndarray | None = None  # L(x): PNG code length of the scored image, bits
    ood: np.ndarray | None = None  # S(x) = nll / ln 2 - png_bits, bits per image


@dataclass(frozen=True)
class Reference:
    """What uploads are compared with: training images (NLL, reconstruction error), test images (OOD score)."""

    train: Measures
    test: Measures
    seconds: float


@dataclass(frozen=True)
class Scoring:
    """How a run scores images: its model and device, whether it has a likelihood, k, binarized pixels."""

    model: Model
    device: torch.device | str
    likelihood: bool
    k: int
    binary: bool

    def measure(self, images: torch.Tensor, scored: torch.Tensor) -> tuple[Measures, torch.Tensor, torch.Tensor]:
        """Reconstruction error of uint8 images (N, C, H, W), and the likelihood numbers of `scored` (the
        same images as the evaluation scores them: binarized if the run binarizes); also their codes and
        reconstructions. Not thread-safe: the caller holds the model's lock."""
        x = to_float(images, self.device)
        with eval_mode(self.model):
            codes = self.model.code(x)
            recon = self.model.decode_mean(codes)
        recon_error = ((recon - x) ** 2).flatten(1).mean(1).double().cpu().numpy()
        if not self.likelihood:
            return Measures(recon_error), codes, recon
        est = importance_sampled(self.model, scored, k=self.k, batch_size=64, seed=NLL_SEED, device=self.device)
        nll = (-est.log_px).numpy()
        bits = png_code_length_bits(scored, binary=self.binary and scored.shape[1] == 1).astype(np.float64)
        return Measures(recon_error, nll, bits, complexity_corrected_score(nll, bits)), codes, recon


def reference_images(split: ImageSet, name: str, n: int, seed: int,
                     data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a split picked at random (reproducibly), uint8: as they are, and as the evaluation scores them."""
    index = spread_index(len(split), n, seed)
    return split.images[index], eval_view(split, name, data.binarize, data.binarize_seed).images[index]


def percentile(value: float, reference: np.ndarray) -> float:
    """Where `value` falls among `reference`, in percent: the share below it, ties counted one half."""
    below = int(np.count_nonzero(reference < value))
    ties = int(np.count_nonzero(reference == value))
    return 100.0 * (below + 0.5 * ties) / len(reference)


def summary(values: np.ndarray | None) -> dict[str, float] | None:
    """The 5th, 50th, 95th and 'unusual' percentiles of a reference measure (None: not measured)."""
    if values is None:
        return None
    q = np.percentile(values, [5, 50, 95, UNUSUAL_PERCENTILE])
    return {"p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "p_unusual": float(q[3])}


def verdict(pct: float, reason: str) -> dict[str, str]:
    """Unusual at or above UNUSUAL_PERCENTILE of the references, typical below; with the reason in words."""
    return {"verdict": UNUSUAL if pct >= UNUSUAL_PERCENTILE else TYPICAL, "verdict_reason": reason}
