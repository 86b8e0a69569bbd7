"""The benchmarks' shared result writing (bench/_results.py), and that every benchmark still imports.

The benchmarks are scripts, not part of the package, and most take minutes; they are not run here. What
a refactor of them can break without a run (a name imported from the wrong place, a helper renamed) is
caught by importing each one.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
# Scripts that do their work on import (a device job) or need a fuzzing engine CI does not install.
NOT_IMPORTABLE = {"gpu_vae_long_vamp.py", "fuzz_atheris.py"}


def _load(script: str, monkeypatch):
    """Import bench/SCRIPT as a module, with bench/ on sys.path as when it runs as a script."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCH / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def results(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _results
    return _results


def test_provenance_names_the_command_date_and_machine(results):
    p = results.provenance("bench/ood_blind.py", ["RUN", "--batch", "2"])
    assert p["command"] == "python bench/ood_blind.py RUN --batch 2"
    assert len(p["date"]) == len("2026-12-07 14:20")
    assert {"cpu", "cores", "threads", "torch", "vaelab", "python", "omp_num_threads"} <= set(p["machine"])


def test_the_command_defaults_to_this_process_arguments(results, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--out", "r.json"])
    assert results.command("bench/x.py") == "python bench/x.py --out r.json"


def test_write_result_makes_the_folder_and_replaces_the_file_whole(results, tmp_path):
    out = tmp_path / "deep" / "r.json"
    assert results.write_result(out, {"a": 1, "path": Path("x")}) == out
    assert json.loads(out.read_text()) == {"a": 1, "path": "x"}
    results.write_result(out, {"b": [1, 2]}, indent=2)
    assert json.loads(out.read_text()) == {"b": [1, 2]}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary file left beside it


def test_write_result_refuses_a_directory(results, tmp_path):
    from vaelab.errors import DataError
    with pytest.raises(DataError, match="is a directory"):
        results.write_result(tmp_path, {"a": 1})


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")
                                          if p.name not in NOT_IMPORTABLE and not p.name.startswith("_")))
def test_every_benchmark_imports(script, monkeypatch):
    module = _load(script, monkeypatch)
    assert callable(getattr(module, "main", None)), f"{script} has no main()"


def test_the_blind_check_passes_settings_on_to_vaelab_evaluate(monkeypatch, tmp_path):
    blind = _load("ood_blind.py", monkeypatch)
    cmd = blind.evaluate_command("RUN", tmp_path, 3, 300, ["eval.dose_images=2000", "eval.seed=1"], tmp_path / "e")
    assert cmd[:4] == ["vaelab", "evaluate", "RUN", "--on"]
    assert [c for c in cmd if c.startswith("folder:")] == [f"folder:{tmp_path / n}" for n in blind.BATCHES[3]]
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert sets == ["eval.gap_images=0", "eval.ood_images=300", "eval.dose_images=2000", "eval.seed=1"]
    assert cmd[-2:] == ["--out", str(tmp_path / "e")]


def test_the_ceiling_classifier_never_trains_on_the_images_it_is_scored_on(monkeypatch, mnist10k_dir):
    """bench/ood_ceiling.py's labelled examples: a shift is made from the training split, a dataset's are
    the images the evaluation's seeded choice leaves out."""
    import torch
    from vaelab.config import RunConfig
    from vaelab.data import load_dataset
    from vaelab.evaluation.unseen import load_eval_set

    ceiling = _load("ood_ceiling.py", monkeypatch)
    cfg = RunConfig().replace(data={"dataset": "mnist", "data_dir": str(mnist10k_dir), "binarize": "none",
                                    "download": False})
    splits = load_dataset(cfg.data)
    scored = load_eval_set("digits", cfg, splits, 1000, 7).images
    examples = ceiling.training_examples("digits", cfg, splits, 1000, 7, 20000)
    assert len(examples) == 1797 - 1000
    assert not {bytes(x.numpy()) for x in scored} & {bytes(x.numpy()) for x in examples}
    flips = ceiling.training_examples("flipped", cfg, splits, 1000, 7, 300)
    train = {bytes(torch.flip(x, dims=(1,)).numpy()) for x in splits.train.images}
    assert len(flips) == 300 and all(bytes(x.numpy()) in train for x in flips)
    test = {bytes(x.numpy()) for x in splits.test.images}
    assert not any(bytes(torch.flip(x, dims=(1,)).numpy()) in test for x in flips)


def test_the_pooling_comparison_reproduces_the_default_batch_test(monkeypatch):
    """bench/batch_pooling.py's default column is the DoSE batch test `vaelab evaluate` records (same
    batches, same draws); the mean-score column is the first version, which one huge reference score blinds."""
    import numpy as np

    from vaelab.evaluation.typicality import score_batch_table

    pooling = _load("batch_pooling.py", monkeypatch)
    rng = np.random.default_rng(3)
    reference, test = rng.gamma(2.0, 1.0, 400), rng.gamma(2.0, 1.0, 400)
    shifted = rng.gamma(2.0, 1.0, 400) + 3.0
    table = pooling.compare(reference, {"test": test, "folder:x/shifted": shifted}, seed=5, sizes=(10,))
    record = score_batch_table(reference, test, {"shifted": shifted}, seed=5, sizes=(10,), resamples=10)["rows"]["10"]
    default = table["10"]["either pooling (default)"]
    assert default["threshold"] == record["test"]["threshold"] and default["test_flagged"] == record["fpr_in"]
    assert default["sets"]["shifted"]["auroc"] == pytest.approx(record["sets"]["shifted"]["auroc"]["value"])
    assert default["sets"]["shifted"]["flagged"] == record["sets"]["shifted"]["flagged"]
    blinded = pooling.compare(np.r_[reference[:-1], 6e7], {"test": test, "shifted": shifted}, seed=5, sizes=(10,))
    assert table["10"]["mean score"]["sets"]["shifted"]["flagged"] > 0.9
    assert blinded["10"]["mean score"]["sets"]["shifted"]["flagged"] == 0.0
    assert all(blinded["10"][name]["sets"]["shifted"]["flagged"] > 0.9
               for name in ("tail evidence", "percentiles", "either pooling (default)"))


def test_the_first_binarization_draw_is_the_one_vaelab_evaluate_scores(monkeypatch):
    """bench/binarization_draws.py: draw 0 of each set is the very image `vaelab evaluate --on` binarizes (so
    B = 1 with the full budget is today's score); later draws binarize the same grey images afresh."""
    from vaelab.config import RunConfig
    from vaelab.data import load_dataset
    from vaelab.evaluation.unseen import load_eval_set

    bench = _load("binarization_draws.py", monkeypatch)
    cfg = RunConfig().replace(data={"dataset": "digits", "binarize": "dynamic"})
    splits = load_dataset(cfg.data)
    draws = bench.set_draws(cfg, splits, ["noise", "flipped", "constant"], 100, 50, 2)
    grey = cfg.replace(data={"binarize": "none"})
    s = cfg.eval.seed
    for name, n, seed in [("val", 100, s + 30), ("test", 50, s), ("noise", 50, s), ("flipped", 50, s),
                          ("constant", 50, s)]:
        first, second = draws[name]
        assert len(first) == n and torch.equal(first, load_eval_set(name, cfg, splits, n, seed).images), name
        assert torch.equal(first, second) == (name == "constant"), name  # constant images are thresholded
        if name != "constant":  # two Bernoulli draws of the same grey images: both near them on average
            x = load_eval_set(name, grey, splits, n, seed).images.float() / 255
            for d in (first, second):
                assert abs(float((d.float() / 255).mean() - x.mean())) < 0.02, name


def test_the_feature_knn_test_reads_the_layers_it_names_and_joins_dose_by_tippett(monkeypatch):
    """bench/feature_knn.py: `hidden` is the input of the encoder's posterior head (fed on, it gives the
    posterior's mean and log-variance), `conv` the flattened convolutions; a training image is its own
    nearest neighbour; the union is the larger of DoSE and -log p_kNN (Tippett's rule on -log p scores)."""
    import numpy as np
    from vaelab.config import RunConfig
    from vaelab.models import build_model

    bench = _load("feature_knn.py", monkeypatch)
    torch.manual_seed(0)
    cfg = RunConfig().replace(model={"fc_hidden": 32, "latent_dim": 4})  # the shape of configs/vae-long.toml
    model = build_model(cfg.model, image_shape=(1, 28, 28)).eval()
    x = (torch.rand(6, 1, 28, 28) * 255).to(torch.uint8)
    hidden = bench.feature_net(model.encoder, "hidden")
    with torch.no_grad():
        q = model.encode(x.float() / 255)
        head = model.encoder.net[-1](hidden(x.float() / 255))
    torch.testing.assert_close(head, torch.cat([q.mean, q.logvar], 1))
    with torch.no_grad():  # features are those of the images as the model sees them, scaled only when asked
        np.testing.assert_allclose(bench.features(hidden, x), hidden(x.float() / 255).numpy(), rtol=1e-6)
    assert not np.allclose(np.linalg.norm(bench.features(hidden, x), axis=1), 1)
    conv = bench.unit_length(bench.features(bench.feature_net(model.encoder, "conv"), x))
    assert conv.shape[1] == model.encoder.net[-3].in_features and np.allclose(np.linalg.norm(conv, axis=1), 1)
    ref = bench.features(hidden, x)
    found = bench.knn_distances(ref, {"same": ref}, [1, 2])
    assert np.allclose(found[1]["same"], 0, atol=1e-5)
    assert found[2]["same"].min() > 0
    dose, log_p = np.array([1.0, 5.0]), np.log(np.array([0.001, 0.5]))
    np.testing.assert_allclose(bench.union(dose, log_p), [-np.log(0.001), 5.0])


def test_the_join_rules_comparison_uses_vaelabs_tippett_rule(monkeypatch):
    """bench/join_rules.py: its Tippett column is vaelab's own union (tails.combined_score), Fisher's adds."""
    import numpy as np
    from vaelab.evaluation.tails import combined_score

    bench = _load("join_rules.py", monkeypatch)
    from vaelab.evaluation.oodrun import fit_run_dose
    from vaelab.evaluation.statistics import ImageStatistics

    def stats(split, n, seed, shift=0.0):  # two statistics and two orientation preferences, one of them resisted
        g = np.random.default_rng(seed)
        return ImageStatistics(split, {"log_px": g.normal(shift, 1, n), "kl": g.normal(0, 1, n),
                                       "prefer_vflip": g.normal(3 - shift, 1, n), "prefer_hflip": g.normal(0, 1, n)},
                               {"k": 10, "seed": 1, "model": "m"})

    dose = fit_run_dose(stats("val", 400, 1), seed=0)
    assert dose.transforms == ("prefer_vflip",)
    for st in (stats("test", 60, 2), stats("odd", 60, 3, shift=2.0)):  # the Tippett column is vaelab's DoSE
        np.testing.assert_allclose(bench.RULES["Tippett"](*dose.tests_log_p(st)), dose.score(st))
    np.testing.assert_allclose(bench.RULES["Tippett"](*dose.reference_log_p), dose.reference)
    rng = np.random.default_rng(0)
    a, b = np.log(rng.uniform(size=50)), np.log(rng.uniform(size=50))
    np.testing.assert_array_equal(bench.RULES["Tippett"](a, b), combined_score([a, b]))
    np.testing.assert_allclose(bench.RULES["Fisher"](a, b), -(a + b))
    assert (bench.RULES["Fisher"](a, b) >= bench.RULES["Tippett"](a, b)).all()  # adding never scores lower
