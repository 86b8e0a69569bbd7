"""The device-resident training path (train.device_data) on the CPU: it computes what the host path computes.

On the CPU its generator is the data generator itself and fused Adam computes what plain Adam does, so for
the same seed the two paths give the same losses and weights bit for bit; bad steps are counted and acted
on at the counters' reads (every train.sync_steps)."""

import math

import pytest
import torch

from vaelab import load_config, load_run, resume, train
from vaelab.config import TrainConfig
from vaelab.models.distributions import BernoulliLikelihood
from vaelab.training.device import wants_device_data
from vaelab.training.step import batch_lr_factor, learning_rate

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0",
          "train.monitor_images=0", "train.batch_size=100"]
HARD = ["train.grad_clip=8", "train.ema=0.99", "data.augment_shift=1", "train.warmup=1", "train.lr_schedule=cosine",
        "train.skip_grad_norm=1e6"]


@pytest.fixture(scope="module")
def splits():
    from vaelab.data import load_dataset

    return load_dataset(load_config(overrides=DIGITS).data)


def _weights(run, name="last"):
    return load_run(run, checkpoint=name).model.state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(history):
    return [(r["train"]["loss"], r["val"]["loss"], r["step"], r["clipped_steps"]) for r in history]


def _run(tmp_path, splits, name, *extra):
    cfg = load_config(overrides=[*DIGITS, *HARD, "train.epochs=2", *extra])
    return train(cfg, tmp_path / name, splits=splits, log=lambda m: None)


def test_the_device_path_on_cpu_gives_the_host_paths_losses_and_weights(tmp_path, splits):
    host = _run(tmp_path, splits, "host", "train.device_data=off")
    dev = _run(tmp_path, splits, "dev", "train.device_data=on", "train.sync_steps=3")
    assert _losses(host.history) == _losses(dev.history)
    assert host.history[-1]["clipped_steps"] > 0  # the clip did bite, on both paths alike
    assert _same(_weights(tmp_path / "host"), _weights(tmp_path / "dev"))
    assert _same(_weights(tmp_path / "host", "best"), _weights(tmp_path / "dev", "best"))  # the EMA too


def test_the_device_path_resumes_exactly_inside_an_epoch(tmp_path, splits):
    """Stopped after 3 steps of epoch 2 (the `last` checkpoint of a step clock), resumed: the same weights as
    a straight run."""
    straight = _run(tmp_path, splits, "straight", "train.device_data=on")
    cfg = load_config(overrides=[*DIGITS, *HARD, "train.epochs=2", "train.device_data=on",
                                 "train.checkpoint_steps=3"])
    steps = math.ceil(len(splits.train) / 100)

    def stop_in_epoch_2(trainer, batch, of, stats, _seen={"n": 0}):
        _seen["n"] += 1
        if _seen["n"] == steps + 4:
            raise KeyboardInterrupt("test")

    from vaelab.training import Callback

    class Stop(Callback):
        on_step_end = staticmethod(stop_in_epoch_2)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "pieces", splits=splits, log=lambda m: None, callbacks=[Stop()])
    resumed = resume(tmp_path / "pieces", splits=splits, log=lambda m: None)
    assert _losses(resumed.history) == _losses(straight.history)
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "pieces"))


def _inject(monkeypatch, bad_calls):
    original = BernoulliLikelihood.log_prob
    calls = {"n": 0}

    def log_prob(self, x, params):
        out = original(self, x, params)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return out * float("inf")
        return out

    monkeypatch.setattr(BernoulliLikelihood, "log_prob", log_prob)


@pytest.mark.parametrize("sync", [1, 4])
def test_bad_steps_are_skipped_counted_and_restored_on_the_device(tmp_path, splits, monkeypatch, sync):
    """Steps 2, 9, 10, 11 of epoch 2 have an infinite loss (nan_patience 3): the device path skips them,
    counts them, and restores epoch 1's checkpoint with half the rate, as the host path does."""
    steps = math.ceil(len(splits.train) / 100)
    bad = {steps + 2, steps + 9, steps + 10, steps + 11}
    records = {}
    for path in ("off", "on"):
        _inject(monkeypatch, bad)
        cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.nan_patience=3", f"train.device_data={path}",
                                     f"train.sync_steps={sync}"])
        records[path] = train(cfg, tmp_path / f"{path}{sync}", splits=splits, log=lambda m: None).history
        monkeypatch.undo()
    for key in ("skipped_steps", "restores", "lr"):
        assert [r[key] for r in records["on"]] == [r[key] for r in records["off"]], key
    assert records["on"][1]["skipped_steps"] == 4 and records["on"][1]["restores"] == 1
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / f"on{sync}").values())
    if sync == 1:  # read after every step: the very host path, restore included
        assert _losses(records["on"]) == _losses(records["off"])


def test_device_data_auto_is_on_for_cuda_and_compile_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not wants_device_data(TrainConfig(), cpu, distributed=False)
    assert wants_device_data(TrainConfig(), cuda, distributed=False)
    assert wants_device_data(TrainConfig(compile=True), cpu, distributed=False)
    assert not wants_device_data(TrainConfig(device_data="on"), cuda, distributed=True)  # rows split on the host
    assert not wants_device_data(TrainConfig(device_data="off"), cuda, distributed=False)


def test_the_batch_size_rule_scales_the_learning_rate():
    base = TrainConfig(lr=1e-3, batch_size=1024)
    assert batch_lr_factor(base) == 1.0
    assert batch_lr_factor(TrainConfig(batch_size=512, lr_scaling="sqrt")) == pytest.approx(2.0)
    assert batch_lr_factor(TrainConfig(batch_size=512, lr_scaling="linear")) == pytest.approx(4.0)
    assert learning_rate(TrainConfig(batch_size=512, lr_scaling="sqrt"), 0, 10, 0) == pytest.approx(2e-3)
    assert learning_rate(base, 0, 10, 0) == 1e-3


def test_bf16_autocast_trains_and_says_so_in_the_config(tmp_path, splits):
    result = _run(tmp_path, splits, "bf16", "train.precision=bf16", "train.epochs=1")
    assert math.isfinite(result.history[-1]["val"]["loss"])
    host = _run(tmp_path, splits, "fp32", "train.epochs=1")
    # bf16 keeps about 3 significant digits in the forward pass: close to fp32's loss, not equal
    assert result.history[-1]["train"]["loss"] == pytest.approx(host.history[-1]["train"]["loss"], rel=0.05)
    assert result.history[-1]["train"]["loss"] != host.history[-1]["train"]["loss"]


def test_fused_adams_found_inf_skips_the_whole_update():
    """What the CUDA device path relies on: a set `found_inf` leaves weights, moments and step count as they were."""
    p = torch.nn.Parameter(torch.randn(300))
    opt = torch.optim.Adam([p], lr=1e-2, fused=True)
    p.grad = torch.randn(300)
    opt.found_inf = torch.zeros(())
    opt.step()
    before = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.full((300,), float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    assert torch.equal(p.detach(), before)
    assert all(torch.equal(state[k], opt.state[p][k]) for k in state)
    p.grad = torch.randn(300)
    opt.found_inf = torch.zeros(())
    opt.step()
    assert not torch.equal(p.detach(), before) and int(opt.state[p]["step"]) == 2


def test_a_compile_failure_trains_on_eagerly_with_one_note(tmp_path, splits, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found\nlong details")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    messages = []
    cfg = load_config(overrides=[*DIGITS, "train.epochs=1", "train.compile=true"])
    compiled = train(cfg, tmp_path / "c", splits=splits, log=messages.append)
    notes = [m for m in messages if "train.compile failed" in m]
    assert notes == ["note: train.compile failed (RuntimeError: no C++ compiler found); training eagerly"]
    eager = train(load_config(overrides=[*DIGITS, "train.epochs=1", "train.device_data=on"]), tmp_path / "e",
                  splits=splits, log=lambda m: None)
    assert _losses(compiled.history) == _losses(eager.history)


@pytest.mark.slow
def test_compiled_training_on_cpu_gives_the_eager_losses_within_float_rounding(tmp_path, splits):
    """torch.compile (inductor, C++ on the CPU) fuses kernels, so sums round differently: close, not equal."""
    compiled = _run(tmp_path, splits, "compiled", "train.compile=true", "train.epochs=1")
    eager = _run(tmp_path, splits, "eager", "train.device_data=on", "train.epochs=1")
    assert compiled.history[0]["train"]["loss"] == pytest.approx(eager.history[0]["train"]["loss"], rel=1e-4)
    assert compiled.history[0]["val"]["loss"] == pytest.approx(eager.history[0]["val"]["loss"], rel=1e-4)
