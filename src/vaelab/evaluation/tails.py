"""Upper-tail p-values of scores among reference scores, and Tippett's union of several such tests.

A score (higher = more atypical) becomes a test by its p-value among the scores of held-out in-distribution
images (the reference): `tail_log_p` gives its log, continued past the largest reference score by an
exponential tail so that scores beyond every reference stay ordered instead of tying at 1/(n + 1).
`held_out_tail_log_p` gives each reference score's p-value among the *other* reference scores, what a new
in-distribution image gets, so that thresholds taken on the reference are fair. `combined_score` is
Tippett's combination (the smallest p-value). DoSE joined with the orientation test
(vaelab.evaluation.oodrun) and the DoSE batch test's union of two poolings (vaelab.evaluation.typicality)
are built from these.

Written here rather than taken from scipy: scipy.stats.combine_pvalues has Tippett's rule but no
empirical p-value among reference scores with a continued tail, which is what keeps far scores ordered.
"""

from __future__ import annotations

import numpy as np

TAIL_FRACTION = 0.05  # the top share of reference scores whose mean excess sets the exponential tail's scale


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


__all__ = ["TAIL_FRACTION", "combined_score", "held_out_tail_log_p", "tail_log_p"]
