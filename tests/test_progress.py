"""Progress inside an epoch without a terminal: a line per interval with the time left, and an estimate of the
whole run up front (only for runs longer than two intervals)."""

from types import SimpleNamespace

import torch

from vaelab.config import TrainConfig
from vaelab.training.callbacks.progress import ProgressLines, busy_note


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _trainer(lines, epochs=3):
    return SimpleNamespace(config=SimpleNamespace(train=TrainConfig(epochs=epochs, batch_size=100)), epoch=0,
                           log=lines.append, device=torch.device("cpu"))


def test_lines_every_interval_with_the_time_left_and_one_estimate():
    lines, clock = [], _Clock()
    cb = ProgressLines(every=60.0, clock=clock)
    t = _trainer(lines)
    cb.on_epoch_start(t, 0, 400)
    for batch in range(1, 401):
        clock.t = batch * 0.5  # 0.5 s per batch: 200 s per epoch, 600 s for the run
        cb.on_step_end(t, batch, 400, None)
    estimates = [m for m in lines if m.startswith("estimate:")]
    assert estimates == ["estimate: about 10 min of training for the 3 epoch(s) left (200 s per epoch, "
                         "validation not counted)" + busy_note("cpu")]
    progress = [m for m in lines if m.startswith("epoch 1/3: batch")]
    assert len(progress) == 3  # at 60, 120 and 180 s
    assert progress[0] == "epoch 1/3: batch 120/400 (30%), 200 img/s, 2 min left in the epoch, about 9 min in the run"


def test_short_runs_print_nothing_more():
    lines, clock = [], _Clock()
    cb = ProgressLines(every=60.0, clock=clock)
    t = _trainer(lines, epochs=2)
    cb.on_epoch_start(t, 0, 15)
    for batch in range(1, 16):
        clock.t = batch * 0.1
        cb.on_step_end(t, batch, 15, None)
    assert lines == []


def test_the_busy_note_names_the_load_and_the_fix(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.9, 3.0, 2.0))
    assert busy_note("cpu") == ("; the machine is busy (load 3.9 on 2 cores), so this run shares the CPU: fewer "
                                "threads per run (train.threads) or fewer runs at once may help")
    assert busy_note("cuda") == ""
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert busy_note("cpu") == ""
