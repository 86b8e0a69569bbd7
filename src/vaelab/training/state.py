"""The training state that is not weights: counters, the best epoch, the history, where inside an epoch
`last` was written, and how it goes into a checkpoint's meta.json and comes back out of it.

Weights, the optimizer's state, the weight average and the random generators go into the checkpoint
beside it (see `TrainState.meta` and `restore_counters`); together they let a resumed run continue
bit-identically on the same machine.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vaelab._version import __version__
from vaelab.config import RunConfig, to_dict
from vaelab.errors import ConfigError
from vaelab.fileio import atomic_write
from vaelab.runs import RunPaths, json_safe
from vaelab.runs.checkpoint import LoadedCheckpoint, decode_rng, encode_rng, optimizer_state_from_tensors
from vaelab.training.ema import EMA
from vaelab.training.guard import BadSteps


@dataclass
class TrainState:
    """Where training stands; the loop changes it, checkpoints store it."""

    epoch: int = 0  # epochs finished
    saved_epoch: int = 0  # the epoch the `last` checkpoint holds
    step: int = 0  # optimizer steps applied
    best_val: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics records so far
    train_time: float = 0.0  # seconds spent in training epochs
    stopped_early: bool = False
    clipped: int = 0  # steps whose gradient was clipped (train.grad_clip)
    skipped_large: int = 0  # steps skipped for a gradient norm above train.skip_grad_norm
    beta: float = 1.0  # the KL weight of the latest step (below train.beta while warming up)
    # where inside an epoch `last` was written (None: at an epoch's end): the epoch's data order, batches
    # done, and its sums so far
    position: dict[str, Any] | None = None

    def describe_save(self) -> str:
        """Where the `last` checkpoint stands, in words, for the log."""
        if self.position is None:
            return f"the end of epoch {self.epoch} (step {self.step})"
        p = self.position
        return f"step {self.step}, batch {p['batches']} of {p['of']} in epoch {self.epoch + 1}"

    def meta(self, config: RunConfig, image_shape: tuple[int, ...], bad: BadSteps, ema: EMA | None,
             processes: int, rng: dict[str, str]) -> dict[str, Any]:
        """The checkpoint's meta.json: the config, this state, the bad-step counters and the generators."""
        return {
            "vaelab_version": __version__,
            "config": to_dict(config),
            "image_shape": list(image_shape),
            "epoch": self.epoch,
            "step": self.step,
            "best_val": None if math.isinf(self.best_val) else self.best_val,
            "best_epoch": self.best_epoch,
            "skipped_steps": bad.total,
            "bad_in_a_row": bad.in_a_row,
            "restores": bad.restores,
            "clipped_steps": self.clipped,
            "skipped_large": self.skipped_large,
            "ema_updates": ema.updates if ema is not None else None,
            "in_epoch": self.position,
            "history": self.history,
            "train_time_s": self.train_time,
            "stopped_early": self.stopped_early,
            "processes": processes,
            "rng": rng,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], beta: float) -> "TrainState":
        """The state a `last` checkpoint holds."""
        epoch = int(meta["epoch"])
        return cls(epoch=epoch, saved_epoch=epoch, step=int(meta["step"]),
                   best_val=math.inf if meta.get("best_val") is None else float(meta["best_val"]),
                   best_epoch=int(meta.get("best_epoch", 0)), history=list(meta["history"]),
                   train_time=float(meta.get("train_time_s", 0.0)),
                   stopped_early=bool(meta.get("stopped_early", False)),
                   clipped=int(meta.get("clipped_steps", 0)), skipped_large=int(meta.get("skipped_large", 0)),
                   beta=beta, position=meta.get("in_epoch"))


def restore_counters(bad: BadSteps, meta: dict[str, Any]) -> None:
    """The bad-step counters of a `last` checkpoint."""
    bad.total = int(meta.get("skipped_steps", 0))
    bad.in_a_row = int(meta.get("bad_in_a_row", 0))
    bad.restores = int(meta.get("restores", 0))


def rng_state(device: torch.device, data_gen: torch.Generator,
              device_gen: torch.Generator | None = None) -> dict[str, str]:
    """The global torch generator, the data generator, (on CUDA) the device's generator and the device-resident
    path's data generator when it is not the data generator itself, encoded."""
    rng = {"torch": encode_rng(torch.get_rng_state()), "data": encode_rng(data_gen.get_state())}
    if device.type == "cuda":
        rng["cuda"] = encode_rng(torch.cuda.get_rng_state(device))
    if device_gen is not None and device_gen is not data_gen:
        rng["device_data"] = encode_rng(device_gen.get_state())
        rng["device_data_on"] = device_gen.device.type
    return rng


def checkpoint_tensors(name: str, model: torch.nn.Module, ema: EMA | None) -> dict[str, dict[str, torch.Tensor]]:
    """`best` holds the weights evaluation uses (the average with train.ema); `last` the trained ones and the
    average (the optimizer's state is added by the caller)."""
    if name == "last":
        tensors = {"model": model.state_dict()}
        if ema is not None:
            tensors["ema"] = ema.state()
        return tensors
    return {"model": ema.state() if ema is not None else model.state_dict()}


def check_resumable(ckpt: LoadedCheckpoint, root: Any, ema: EMA | None) -> None:
    """A `last` checkpoint must hold what an exact resume needs."""
    meta = ckpt.meta
    if "optimizer" not in ckpt.tensors or "optimizer" not in meta or "history" not in meta:
        raise ConfigError(f"the last checkpoint of {root} has no optimizer state or history "
                          "(written by an older vaelab?); it cannot be resumed exactly")
    if ema is not None and "ema" not in ckpt.tensors:
        raise ConfigError(f"the last checkpoint of {root} holds no weight average (train.ema) to continue")


@dataclass
class GoodState:
    """The weights, optimizer state and average of the latest `last` checkpoint, in memory: what training goes
    back to after train.nan_patience bad steps in a row (train.on_nan = "restore")."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    at: str  # where it was saved, in words
    ema: tuple[dict[str, torch.Tensor], int] | None

    @classmethod
    def take(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, at: str) -> "GoodState":
        return cls(model={k: v.detach().clone() for k, v in model.state_dict().items()},
                   optimizer=copy.deepcopy(optimizer.state_dict()), at=at,
                   ema=None if ema is None else ({k: v.clone() for k, v in ema.state().items()}, ema.updates))

    def put_back(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if ema is not None:
            ema.load(*self.ema)


def restore_from(ckpt: LoadedCheckpoint, paths: RunPaths, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 ema: EMA | None, bad: BadSteps, data_gen: torch.Generator, device: torch.device,
                 beta: float, device_gen: torch.Generator | None = None) -> TrainState:
    """Put a `last` checkpoint back: weights, optimizer, average, the generators and the bad-step counters;
    rewrite metrics.jsonl with the epochs it holds and no others (a kill may have come in between)."""
    meta = ckpt.meta
    check_resumable(ckpt, paths.root, ema)
    model.load_state_dict(ckpt.tensors["model"])
    optimizer.load_state_dict(optimizer_state_from_tensors(ckpt.tensors["optimizer"], meta["optimizer"]))
    torch.set_rng_state(decode_rng(meta["rng"]["torch"]))
    data_gen.set_state(decode_rng(meta["rng"]["data"]))
    if device.type == "cuda" and "cuda" in meta["rng"]:
        torch.cuda.set_rng_state(decode_rng(meta["rng"]["cuda"]), device)
    rng = meta["rng"]
    if device_gen is not None and device_gen is not data_gen and rng.get("device_data_on") == device_gen.device.type:
        device_gen.set_state(decode_rng(rng["device_data"]))  # else (another kind of device): its fresh seed
    state = TrainState.from_meta(meta, beta)
    restore_counters(bad, meta)
    if ema is not None:
        ema.load(ckpt.tensors["ema"], int(meta.get("ema_updates", 0)))
    lines = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in state.history)
    atomic_write(paths.metrics, lines.encode("utf-8"), "the metrics")
    return state


__all__ = ["restore_from", "GoodState", "TrainState", "check_resumable", "checkpoint_tensors", "restore_counters", "rng_state"]
