"""The layout of a run directory (`RunPaths`) and the small writers every part of a run uses.

A run directory holds everything one `vaelab train` produced::

    config.toml          the full resolved config (re-run with --config)
    run.json             versions, dataset, image shape, status, timings
    metrics.jsonl        one JSON object per epoch
    train.log            the log lines printed during training
    checkpoints/best/    weights with the lowest validation loss
    checkpoints/last/    weights, optimizer and RNG state after the last epoch
    images/              sample grids per epoch, final samples,
                         reconstructions and interpolations
    evaluation.json      loss terms on train / val / test and the gap
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.errors import DataError
from vaelab.fileio import atomic_write


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name


def json_safe(data: Any) -> Any:
    """`data` with NaN and infinities replaced by None: strict JSON that every reader accepts."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write strict JSON atomically; NaN and infinities become null."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8"), "the JSON output")


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device, checking that it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", name):
        raise DataError(f"{option}={name!r} is not a device vaelab knows; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataError(f"{option}={name} but no CUDA device is available; use {option}=cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DataError(f"{option}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
