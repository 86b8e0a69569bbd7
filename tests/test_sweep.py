"""vaelab sweep: the sweep file's checks, the study and its outputs, resuming, grid, pruning, processes.

Trials are tiny MLP VAEs on the 8x8 digits (2 epochs of 200 images); the first trial of a process
pays for the warm-up of torch, later ones take well under a second.
"""

from __future__ import annotations

import csv
import json
import math
import os

import optuna
import pytest
from PIL import Image

from vaelab import load_config, load_run
from vaelab.cli import main
from vaelab.data import SPLITS, eval_view, load_dataset, spread_index
from vaelab.errors import ConfigError
from vaelab.evaluation.elbo import evaluate_images
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.sweep import (OBJECTIVES, SealedSplit, SealedTestSplitError, load_sweep, run_sweep, seal_test,
                          validation_metrics)
from vaelab.sweep.study import STUDY_NAME, make_pruner, make_sampler, make_storage, suggest

BASE = """\
[data]
dataset = "digits"
val_size = 100
max_train = 200
[model]
arch = "mlp"
mlp_hidden = [64]
latent_dim = 4
[train]
epochs = 2
batch_size = 50
threads = 1
grid_every = 0
grid_size = 4
monitor_images = 0
[eval]
nll_k = 10
nll_images = 50
"""


def write_sweep(path, sweep: str, space: str, base: str = BASE):
    path.write_text(f"{base}\n[sweep]\n{sweep}\n[sweep.space]\n{space}\n")
    return path


def read_csv(out):
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- a TPE sweep, and what it writes


@pytest.fixture(scope="module")
def tpe(tmp_path_factory):
    """A 4-trial TPE sweep run through the Python API, with a spy on every trainer it starts."""
    import sys

    trainer_module = sys.modules["vaelab.training.loop"]  # (vaelab.training.loop, the attribute, is the train function)
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root / "sweep.toml", 'sampler = "tpe"\ntrials = 4\nseed = 3',
                       'train.lr = { low = 1e-3, high = 1e-2, log = true }\n'
                       '"model.latent_dim" = { low = 2, high = 6, step = 2 }\n'
                       '"model.prior" = ["standard", "vamp"]')
    seen = []

    class Spy(trainer_module.Trainer):
        def run(self, on_epoch=None, evaluate=True):
            seen.append({"sealed": isinstance(self.splits.test, SealedSplit), "evaluate": evaluate,
                         "threads": self.cfg.train.threads})
            return super().run(on_epoch=on_epoch, evaluate=evaluate)

    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "Trainer", Spy)
        result = run_sweep(path, root / "out", log=lines.append)
    return {"result": result, "out": root / "out", "seen": seen, "lines": lines, "path": path}


def test_sweep_writes_the_study_tables_plots_and_best_config(tpe):
    result, out = tpe["result"], tpe["out"]
    assert (out / "study.db").is_file() and (out / "sweep.json").is_file()
    rows = read_csv(out)
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert all(r["state"] == "complete" and r["epochs"] == "2" for r in rows)
    values = [float(r["val_nll"]) for r in rows]
    assert result.best_value == min(values)  # the CSV holds every digit
    best = rows[values.index(min(values))]
    assert result.best_number == int(best["number"]) and result.counts == {"complete": 4, "pruned": 0,
                                                                              "failed": 0, "interrupted": 0}
    # every trial is a run directory trained with a seed of its own
    assert sorted(r["seed"] for r in rows) == ["0", "1", "2", "3"]
    assert all((out / r["run_dir"] / "checkpoints" / "best").is_dir() for r in rows)
    # best.toml is the best trial's full config, loadable as a preset
    cfg = load_config(out / "best.toml")
    assert result.best_config == out / "best.toml"
    assert cfg.train.lr == result.best_params["train.lr"] == float(best["train.lr"])
    assert cfg.model.latent_dim == result.best_params["model.latent_dim"] == int(best["model.latent_dim"])
    assert cfg.model.prior == result.best_params["model.prior"] == best["model.prior"]
    assert cfg.train.seed == int(best["seed"]) and cfg.data.dataset == "digits" and cfg.train.epochs == 2
    assert cfg == load_config(out / best["run_dir"] / "config.toml")
    md = (out / "trials.md").read_text()
    assert f"Best: trial {result.best_number}" in md and "(best)**" in md and md.count("| complete") == 3
    assert result.table == out / "trials.md" and result.csv == out / "trials.csv"
    # a plot per parameter and the history, all real PNGs
    names = sorted(p.name for p in result.plots)
    assert names == ["history.png", "model.latent_dim.png", "model.prior.png", "train.lr.png"]
    for p in result.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 500 and im.convert("L").getextrema()[0] < 100
    # progress: a line per trial, then the table and the best config
    text = "\n".join(tpe["lines"])
    assert sum(line.startswith("trial ") and " complete: val_nll " in line for line in tpe["lines"]) == 4
    assert "best config:" in text and "| trial | state |" in text


def test_params_come_from_the_space_and_the_sampler_is_seeded(tpe):
    rows = read_csv(tpe["out"])
    for r in rows:
        assert 1e-3 <= float(r["train.lr"]) <= 1e-2
        assert r["model.latent_dim"] in ("2", "4", "6") and r["model.prior"] in ("standard", "vamp")
    study = optuna.load_study(study_name=STUDY_NAME, storage=make_storage(tpe["out"]))
    first = study.get_trials()[0]
    # trial 0 was drawn by a sampler seeded with sweep.seed + 0: the same draw again
    fresh = optuna.create_study(sampler=make_sampler(load_sweep(tpe["path"]), 3, parallel=False))
    assert suggest(fresh.ask(), load_sweep(tpe["path"])) == {
        "train.lr": first.params["train.lr"], "model.latent_dim": first.params["model.latent_dim"],
        "model.prior": first.params["model.prior"]}


def test_the_test_split_is_never_read(tpe):
    # every trainer of the sweep saw a sealed test split and skipped the final evaluation
    assert len(tpe["seen"]) == 4 and all(s["sealed"] and not s["evaluate"] for s in tpe["seen"])
    assert all(s["threads"] == 1 for s in tpe["seen"])  # the base's train.threads wins over the cores' share
    for r in read_csv(tpe["out"]):
        assert not (tpe["out"] / r["run_dir"] / "evaluation.json").exists()
    splits = load_dataset(load_config(overrides=["data.dataset=digits", "data.val_size=100"]).data)
    sealed = seal_test(splits).test
    assert len(sealed) == len(splits.test) and sealed.image_shape == splits.test.image_shape
    with pytest.raises(SealedTestSplitError, match="validation split only"):
        sealed.images
    with pytest.raises(SealedTestSplitError):
        eval_view(sealed, "test", "dynamic", 0)


def test_objective_is_the_validation_nll_of_the_best_checkpoint(tpe):
    result, out = tpe["result"], tpe["out"]
    run = load_run(out / "trials" / f"{result.best_number:04d}")
    cfg = run.config
    splits = load_dataset(cfg.data)
    val = eval_view(splits.val, "val", cfg.data.binarize, cfg.data.binarize_seed)
    images = val.images[spread_index(len(val), 50, cfg.eval.seed + SPLITS.index("val"))]
    est = importance_sampled(run.model, images, k=cfg.eval.nll_k, batch_size=cfg.eval.nll_batch_size,
                             seed=cfg.eval.seed)
    assert float(-est.log_px.mean()) == pytest.approx(result.best_value, rel=1e-9)
    # ... which is `vaelab evaluate`'s validation row, also when the test split is the smallest (the subsets
    # of evaluate are equal in size across the splits: here 359 test images, 400 validation images)
    from vaelab.evaluation.suite import nll_on_splits
    from vaelab.sweep.validation import validation_nll

    big = cfg.replace(data={"val_size": 400}, eval={"nll_images": 500, "nll_k": 5})
    splits_big = load_dataset(big.data)
    assert len(splits_big.test) < len(splits_big.val) < 500
    row = nll_on_splits(run.model, big, splits_big, log=lambda m: None)["splits"]["val"]
    sealed = validation_nll(run.model, big, seal_test(splits_big))
    assert (sealed.n, sealed.nll) == (row["n"], pytest.approx(row["nll"], rel=1e-12))
    # the table's val -ELBO column is the whole validation split's, scored by the best checkpoint
    nelbo = evaluate_images(run.model, val, beta=cfg.train.beta, batch_size=cfg.train.eval_batch_size).nelbo
    row = read_csv(out)[result.best_number]
    assert float(row["val_nelbo"]) == pytest.approx(nelbo, rel=1e-6)


def test_every_objective_is_computed_on_validation_images(tpe):
    run = load_run(tpe["out"] / "trials" / "0000")
    cfg = run.config
    splits = seal_test(load_dataset(cfg.data))  # each objective must work without the test images
    values = {name: validation_metrics(run.model, cfg, splits, name)[name] for name in OBJECTIVES}
    assert all(math.isfinite(v) for v in values.values())
    val = eval_view(splits.val, "val", cfg.data.binarize, cfg.data.binarize_seed)
    terms = evaluate_images(run.model, val, beta=cfg.train.beta)
    assert values["val_nelbo"] == pytest.approx(terms.nelbo) and values["val_recon"] == pytest.approx(terms.recon)
    assert values["val_loss"] == pytest.approx(terms.loss)
    assert values["val_bits_per_dim"] == pytest.approx(values["val_nll"] / (64 * math.log(2)))
    assert values["val_nll"] <= values["val_nelbo"] + 1.0  # the k-sample bound is tighter than the ELBO
    assert 0 <= values["val_active_units"] <= cfg.model.latent_dim and values["val_active_units"].is_integer()
    monitor = json.loads((tpe["out"] / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()[-1])
    assert monitor["monitor"] is None  # (monitor_images = 0): the gap is computed afresh
    assert abs(values["val_gap"]) < 50
    assert OBJECTIVES["val_active_units"].direction == "maximize"
    # val_fd is the final evaluation's sample fidelity with the validation images in the test images' place
    from dataclasses import replace

    from vaelab.evaluation.frechet import sample_fidelity

    unsealed = load_dataset(cfg.data)
    fidelity = sample_fidelity(run.model, replace(unsealed, test=unsealed.val), seed=cfg.eval.seed)
    assert values["val_fd"] == pytest.approx(fidelity["fd_samples_test"], rel=1e-9) and values["val_fd"] > 0


def test_a_trial_directory_is_a_normal_run(tpe, capsys):
    trial = tpe["out"] / "trials" / f"{tpe['result'].best_number:04d}"
    assert main(["sample", str(trial), "-n", "4", "--out", str(tpe["out"] / "s.png")]) == 0
    assert (tpe["out"] / "s.png").is_file()


# --------------------------------------------------------------------------- resuming


def test_resume_keeps_the_done_trials_and_reruns_an_interrupted_one(tmp_path):
    path = write_sweep(tmp_path / "s.toml", 'sampler = "random"\ntrials = 2',
                       '"train.lr" = { low = 1e-3, high = 1e-2, log = true }\n"model.latent_dim" = [2, 4, 6]')
    out = tmp_path / "out"
    first = run_sweep(path, out, log=lambda m: None)
    before = read_csv(out)
    assert len(before) == 2 and first.counts["complete"] == 2
    run_sweep(path, out, trials=3, log=lambda m: None)
    resumed = read_csv(out)
    assert resumed[:2] == before and len(resumed) == 3  # the completed trials are kept as they were
    # stopped and resumed, the sweep drew what one uninterrupted run draws
    run_sweep(path, tmp_path / "in-one-go", trials=3, log=lambda m: None)
    keys = ["train.lr", "model.latent_dim", "seed", "val_nll"]
    assert [[r[k] for k in keys] for r in read_csv(tmp_path / "in-one-go")] == [[r[k] for k in keys] for r in resumed]
    # a process that died inside a trial leaves it RUNNING in the study
    sweep = load_sweep(path)
    study = optuna.load_study(study_name=STUDY_NAME, storage=make_storage(out))
    study.sampler = make_sampler(sweep, 99, parallel=False)
    stale = study.ask()
    stale_params = suggest(stale, sweep)
    del study
    lines = []
    second = run_sweep(path, out, trials=5, log=lines.append)
    after = read_csv(out)
    assert after[:3] == resumed
    assert [r["state"] for r in after] == ["complete"] * 3 + ["interrupted", "complete", "complete"]
    assert second.counts == {"complete": 5, "pruned": 0, "failed": 0, "interrupted": 1}
    # its parameters were queued again and ran first
    rerun = after[4]
    assert float(rerun["train.lr"]) == stale_params["train.lr"]
    assert int(rerun["model.latent_dim"]) == stale_params["model.latent_dim"]
    assert any("was still running" in line for line in lines)
    # a worker of an earlier sweep still alive (its parent killed): no resume under its feet
    import fcntl

    with open(out / ".workers.lock", "a+") as orphan:
        fcntl.flock(orphan.fileno(), fcntl.LOCK_SH)
        with pytest.raises(ConfigError, match="worker processes of an earlier sweep are still running"):
            run_sweep(path, out, trials=6, log=lines.append)
    # the same command once more: nothing left to run
    third = run_sweep(path, out, trials=5, log=lines.append)
    assert read_csv(out) == after and third.best_number == second.best_number
    assert any("all 5 trials are done" in line for line in lines)


def test_ctrl_c_marks_the_trial_interrupted_and_the_next_run_retries_it(tmp_path, monkeypatch):
    import sys

    trainer_module = sys.modules["vaelab.training.loop"]
    path = write_sweep(tmp_path / "s.toml", 'sampler = "random"\ntrials = 2', '"train.lr" = [1e-3, 2e-3, 4e-3]')
    out = tmp_path / "out"
    started = []

    class Stopped(trainer_module.Trainer):
        def run(self, on_epoch=None, evaluate=True):
            started.append(self.cfg.train.lr)
            if len(started) == 2:
                raise KeyboardInterrupt("SIGINT")
            return super().run(on_epoch=on_epoch, evaluate=evaluate)

    monkeypatch.setattr(trainer_module, "Trainer", Stopped)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, out, log=lines.append)
    assert [r["state"] for r in read_csv(out)] == ["complete", "interrupted"]  # written on the way out
    assert any("run the same command again to resume" in line for line in lines)
    monkeypatch.undo()
    result = run_sweep(path, out, log=lambda m: None)
    rows = read_csv(out)
    assert [r["state"] for r in rows] == ["complete", "interrupted", "complete"]
    assert float(rows[2]["train.lr"]) == started[1]  # the interrupted point ran again
    assert result.counts["complete"] == 2


def test_resume_refuses_another_space_objective_or_base(tmp_path, capsys):
    space = '"train.lr" = [1e-3, 2e-3]'
    path = write_sweep(tmp_path / "s.toml", 'sampler = "grid"\ntrials = 1', space)
    out = tmp_path / "out"
    run_sweep(path, out, log=lambda m: None)
    cases = {
        "search space (train.lr": write_sweep(tmp_path / "a.toml", 'sampler = "grid"', '"train.lr" = [1e-3, 3e-3]'),
        "objective (minimize val_nll there, minimize val_nelbo here)":
            write_sweep(tmp_path / "b.toml", 'sampler = "grid"\nobjective = "val_nelbo"', space),
    }
    for needle, other in cases.items():
        assert main(["sweep", "--config", str(other), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err and "choose another --out" in err
    assert main(["sweep", "--config", str(path), "--out", str(out), "--set", "train.epochs=3"]) == 2
    assert "base config (train.epochs = 2 there, 3 here)" in capsys.readouterr().err
    # where the data live is not part of the search: --data-dir may change
    assert main(["sweep", "--config", str(path), "--out", str(out), "--data-dir", str(tmp_path)]) == 0


def test_a_key_added_by_a_newer_vaelab_does_not_block_a_resume(tmp_path):
    from vaelab.sweep.study import _difference, _normal

    sweep = load_sweep(write_sweep(tmp_path / "s.toml", "", '"train.lr" = [1e-3]'))
    identity = _normal(sweep.identity())
    older = json.loads(json.dumps(identity))
    del older["base"]["train"]["ema"]  # as if written before train.ema existed (its default: 0.0)
    assert _difference(older, identity) is None
    older["base"]["train"]["epochs"] = 7
    assert _difference(older, identity) == "base config (train.epochs = 7 there, 2 here)"


# --------------------------------------------------------------------------- grid, pruning, processes, CLI


def test_grid_with_two_processes_visits_each_point_once(tmp_path, capfd):
    """The CLI end to end: 2 spawned workers share the study and split the grid between them."""
    path = write_sweep(tmp_path / "g.toml", 'sampler = "grid"\npruner = "none"',
                       '"train.lr" = [3e-3, 1e-3]\n"model.mlp_hidden" = [[32], [64]]')
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(path), "--out", str(out), "--jobs", "2"]) == 0
    printed = capfd.readouterr().out
    rows = read_csv(out)
    points = sorted((r["train.lr"], r["model.mlp_hidden"]) for r in rows)
    assert points == [("0.001", "[32]"), ("0.001", "[64]"), ("0.003", "[32]"), ("0.003", "[64]")]
    assert all(r["state"] == "complete" for r in rows)  # every point exactly once, none twice
    study = optuna.load_study(study_name=STUDY_NAME, storage=make_storage(out))
    pids = {t.user_attrs["pid"] for t in study.get_trials()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, both ran trials
    assert "in 2 process(es)" in printed and printed.count(" complete: val_nll ") == 4
    assert "best config:" in printed and (out / "best.toml").is_file()


def test_a_hopeless_trial_is_pruned_after_its_first_epoch(tmp_path):
    path = write_sweep(tmp_path / "p.toml", 'sampler = "grid"\npruner_startup_trials = 1\npruner_warmup_epochs = 1',
                       '"train.lr" = [3e-3, 1e-6]')
    out = tmp_path / "out"
    lines = []
    result = run_sweep(path, out, log=lines.append)
    good, hopeless = read_csv(out)
    assert good["state"] == "complete" and good["epochs"] == "2"
    # far worse than the complete trial after epoch 1: stopped there, a normal run that ended early
    assert hopeless["state"] == "pruned" and hopeless["epochs"] == "1" and hopeless["val_nll"] == ""
    assert float(hopeless["val_nelbo"]) > float(good["val_nelbo"])
    assert len((out / hopeless["run_dir"] / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / hopeless["run_dir"] / "run.json").read_text())["stopped_early"] is True
    assert any(line.startswith("trial 1 pruned after epoch 1 (validation -ELBO ") for line in lines)
    assert result.counts == {"complete": 1, "pruned": 1, "failed": 0, "interrupted": 0}
    assert result.best_number == 0 and load_config(out / "best.toml").train.lr == 3e-3
    assert "| pruned |" in (out / "trials.md").read_text()


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    # the same hopeless trial with one epoch: it has trained all it will, so it completes with its objective
    path = write_sweep(tmp_path / "p.toml", 'sampler = "grid"\npruner_startup_trials = 1\npruner_warmup_epochs = 1',
                       '"train.lr" = [3e-3, 1e-6]')
    result = run_sweep(path, tmp_path / "out", overrides=["train.epochs=1"], log=lambda m: None)
    rows = read_csv(tmp_path / "out")
    assert [r["state"] for r in rows] == ["complete", "complete"] and all(r["val_nll"] for r in rows)
    assert result.counts["pruned"] == 0 and result.best_number == 0


def test_an_invalid_combination_fails_its_trial_not_the_sweep(tmp_path, capsys):
    path = write_sweep(tmp_path / "f.toml", 'sampler = "grid"',
                       '"train.objective" = ["iwae"]\n"train.free_bits" = [0.5]')
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(path), "--out", str(out)]) == 1  # ran, but nothing completed
    printed = capsys.readouterr().out
    assert "trial 0 failed before training: train.free_bits applies to the elbo objective" in printed
    row = read_csv(out)[0]
    assert row["state"] == "failed" and "free_bits" in row["note"]
    assert not (out / "trials" / "0000").exists() and not (out / "best.toml").exists()


@pytest.mark.parametrize("sweep, space, needle", [
    ('sampler = "tpe"\ntrails = 3', '"train.lr" = [1e-3]', "unknown key sweep.trails in"),
    ('', '"train.lr" = { low = 1e-2, high = 1e-3 }', "train.lr: low must be below high"),
    ('', '"train.lr" = { low = 0.0, high = 1e-3, log = true }', "a log range needs low > 0"),
    ('', '"train.lr" = { low = -1.0, high = 1e-3 }', "train.lr must be > 0"),
    ('', '"model.latent_dim" = { low = 2.5, high = 8 }', "low must be an integer"),
    ('', '"train.lr" = { low = 1e-3, high = 1e-2, stride = 2 }', "unknown range key 'stride'"),
    ('objective = "val_nl"', '"train.lr" = [1e-3]', "unknown sweep.objective 'val_nl'; did you mean val_nll?"),
    ('', '"train.learning_rate" = [1e-3]', "unknown config key train.learning_rate in [sweep.space]"),
    ('', '"model.prior" = { low = 1, high = 2 }', "model.prior is not a number"),
    ('', '"model.prior" = ["standard", "gauss"]', "model.prior must be one of"),
    ('sampler = "grid"', '"train.beta" = { low = 0.5, high = 2.0 }', "the grid sampler needs a list"),
    ('', '"train.lr" = 1e-3', "a fixed value belongs in the [train] table"),
    ('objective = "val_active_units"\npruner = "median"', '"train.lr" = [1e-3]', "needs sweep.direction"),
    ('jobs = 0', '"train.lr" = [1e-3]', "sweep.jobs must lie between 1"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, sweep, space, needle):
    path = write_sweep(tmp_path / "bad.toml", sweep, space)
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaelab: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_more_sweep_file_mistakes(tmp_path, capsys):
    no_table = tmp_path / "plain.toml"
    no_table.write_text(BASE)
    assert main(["sweep", "--config", str(no_table), "--out", str(tmp_path / "o")]) == 2
    assert "has no [sweep] table" in capsys.readouterr().err
    path = write_sweep(tmp_path / "s.toml", "", '"train.lr" = [1e-3]')
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--set", "sweep.trials=3"]) == 2
    assert "--set changes the base run config" in capsys.readouterr().err
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--trials", "0"]) == 2
    assert "--trials must lie between 1" in capsys.readouterr().err
    nll_off = write_sweep(tmp_path / "n.toml", "", '"train.lr" = [1e-3]', BASE.replace("nll_images = 50",
                                                                                        "nll_images = 0"))
    assert main(["sweep", "--config", str(nll_off), "--out", str(tmp_path / "o")]) == 2
    assert "eval.nll_images is 0" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("")
    assert main(["sweep", "--config", str(path), "--out", str(run_dir)]) == 2
    assert "holds a training run, not a sweep" in capsys.readouterr().err


def test_help_lists_the_sweep_keys_and_objectives(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vaelab sweep" in text and "--trials N" in text and "--jobs J" in text
    assert all(name in text for name in OBJECTIVES) and "pruner_warmup_epochs" in text and "best.toml" in text


def test_space_spellings_and_distributions(tmp_path):
    """`"model.latent_dim"`, a dotted `train.lr` and a [sweep.space.data] table all name config keys; a range's
    kind follows the key's type; list-valued keys take lists; a grid enumerates its points."""
    path = write_sweep(tmp_path / "s.toml", 'sampler = "grid"',
                       'train.lr = [1e-3, 2e-3]\n"model.latent_dim" = { low = 2, high = 6, step = 2 }\n'
                       '"model.mlp_hidden" = [[32], [64, 32]]\n"train.beta" = { low = 0.5, high = 1.0, step = 0.25 }\n'
                       '[sweep.space.data]\nmax_train = { low = 100, high = 200, step = 100 }')
    sweep = load_sweep(path)
    assert [p.key for p in sweep.space] == ["train.lr", "model.latent_dim", "model.mlp_hidden", "train.beta",
                                            "data.max_train"]
    assert sweep.space[1].points() == [2, 4, 6] and sweep.space[3].points() == [0.5, 0.75, 1.0]
    assert type(sweep.space[4]).__name__ == "IntRange" and sweep.space[4].points() == [100, 200]
    assert sweep.space[2].values == ((32,), (64, 32)) and sweep.space[2].labels() == ("[32]", "[64, 32]")
    assert sweep.grid_size() == 2 * 3 * 2 * 3 * 2 == len(sweep.grid()) == sweep.target()
    assert sweep.target(5) == 5 and sweep.target(100) == 72
    assert sweep.grid()[-1] == {"train.lr": 2e-3, "model.latent_dim": 6, "model.mlp_hidden": (64, 32),
                                "train.beta": 1.0, "data.max_train": 200}
    assert sweep.settings.direction == "minimize" and sweep.settings.pruner == "median"
    with pytest.raises(ConfigError, match="not a multiple of step"):
        load_sweep(write_sweep(tmp_path / "t.toml", "", '"train.beta" = { low = 0.5, high = 1.0, step = 0.3 }'))
    maximize = load_sweep(write_sweep(tmp_path / "m.toml", 'objective = "val_active_units"', 'train.lr = [1e-3]'))
    assert maximize.settings.direction == "maximize" and maximize.settings.pruner == "none"
    off = load_sweep(write_sweep(tmp_path / "o.toml", 'pruner = "none"\ndirection = "maximize"', 'train.lr = [1e-3]'))
    assert off.settings.pruner == "none" and off.settings.direction == "maximize"
    assert type(make_pruner(off)).__name__ == "NopPruner" and type(make_pruner(sweep)).__name__ == "MedianPruner"


def test_without_optuna_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    path = write_sweep(tmp_path / "s.toml", "", '"train.lr" = [1e-3]')
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'vaelab[sweep]'" in capsys.readouterr().err


def test_the_example_sweep_file_loads_and_its_trials_are_valid_configs():
    from pathlib import Path

    from vaelab.sweep.trial import trial_config

    sweep = load_sweep(Path(__file__).resolve().parent.parent / "configs" / "sweeps" / "fashion-mnist.toml")
    assert sweep.base.data.dataset == "fashion-mnist" and sweep.settings.objective == "val_nll"
    assert {p.key for p in sweep.space} >= {"train.lr", "model.latent_dim", "train.beta", "train.warmup",
                                            "model.prior", "model.dropout"}
    study = optuna.create_study(sampler=make_sampler(sweep, 0, parallel=False))
    for number in range(8):  # drawn points make valid run configs (no combination is refused)
        params = suggest(study.ask(), sweep)
        cfg = trial_config(sweep, params, number, threads=1)
        assert cfg.train.seed == number and cfg.train.threads == 1 and cfg.train.lr == params["train.lr"]
