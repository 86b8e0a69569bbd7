"""The typicality test for batches (vaelab.evaluation.typicality) and the bootstrap intervals of OOD metrics."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vaelab.errors import ConfigError
from vaelab.evaluation.intervals import detection_intervals, format_intervals_table
from vaelab.evaluation.ood import detection_metrics, detection_values
from vaelab.evaluation.statistics import ImageStatistics
from vaelab.evaluation.oodformat import format_typicality
from vaelab.evaluation.typicality import (bootstrap_means, check_score_set, disjoint_batches, false_alarm_interval,
                                         fit_score_batch_test, fit_typicality, percentiles_among, reference_evidence,
                                         score_batch_table, typicality_table)


def _nll_stats(split, n, mean, seed, sd=20.0):
    return ImageStatistics(split, {"log_px": -np.random.default_rng(seed).normal(mean, sd, n)})


@pytest.mark.parametrize("m", [1, 5, 10, 25])
def test_false_positive_rate_is_near_its_nominal_level(m):
    val = _nll_stats("val", 4000, 250.0, 1)
    test = fit_typicality(val, m, alpha=0.05, bootstrap=20_000, seed=3)
    flagged = test.flags(_nll_stats("test", 4000 * m, 250.0, 2))
    assert len(flagged) == 4000
    # nominal 5%; H and the threshold come from 2,000 images each, so a little above it is expected
    assert 0.03 < flagged.mean() < 0.08


@pytest.mark.parametrize("m", [1, 5, 25])
def test_skewed_nlls_keep_the_one_percent_level(m):
    """Real NLLs have a long right tail (a few images cost far more nats); the bootstrap threshold follows the
    tail, so the test still flags about alpha = 1% of in-distribution batches."""
    rng = np.random.default_rng(7)
    val = ImageStatistics("val", {"log_px": -(150 + rng.gamma(4.0, 20.0, 5000))})
    test = fit_typicality(val, m, bootstrap=20_000, seed=4)
    fresh = ImageStatistics("test", {"log_px": -(150 + rng.gamma(4.0, 20.0, 10_000 * m))})
    assert 0.006 < test.flags(fresh).mean() < 0.016


def test_false_alarm_interval_is_exact_and_printed():
    assert false_alarm_interval(2, 200) == pytest.approx((0.00121, 0.03565), abs=1e-4)  # Clopper-Pearson
    lo, hi = false_alarm_interval(0, 40)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 40))
    table = typicality_table(_nll_stats("val", 500, 250.0, 1), _nll_stats("test", 500, 250.0, 2),
                             {"far": _nll_stats("far", 500, 320.0, 3)}, sizes=(5,), resamples=50)
    row = table["rows"]["5"]
    assert row["fpr_in_ci95"][0] <= row["fpr_in"] <= row["fpr_in_ci95"][1]
    text = "\n".join(format_typicality({"typicality": table}))
    assert f"exact 95% interval [{row['fpr_in_ci95'][0]:.3f}, {row['fpr_in_ci95'][1]:.3f}]" in text


def test_ood_batches_are_flagged_more_with_larger_batches():
    val = _nll_stats("val", 2000, 250.0, 1)
    table = typicality_table(val, _nll_stats("test", 1000, 250.0, 2), {"mnist": _nll_stats("mnist", 1000, 235.0, 3)},
                             resamples=100)
    rows = table["rows"]
    tprs = [rows[str(m)]["sets"]["mnist"]["flagged"] for m in (1, 5, 10, 25)]
    assert tprs == sorted(tprs) and tprs[-1] > 0.7 and tprs[0] < 0.2  # a shift of 0.75 sd per image
    assert rows["25"]["sets"]["mnist"]["auroc"]["value"] > 0.99
    assert all(row["fpr_in"] < 0.1 for row in rows.values()) and table["skipped_sizes"] == []
    text = "\n".join(format_typicality({"typicality": table}))
    assert "mnist" in text and "test (in)" in text
    # sizes the images cannot fill are listed, not fitted
    small = typicality_table(val, _nll_stats("test", 20, 250.0, 2), {}, sizes=(5, 25), resamples=10)
    assert list(small["rows"]) == ["5"] and small["skipped_sizes"] == [25]


def test_too_likely_batches_are_flagged_too():
    """The test is two-sided: batches far more likely than typical (MNIST under a Fashion-MNIST VAE) fail it."""
    val = _nll_stats("val", 2000, 250.0, 1)
    t = fit_typicality(val, 10, seed=0)
    assert t.flags(_nll_stats("mnist", 500, 200.0, 4)).all()
    assert t.flags(_nll_stats("noise", 500, 400.0, 5)).all()


def test_typicality_fits_on_validation_only_and_needs_enough_images():
    with pytest.raises(ConfigError, match="validation split only"):
        fit_typicality(_nll_stats("test", 500, 250.0, 1), 5)
    with pytest.raises(ConfigError, match="at least 50 validation images") as err:
        fit_typicality(_nll_stats("val", 49, 250.0, 1), 25)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 10 images"):
        disjoint_batches(9, 10, 0)
    idx = disjoint_batches(23, 5, 0)
    assert idx.shape == (4, 5) and len(set(idx.ravel())) == 20


# --------------------------------------------------------------------------- metrics with intervals


def _cases():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n_in, n_out = rng.integers(2, 200, size=2)
        yield rng.normal(0, 1, n_in), rng.normal(0.7, 1.3, n_out)
        yield rng.integers(0, 4, n_in).astype(float), rng.integers(0, 5, n_out).astype(float)
    yield np.array([0.3]), np.array([0.7])
    yield np.arange(20.0), np.arange(20.0) + 0.5


@pytest.mark.parametrize("case", list(_cases()))
def test_detection_values_match_sklearn(case):
    s_in, s_out = case
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    auroc, auprc, fpr95 = detection_values(s_in, s_out, 0.95)
    assert auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert fpr95 == pytest.approx(fpr[tpr >= 0.95 - 1e-12].min(), abs=1e-12)
    m = detection_metrics(s_in, s_out)
    assert auroc == pytest.approx(m.auroc, abs=1e-12)
    assert detection_values(s_in, s_out, 0.8)[2] == m.fpr_at_80_tpr


def test_fpr_at_95_counts_exactly():
    # 20 OOD scores: 95% of them is 19; the 19th highest OOD score sits above exactly one in-distribution score
    s_out = np.arange(20.0) + 10
    s_in = np.r_[11.5, np.zeros(19)]
    assert detection_values(s_in, s_out, 0.95)[2] == 1 / 20


def test_intervals_are_seeded_and_contain_the_estimate():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0, 1, 400), rng.normal(1, 1, 300)
    a = detection_intervals(s_in, s_out, resamples=300, seed=5)
    b = detection_intervals(s_in, s_out, resamples=300, seed=5)
    assert a == b
    assert a.n_in == a.n_out == 300  # balanced
    for iv in (a.auroc, a.auprc, a.fpr):
        assert iv.low <= iv.value <= iv.high
    assert 0.70 < a.auroc.value < 0.82 and a.auroc.high - a.auroc.low < 0.1
    assert str(a.auroc).count(".") == 3 and len(str(a.auroc).split()[0]) == 5  # three decimals
    d = a.as_dict()
    assert set(d) >= {"auroc", "auprc", "fpr_at_95_tpr", "bootstrap"}
    perfect = detection_intervals(np.zeros(50), np.ones(50), resamples=50)
    assert (perfect.auroc.low, perfect.auroc.high, perfect.fpr.high) == (1.0, 1.0, 0.0)
    table = format_intervals_table({"mnist": {"DoSE": a}}, published={("mnist", "DoSE"): 1.0})
    assert "published AUROC 1.000" in table and "FPR@95" in table
    with pytest.raises(ValueError, match="non-finite"):
        detection_intervals(np.r_[np.nan, 1.0], np.ones(2))


# --------------------------------------------------------------------------- the DoSE batch test


@pytest.mark.parametrize("m", [1, 5, 10, 25])
def test_score_batch_test_false_alarms_are_near_the_nominal_level(m):
    """Reference and test scores from one (skewed, like -log density) distribution: about alpha of the
    in-distribution batches are flagged, for every M."""
    rng = np.random.default_rng(11)
    test = fit_score_batch_test(rng.gamma(3.0, 2.0, 5000), m, alpha=0.05, bootstrap=20_000, seed=2)
    flagged = test.flags(rng.gamma(3.0, 2.0, 4000 * m))
    assert len(flagged) == 4000 and 0.025 < flagged.mean() < 0.075  # nominal 5%, a 5,000-score reference


def test_score_batch_test_is_one_sided_and_gains_with_the_batch_size():
    rng = np.random.default_rng(5)
    reference, test = rng.normal(0, 1, 2000), rng.normal(0, 1, 1000)
    shifted, lower = rng.normal(0.8, 1, 1000), rng.normal(-3, 1, 1000)
    table = score_batch_table(reference, test, {"shifted": shifted, "lower": lower}, resamples=100)
    rows = table["rows"]
    flagged = [rows[str(m)]["sets"]["shifted"]["flagged"] for m in (1, 5, 10, 25)]
    assert flagged == sorted(flagged) and flagged[0] < 0.2 and flagged[-1] > 0.9
    assert rows["25"]["sets"]["shifted"]["auroc"]["value"] > 0.99 > rows["1"]["sets"]["shifted"]["auroc"]["value"]
    assert all(rows[str(m)]["sets"]["lower"]["flagged"] == 0 for m in (1, 5, 10, 25))  # low score: typical
    assert all(row["fpr_in"] < 0.1 for row in rows.values()) and table["score"] == "DoSE"
    # the threshold is the reference's alone: the sets being judged do not move it
    again = score_batch_table(reference, test, {"shifted": shifted + 5}, resamples=100)
    assert again["rows"]["5"]["test"]["threshold"] == rows["5"]["test"]["threshold"]
    # the same disjoint batches as the typicality test's for the same images and seed
    t = fit_score_batch_test(reference, 5, seed=9)
    typ = fit_typicality(ImageStatistics("val", {"log_px": -reference}), 5, seed=9)
    batches = ImageStatistics("test", {"log_px": -test})
    index = disjoint_batches(len(test), 5, 10)
    evidence = np.array([-np.log((1 + np.sum(reference >= v)) / (len(reference) + 1)) for v in test])
    percentile = np.array([100 * (np.sum(reference < v) + 0.5 * np.sum(reference == v)) / len(reference) for v in test])
    assert np.allclose(t.null.poolings(test[index]), (evidence[index].mean(1), percentile[index].mean(1)))
    assert np.allclose(typ.batch_statistic(batches), np.abs(test[index].mean(1) - typ.entropy))
    # the statistic: -log of the smaller of the two poolings' tail p-values among their bootstrapped null means
    null_p = [(1 + np.sum(t.null.evidence >= e)) / (t.bootstrap + 1) for e in evidence[index].mean(1)]
    null_q = [(1 + np.sum(t.null.percentile >= q)) / (t.bootstrap + 1) for q in percentile[index].mean(1)]
    inside = (evidence[index].mean(1) <= t.null.evidence[-1]) & (percentile[index].mean(1) <= t.null.percentile[-1])
    assert inside.mean() > 0.9
    assert np.allclose(t.batch_statistic(test)[inside], -np.log(np.minimum(null_p, null_q))[inside])


def test_score_batch_test_needs_enough_reference_scores():
    with pytest.raises(ConfigError, match="at least 20 reference scores"):
        fit_score_batch_test(np.zeros(19), 5)
    assert fit_score_batch_test(np.arange(20.0), 1000).m == 1000  # drawn with replacement: any M
    with pytest.raises(ValueError, match="non-finite"):
        fit_score_batch_test(np.r_[np.zeros(30), np.nan], 5)
    table = score_batch_table(np.zeros(30), np.zeros(12), {}, sizes=(5, 25), resamples=10)
    assert list(table["rows"]) == ["5"] and table["skipped_sizes"] == [25]


def test_both_batch_tables_are_printed():
    rng = np.random.default_rng(3)
    typ = typicality_table(_nll_stats("val", 500, 250.0, 1), _nll_stats("test", 500, 250.0, 2),
                           {"far": _nll_stats("far", 500, 320.0, 3)}, sizes=(5,), resamples=50)
    dose = score_batch_table(rng.normal(0, 1, 500), rng.normal(0, 1, 500), {"far": rng.normal(2, 1, 500)},
                             sizes=(5,), resamples=50)
    text = "\n".join(format_typicality({"typicality": typ, "dose_batches": dose}))
    assert "typicality test" in text and "DoSE batch test" in text and text.count("test (in)") == 2
    assert "\n".join(format_typicality({"dose_batches": dose})).startswith("DoSE batch test")


def test_the_p_value_uses_the_threshold_s_own_draws():
    rng = np.random.default_rng(8)
    reference = rng.gamma(2.0, 1.0, 3000)
    t = fit_score_batch_test(reference, 10, alpha=0.05, seed=4)
    assert t.null.p_value(t.threshold) == pytest.approx(0.05, abs=0.002)  # the union, not each pooling, at alpha
    # sets of 10 equal scores at each quantile of the reference: the set at the threshold has p near alpha
    sets = [check_score_set(reference, np.full(10, np.quantile(reference, q)), alpha=0.05, seed=4)
            for q in np.linspace(0.5, 0.99, 200)]
    assert all(s.threshold == t.threshold for s in sets)
    near = min(sets, key=lambda s: abs(s.statistic - t.threshold))
    assert near.p_value == pytest.approx(0.05, abs=0.01)
    assert [s.flagged for s in sets] == [s.statistic > t.threshold for s in sets] and sets[-1].flagged
    assert not sets[0].flagged  # at the median
    far = check_score_set(reference, np.full(10, reference.max() + 1), alpha=0.05, seed=4)
    assert far.p_value == pytest.approx(1 / 5001) and far.flagged and far.n == 10
    assert far.mean_evidence == pytest.approx(np.log(3001)) and far.mean_percentile == 100.0  # bounded
    low = check_score_set(reference, np.full(10, -1.0), alpha=0.05, seed=4)
    assert low.p_value == 1.0 and low.statistic == 0.0 and low.mean_percentile == 0.0
    assert "mean percentile 0.0" in low.describe() and low.as_dict()["statistic"] == 0.0


def test_one_huge_reference_score_does_not_blind_the_set_test():
    """A held-out score far out in a tail (6e7 among 100 validation scores near 1, as one small model gave)
    moved the first version's threshold, on the mean score, near it: 12 noise images passed as a set. On tail
    p-values the set is caught, and the verdict does not depend on how far out that one score lies."""
    rng = np.random.default_rng(4)
    reference = np.r_[rng.gamma(2.0, 1.0, 99), 6e7]
    noise = np.percentile(reference[:99], 97) + rng.gamma(2.0, 1.0, 12)  # above 97% of them, below the outlier
    means = reference[np.random.default_rng(2025).integers(0, 100, (5000, 12))].mean(1)
    assert noise.mean() < np.quantile(means, 0.99)  # what the mean score's test saw: a typical set
    judged = check_score_set(reference, noise)
    assert judged.flagged and judged.p_value < 0.001
    assert check_score_set(np.r_[reference[:99], 50.0], noise) == judged
    assert not check_score_set(reference, rng.gamma(2.0, 1.0, 12)).flagged


def test_a_few_images_far_out_count_fully_in_the_set_test():
    """Fisher's pooling, one half of the union: 3 images beyond every reference score among 7 typical ones flag
    a set of 10 (percentiles alone, which count an image far out no more than one at the 100th percentile,
    let it pass)."""
    rng = np.random.default_rng(6)
    reference = rng.gamma(2.0, 1.0, 3000)
    scores = np.r_[np.full(3, reference.max() + 5), np.full(7, np.median(reference))]
    judged = check_score_set(reference, scores)
    assert judged.flagged and judged.p_value < 0.01
    ranks = percentiles_among(np.sort(reference), reference)
    means = ranks[np.random.default_rng(2025).integers(0, 3000, (5000, 10))].mean(1)
    assert percentiles_among(np.sort(reference), scores).mean() < np.quantile(means, 0.99)
    # calibrated on the reference's own null: about alpha of in-distribution sets of 10 are flagged
    flagged = [check_score_set(reference, rng.gamma(2.0, 1.0, 10), bootstrap=2000).flagged for _ in range(400)]
    assert np.mean(flagged) < 0.04


def test_many_images_a_little_unusual_count_in_the_set_test():
    """The percentile pooling, the other half: 25 images each at the 75th percentile of the reference flag
    the set, though their mean tail evidence (-log 0.25 each) stays under Fisher's own threshold."""
    rng = np.random.default_rng(7)
    reference = rng.gamma(2.0, 1.0, 3000)
    scores = np.full(25, np.quantile(reference, 0.75))
    judged = check_score_set(reference, scores)
    evidence_alone = bootstrap_means(reference_evidence(np.sort(reference)), 25, 5000, 2025)
    assert judged.mean_evidence < np.quantile(evidence_alone, 0.99)  # Fisher alone: a typical set
    assert judged.flagged and judged.p_value < 0.01 and judged.mean_percentile == pytest.approx(75, abs=0.1)
