"""Numerical faults (NaN/inf loss or gradient, gradient clipping) and stops inside an epoch."""

import json
import math
import signal

import pytest
import torch

from vaelab import load_config, load_run, resume, train
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.training.guard import BadSteps
from vaelab.models.distributions import BernoulliLikelihood
from vaelab.training.loop import Trainer

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0",
          "train.monitor_images=0"]


@pytest.fixture(scope="module")
def splits():
    from vaelab.data import load_dataset

    return load_dataset(load_config(overrides=DIGITS).data)


def _state(run, name="last"):
    return load_run(run, checkpoint=name).model.state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _inject(monkeypatch, bad_calls, kind="loss"):
    """Make the training steps numbered in `bad_calls` (1-based, evaluation excluded) bad."""
    original = BernoulliLikelihood.log_prob
    calls = {"n": 0}

    def log_prob(self, x, params):
        out = original(self, x, params)
        if not torch.is_grad_enabled():
            return out
        calls["n"] += 1
        if calls["n"] in bad_calls:
            return out * float("inf") if kind == "loss" else _NanGradient.apply(out)
        return out

    monkeypatch.setattr(BernoulliLikelihood, "log_prob", log_prob)
    return calls


def test_bad_steps_policy_counts_and_decides():
    b = BadSteps(patience=3, policy="restore", max_restores=1)
    assert [b.record_bad() for _ in range(3)] == [None, None, "restore"]
    b.record_good()
    assert [b.record_bad() for _ in range(2)] == [None, None]
    b.record_good()  # a good step breaks the streak
    assert [b.record_bad() for _ in range(3)] == [None, None, "stop"]  # restores used up
    assert b.total == 8 and b.restores == 1
    assert BadSteps(patience=1, policy="stop", max_restores=5).record_bad() == "stop"


def test_a_nan_gradient_with_a_finite_loss_is_skipped_and_counted(tmp_path, splits, monkeypatch):
    calls = _inject(monkeypatch, {2, 5}, kind="grad")
    result = train(load_config(overrides=[*DIGITS, "train.epochs=1"]), tmp_path / "r", splits=splits,
                   log=lambda m: None)
    steps = math.ceil(len(splits.train) / 128)
    assert calls["n"] == steps
    assert result.history[0]["skipped_steps"] == 2
    assert result.history[0]["step"] == steps - 2
    assert all(torch.isfinite(v).all() for v in _state(tmp_path / "r").values())


def test_bad_steps_in_a_row_restore_the_last_good_checkpoint_with_a_lower_lr(tmp_path, splits, monkeypatch):
    """Epoch 2 begins with 3 infinite losses in a row (train.nan_patience=3): the run goes back to the
    weights and Adam state of epoch 1's checkpoint, halves the learning rate and finishes."""
    steps = math.ceil(len(splits.train) / 128)
    _inject(monkeypatch, {steps + 1, steps + 2, steps + 3})
    seen = {}
    original = Trainer._bad_step

    def watch(self):
        original(self)
        if self.bad.restores and "weights" not in seen:
            seen["weights"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            seen["on_disk"] = load_checkpoint(self.paths.checkpoint("last")).tensors["model"]
            seen["adam_steps"] = {int(s["step"]) for s in self.optimizer.state_dict()["state"].values()}

    monkeypatch.setattr(Trainer, "_bad_step", watch)
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.nan_patience=3"])
    messages = []
    result = train(cfg, tmp_path / "r", splits=splits, log=messages.append)
    assert _same(seen["weights"], seen["on_disk"])  # the weights at the restore are epoch 1's checkpoint
    assert seen["adam_steps"] == {steps}  # and so is Adam's state
    assert [r["lr"] for r in result.history] == [1e-3, 5e-4]
    assert [r["restores"] for r in result.history] == [0, 1]
    assert result.history[1]["skipped_steps"] == 3
    assert any(f"last at batch 3 of epoch 2, after {steps} applied steps: restored the weights and optimizer of the "
               "end of epoch 1" in m
               for m in messages)
    # the lowered rate is part of the checkpoint: a resumed run keeps it
    meta = load_checkpoint(tmp_path / "r" / "checkpoints" / "last").meta
    assert meta["restores"] == 1 and meta["optimizer"]["param_groups"][0]["lr"] == 5e-4


def test_gradient_clipping_is_applied_and_counted(tmp_path, splits):
    def run(name, clip):
        cfg = load_config(overrides=[*DIGITS, "train.epochs=1", f"train.grad_clip={clip}"])
        return train(cfg, tmp_path / name, splits=splits, log=lambda m: None).history[0]

    steps = math.ceil(len(splits.train) / 128)
    assert run("off", 0)["clipped_steps"] == 0
    assert run("huge", 1e9)["clipped_steps"] == 0
    assert run("tiny", 1e-3)["clipped_steps"] == steps
    assert _same(_state(tmp_path / "off"), _state(tmp_path / "huge"))  # a clip that never bites changes nothing
    assert not _same(_state(tmp_path / "off"), _state(tmp_path / "tiny"))


def _stop_at(monkeypatch, call, how):
    """Interrupt the `call`-th training step: raise KeyboardInterrupt in it, or send SIGTERM / SIGINT from it."""
    original = Trainer._step
    calls = {"n": 0}

    def step(self, x, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            if how == "kill":
                raise KeyboardInterrupt
            signal.raise_signal(how)  # arrives during the step; the step still completes
        return original(self, x, **kwargs)

    monkeypatch.setattr(Trainer, "_step", step)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_an_epoch_finishes_the_step_writes_a_checkpoint_and_resumes_to_the_step(
        tmp_path, splits, monkeypatch, sig):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2"])
    train(cfg, tmp_path / "full", splits=splits, log=lambda m: None)
    steps = math.ceil(len(splits.train) / 128)
    _stop_at(monkeypatch, steps + 4, sig)  # the 4th step of epoch 2
    messages = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", splits=splits, log=messages.append)
    meta = load_checkpoint(tmp_path / "part" / "checkpoints" / "last").meta
    assert meta["epoch"] == 1 and meta["step"] == steps + 4  # the step in flight was finished and saved
    assert meta["in_epoch"]["batches"] == 4
    assert any(f"step {steps + 4}, batch 4 of {steps} in epoch 2 is saved" in m for m in messages)
    assert json.loads((tmp_path / "part" / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    result = resume(tmp_path / "part", splits=splits, log=lambda m: None)
    assert _same(_state(tmp_path / "part"), _state(tmp_path / "full"))
    assert [r["epoch"] for r in result.history] == [1, 2]
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert result.history[1]["train"] == full[1]["train"]  # the epoch's averages survive the stop


def test_periodic_checkpoints_inside_an_epoch_resume_bit_identically(tmp_path, splits, monkeypatch):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.checkpoint_steps=3"])
    train(cfg, tmp_path / "full", splits=splits, log=lambda m: None)
    steps = math.ceil(len(splits.train) / 128)
    _stop_at(monkeypatch, steps + 5, "kill")  # killed in step 5 of epoch 2: the checkpoint of step 3 is used
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", splits=splits, log=lambda m: None)
    meta = load_checkpoint(tmp_path / "part" / "checkpoints" / "last").meta
    assert meta["in_epoch"]["batches"] == 3
    monkeypatch.undo()
    resume(tmp_path / "part", splits=splits, log=lambda m: None)
    assert _same(_state(tmp_path / "part"), _state(tmp_path / "full"))
    assert _same(_state(tmp_path / "part", "best"), _state(tmp_path / "full", "best"))


@pytest.mark.parametrize("bad", ["train.nan_patience=0", "train.on_nan=retry", "train.nan_lr_factor=0",
                                 "train.nan_lr_factor=1.5", "train.grad_clip=-1", "train.grad_clip=inf",
                                 "train.checkpoint_minutes=-1", "train.max_restores=-1", "train.checkpoint_steps=-2"])
def test_bad_fault_settings_are_refused(bad):
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        load_config(overrides=[bad])


def test_stop_signals_defer_inside_steps_and_not_twice_or_outside():
    from vaelab.training.guard import StopSignals

    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        with pytest.raises(KeyboardInterrupt):  # outside the steps: at once
            signal.raise_signal(signal.SIGTERM)
        signals.stepping = True
        signal.raise_signal(signal.SIGTERM)  # inside: only noted
        assert signals.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
