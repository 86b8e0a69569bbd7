"""DoSE (vaelab.evaluation.dose): separation of known distributions, the stored scorer, the fit's protocol."""

import inspect
import json

import numpy as np
import pytest
import torch

from vaelab.config import ModelConfig, RunConfig
from vaelab.data import DatasetSplits, ImageSet
from vaelab.errors import CheckpointError, ConfigError
from vaelab.evaluation.dose import COMPONENTS, DoseScorer, feature_ranges, fit_dose, images_needed
from vaelab.evaluation.intervals import detection_intervals
from vaelab.evaluation.statistics import ImageStatistics, validation_statistics
from vaelab.models import build_model

# small candidate grids keep the tests fast; the defaults are tested once
FAST = {"components": (1, 2, 3), "covariance_types": ("full", "diag"), "bandwidths": (0.3, 1.0)}


def _stats(split, n, shift, seed):
    """Three correlated, skewed statistics; `shift` moves the first two in opposite directions."""
    r = np.random.default_rng(seed)
    a = r.normal(0, 1, n)
    b = 0.8 * a + 0.6 * r.normal(0, 1, n)
    c = r.gamma(2.0, 1.0, n)
    return ImageStatistics(split, {"log_px": a + shift, "kl": b - shift, "recon": c})


def test_known_separation_gives_auroc_near_one():
    scorer = fit_dose(_stats("val", 600, 0.0, 1), **FAST)
    test, ood = _stats("test", 500, 0.0, 2), _stats("ood", 500, 2.5, 3)
    m = detection_intervals(scorer.score(test), scorer.score(ood), resamples=200)
    assert m.auroc.value > 0.99 and m.fpr.value < 0.05


def test_same_distribution_gives_auroc_near_half():
    scorer = fit_dose(_stats("val", 600, 0.0, 1), **FAST)
    m = detection_intervals(scorer.score(_stats("test", 2000, 0.0, 2)), scorer.score(_stats("x", 2000, 0.0, 3)),
                            resamples=200)
    assert abs(m.auroc.value - 0.5) < 0.04
    assert m.auroc.low < 0.5 < m.auroc.high or abs(m.auroc.value - 0.5) < 0.02


def test_default_grid_chooses_by_held_out_likelihood():
    val = _stats("val", 300, 0.0, 5)
    scorer = fit_dose(val)
    table = scorer.selection["candidates"]
    assert len(table) == len(COMPONENTS) * 4 + 17 == 49  # every mixture size and covariance type, every bandwidth
    best = max(row["held_out_loglik"] for row in table)
    assert scorer.selection["chosen"]["held_out_loglik"] == best
    assert scorer.selection["n_fit"] + scorer.selection["n_held_out"] == 300
    assert scorer.features == ("log_px", "kl", "recon")
    again = fit_dose(val)  # seeded: the same choice and the same scores
    assert again.selection == scorer.selection
    assert np.array_equal(again.score(val), scorer.score(val))


@pytest.mark.parametrize("family", ["gmm", "kde"])
def test_stored_scorer_gives_identical_scores(tmp_path, family):
    grid = {**FAST, "bandwidths": ()} if family == "gmm" else {"components": (), "bandwidths": (0.2, 0.5)}
    scorer = fit_dose(_stats("val", 400, 0.0, 1), **grid)
    assert scorer.family == family
    path = scorer.save(tmp_path / "run" / "eval-best")
    meta = json.loads(path.read_text())
    assert meta["family"] == family and meta["features"] == list(scorer.features)
    assert (path.parent / "dose.safetensors").is_file()
    assert not list(path.parent.glob("*.pkl"))
    loaded = DoseScorer.load(path.parent)
    assert type(loaded.density) is type(scorer.density)
    probe = _stats("mnist", 300, 1.0, 9)
    assert np.array_equal(loaded.score(probe), scorer.score(probe))  # to the last bit
    assert loaded.selection == scorer.selection and loaded.features == scorer.features


def test_every_covariance_type_round_trips(tmp_path):
    for cov in ("full", "diag", "tied", "spherical"):
        scorer = fit_dose(_stats("val", 200, 0.0, 4), components=(2,), covariance_types=(cov,), bandwidths=())
        scorer.save(tmp_path / cov)
        probe = _stats("x", 50, 0.5, 3)
        assert np.array_equal(DoseScorer.load(tmp_path / cov).score(probe), scorer.score(probe)), cov


def test_damaged_scorer_is_refused(tmp_path):
    fit_dose(_stats("val", 200, 0.0, 1), **FAST).save(tmp_path)
    blob = bytearray((tmp_path / "dose.safetensors").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "dose.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        DoseScorer.load(tmp_path)
    (tmp_path / "dose.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a vaelab DoSE scorer"):
        DoseScorer.load(tmp_path)


def test_too_few_validation_images_names_the_number_needed():
    needed = images_needed()
    assert needed == 100
    with pytest.raises(ConfigError) as err:
        fit_dose(_stats("val", needed - 1, 0.0, 1))
    msg = str(err.value)
    assert "\n" not in msg and f"at least {needed} validation images" in msg and f"got {needed - 1}" in msg
    fit_dose(_stats("val", needed, 0.0, 1), **FAST)  # exactly enough


def test_fit_sees_validation_statistics_only():
    params = inspect.signature(fit_dose).parameters
    positional = [p for p in params.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == ["validation"]
    assert positional[0].kind is inspect.Parameter.POSITIONAL_ONLY
    # every other argument is a setting with a scalar or tuple default, never a data set
    for p in params.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            assert p.default is None or isinstance(p.default, (int, float, str, tuple)), p.name
    for split in ("test", "mnist", "train", "noise"):
        with pytest.raises(ConfigError, match="validation split only"):
            fit_dose(_stats(split, 300, 0.0, 1))
    with pytest.raises(TypeError):
        fit_dose(np.zeros((300, 3)))


class _ValOnly(DatasetSplits):
    """Splits whose train and test images may not be read: the DoSE protocol must not touch them."""

    def __getattribute__(self, name):
        if name in ("train", "test"):
            raise AssertionError(f"the DoSE fit read the {name} split")
        return super().__getattribute__(name)


def test_fit_from_a_run_reads_the_validation_split_only(one_thread):
    g = torch.Generator().manual_seed(0)
    images = lambda n: (torch.rand(n, 1, 8, 8, generator=g) > 0.6).to(torch.uint8) * 255  # noqa: E731
    empty = ImageSet(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    splits = _ValOnly("digits", empty, ImageSet(images(150), torch.zeros(150, dtype=torch.int64)), empty, "test")
    cfg = RunConfig().replace(data={"dataset": "digits"}, eval={"ood_k": 4, "dose_images": 120, "nll_batch_size": 32})
    model = build_model(ModelConfig(arch="mlp", latent_dim=2, mlp_hidden=(16,)), (1, 8, 8))
    val = validation_statistics(model, cfg, splits)
    assert val.split == "val" and len(val) == 120
    scorer = fit_dose(val, **FAST)
    assert np.isfinite(scorer.score(val)).all()


def test_scoring_statistics_of_another_protocol_is_refused():
    val = _stats("val", 200, 0.0, 1)
    val = ImageStatistics("val", val.columns, {"k": 100, "seed": 1})
    scorer = fit_dose(val, **FAST)
    other = ImageStatistics("test", val.columns, {"k": 10, "seed": 1})
    with pytest.raises(ConfigError, match="k=10"):
        scorer.score(other)
    with pytest.raises(ConfigError, match="lack"):
        scorer.score(ImageStatistics("test", {"log_px": np.zeros(3)}, {"k": 100, "seed": 1}))


def test_feature_ranges_fold_numbered_runs_for_display():
    names = ["log_px", "kl_1", "kl_2", "kl_3", "llr_2", "post_mean_1", "post_mean_2", "post_logvar_1", "png_bits"]
    assert feature_ranges(names) == ["log_px", "kl_1..3", "llr_2", "post_mean_1..2", "post_logvar_1", "png_bits"]
    assert feature_ranges(["kl_1", "kl_3"]) == ["kl_1", "kl_3"]  # not consecutive: not folded
