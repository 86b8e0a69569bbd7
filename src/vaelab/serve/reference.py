"""What an uploaded image is measured against, and the verdict.

At start-up the explorer scores `reference_images` training, validation and test images (picked at random,
reproducibly), and loads the run's DoSE scorer (`vaelab.evaluation.oodrun`: fitted on validation images on
first use and kept in RUN/ood/). An upload is then placed among them:

- its NLL (importance-sampled, k samples; nats per image) against the NLLs of training images;
- its OOD score S(x) = NLL / ln 2 - PNG code length (Serra et al. 2020, `vaelab.evaluation.ood`; bits per image,
  higher = more out-of-distribution) against the scores of test images, which also gives the verdict:
  the plain likelihood rates simple images (flat, few strokes) as likely whatever the training data,
  the complexity-corrected score does not;
- its reconstruction error (mean squared, pixels in [0, 1]) against training images: the only yardstick
  of a model without a likelihood (an autoencoder);
- its DoSE score (vaelab's default OOD score: Morningstar et al. 2021's density of its statistics joined
  with the orientation test, `vaelab.evaluation.oodrun.RunDose.score`) against the same score of the
  validation images, each computed from p-values that left the image out;
- each of those numbers against validation images: what judges it.

The verdict is the worst of them: each number flags the image at or above the 99.5th percentile
(UNUSUAL_PERCENTILE, fixed in advance, never tuned on OOD data) of the validation images (held out of
training, as an upload is; training images would flag in-distribution uploads for the generalization gap
alone), and the image is "unusual" when any of its numbers flags it, so it is never called typical while
one of the numbers it is shown stands at that percentile or above. The page shows those validation
percentiles; the answer keeps the training and test ones under their old keys, for information. Without a
validation split the training and test references judge, and without a DoSE score (too few validation
images) the other numbers do; the answer says so.

Images are scored as the evaluation protocol scores them: the training and test references are the
fixed evaluation views of their splits (`vaelab.data.eval_view`), binarized if the run binarizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data import ImageSet, eval_view, spread_index, to_float
from vaelab.evaluation.imagecheck import user_image_statistics
from vaelab.evaluation.likelihood import NLL_SEED, importance_sampled
from vaelab.evaluation.ood import complexity_corrected_score, png_code_length_bits
from vaelab.evaluation.oodrun import RunDose
from vaelab.evaluation.statistics import compute_statistics
from vaelab.evaluation.typicality import percentiles_among
from vaelab.models import eval_mode
from vaelab.models.base import Model

# A number flags an upload at or above this percentile of in-distribution (validation) images. Fixed in
# advance from the number of checks, never tuned on OOD data: 4 numbers (DoSE, OOD score, NLL,
# reconstruction error) at 0.5% each keep the verdict's false alarms on in-distribution images near 2%
# (at 1% each, a tenth of the test images were called unusual).
UNUSUAL_PERCENTILE = 99.5
VAL_REFERENCE = 1000  # validation images the numbers are judged against (at most; enough to resolve 99.5)
TYPICAL = "typical of the training data"
UNUSUAL = "unusual"


@dataclass(frozen=True)
class Measures:
    """Per-image numbers of a set of images, float64 (N,); the likelihood ones None without a likelihood."""

    recon_error: np.ndarray  # mean squared error of the reconstruction, pixels in [0, 1]
    nll: np.ndarray | None = None  # -L_k, nats per image
    png_bits: np.ndarray | None = None  # L(x): PNG code length of the scored image, bits
    ood: np.ndarray | None = None  # S(x) = nll / ln 2 - png_bits, bits per image
    dose: np.ndarray | None = None  # DoSE score (density and orientation test; None: no scorer)


@dataclass(frozen=True)
class Reference:
    """What uploads are compared with: training images (NLL, reconstruction error), test images (OOD score),
    validation images (every number) and the held-out DoSE scores of the validation images (RunDose.reference)."""

    train: Measures
    test: Measures
    seconds: float
    val: Measures | None = None
    dose: np.ndarray | None = None  # held-out DoSE scores of the validation images the scorer was fitted on


@dataclass(frozen=True)
class Scoring:
    """How a run scores images: its model and device, whether it has a likelihood, k, binarized pixels."""

    model: Model
    device: torch.device | str
    likelihood: bool
    k: int
    binary: bool
    dose: RunDose | None = None  # the run's DoSE scorer
    stats_kwargs: dict[str, Any] = field(default_factory=dict)  # the statistics protocol it was fitted with

    def measure(self, images: torch.Tensor, scored: torch.Tensor, dose: bool = True,
                seeds: Sequence[int] | None = None) -> tuple[Measures, torch.Tensor, torch.Tensor]:
        """Reconstruction error of uint8 images (N, C, H, W), and the likelihood numbers of `scored` (the
        same images as the evaluation scores them: binarized if the run binarizes), with their DoSE scores
        when `dose` and the run has a scorer; also their codes and reconstructions. Not thread-safe: the
        caller holds the model's lock."""
        x = to_float(images, self.device)
        with eval_mode(self.model):
            codes = self.model.code(x)
            recon = self.model.decode_mean(codes)
        recon_error = ((recon - x) ** 2).flatten(1).mean(1).double().cpu().numpy()
        if not self.likelihood:
            return Measures(recon_error), codes, recon
        if seeds is None:
            est = importance_sampled(self.model, scored, k=self.k, batch_size=64, seed=NLL_SEED, device=self.device)
            nll = (-est.log_px).numpy()
        else:  # a user's images: each alone, its draws moved by its own seed (as its DoSE statistics' are)
            est = [importance_sampled(self.model, scored[i:i + 1], k=self.k, batch_size=64, seed=NLL_SEED + s,
                                      device=self.device) for i, s in enumerate(seeds)]
            nll = np.concatenate([(-e.log_px).numpy() for e in est])
        bits = png_code_length_bits(scored, binary=self.binary and scored.shape[1] == 1).astype(np.float64)
        doses = self._dose(scored, est, seeds) if dose else None
        return Measures(recon_error, nll, bits, complexity_corrected_score(nll, bits), doses), codes, recon

    def _dose(self, scored: torch.Tensor, est: Any, seeds: Sequence[int] | None) -> np.ndarray | None:
        """DoSE scores of the images, their statistics computed with the scorer's protocol (the importance-
        sampled pass above, `est`, is reused when it is the protocol's). `seeds`: a user's images, one at a
        time, each with its own seed added to the protocol's (vaelab.evaluation.imagecheck.image_seed, as
        `vaelab check` measures them); `est` is then one estimate per image."""
        if self.dose is None:
            return None
        kw = self.stats_kwargs
        same = kw["k"] == self.k and kw["seed"] == NLL_SEED and kw["batch_size"] == 64
        if seeds is not None:
            return np.concatenate([self.dose.score(user_image_statistics(
                self.model, scored[i:i + 1], s, kw, device=self.device, split="upload",
                estimate=est[i] if same else None)) for i, s in enumerate(seeds)])
        stats = compute_statistics(self.model, scored, split="upload", device=self.device,
                                   estimate=est if same else None, **kw)
        return self.dose.score(stats)


def reference_images(split: ImageSet, name: str, n: int, seed: int,
                     data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a split picked at random (reproducibly), uint8: as they are, and as the evaluation scores them."""
    index = spread_index(len(split), n, seed)
    return split.images[index], eval_view(split, name, data.binarize, data.binarize_seed).images[index]


def percentile(value: float, reference: np.ndarray) -> float:
    """Where `value` falls among `reference`, in percent: the share below it, ties counted one half (as
    `vaelab check` ranks an image: vaelab.evaluation.typicality.percentiles_among)."""
    return float(percentiles_among(np.sort(np.asarray(reference)), value))


def summary(values: np.ndarray | None) -> dict[str, float] | None:
    """The 5th, 50th, 95th and 'unusual' percentiles of a reference measure (None: not measured)."""
    if values is None:
        return None
    q = np.percentile(values, [5, 50, 95, UNUSUAL_PERCENTILE])
    return {"p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "p_unusual": float(q[3])}


def check(measure: str, value: float, reference: np.ndarray | None, against: str) -> dict[str, Any] | None:
    """One number of an upload against one set of in-distribution images: its percentile and whether it
    flags the image (at or above UNUSUAL_PERCENTILE). None without that reference."""
    if reference is None or not len(reference):
        return None
    pct = percentile(value, reference)
    return {"measure": measure, "value": value, "percentile": pct, "against": against, "n": len(reference),
            "flagged": pct >= UNUSUAL_PERCENTILE}


def worst_verdict(checks: list[dict[str, Any] | None], note: str = "") -> dict[str, Any]:
    """The verdict of every check together: unusual when any of them flags the image (the reason names the
    highest percentile first, the earlier check on a tie, then the others that flag it), typical otherwise."""
    done = [c for c in checks if c is not None]
    flagged = sorted((c for c in done if c["flagged"]), key=lambda c: -c["percentile"])
    def words(c: dict[str, Any]) -> str:
        return f"its {c['measure']} is higher than that of {c['percentile']:.1f}% of the {c['n']} {c['against']}"

    if flagged:
        reason = words(flagged[0]) + ("; also " + "; ".join(words(c) for c in flagged[1:]) if flagged[1:] else "")
        out = {"verdict": UNUSUAL, "verdict_reason": reason}
    else:
        top = max(done, key=lambda c: c["percentile"]) if done else None
        reason = (f"none of its {len(done)} numbers reaches the {UNUSUAL_PERCENTILE:g}th percentile of "
                  f"in-distribution images (highest: {top['measure']} at the {top['percentile']:.1f}th percentile "
                  f"of the {top['against']})") if top else "nothing to compare it with"
        out = {"verdict": TYPICAL, "verdict_reason": reason}
    if note:
        out["verdict_reason"] += f" ({note})"
    return out | {"checks": done}
