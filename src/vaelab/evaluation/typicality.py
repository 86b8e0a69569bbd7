"""The typicality test for batches of images (Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019,
"Detecting out-of-distribution inputs to deep generative models using typicality").

"Is this *set* of M images from my training distribution?" For a batch x_1..x_M the statistic is

    eps(x_1..x_M) = | (1/M) sum_m -log p(x_m)  -  H |

with H the mean negative log-likelihood of in-distribution images (an estimate of the entropy): a
typical set of images has an average NLL close to H, whether the batch is too likely (MNIST under a
Fashion-MNIST VAE) or too unlikely. The batch is flagged out-of-distribution when eps exceeds the
threshold eps_M: the (1 - alpha) quantile of eps over `bootstrap` batches of M images drawn with
replacement from in-distribution images (the test's false-positive rate is then about alpha).

Everything is estimated from the validation split alone, split (seeded) in two halves so the batches
that set the threshold are not the images that gave H: `fit_typicality` takes only validation
statistics. Batches to be judged are cut from a set of images as disjoint, seeded batches of M
(`batch_statistic`), so the AUROC over batches counts independent batches.

The same question asked of a per-image OOD score (`ScoreBatchTest`, vaelab's DoSE batch test): each
image's score is placed among in-distribution reference scores, and the batch is judged by two poolings
of the M images at once:

    evidence    the mean of -log p, p = (1 + #reference scores at or above it) / (n + 1) its empirical tail
                p-value (`tail_evidence`): Fisher's way of pooling p-values. It counts an image far out fully.
    percentile  the mean percentile among the reference scores (`percentiles_among`): a rank test (Mann and
                Whitney's). It counts every image a little unusual, and no image more than one at the top.

Each pooling's p-value is taken among the same pooling of `bootstrap` batches of M reference scores drawn
with replacement (the same draws for both, each reference score's evidence taken among the others), and
the statistic is -log of the smaller of the two p-values (Tippett's union). Its threshold is the
(1 - alpha) quantile of the same statistic over those null draws, so the union, not each pooling, is
calibrated at level alpha. One-sided, since a high score means atypical in either direction already. The
reference must be scores of validation images that the scorer did not fit on (`RunDose.reference`: each
by a density fitted without it), or the threshold would be too low. The likelihood alone misses OOD
images whose likelihood is typical (a garment with a square cut out); a score built for single images,
pooled over a batch, does not.

Why two poolings: neither wins everywhere (BENCHMARKS.md, "three ways to pool a set"). Evidence catches
a set of a few very odd images among near-typical ones (half-mirrored garments); percentiles a set whose
images are each a little unusual (dimmed garments, squeezed digits). Both are bounded, so one huge
held-out score cannot blind the test, as it blinded vaelab's first version, the mean score: one
validation score of 6e7 among 100 put that threshold near it, and 12 noise images passed as a set
(p = 0.11).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from vaelab.errors import ConfigError
from vaelab.evaluation.intervals import detection_intervals
from vaelab.evaluation.tails import tail_log_p
from vaelab.evaluation.statistics import VALIDATION, ImageStatistics

BATCH_SIZES = (1, 5, 10, 25)
ALPHA = 0.01  # Nalisnick et al.: the 99% quantile of the bootstrapped statistic
BOOTSTRAP = 5000
TYPICALITY_SEED = 2025


@dataclass(frozen=True)
class TypicalityTest:
    """A fitted typicality test for batches of `m` images (see the module docstring)."""

    m: int
    entropy: float  # H: mean NLL (of `column`) of the validation images set aside for it
    threshold: float  # eps_M
    alpha: float
    column: str  # the statistic whose negative is the NLL (log_px; another column works the same way)
    bootstrap: int
    n_entropy: int
    n_bootstrap: int
    seed: int

    def statistic(self, values: np.ndarray) -> np.ndarray:
        """eps of each batch of `values` (B, M) of the column (log p(x): the NLL's sign does not matter)."""
        values = np.asarray(values, dtype=np.float64)
        return np.abs(-values.mean(axis=1) - self.entropy)

    def batch_statistic(self, stats: ImageStatistics, seed: int | None = None) -> np.ndarray:
        """eps of the len(stats) // m disjoint batches of a seeded shuffle of `stats`' images (B,)."""
        index = disjoint_batches(len(stats), self.m, self.seed + 1 if seed is None else seed)
        return self.statistic(stats.matrix([self.column])[:, 0][index])

    def flags(self, stats: ImageStatistics, seed: int | None = None) -> np.ndarray:
        """Whether each disjoint batch of M images is flagged out-of-distribution (eps > eps_M)."""
        return self.batch_statistic(stats, seed) > self.threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def false_alarm_interval(flagged: int, batches: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a false-alarm rate seen as `flagged` of `batches` independent
    batches: how little a rate over few batches says (2 of 200 is 1.0%, with an interval of 0.1% to 3.6%)."""
    from scipy.stats import binomtest  # scipy comes with scikit-learn

    ci = binomtest(int(flagged), int(batches)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def disjoint_batches(n: int, m: int, seed: int) -> np.ndarray:
    """(n // m, m) indices: a seeded permutation of range(n) cut into batches of m (the rest left out)."""
    if m < 1:
        raise ConfigError(f"the batch size M must be >= 1, got {m}")
    b = n // m
    if b < 1:
        raise ConfigError(f"a batch of {m} images needs at least {m} images, got {n}")
    return np.random.default_rng(seed).permutation(n)[:b * m].reshape(b, m)


def fit_typicality(validation: ImageStatistics, /, m: int, *, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
                   seed: int = TYPICALITY_SEED, column: str = "log_px") -> TypicalityTest:
    """The test for batches of `m` images, from validation statistics only: H from one seeded half of
    the images, eps_M from `bootstrap` batches of m drawn with replacement from the other half."""
    if not isinstance(validation, ImageStatistics) or validation.split != VALIDATION:
        raise ConfigError("the typicality test is fitted on statistics of the validation split only, got "
                          f"{getattr(validation, 'split', type(validation).__name__)!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    if m < 1 or bootstrap < 1:
        raise ConfigError(f"the batch size M and the bootstrap batches must be >= 1, got {m} and {bootstrap}")
    needed = max(20, 2 * m)
    if len(validation) < needed:
        raise ConfigError(f"the typicality test for batches of {m} needs at least {needed} validation images, "
                          f"got {len(validation)}")
    values = validation.matrix([column])[:, 0]
    if not np.isfinite(values).all():
        raise ValueError(f"the validation statistics hold non-finite values of {column}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(values))
    half = len(values) // 2
    entropy_part, boot_part = values[perm[:half]], values[perm[half:]]
    entropy = float(-entropy_part.mean())
    draws = boot_part[rng.integers(0, len(boot_part), (bootstrap, m))]
    eps = np.abs(-draws.mean(axis=1) - entropy)
    return TypicalityTest(m=m, entropy=entropy, threshold=float(np.quantile(eps, 1 - alpha)), alpha=alpha,
                          column=column, bootstrap=bootstrap, n_entropy=len(entropy_part),
                          n_bootstrap=len(boot_part), seed=seed)


def _batch_rows(sizes: Sequence[int], fit: Any, stat_in: Any, stat_out: dict[str, Any], *, seed: int,
                resamples: int, enough: Any) -> tuple[dict[str, Any], list[int]]:
    """For each M with enough images (`enough(m)`): the fitted test `fit(m)`, the fraction of the test split's
    disjoint batches it flags with its exact interval, and each other set's flagged fraction and AUROC, AUPRC
    and FPR at 95% TPR over batches (test batches negative). `stat_in(t)` / `stat_out[name](t)`: the batch
    statistic of each set under the test t (None for a set with fewer than M images)."""
    rows: dict[str, Any] = {}
    skipped = []
    for m in sizes:
        if not enough(m):
            skipped.append(m)
            continue
        t = fit(m)
        eps_in = stat_in(t)
        flagged = int((eps_in > t.threshold).sum())
        row: dict[str, Any] = {"test": t.as_dict(), "batches_in": len(eps_in), "fpr_in": flagged / len(eps_in),
                               "fpr_in_ci95": false_alarm_interval(flagged, len(eps_in)), "sets": {}}
        for name, stat in stat_out.items():
            eps_out = stat(t)
            if eps_out is None:
                continue
            metrics = detection_intervals(eps_in, eps_out, resamples=resamples, seed=seed).as_dict()
            metrics.pop("bootstrap")
            row["sets"][name] = {**metrics, "batches": len(eps_out), "flagged": float((eps_out > t.threshold).mean())}
        rows[str(m)] = row
    return rows, skipped


def typicality_table(validation: ImageStatistics, test: ImageStatistics, others: dict[str, ImageStatistics], *,
                     sizes: Sequence[int] = BATCH_SIZES, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
                     seed: int = TYPICALITY_SEED, column: str = "log_px", resamples: int = 1000) -> dict[str, Any]:
    """The typicality test's record (JSON-ready; `vaelab evaluate --on` keeps it as "typicality" and
    vaelab.evaluation.oodformat prints it). For each batch size M the images allow (else listed in
    "skipped_sizes"): the test fitted on `validation`, the fraction of disjoint test batches it flags (its
    false-positive rate, near alpha when the test set is in-distribution) with its exact 95% interval, and for
    each other set the fraction of its batches flagged and the AUROC, AUPRC and FPR at 95% TPR of eps over
    batches (test batches negative), with bootstrap intervals."""
    def out(stats: ImageStatistics) -> Any:
        return lambda t: t.batch_statistic(stats) if len(stats) >= t.m else None

    rows, skipped = _batch_rows(
        sizes, lambda m: fit_typicality(validation, m, alpha=alpha, bootstrap=bootstrap, seed=seed, column=column),
        lambda t: t.batch_statistic(test), {name: out(stats) for name, stats in others.items()}, seed=seed,
        resamples=resamples, enough=lambda m: len(validation) >= max(20, 2 * m) and len(test) >= m)
    return {"rows": rows, "skipped_sizes": skipped, "column": column,
            "fit": "H and the threshold from validation images only (two halves)"}


def percentiles_among(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each score's percentile (0-100) among `reference` (sorted ascending): the share of reference scores
    below it, ties counted one half. Any shape."""
    below = np.searchsorted(reference, scores, side="left")
    ties = np.searchsorted(reference, scores, side="right") - below
    return 100.0 * (below + 0.5 * ties) / len(reference)


def tail_evidence(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """-log of each score's empirical tail p-value among `reference` (sorted ascending): p = (1 + the number
    of reference scores at or above it) / (n + 1), so the evidence lies in [0, log(n + 1)]. Any shape."""
    at_or_above = len(reference) - np.searchsorted(reference, scores, side="left")
    return -np.log((1.0 + at_or_above) / (len(reference) + 1.0))


def reference_evidence(reference: np.ndarray) -> np.ndarray:
    """`tail_evidence` of each reference score (sorted ascending) among the others: p = (1 + the number of
    other reference scores at or above it) / n, the same law as a new in-distribution image's."""
    others_at_or_above = len(reference) - np.searchsorted(reference, reference, side="left") - 1
    return -np.log((1.0 + others_at_or_above) / len(reference))


STATISTIC = ("-log of the smaller of two p-values, each among bootstrapped reference batches: the mean tail "
             "evidence -log p (Fisher) and the mean percentile (rank) of the images among the reference scores")
MIN_REFERENCE = 20  # reference scores a batch test needs, whatever M (the batches are drawn with replacement)


def union_statistic(null_evidence: np.ndarray, null_percentile: np.ndarray, evidence: np.ndarray,
                    percentile: np.ndarray) -> np.ndarray:
    """-log of the smaller of the two poolings' upper-tail p-values, each among its (sorted) null means; past
    the largest null mean, the exponential tail of `tails.tail_log_p` keeps batches in order."""
    return np.maximum(-tail_log_p(null_evidence, evidence), -tail_log_p(null_percentile, percentile))


@dataclass(frozen=True)
class BatchNull:
    """The null law of a batch of m in-distribution scores: the sorted reference scores, each pooling's means
    over the same bootstrapped batches of m of them, and the union statistic of each of those batches (all
    sorted; a test's threshold is a quantile of `union`)."""

    m: int
    reference: np.ndarray  # sorted
    evidence: np.ndarray  # sorted bootstrapped mean evidence
    percentile: np.ndarray  # sorted bootstrapped mean percentile, from the same draws
    union: np.ndarray  # sorted: the union statistic of each of those draws

    def poolings(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean evidence, mean percentile) of each batch of scores (B, M), over its last axis."""
        scores = np.asarray(scores, dtype=np.float64)
        return (tail_evidence(self.reference, scores).mean(axis=-1),
                percentiles_among(self.reference, scores).mean(axis=-1))

    def union_of(self, evidence: np.ndarray, percentile: np.ndarray) -> np.ndarray:
        """The union statistic of batches with these pooled values (`union_statistic` among this null's means)."""
        return union_statistic(self.evidence, self.percentile, evidence, percentile)

    def threshold(self, alpha: float) -> float:
        """The (1 - alpha) quantile of the union statistic over the null draws: a batch above it is flagged."""
        return float(np.quantile(self.union, 1 - alpha))

    def p_value(self, statistic: float) -> float:
        """The share of null draws whose union statistic is at or above `statistic`, (count + 1) / (draws + 1)."""
        at_or_above = len(self.union) - np.searchsorted(self.union, statistic, side="left")
        return float((at_or_above + 1) / (len(self.union) + 1))


@dataclass(frozen=True)
class ScoreBatchTest:
    """A one-sided test for batches of `m` images on a per-image OOD score (see the module docstring)."""

    m: int
    threshold: float  # the (1 - alpha) quantile of the union statistic over the bootstrapped reference batches
    alpha: float
    score: str  # the score's name (DoSE)
    bootstrap: int
    n_reference: int
    seed: int
    null: BatchNull = field(repr=False, compare=False)

    @property
    def reference(self) -> np.ndarray:
        return self.null.reference

    def statistic(self, values: np.ndarray) -> np.ndarray:
        """The union statistic of each batch of scores `values` (B, M): higher = less like the reference."""
        return self.null.union_of(*self.null.poolings(values))

    def batch_statistic(self, scores: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The union statistic of the len(scores) // m disjoint batches of a seeded shuffle of `scores` (B,):
        the same batches as the typicality test's for the same images and seed."""
        scores = np.asarray(scores, dtype=np.float64)
        return self.statistic(scores[disjoint_batches(len(scores), self.m, self.seed + 1 if seed is None else seed)])

    def flags(self, scores: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Whether each disjoint batch of M images is flagged out-of-distribution (statistic > threshold)."""
        return self.batch_statistic(scores, seed) > self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"m": self.m, "threshold": self.threshold, "alpha": self.alpha, "score": self.score,
                "bootstrap": self.bootstrap, "n_reference": self.n_reference, "seed": self.seed,
                "statistic": STATISTIC}


def fit_score_batch_test(reference: np.ndarray, /, m: int, *, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
                         seed: int = TYPICALITY_SEED, score: str = "DoSE") -> ScoreBatchTest:
    """The batch test for `m` images from `reference`: held-out scores of in-distribution (validation)
    images, never of the images to be judged. ConfigError: fewer than MIN_REFERENCE reference scores."""
    null = batch_null(reference, m, alpha, bootstrap, seed, score)
    return ScoreBatchTest(m=m, threshold=null.threshold(alpha), alpha=alpha, score=score,
                          bootstrap=bootstrap, n_reference=len(null.reference), seed=seed, null=null)


def batch_null(reference: np.ndarray, m: int, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
               seed: int = TYPICALITY_SEED, score: str = "DoSE") -> BatchNull:
    """The checked reference and both poolings over the same `bootstrap` seeded batches of m of its scores."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    if m < 1 or bootstrap < 1:
        raise ConfigError(f"the batch size M and the bootstrap batches must be >= 1, got {m} and {bootstrap}")
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 1 or len(reference) < MIN_REFERENCE:
        raise ConfigError(f"the {score} batch test needs at least {MIN_REFERENCE} reference scores of validation "
                          f"images, got {reference.size}")
    if not np.isfinite(reference).all():
        raise ValueError(f"the reference {score} scores hold non-finite values")
    ordered = np.sort(reference)
    per_score = np.stack([reference_evidence(ordered), percentiles_among(ordered, ordered)])
    evidence, percentile = bootstrap_means(per_score, m, bootstrap, seed)
    null_evidence, null_percentile = np.sort(evidence), np.sort(percentile)
    union = union_statistic(null_evidence, null_percentile, evidence, percentile)
    return BatchNull(m, ordered, null_evidence, null_percentile, np.sort(union))


def bootstrap_means(values: np.ndarray, m: int, bootstrap: int, seed: int) -> np.ndarray:
    """Means of `bootstrap` seeded draws of m of `values` with replacement: (bootstrap,), or for `values` of
    shape (K, n), (K, bootstrap), every row averaged over the same draws of m of its n columns."""
    # chunks of bootstrap draws keep the (bootstrap, m) index array small for large m; the same seeded stream
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    rows = max(1, 2_000_000 // max(m, 1))
    return np.concatenate([values[..., rng.integers(0, values.shape[-1], (min(rows, bootstrap - i), m))].mean(axis=-1)
                           for i in range(0, bootstrap, rows)], axis=-1)


@dataclass(frozen=True)
class SetCheck:
    """One set of n images judged by the score batch test (`check_score_set`)."""

    n: int
    mean_score: float  # the mean score of the images (shown; the test pools their tail p-values)
    mean_evidence: float  # the mean of their scores' `tail_evidence` among the reference scores
    mean_percentile: float  # the mean of their scores' percentiles among the reference scores
    statistic: float  # -log of the smaller of the two poolings' p-values among bootstrapped reference batches
    threshold: float  # the (1 - alpha) quantile of that statistic over the bootstrapped batches of n
    p_value: float  # the share of those batches whose statistic is at or above the set's, (count + 1) / (bootstrap + 1)
    alpha: float
    flagged: bool  # statistic > threshold: not a set from the reference's distribution, at level alpha

    def describe(self) -> str:
        """The numbers behind the verdict, in one phrase."""
        return (f"mean -log p {self.mean_evidence:.2f} and mean percentile {self.mean_percentile:.1f} of their "
                f"scores; -log of the smaller p-value {self.statistic:.2f}, threshold {self.threshold:.2f}; "
                f"p = {self.p_value:.3g}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_score_set(reference: np.ndarray, scores: np.ndarray, *, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
                    seed: int = TYPICALITY_SEED, score: str = "DoSE") -> SetCheck:
    """Judge `scores` (one per image) as one set against `reference` (held-out scores of validation images):
    the threshold `fit_score_batch_test` would give for M = len(scores), and the one-sided p-value, from one
    set of bootstrap draws."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores) or bootstrap < 1:
        raise ConfigError(f"a set needs at least one score and one bootstrap batch, got {len(scores)} and {bootstrap}")
    if not np.isfinite(scores).all():
        raise ValueError(f"the {score} scores to judge hold non-finite values")
    null = batch_null(reference, len(scores), alpha, bootstrap, seed, score)
    evidence, percentile = null.poolings(scores)
    statistic = float(null.union_of(evidence, percentile))
    threshold = null.threshold(alpha)
    return SetCheck(n=len(scores), mean_score=float(scores.mean()), mean_evidence=float(evidence),
                    mean_percentile=float(percentile), statistic=statistic, threshold=threshold,
                    p_value=null.p_value(statistic), alpha=alpha, flagged=statistic > threshold)


def score_batch_table(reference: np.ndarray, test: np.ndarray, others: dict[str, np.ndarray], *,
                      sizes: Sequence[int] = BATCH_SIZES, alpha: float = ALPHA, bootstrap: int = BOOTSTRAP,
                      seed: int = TYPICALITY_SEED, score: str = "DoSE", resamples: int = 1000) -> dict[str, Any]:
    """The score batch test's record, laid out as `typicality_table`'s (`vaelab evaluate --on` keeps it as
    "dose_batches"): `reference` the held-out scores of validation images, `test` and `others` the per-image
    scores of the test split and of each other set."""
    reference, test = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)

    def out(values: np.ndarray) -> Any:
        return lambda t: t.batch_statistic(values) if len(values) >= t.m else None

    rows, skipped = _batch_rows(
        sizes, lambda m: fit_score_batch_test(reference, m, alpha=alpha, bootstrap=bootstrap, seed=seed, score=score),
        lambda t: t.batch_statistic(test), {name: out(np.asarray(v, dtype=np.float64)) for name, v in others.items()},
        seed=seed, resamples=resamples, enough=lambda m: len(reference) >= max(MIN_REFERENCE, 2 * m) and len(test) >= m)
    return {"rows": rows, "skipped_sizes": skipped, "score": score,
            "fit": "the threshold from held-out scores of validation images only"}


__all__ = ["ALPHA", "BATCH_SIZES", "BatchNull", "MIN_REFERENCE", "STATISTIC", "ScoreBatchTest", "SetCheck",
           "TypicalityTest", "batch_null", "bootstrap_means", "check_score_set", "disjoint_batches",
           "false_alarm_interval", "fit_score_batch_test", "fit_typicality", "percentiles_among",
           "reference_evidence", "score_batch_table", "tail_evidence", "typicality_table", "union_statistic"]
