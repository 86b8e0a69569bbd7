"""Out-of-distribution (OOD) detection: scores and the metrics that rank them.

Conventions, used everywhere in vaelab: an OOD **score** is higher for inputs
judged **more** out-of-distribution (e.g. the negative log-likelihood, in
nats per image), and the OOD set is the **positive** class of every metric.

    AUROC      = P(score_out > score_in) + 0.5 P(score_out = score_in)
    AUPRC      = average precision, OOD positive (as sklearn computes it)
    FPR@80%TPR = the fraction of in-distribution inputs flagged at the strictest
                 threshold that still flags 80% of the OOD inputs (`detection_values` gives
                 it at any TPR, e.g. 95%, with the other two from one sort, for bootstraps:
                 vaelab.evaluation.intervals)

Metrics take 1-D numpy arrays or torch tensors and are computed in float64
numpy; the in-distribution and OOD sets should be of equal size when numbers
are compared across datasets (`balanced_index`), since AUPRC depends on the
class ratio.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

# AUROC anchors for Fashion-MNIST (in-distribution) vs MNIST (OOD), models trained on Fashion-MNIST.
# - hvae_log_px, hvae_llr_gt1: Havtorn, Frellsen, Hauberg & Maaloe 2021, "Hierarchical VAEs know what
#   they don't know", ICML 2021, results table for FashionMNIST -> MNIST: the HVAE's own likelihood
#   log p(x) (below chance: MNIST digits get *higher* likelihood) and its likelihood-ratio score
#   LLR^{>1} (the ELBO against a bound that takes the lowest latent layer from its prior).
# - ren2019_likelihood_ratio: Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan
#   2019, "Likelihood ratios for out-of-distribution detection", NeurIPS 2019 (PixelCNN++ against a
#   background model trained on perturbed inputs).
PUBLISHED_AUROC: dict[str, float] = {
    "hvae_log_px": 0.268,
    "hvae_llr_gt1": 0.984,
    "ren2019_likelihood_ratio": 0.994,
}

# The same pair, single-model methods with two decimals as issue 18's table gives them: DoSE (Morningstar,
# Ham, Gallagher, Lakshminarayanan, Alemi & Dillon 2021, AISTATS) and Likelihood Regret (Xiao, Yan & Amit
# 2020, NeurIPS).
PUBLISHED_AUROC_2DP: dict[str, float] = {
    "DoSE (Morningstar et al. 2021)": 1.00,
    "Likelihood Regret (Xiao et al. 2020)": 0.99,
}


@dataclass(frozen=True)
class DetectionMetrics:
    """How well a score separates OOD inputs (positive) from in-distribution ones (negative)."""

    auroc: float
    auprc: float
    fpr_at_80_tpr: float
    n_in: int
    n_out: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- metrics


def _as_scores(scores: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float64 copy of `scores`; ValueError otherwise."""
    if isinstance(scores, torch.Tensor):
        arr = scores.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per image), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: score at least one image of each set")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite score(s) (NaN or inf); drop or clip them "
                         f"before computing detection metrics")
    return arr


def _cumulative_counts(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, true positives) flagged by `score >= t` at each distinct score t, t decreasing.

    The last entry flags everything: (n_in, n_out).
    """
    scores = np.concatenate([s_out, s_in])
    positive = np.concatenate([np.ones(len(s_out), np.int64), np.zeros(len(s_in), np.int64)])
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(positive)[last_of_tie]
    fps = last_of_tie + 1 - tps
    return fps, tps


def _auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Mann-Whitney U / (n_in n_out) with average ranks, so a tie counts one half (Hanley & McNeil 1982)."""
    values, inverse, counts = np.unique(np.concatenate([s_out, s_in]), return_inverse=True, return_counts=True)
    # the rank shared by a tied group: the mean of the 1-based ranks it spans
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    n_out, n_in = len(s_out), len(s_in)
    rank_sum_out = float(avg_rank[inverse[:n_out]].sum())
    u = rank_sum_out - n_out * (n_out + 1) / 2.0
    return u / (n_out * n_in)


def detection_metrics(scores_in: np.ndarray | torch.Tensor, scores_out: np.ndarray | torch.Tensor) -> DetectionMetrics:
    """AUROC, AUPRC and FPR at 80% TPR of OOD scores (higher = more OOD; OOD is the positive class).

    - AUROC: the Mann-Whitney U statistic over n_in * n_out, ties counted as
      one half; 0.5 is chance, below 0.5 the score ranks the wrong way round
      (as the likelihood does for Fashion-MNIST vs MNIST, Nalisnick et al. 2019).
    - AUPRC: average precision sum_k (R_k - R_{k-1}) P_k over the distinct
      thresholds, a step function without interpolation, exactly as
      `sklearn.metrics.average_precision_score` computes it.
    - FPR@80%TPR: the smallest false-positive rate over the thresholds whose
      true-positive rate is at least 0.8 (every threshold, as
      `sklearn.metrics.roc_curve(..., drop_intermediate=False)` lists them).

    Raises ValueError on empty or non-1-D inputs and on NaN or infinite
    scores: whether those mean "maximally OOD" or "failed" is the caller's call.
    """
    s_in, s_out = _as_scores(scores_in, "scores_in"), _as_scores(scores_out, "scores_out")
    n_in, n_out = len(s_in), len(s_out)
    fps, tps = _cumulative_counts(s_in, s_out)
    recall = tps / n_out
    precision = tps / (tps + fps)
    auprc = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    # tpr >= 0.8 in exact integer arithmetic; tpr and fpr both grow with the index, so the first is the minimum
    first = int(np.argmax(5 * tps >= 4 * n_out))
    return DetectionMetrics(
        auroc=_auroc(s_in, s_out),
        auprc=auprc,
        fpr_at_80_tpr=float(fps[first] / n_in),
        n_in=n_in,
        n_out=n_out,
    )


def roc_points(scores_in: np.ndarray | torch.Tensor,
               scores_out: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve for plotting: one point per distinct score, from (0, 0) to (1, 1).

    The trapezoidal area under these points equals `detection_metrics(...).auroc`.
    """
    s_in, s_out = _as_scores(scores_in, "scores_in"), _as_scores(scores_out, "scores_out")
    fps, tps = _cumulative_counts(s_in, s_out)
    fpr = np.concatenate([[0.0], fps / len(s_in)])
    tpr = np.concatenate([[0.0], tps / len(s_out)])
    return fpr, tpr


def detection_values(scores_in: np.ndarray | torch.Tensor, scores_out: np.ndarray | torch.Tensor,
                     tpr: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, AUPRC, FPR at `tpr` TPR) from one sort of the scores, for bootstrap loops.

    The same numbers as `detection_metrics` and scikit-learn: the AUROC as the trapezoidal area under the
    ROC points (`sklearn.metrics.roc_auc_score`'s way; equal to the Mann-Whitney statistic up to float
    rounding), the AUPRC as average precision, and the smallest FPR over the thresholds whose TPR is at
    least `tpr` (compared in exact rational arithmetic, so 95% of 20 images is 19)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    s_in, s_out = _as_scores(scores_in, "scores_in"), _as_scores(scores_out, "scores_out")
    n_in, n_out = len(s_in), len(s_out)
    fps, tps = _cumulative_counts(s_in, s_out)
    fpr = np.concatenate([[0.0], fps / n_in])
    recall = np.concatenate([[0.0], tps / n_out])
    auroc = float(np.sum(np.diff(fpr) * (recall[1:] + recall[:-1]) / 2.0))
    auprc = float(np.sum(np.diff(recall) * (tps / (tps + fps))))
    target = Fraction(tpr).limit_denominator(1_000_000)
    first = int(np.argmax(tps * target.denominator >= target.numerator * n_out))
    return auroc, auprc, float(fps[first] / n_in)


def balanced_index(n_in: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the in-distribution and the OOD set, min(n_in, n_out) of each, sorted.

    Drawn at random without replacement with numpy Generators seeded from
    `seed` (one independent stream per set), so the test split and each other
    dataset are compared at equal sizes and AUPRC means the same for all of
    them (its chance level is the fraction of positives, here 0.5). A set no
    larger than the other is kept whole.
    """
    if n_in < 0 or n_out < 0:
        raise ValueError(f"balanced_index wants set sizes >= 0, got n_in={n_in}, n_out={n_out}")
    m = min(n_in, n_out)
    stream_in, stream_out = np.random.SeedSequence(seed).spawn(2)
    idx_in = np.sort(np.random.default_rng(stream_in).choice(n_in, size=m, replace=False))
    idx_out = np.sort(np.random.default_rng(stream_out).choice(n_out, size=m, replace=False))
    return idx_in.astype(np.int64), idx_out.astype(np.int64)


# --------------------------------------------------------------------------- input complexity


def png_code_length_bits(images: torch.Tensor, binary: bool = False) -> np.ndarray:
    """Size in bits of each uint8 image (N, C, H, W), C in (1, 3), saved as a PNG file by Pillow.

    The input-complexity term L(x) of Serra et al. 2020 ("Input complexity and
    out-of-distribution detection with likelihood-based generative models",
    ICLR 2020), with PNG as the lossless compressor: compress_level=9,
    optimize=False, no metadata chunks. The count is the whole file, so it
    includes a fixed ~57 bytes of PNG framing (signature, IHDR, IDAT and IEND
    chunk headers), the same for all images of one shape and mode.

    Pass the images exactly as the model scored them (binarized, if the
    evaluation binarizes). With `binary=True` (grey images holding only 0 and
    255) each image is stored as a 1-bit PNG (mode "1"): an 8-bit file would
    charge 8 bits for every binary pixel, and that inflated code length would
    swamp the likelihood in Serra et al.'s difference. The layout is converted for all images at once;
    the compression itself is one Pillow call per image (~0.2 ms for 28x28).
    Returns int64 (N,).
    """
    from PIL import Image

    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"png_code_length_bits wants uint8 (N, C, H, W) images with C = 1 or 3, "
                         f"got {arr.dtype} {tuple(arr.shape)}")
    # (N, H, W) for grey, (N, H, W, 3) for RGB: the layouts Pillow reads as modes L and RGB
    arr = np.ascontiguousarray(arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1))
    if binary:
        if arr.ndim != 3 or not np.isin(arr, (0, 255)).all():
            raise ValueError("png_code_length_bits(binary=True) wants grey images holding only 0 and 255")
        arr = arr > 127  # mode "1"
    out = np.empty(len(arr), dtype=np.int64)
    buf = io.BytesIO()
    for i, img in enumerate(arr):
        buf.seek(0)
        buf.truncate()
        Image.fromarray(img).save(buf, format="PNG", compress_level=9, optimize=False)
        out[i] = buf.tell()
    return out * 8


def complexity_corrected_score(nll_nats: np.ndarray | torch.Tensor,
                               complexity_bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """S(x) = -log2 p(x) - L(x), in bits per image; higher = more OOD (Serra et al. 2020).

    Why it corrects the likelihood: -log p(x) mixes two things, how typical x
    is of the training data and how *simple* x is. Simple inputs (flat
    backgrounds, few strokes, constant images) are cheap to encode under any
    reasonable model, so a generative model trained on Fashion-MNIST gives
    MNIST digits a higher likelihood than its own test images (Nalisnick et
    al. 2019). A general-purpose lossless compressor measures exactly that
    simplicity: its code length L(x) = -log2 p_0(x) is the negative
    log-likelihood under a "universal" model p_0 that knows nothing of the
    training set. The difference S(x) = log2 (p_0(x) / p(x)) is a likelihood
    ratio (cf. Ren et al. 2019) in which the simplicity both models see
    cancels, leaving how much *less* probable x is under the trained model
    than under a model of images in general: small or negative for
    in-distribution inputs, large for OOD inputs of any complexity.

    `nll_nats`: -log p(x) per image in nats (e.g. an importance-weighted
    estimate); `complexity_bits`: L(x) per image, e.g. `png_code_length_bits`.
    Returns float64 (N,).
    """
    nll = nll_nats.detach().to("cpu", torch.float64).numpy() if isinstance(nll_nats, torch.Tensor) \
        else np.asarray(nll_nats, dtype=np.float64)
    bits = complexity_bits.detach().to("cpu", torch.float64).numpy() if isinstance(complexity_bits, torch.Tensor) \
        else np.asarray(complexity_bits, dtype=np.float64)
    if nll.shape != bits.shape:
        raise ValueError(f"nll_nats {tuple(nll.shape)} and complexity_bits {tuple(bits.shape)} must have one "
                         f"value per image each")
    return nll / math.log(2.0) - bits
