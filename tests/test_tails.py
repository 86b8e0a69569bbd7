"""Tail p-values among reference scores and Tippett's union (vaelab.evaluation.tails)."""

import numpy as np
import pytest

from vaelab.evaluation import tails


def test_tail_p_values_count_inside_and_keep_their_order_beyond():
    ref = np.arange(1.0, 101.0)  # 1..100
    lp = tails.tail_log_p(ref, np.array([0.0, 50.0, 100.0]))
    assert np.allclose(np.exp(lp), [101 / 101, 52 / 101, 2 / 101])  # (count of ref >= x, + 1) / (n + 1)
    far = tails.tail_log_p(ref, np.array([101.0, 150.0, 1e6]))
    assert np.isfinite(far).all() and far[0] < np.log(1 / 101) and far[0] > far[1] > far[2]
    assert np.array_equal(tails.combined_score([np.log([0.5, 0.01]), np.log([0.02, 0.3])]), -np.log([0.02, 0.01]))


def test_held_out_p_values_make_the_combined_score_calibrated():
    """A fresh in-distribution image is judged against validation images' combined scores: flagged at the 99th
    percentile about 1% of the time, although two tests take part (the p-values of the reference are held out)."""
    rng = np.random.default_rng(1)
    n, fresh = 2000, 200_000
    dens_ref, orient_ref = rng.gumbel(size=n), rng.normal(size=n)
    reference = tails.combined_score([tails.held_out_tail_log_p(dens_ref), tails.held_out_tail_log_p(orient_ref)])
    new = tails.combined_score([tails.tail_log_p(dens_ref, rng.gumbel(size=fresh)),
                                tails.tail_log_p(orient_ref, rng.normal(size=fresh))])
    rate = float(np.mean(new >= np.percentile(reference, 99)))
    assert 0.007 < rate < 0.014
    # an in-sample reference (each image among its own) would stop at log(n + 1) and flag too much past the top
    in_sample = tails.combined_score([tails.tail_log_p(dens_ref, dens_ref), tails.tail_log_p(orient_ref, orient_ref)])
    assert in_sample.max() <= np.log(n + 1) + 1e-9 < reference.max()
    with pytest.raises(ValueError, match="at least 3"):
        tails.held_out_tail_log_p(np.array([1.0, 2.0]))
