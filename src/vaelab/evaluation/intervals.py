"""OOD detection metrics with bootstrap confidence intervals: AUROC, AUPRC and FPR at 95% TPR.

Every OOD table of vaelab's DoSE and typicality measurements reports each metric with three decimals
and a 95% percentile-bootstrap interval: `0.998 [0.995, 1.000]`. The conventions are vaelab.evaluation.ood's
(a score is higher for inputs judged more out-of-distribution; the OOD set is the positive class), and
by default both sets are first cut to the same size (`balanced_index`, as `vaelab evaluate --on` does), so
AUPRC's chance level is 0.5 for every dataset.

The bootstrap resamples the in-distribution and the OOD scores independently (each with replacement, at
its own size: a stratified bootstrap) `resamples` times from a seeded numpy Generator and takes the
(1 - confidence) / 2 and (1 + confidence) / 2 quantiles of each metric over the resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaelab.evaluation.ood import balanced_index, detection_values

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_TPR = 0.95
BOOTSTRAP_SEED = 2025


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class DetectionIntervals:
    """AUROC, AUPRC and FPR at `tpr` TPR of one score on one pair of sets, each with its interval."""

    auroc: Interval
    auprc: Interval
    fpr: Interval  # at `tpr` true-positive rate (95% by default)
    tpr: float
    n_in: int
    n_out: int
    resamples: int
    confidence: float
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {"auroc": self.auroc.as_dict(), "auprc": self.auprc.as_dict(),
                f"fpr_at_{round(self.tpr * 100):d}_tpr": self.fpr.as_dict(), "tpr": self.tpr,
                "n_in": self.n_in, "n_out": self.n_out, "bootstrap": {
                    "resamples": self.resamples, "confidence": self.confidence, "seed": self.seed,
                    "method": "percentile, in- and out-of-distribution scores resampled independently"}}


def _as_array(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().to("cpu", torch.float64).numpy()
    return np.asarray(scores, dtype=np.float64)


def detection_intervals(scores_in: np.ndarray | torch.Tensor, scores_out: np.ndarray | torch.Tensor, *,
                        tpr: float = DEFAULT_TPR, resamples: int = DEFAULT_RESAMPLES,
                        confidence: float = DEFAULT_CONFIDENCE, seed: int = BOOTSTRAP_SEED,
                        balanced: bool = True) -> DetectionIntervals:
    """The three metrics of OOD scores (higher = more OOD) with percentile-bootstrap intervals.

    `balanced`: first cut both sets to the smaller one's size (a seeded choice, `balanced_index`).
    Deterministic for a given seed. Raises ValueError on empty, non-1-D or non-finite scores."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    s_in, s_out = _as_array(scores_in), _as_array(scores_out)
    if balanced and s_in.ndim == 1 and s_out.ndim == 1:
        i_in, i_out = balanced_index(len(s_in), len(s_out), seed)
        s_in, s_out = s_in[i_in], s_out[i_out]
    point = detection_values(s_in, s_out, tpr)  # validates the scores
    # scikit-learn has no bootstrap interval, and scipy.stats.bootstrap (scipy comes with scikit-learn, but is
    # no declared dependency) changed its seeding argument across versions: the percentile bootstrap is a
    # few lines of numpy, resampling each set with replacement from one seeded Generator
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, 3))
    for b in range(resamples):
        draws[b] = detection_values(s_in[rng.integers(0, len(s_in), len(s_in))],
                                    s_out[rng.integers(0, len(s_out), len(s_out))], tpr)
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    auroc, auprc, fpr = (Interval(float(point[i]), float(lo[i]), float(hi[i])) for i in range(3))
    return DetectionIntervals(auroc=auroc, auprc=auprc, fpr=fpr, tpr=tpr, n_in=len(s_in), n_out=len(s_out),
                              resamples=resamples, confidence=confidence, seed=seed)


def format_intervals_table(rows: dict[str, dict[str, DetectionIntervals]], title: str = "",
                           published: dict[tuple[str, str], float] | None = None) -> str:
    """A text table: one line per (dataset, score) with AUROC, AUPRC and FPR at 95% TPR, each
    `value [low, high]`; `published` AUROCs keyed by (dataset, score) are shown beside ours."""
    if not rows:
        return title
    tpr = next(iter(next(iter(rows.values())).values())).tpr
    fpr_head = f"FPR@{round(tpr * 100)}"
    dw = max([12] + [len(name) + 2 for name in rows])  # each column as wide as its longest cell
    sw = max([24] + [len(score) + 2 for scores in rows.values() for score in scores])
    head = f"{'dataset':<{dw}}{'score':<{sw}}{'AUROC':<22}{'AUPRC':<22}{fpr_head:<22}{'n':>6}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for dataset, scores in rows.items():
        name = dataset
        for score, m in scores.items():
            extra = ""
            if published and (dataset, score) in published:
                extra = f"  (published AUROC {published[(dataset, score)]:.3f})"
            lines.append(f"{name:<{dw}}{score:<{sw}}{str(m.auroc):<22}{str(m.auprc):<22}{str(m.fpr):<22}"
                         f"{m.n_in:>6}{extra}")
            name = ""
    return "\n".join(lines)


__all__ = ["DetectionIntervals", "Interval", "detection_intervals", "format_intervals_table"]
