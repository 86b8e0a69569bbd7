"""Runs survive interruption: SIGKILL at random moments, SIGTERM, a second process on the same directory."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaelab import load_config, load_run, resume, train
from vaelab.cli import main
from vaelab.errors import ConfigError
from vaelab.runs.lifecycle import lock_run_dir

ARGS = ["--set", "data.dataset=digits", "--set", "data.image_size=16", "--set", "train.epochs=6",
        "--set", "train.grid_every=0", "--set", "train.grid_size=4", "--set", "eval.nll_images=0",
        "--set", "train.checkpoint_steps=3"]  # checkpoints inside epochs too: kills land in and between them


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaelab", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_run(run, checkpoint=name).model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _start(*ARGS, "--out", str(out))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return out


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(reference, tmp_path):
    """Killed with SIGKILL at random moments (during steps, validation or checkpoint writes) and resumed until
    it finishes, each run ends with weights bit-identical to the uninterrupted one, best and last."""
    rng = random.Random(2026)
    kills = 0
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        proc = _start(*ARGS, "--out", str(out))
        time.sleep(rng.uniform(5.0, 11.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (out / "evaluation.json").is_file():
            continue_with = None
        elif (out / "config.toml").is_file():
            continue_with = ["--resume", str(out)]
        else:  # killed while still loading data: nothing of the run exists yet, the same command starts it
            continue_with = [*ARGS, "--out", str(out)]
        if continue_with:
            resumed = _start(*continue_with)
            assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
        for name in ("last", "best"):
            assert _same(_weights(out, name), _weights(reference, name)), (trial, name)
        ref_lines = (reference / "metrics.jsonl").read_text().splitlines()
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == len(ref_lines) == 6  # no epoch lost, none twice
    assert kills >= 2  # the kills really landed while training ran


KILL_IN_WRITE = """
import os, sys, time
import vaelab.runs.checkpoint as ckpt
from vaelab.cli import main
marker, nth = sys.argv[1], int(sys.argv[2])
original, calls = ckpt._write_file, [0]

def write(path, data):
    calls[0] += 1
    if calls[0] == nth:  # half the file on disk, then wait to be killed
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        open(marker, "w").close()
        time.sleep(120)
    original(path, data)

ckpt._write_file = write
sys.exit(main(["train", *sys.argv[3:]]))
"""


@pytest.mark.parametrize("nth", [4, 11])  # inside the 2nd checkpoint's weights; inside a later one's meta.json
def test_sigkill_inside_a_checkpoint_write_then_resume_gives_identical_weights(reference, tmp_path, nth):
    out, marker = tmp_path / "run", tmp_path / "in-write"
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_WRITE, str(marker), str(nth), *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert any(".tmp-" in p.name for p in (out / "checkpoints").iterdir())  # the kill landed mid-write
    resumed = _start("--resume", str(out))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    for name in ("last", "best"):
        assert _same(_weights(out, name), _weights(reference, name)), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]  # no debris left


def test_sigterm_stops_cleanly_and_says_how_to_resume(reference, tmp_path):
    out = tmp_path / "termed"
    proc = _start(*ARGS, "--out", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "last").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert f"vaelab train --resume {out}" in output
    assert "Traceback" not in output
    resumed = _start("--resume", str(out))
    assert resumed.wait(timeout=300) == 0
    assert _same(_weights(out, "last"), _weights(reference, "last"))


def test_in_process_resume_and_more_epochs(tmp_path, monkeypatch):
    from vaelab.training.loop import Trainer

    cfg = load_config(overrides=["data.dataset=digits", "train.epochs=3", "train.grid_every=0", "train.grid_size=4",
                                 "eval.nll_images=0"])
    full = train(cfg, tmp_path / "full", log=lambda m: None)
    calls = {"n": 0}
    original = Trainer.train_epoch

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", log=lambda m: None)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    result = resume(tmp_path / "part", log=lambda m: None)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert _same(_weights(tmp_path / "part", "last"), _weights(tmp_path / "full", "last"))
    assert full.evaluation["splits"]["test"] == result.evaluation["splits"]["test"]
    with pytest.raises(ConfigError, match="nothing to resume"):
        resume(tmp_path / "part", log=lambda m: None)
    more = resume(tmp_path / "part", epochs=4, log=lambda m: None)  # train further than first asked
    assert [r["epoch"] for r in more.history] == [1, 2, 3, 4]


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "busy"
    run.mkdir()
    holder = lock_run_dir(run)
    try:
        cfg = load_config(overrides=["data.dataset=digits", "train.epochs=1", "train.grid_size=4"])
        with pytest.raises(ConfigError, match="is in use by vaelab process"):
            train(cfg, run, log=lambda m: None)
    finally:
        holder.close()
    assert not (run / "config.toml").exists()  # the refused process wrote nothing


def test_resume_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing-here")]) == 2
    assert "holds no vaelab run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--set", "train.lr=0.1"]) == 2
    assert "only --set train.epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "leave out --config" in capsys.readouterr().err


def test_a_run_killed_during_its_final_evaluation_resumes_into_it(tmp_path, monkeypatch):
    """All epochs trained, then interrupted while evaluating: --resume writes the evaluation instead of refusing."""
    from vaelab.training.loop import Trainer

    cfg = load_config(overrides=["data.dataset=digits", "train.epochs=2", "train.grid_every=0", "train.grid_size=4",
                                 "eval.nll_images=0"])
    original = Trainer.finish

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run" / "evaluation.json").exists()
    monkeypatch.setattr(Trainer, "finish", original)
    messages = []
    result = resume(tmp_path / "run", log=messages.append)
    assert any("stopped before its final evaluation" in m for m in messages)
    assert (tmp_path / "run" / "evaluation.json").is_file()
    assert [r["epoch"] for r in result.history] == [1, 2]  # no epoch trained again
    with pytest.raises(ConfigError, match="nothing to resume"):
        resume(tmp_path / "run", log=lambda m: None)
