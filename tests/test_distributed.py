"""Data-parallel training: torchrun with 2 processes on gloo (127.0.0.1) takes the steps one process takes
with the same global batch, only rank 0 writes, and checkpoints resume on another number of processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab import noise
from vaelab.training.distributed import Group
from vaelab.runs import load_run

# training images in batches of 64 whose last batch is odd, so it splits unevenly over 2 processes
BASE = ["--set", "data.dataset=digits", "--set", "data.image_size=16", "--set", "data.max_train=301",
        "--set", "train.batch_size=64", "--set", "train.grid_every=0", "--set", "train.grid_size=4",
        "--set", "eval.nll_images=0", "--set", "eval.gap_images=0", "--set", "model.conv_channels=[8,16]",
        "--set", "model.latent_dim=4", "--set", "train.checkpoint_minutes=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    scratch = tmp / f"tmp-{nproc}-{len(list(tmp.glob('tmp-*')))}"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "CI": "true"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "vaelab", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "vaelab", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    leftovers = [p.name for p in scratch.iterdir() if p.name.startswith("vaelab-rank")]
    assert not leftovers, f"the other ranks' scratch directories were not removed: {leftovers}"
    return proc


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_run(run, checkpoint=name).model.state_dict()


def _close(a: dict, b: dict, tol: float = 1e-4) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in a)
    assert worst < tol, f"weights differ by {worst:.2e} (relative)"
    return worst


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [[], ["--set", "model.dropout=0.2", "--set", "train.objective=iwae",
                                        "--set", "train.iwae_k=3"]], ids=["elbo", "iwae+dropout"])
def test_two_processes_take_the_steps_of_one(tmp_path, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*BASE, "--set", "train.epochs=2", *extra]
    _run(tmp_path, 1, *args, "--out", str(one))
    proc = _run(tmp_path, 2, *args, "--out", str(two))
    _close(_weights(two), _weights(one))
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == [1, 2]
    for a, b in zip(m1, m2):  # the epoch's training loss is summed over both processes' rows
        assert abs(a["train"]["loss"] - b["train"]["loss"]) < 1e-4 * abs(a["train"]["loss"])
    assert "data-parallel on 2 processes" in proc.stdout
    # only rank 0 wrote: one log, one evaluation, the usual files
    assert (two / "evaluation.json").is_file() and json.loads((two / "run.json").read_text())["processes"] == 2


def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(tmp_path, 1, *BASE, "--set", "train.epochs=3", "--out", str(straight))
    _run(tmp_path, 2, *BASE, "--set", "train.epochs=2", "--out", str(split))
    proc = _run(tmp_path, 1, "--resume", str(split), "--set", "train.epochs=3")
    assert "written by 2 process(es)" in proc.stdout
    _close(_weights(split), _weights(straight))
    # and the other way round: begun on 1 process, continued on 2
    back = tmp_path / "back"
    _run(tmp_path, 1, *BASE, "--set", "train.epochs=2", "--out", str(back))
    _run(tmp_path, 2, "--resume", str(back), "--set", "train.epochs=3")
    _close(_weights(back), _weights(straight))


def test_rows_cover_the_batch_once_and_noise_shards_are_the_whole_batch_noise():
    for n in (1, 2, 7, 64, 65):
        for world in (1, 2, 3):
            parts = [Group(rank=r, world=world).rows(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    like = torch.zeros(())
    torch.manual_seed(3)
    whole = noise.standard_normal((3, 10, 4), like, batch_dim=1)  # 3 samples (sample-major) of 10 rows
    grouped = noise.standard_normal((30, 4), like)
    pieces, flat = [], []
    for start, stop in [(0, 4), (4, 10)]:
        torch.manual_seed(3)
        with noise.shard(start, stop, 10):
            pieces.append(noise.standard_normal((3, stop - start, 4), like, batch_dim=1))
            flat.append(noise.standard_normal((3 * (stop - start), 4), like))
    assert torch.equal(torch.cat(pieces, 1), whole)
    assert torch.equal(torch.cat([f.view(3, -1, 4) for f in flat], 1), grouped.view(3, 10, 4))
    with pytest.raises(ValueError, match="does not match a shard"), noise.shard(0, 4, 10):
        noise.standard_normal((5, 4), like)


def test_an_incomplete_torchrun_environment_is_one_clear_error(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "CI": "true"}
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run([sys.executable, "-m", "vaelab", "train", *BASE, "--set", "train.epochs=1", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "launch distributed training with torchrun" in proc.stderr and "Traceback" not in proc.stderr
