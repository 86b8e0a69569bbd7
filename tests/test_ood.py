import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vaelab.evaluation import ood


def _sklearn(s_in, s_out):
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return roc_auc_score(y, s), average_precision_score(y, s), fpr[tpr >= 0.8].min()


def _cases():
    """Seeded (scores_in, scores_out) pairs: continuous, heavily tied, unbalanced, tiny."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n_in, n_out = rng.integers(1, 300, size=2)
        yield f"normal-{seed}", rng.normal(0, 1, n_in), rng.normal(rng.normal(0, 1), 1.5, n_out)
        yield f"ties-{seed}", rng.integers(0, 3, n_in).astype(float), rng.integers(0, 4, n_out).astype(float)
        yield f"rounded-{seed}", rng.normal(0, 1, n_in).round(1), rng.normal(0.5, 1, n_out).round(1)
    yield "one-each", np.array([0.3]), np.array([0.7])
    yield "all-tied", np.full(7, 2.0), np.full(4, 2.0)


@pytest.mark.parametrize("name,s_in,s_out", list(_cases()), ids=[c[0] for c in _cases()])
def test_metrics_match_sklearn(name, s_in, s_out):
    m = ood.detection_metrics(s_in, s_out)
    auroc, ap, fpr80 = _sklearn(s_in, s_out)
    assert m.auroc == pytest.approx(auroc, abs=1e-12)
    assert m.auprc == pytest.approx(ap, abs=1e-12)
    assert m.fpr_at_80_tpr == pytest.approx(fpr80, abs=1e-12)
    assert (m.n_in, m.n_out) == (len(s_in), len(s_out))


def test_torch_tensors_give_the_same_metrics():
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(0, 1, 100), rng.normal(1, 1, 80)
    a = ood.detection_metrics(s_in, s_out)
    b = ood.detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out).float().requires_grad_())
    assert a.auroc == b.auroc and a.fpr_at_80_tpr == b.fpr_at_80_tpr
    assert a.auprc == pytest.approx(b.auprc, abs=1e-6)
    assert set(a.as_dict()) == {"auroc", "auprc", "fpr_at_80_tpr", "n_in", "n_out"}


def test_separable_and_reversed_scores():
    s_in, s_out = np.arange(10.0), np.arange(10.0) + 100
    perfect = ood.detection_metrics(s_in, s_out)
    assert (perfect.auroc, perfect.auprc, perfect.fpr_at_80_tpr) == (1.0, 1.0, 0.0)
    worst = ood.detection_metrics(s_out, s_in)
    assert worst.auroc == 0.0 and worst.fpr_at_80_tpr == 1.0
    assert worst.auprc == pytest.approx(_sklearn(s_out, s_in)[1], abs=1e-12)


def test_identical_distributions_are_at_chance():
    same = np.random.default_rng(0).normal(size=50)
    assert ood.detection_metrics(same, same.copy()).auroc == 0.5  # same multiset: exactly 0.5
    aurocs = [ood.detection_metrics(rng.normal(size=200), rng.normal(size=200)).auroc
              for rng in map(np.random.default_rng, range(20))]
    assert np.mean(aurocs) == pytest.approx(0.5, abs=0.02)


def test_hand_computed_example():
    # descending: .9o .8o .75i .7o .65i .6o .5i .2i .1o .05i
    s_out = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    s_in = np.array([0.75, 0.65, 0.5, 0.2, 0.05])
    m = ood.detection_metrics(s_in, s_out)
    assert m.fpr_at_80_tpr == pytest.approx(2 / 5)  # 4 of 5 OOD flagged at t = 0.6, with 0.75 and 0.65
    assert m.auroc == pytest.approx((5 + 5 + 4 + 3 + 1) / 25)
    assert m.auprc == pytest.approx((1 + 1 + 3 / 4 + 4 / 6 + 5 / 9) / 5)


def test_fpr80_reads_every_threshold_on_tied_diagonals():
    # 10 tied (in, out) pairs: TPR reaches 0.8 at FPR 0.7; roc_curve's default drop_intermediate=True
    # drops that collinear point and would read 0.9
    s_in, s_out = np.arange(10.0), np.arange(10.0) + 1
    assert ood.detection_metrics(s_in, s_out).fpr_at_80_tpr == pytest.approx(0.7)


def test_roc_points():
    rng = np.random.default_rng(3)
    s_in, s_out = rng.integers(0, 5, 40).astype(float), rng.normal(2, 2, 30)
    fpr, tpr = ood.roc_points(s_in, s_out)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(ood.detection_metrics(s_in, s_out).auroc, abs=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused(bad):
    ok = np.zeros(5)
    with pytest.raises(ValueError, match="non-finite"):
        ood.detection_metrics(np.r_[ok, bad], ok)
    with pytest.raises(ValueError, match="scores_out"):
        ood.detection_metrics(ok, torch.tensor([0.0, bad]))
    with pytest.raises(ValueError, match="non-finite"):
        ood.roc_points(ok, np.r_[ok, bad])


def test_empty_and_misshapen_scores_are_refused():
    with pytest.raises(ValueError, match="empty"):
        ood.detection_metrics(np.array([]), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        ood.detection_metrics(np.zeros(3), torch.zeros(0))
    with pytest.raises(ValueError, match="1-D"):
        ood.detection_metrics(np.zeros((3, 2)), np.zeros(3))


def test_balanced_index():
    a_in, a_out = ood.balanced_index(1000, 300, seed=5)
    assert len(a_in) == len(a_out) == 300
    assert a_in.dtype == np.int64 and a_out.dtype == np.int64
    assert len(np.unique(a_in)) == 300 and np.all(np.diff(a_in) > 0)  # sorted, no duplicates
    assert a_in.min() >= 0 and a_in.max() < 1000
    np.testing.assert_array_equal(a_out, np.arange(300))  # the smaller set is kept whole
    b_in, b_out = ood.balanced_index(1000, 300, seed=5)
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_out, b_out)
    assert not np.array_equal(a_in, ood.balanced_index(1000, 300, seed=6)[0])
    c_in, c_out = ood.balanced_index(40, 100, seed=0)
    assert len(c_in) == len(c_out) == 40 and len(np.unique(c_out)) == 40 and c_out.max() < 100
    with pytest.raises(ValueError):
        ood.balanced_index(-1, 5, seed=0)


def _png_bits(img_chw: torch.Tensor) -> int:
    arr = img_chw.numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=9, optimize=False)
    return len(buf.getvalue()) * 8


def test_png_code_length_bits():
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8)
    const = torch.full((2, 1, 28, 28), 117, dtype=torch.uint8)
    bits = ood.png_code_length_bits(torch.cat([noise, const]))
    assert bits.shape == (5,)
    assert bits[3] == bits[4]
    assert bits[:3].min() > 5 * bits[3:].max()
    assert bits[0] == _png_bits(noise[0])
    assert bits[0] > 28 * 28 * 8  # noise does not compress


def test_png_code_length_bits_rgb_and_empty():
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (2, 3, 8, 12), generator=g, dtype=torch.uint8)
    rgb[1] = rgb[1] // 64  # fewer levels: shorter
    bits = ood.png_code_length_bits(rgb)
    assert list(bits) == [_png_bits(rgb[0]), _png_bits(rgb[1])]
    assert bits[1] < bits[0]
    assert ood.png_code_length_bits(torch.zeros(0, 1, 4, 4, dtype=torch.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        ood.png_code_length_bits(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        ood.png_code_length_bits(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))


def test_complexity_corrected_score():
    ln2 = math.log(2.0)
    nll_nats = np.array([1000 * ln2, 500 * ln2, 0.0])
    s = ood.complexity_corrected_score(nll_nats, np.array([800, 600, 10]))
    np.testing.assert_allclose(s, [200.0, -100.0, -10.0], atol=1e-9)
    s_t = ood.complexity_corrected_score(torch.tensor(nll_nats), torch.tensor([800, 600, 10]))
    np.testing.assert_allclose(s_t, s)
    with pytest.raises(ValueError, match="one value per image"):
        ood.complexity_corrected_score(np.zeros(3), np.zeros(2))


def test_published_anchors():
    assert ood.PUBLISHED_AUROC == {"hvae_log_px": 0.268, "hvae_llr_gt1": 0.984, "ren2019_likelihood_ratio": 0.994}
