"""`vaelab evaluate --on` with DoSE, the typicality test, Likelihood Regret and bootstrap intervals: the
outputs (old keys kept, new keys added), the scorer kept in the run and reused, the fit's protocol
(validation images only), and the mistakes a user can make."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.cli import main
from vaelab.data import load_dataset
from vaelab.evaluation import oodrun
from vaelab.evaluation.statistics import ImageStatistics, images_digest, validation_images
from vaelab.evaluation.unseen import load_eval_set
from vaelab.report.markdown import markdown

DIGITS = ["data.dataset=digits", "model.arch=mlp", "model.latent_dim=8", "train.lr=3e-3", "data.binarize=static",
          "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0"]
FAST = ["-k", "3", "--nll-images", "0", "--set", "eval.ood_images=100", "--set", "eval.ood_k=8",
        "--set", "eval.gap_images=0", "--set", "eval.ood_resamples=100"]
OLD_SCORES = {"-log p(x)", "-ELBO", "complexity-corrected"}


def _train(path, *overrides):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(overrides=[*DIGITS, *overrides]), path, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """An MLP VAE on 8x8 digits (143 validation images: enough for DoSE)."""
    return _train(tmp_path_factory.mktemp("ood") / "vae", "train.epochs=4")


def _evaluate(run, out, *on, extra=()):
    return main(["evaluate", str(run), "--on", *on, *FAST, *extra, "--out", str(out)])


def _stored(run):
    return sorted(p.name for p in (run / "ood").iterdir())


def test_every_score_has_intervals_and_dose_is_the_default(vae_run, tmp_path, capsys, one_thread):
    out = tmp_path / "ev"
    assert _evaluate(vae_run, out, "noise", "flipped") == 0
    text = capsys.readouterr().out
    assert "DoSE *" in text and "FPR@95" in text and "typicality test" in text and "time per 1,000 images" in text
    data = json.loads((out / "evaluation.json").read_text())["datasets_eval"]
    # the keys older readers use are all there, as they were
    for name in ("noise", "flipped"):
        assert set(data["ood"][name]) == OLD_SCORES and "fpr_at_80_tpr" in data["ood"][name]["-ELBO"]
    assert data["default_score"] == "DoSE"
    for name, scores in data["ood_intervals"].items():
        assert set(scores) == OLD_SCORES | {"DoSE", "DoSE density"}
        for m in scores.values():
            for metric in ("auroc", "auprc", "fpr_at_95_tpr"):
                assert 0 <= m[metric]["low"] <= m[metric]["value"] <= m[metric]["high"] <= 1
            assert m["n_in"] == m["n_out"] == 100
        # the same AUROC as the old table's (the same balanced images)
        assert scores["-log p(x)"]["auroc"]["value"] == pytest.approx(data["ood"][name]["-log p(x)"]["auroc"])
        assert "roc" in scores["DoSE"]
    assert data["ood_intervals"]["noise"]["DoSE"]["auroc"]["value"] > 0.99
    assert data["ood_intervals"]["noise"]["DoSE"]["fpr_at_95_tpr"]["value"] < 0.05
    assert data["dose"]["validation_images"] == 143 and 0 <= data["dose"]["flagged_at_99"]["test"] <= 0.1
    # the orientation test's transforms are chosen on validation images and named in the record and the note
    chosen = data["dose"]["orientation"]["transforms"]
    assert chosen and set(chosen) <= {"hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose"}
    assert ", ".join(chosen) in data["score_notes"]["DoSE"]
    assert f"joined with the orientation test over {', '.join(chosen)}" in text
    assert data["dose"]["features"][-1] == "orientation"  # the density holds the orientation statistic too
    assert data["dose"]["flagged_at_99"]["noise"] > 0.9
    typ = data["typicality"]["rows"]
    assert set(typ) == {"1", "5", "10", "25"} and typ["25"]["batches_in"] == 4
    lo, hi = typ["5"]["fpr_in_ci95"]  # the false alarms over 20 batches, with their exact interval, printed
    assert lo <= typ["5"]["fpr_in"] <= hi and f"exact 95% interval [{lo:.3f}, {hi:.3f}]" in text
    assert typ["5"]["sets"]["noise"]["flagged"] == 1.0 and 0 <= typ["1"]["fpr_in"] <= 0.1
    # the DoSE batch test: the same batches, judged by their mean DoSE score against held-out validation scores
    batches = data["dose_batches"]["rows"]
    assert set(batches) == {"1", "5", "10", "25"} and batches["25"]["batches_in"] == 4
    assert batches["5"]["sets"]["noise"]["flagged"] == 1.0 and 0 <= batches["5"]["fpr_in"] <= 0.2
    assert batches["1"]["test"]["n_reference"] == 143 and "DoSE batch test" in text
    per_1000 = data["timing"]["seconds_per_1000_images"]
    assert data["timing"]["images"] == 300 and all(v >= 0 for v in per_1000.values()) and len(per_1000) == 3
    # the scorer and the validation statistics are kept in the run; each set's statistics in the evaluation
    stored = _stored(vae_run)
    dose_files = sorted(n for n in stored if n.startswith("dose-"))
    key = next(n for n in dose_files if n.endswith(".json")).rsplit(".", 1)[0]
    assert dose_files == [f"{key}-reference.safetensors", f"{key}.json", f"{key}.safetensors"]
    assert any(n.startswith("statistics-val-") for n in stored)
    assert len(list((out / "statistics").glob("*.safetensors"))) == 3
    report = (out / "report.md").read_text()
    assert "FPR@95%TPR" in report and "**DoSE** (default)" in report and "Typicality test" in report
    assert "DoSE batch test" in report
    rows = list(csv.DictReader((out / "per_image_scores.csv").open()))
    assert len(rows) == 300 and "DoSE" in rows[0]


def test_the_orientation_test_can_be_turned_off(vae_run, tmp_path, one_thread):
    """eval.dose_orientation = false: DoSE is the density alone, and no preference is computed or stored."""
    out = tmp_path / "off"
    assert _evaluate(vae_run, out, "flipped", extra=["--set", "eval.dose_orientation=false"]) == 0
    data = json.loads((out / "evaluation.json").read_text())["datasets_eval"]
    rows = data["ood_intervals"]["flipped"]
    assert rows["DoSE"]["auroc"] == rows["DoSE density"]["auroc"] and data["dose"]["orientation"]["transforms"] == []
    assert "off, eval.dose_orientation = false" in data["score_notes"]["DoSE"]
    assert "orientation" not in data["dose"]["features"]
    sets = [ImageStatistics.load(f) for f in (out / "statistics").glob("*.safetensors")]
    val = [ImageStatistics.load(f) for f in (vae_run / "ood").glob("statistics-val-*")]
    val = [v for v in val if not v.protocol["orientation"]]  # beside the default's, kept under its own name
    assert len(sets) == 2 and len(val) == 1
    assert all(not s.protocol["orientation"] and not any(c.startswith("prefer_") for c in s.columns)
               for s in sets + val)


def test_a_second_evaluation_reuses_the_stored_scorer(vae_run, tmp_path, monkeypatch, one_thread):
    assert _evaluate(vae_run, tmp_path / "a", "noise") == 0
    stored = _stored(vae_run)

    def refuse(*args, **kwargs):
        raise AssertionError("the DoSE scorer and the validation statistics should have been read from the run")

    monkeypatch.setattr(oodrun, "fit_dose", refuse)
    monkeypatch.setattr(oodrun, "compute_statistics", refuse)
    monkeypatch.setattr(oodrun, "held_out_scores", refuse)  # the held-out reference scores are kept too
    assert _evaluate(vae_run, tmp_path / "b", "noise") == 0
    a, b = (json.loads((tmp_path / d / "evaluation.json").read_text())["datasets_eval"] for d in "ab")
    assert a["ood_intervals"]["noise"]["DoSE"] == b["ood_intervals"]["noise"]["DoSE"]
    assert not b["dose"]["fitted"] and not b["dose"]["statistics_computed"] and a["dose"]["scorer"] == \
        b["dose"]["scorer"]
    assert _stored(vae_run) == stored
    assert "read from the run" in b["timing"]["once_per_model"]["density choice and fit"]


def test_the_fit_sees_the_validation_slice_only(vae_run, tmp_path, monkeypatch, one_thread):
    """Issue 18's protocol: the density is fitted on statistics of validation images and of nothing else, so
    the OOD sets named and the test images drawn change nothing in the stored scorer."""
    seen = []
    real = oodrun.fit_dose
    monkeypatch.setattr(oodrun, "fit_dose", lambda stats, **kw: seen.append(stats) or real(stats, **kw))
    scorers = []
    for i, (on, n) in enumerate((("noise", "100"), ("flipped", "60"))):
        for p in (vae_run / "ood").glob("*"):
            p.unlink()
        assert main(["evaluate", str(vae_run), "--on", on, *FAST, "--set", f"eval.ood_images={n}",
                     "--out", str(tmp_path / f"ev{i}")]) == 0
        scorers.append([p.read_bytes() for p in sorted((vae_run / "ood").glob("dose-*.safetensors"))])
        record = json.loads((tmp_path / f"ev{i}" / "evaluation.json").read_text())["datasets_eval"]["dose"]
        scorers[-1].append(record["orientation"])  # the orientation test's transforms: chosen on validation alone
    assert len(seen) == 2 and scorers[0] == scorers[1] and len(scorers[0]) == 3  # scorer, reference, transforms
    run = load_run(vae_run)
    cfg = run.config
    splits = load_dataset(cfg.data)
    expected = images_digest(validation_images(cfg, splits))
    test = load_eval_set("test", cfg, splits, 100, cfg.eval.seed + 10).images
    for stats in seen:
        assert stats.split == "val" and stats.protocol["images_sha256"] == expected
        assert stats.protocol["images_sha256"] != images_digest(test) and len(stats) == len(splits.val)


def test_too_few_validation_images_is_a_note_and_the_evaluation_goes_on(tmp_path, capsys, one_thread):
    run = _train(tmp_path / "small", "data.val_size=50", "train.epochs=1")
    assert _evaluate(run, tmp_path / "ev", "noise") == 0
    text = capsys.readouterr().out
    line = next(li for li in text.splitlines() if "no DoSE score" in li)
    assert "at least 100 validation images" in line and "has 50" in line
    data = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["datasets_eval"]
    assert data["default_score"] == "complexity-corrected" and "DoSE" not in data["ood_intervals"]["noise"]
    assert "typicality" in data and not (run / "ood").exists()


def test_likelihood_regret_is_opt_in(vae_run, tmp_path, capsys, one_thread):
    out = tmp_path / "ev"
    assert _evaluate(vae_run, out, "noise", extra=["--regret", "--set", "eval.regret_images=12",
                                                     "--set", "eval.regret_steps=10"]) == 0
    assert "Likelihood Regret" in capsys.readouterr().out
    data = json.loads((out / "evaluation.json").read_text())["datasets_eval"]
    m = data["ood_intervals"]["noise"]["Likelihood Regret"]
    assert m["n_in"] == m["n_out"] == 12 and 0 <= m["auroc"]["value"] <= 1
    assert data["regret"]["steps"] == 10 and data["regret"]["images"] == 24
    assert "Likelihood Regret" in data["timing"]["seconds_per_1000_images"]
    rows = list(csv.DictReader((out / "per_image_scores.csv").open()))
    regret = np.array([float(r["Likelihood Regret"]) for r in rows])
    assert np.isfinite(regret).sum() == 24 and (regret[np.isfinite(regret)] >= 0).all()


def test_evaluate_mistakes_are_one_line_errors(vae_run, tmp_path, capsys):
    assert main(["evaluate", str(vae_run), "--regret"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--regret scores the datasets of --on" in err
    assert main(["evaluate", str(vae_run), "--on", "noise", "--set", "eval.regret_steps=0"]) == 2
    assert "eval.regret_steps" in capsys.readouterr().err
    hvae = _train(tmp_path / "hvae", "model.kind=hvae", "model.arch=conv", "model.hvae_latents=[2,2]",
                  "model.hvae_channels=8", "train.epochs=1")
    assert main(["evaluate", str(hvae), "--on", "noise", "--regret", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "single-latent VAE" in err


def test_report_of_an_evaluation_written_before_the_intervals():
    """evaluation.json files written before DoSE have no ood_intervals: the report shows their table."""
    old = {"datasets_eval": {"k": 5, "images_per_set": 10, "datasets": {}, "score_notes": {"-ELBO": "x"},
                             "ood": {"noise": {"-ELBO": {"auroc": 0.9, "auprc": 0.8, "fpr_at_80_tpr": 0.1,
                                                         "n_in": 10, "n_out": 10}}}}}
    text = markdown(old, {})
    assert "| noise | -ELBO | 0.900 | 0.800 | 0.100 | 10 |" in text and "FPR@80%TPR" in text


def test_dose_llr_table_takes_the_tables_llr_and_all_takes_every_j(tmp_path, one_thread):
    from vaelab.evaluation.statistics import ImageStatistics

    hvae = _train(tmp_path / "hvae", "model.kind=hvae", "model.arch=conv", "model.hvae_latents=[2,2,2]",
                  "model.hvae_channels=8", "train.epochs=1")
    columns = {}
    for how in ("table", "all"):
        out = tmp_path / how
        assert _evaluate(hvae, out, "noise", extra=["--set", f"eval.dose_llr={how}"]) == 0
        for name in ("test", "noise"):
            stats = ImageStatistics.load(next((out / "statistics").glob(f"{name}-*.safetensors")))
            columns[how, name] = [c for c in stats.names if c.startswith("llr_")]
        table = json.loads((out / "evaluation.json").read_text())["datasets_eval"]
        assert "LLR>1" in table["ood"]["noise"]
    # the default: only LLR>1, the one the table computes anyway (no extra importance pass)
    assert columns["table", "test"] == columns["table", "noise"] == ["llr_1"]
    assert columns["all", "test"] == columns["all", "noise"] == ["llr_1", "llr_2"]
    kept = ImageStatistics.load(next((hvae / "ood").glob("statistics-val-*.safetensors")))  # the last protocol's
    assert kept.protocol["llr_layers"] == [1, 2]
    assert [c for c in kept.names if c.startswith("llr_")] == ["llr_1", "llr_2"]


def test_a_damaged_reference_file_is_computed_again(vae_run, tmp_path, one_thread):
    from safetensors.numpy import load_file

    assert _evaluate(vae_run, tmp_path / "a", "noise") == 0
    scorer = Path(json.loads((tmp_path / "a" / "evaluation.json").read_text())["datasets_eval"]["dose"]["scorer"])
    path = scorer.with_name(scorer.stem + "-reference.safetensors")  # this protocol's (other tests keep others)
    good = load_file(str(path))["reference"]
    path.write_bytes(b"not a safetensors file")
    assert _evaluate(vae_run, tmp_path / "b", "noise") == 0
    assert np.array_equal(load_file(str(path))["reference"], good)  # recomputed bit for bit, and kept again
    a, b = (json.loads((tmp_path / d / "evaluation.json").read_text())["datasets_eval"] for d in "ab")
    assert a["dose"]["threshold_99"] == b["dose"]["threshold_99"]


def test_check_images_judges_each_image_and_the_set(vae_run, one_thread):
    """vaelab.check_images: the Python API's verdict on a user's images, one by one and as a set."""
    from vaelab import check_images
    from vaelab.errors import DataError

    run = load_run(vae_run)
    test = load_dataset(run.config.data).test.images[:60]
    seen = check_images(run, test)
    assert seen.scores.shape == seen.percentiles.shape == seen.flagged.shape == (60,)
    assert ((0 <= seen.percentiles) & (seen.percentiles <= 100)).all() and seen.validation_images == 143
    assert seen.flagged.mean() < 0.1 and not seen.batch.flagged and seen.batch.p_value > seen.batch.alpha
    noise = torch.randint(0, 256, (30, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    odd = check_images(run, noise)
    assert odd.flagged.all() and odd.batch.flagged and odd.batch.p_value < 0.001
    assert (odd.percentiles == 100).all() and "30 of 30 images flagged" in odd.summary()
    # the scorer is kept in the run and reused: the same images get the same numbers
    again = check_images(run, test[:, 0].numpy())  # (N, H, W) uint8 arrays work too
    assert np.array_equal(again.scores, seen.scores) and again.batch == seen.batch
    # each image is measured alone: the same number whatever it is checked with, wherever it stands
    alone = check_images(run, test[7:8])
    mixed = check_images(run, torch.cat([noise[:5], test[7:8].flip(0), test[:3]]))
    assert alone.scores[0] == seen.scores[7] == mixed.scores[5] and alone.percentiles[0] == mixed.percentiles[5]
    assert np.array_equal(mixed.scores[6:], seen.scores[:3]) and np.array_equal(mixed.scores[:5], odd.scores[:5])
    with pytest.raises(DataError, match=r"shape 1x7x7 but this model was trained on 1x8x8"):
        check_images(run, noise[:, :, :7, :7])


def test_check_images_keeps_the_scorer_in_memory(vae_run, one_thread, monkeypatch):
    """After the first call on a run, check_images reads neither the dataset nor RUN/ood/ again; a run loaded
    afresh from the same directory shares the scorer, and other settings get their own."""
    from vaelab import check_images
    from vaelab.evaluation import imagecheck

    run = load_run(vae_run)
    test = load_dataset(run.config.data).test.images[:8]
    first = check_images(run, test)

    def no_data(*_args, **_kwargs):
        raise AssertionError("the dataset was loaded again")

    def no_scorer(*_args, **_kwargs):
        raise AssertionError("the scorer was read again")

    monkeypatch.setattr(imagecheck, "load_run_data", no_data)
    monkeypatch.setattr(imagecheck, "run_dose", no_scorer)
    again = check_images(load_run(vae_run), test)
    assert np.array_equal(again.scores, first.scores) and again.batch == first.batch
    other = load_run(vae_run)
    other.config = other.config.replace(eval={"seed": 7})
    with pytest.raises(AssertionError, match="loaded again"):
        check_images(other, test)


def test_vaelab_check_judges_a_folder(vae_run, tmp_path, capsys, one_thread):
    from PIL import Image

    folder = tmp_path / "mine"
    (folder / "noise").mkdir(parents=True)
    test = load_dataset(load_run(vae_run).config.data).test.images[:30, 0].numpy()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(test[i]).save(folder / f"test{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "noise" / f"{i:02d}.png")
    out = tmp_path / "check.json"
    assert main(["check", str(vae_run), str(folder), "--list", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    record = json.loads(out.read_text())
    images = {r["file"]: r for r in record["images"]}
    assert len(images) == 60 and record["set"]["n"] == 60 and record["set"]["flagged"]
    assert all(images[f"noise/{i:02d}.png"]["flagged"] for i in range(30))
    assert sum(images[f"test{i:02d}.png"]["flagged"] for i in range(30)) <= 3
    assert "not from the training distribution" in text and text.count("noise/") == 3  # the 3 highest listed
    # files and folders together; a file is shown as given
    single = tmp_path / "one.png"
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(single)
    assert main(["check", str(vae_run), str(single), str(folder / "noise"), "--list", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["images"][0]["file"] == str(single) and len(record["images"]) == 31
    assert record["images"][1]["file"] == str(folder / "noise" / "00.png")
    capsys.readouterr()
    assert main(["check", str(vae_run), str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["check", str(vae_run), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_a_scorer_fitted_in_memory_is_the_runs_scorer(vae_run, one_thread):
    """oodrun.fit_run_dose (the fit without a run directory, used by the benchmarks) fits what run_dose keeps in
    the run: the same density and held-out reference from the same validation statistics."""
    from vaelab.evaluation.imagecheck import run_scorer

    run = load_run(vae_run)
    kept = run_scorer(run)
    fresh = oodrun.fit_run_dose(kept.validation, run.config.eval.seed)
    assert fresh.transforms == kept.transforms and fresh.scorer.describe() == kept.scorer.describe()
    np.testing.assert_allclose(fresh.density_reference, kept.density_reference)
    np.testing.assert_allclose(fresh.reference, kept.reference)
