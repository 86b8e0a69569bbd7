"""What a report reads: the run directory's files, the model of a checkpoint and the run's dataset.

A report works with whatever is there: a missing file, checkpoint or dataset becomes a reason, shown on
the page in place of the sections that need it; only a directory that is not a run, or a checkpoint that
exists but cannot be loaded, is an error (CheckpointError), as in every other command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.config import to_dict
from vaelab.data import DatasetSplits
from vaelab.errors import CheckpointError, DataError
from vaelab.runs import Run, RunPaths, load_run, load_run_data
from vaelab.runs.pretrained import resolve_run_path


@dataclass(frozen=True)
class RunFiles:
    """What the run directory holds besides the checkpoints (None where a file is absent or unreadable)."""

    root: Path
    info: dict[str, Any] | None
    config_text: str | None
    history: list[dict[str, Any]]
    bad_metric_lines: int
    evaluation: dict[str, Any] | None
    evaluate: dict[str, Any] | None  # `vaelab evaluate` for the report's checkpoint: evaluation_<ckpt>.json
    evaluate_dir: Path
    other_evaluations: tuple[str, ...]  # checkpoints `vaelab evaluate` ran for, besides this one

    @property
    def status(self) -> str:
        return str((self.info or {}).get("status", "unknown"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The per-epoch records of metrics.jsonl, and how many lines could not be read (a line being written
    while training runs, or damage)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), (int, float)):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_run_files(root: str | Path, checkpoint: str = "best") -> RunFiles:
    """Read a run directory's result files; CheckpointError when `root` is not a run directory."""
    root = resolve_run_path(root)  # a path, or pretrained:NAME
    paths = RunPaths(root)
    if not root.exists():
        raise CheckpointError(f"run directory {root} does not exist; pass the directory `vaelab train` wrote")
    if not root.is_dir() or not (paths.info.is_file() or paths.checkpoints.is_dir()):
        raise CheckpointError(f"{root} is not a vaelab run directory (no run.json or checkpoints/ inside); "
                              "pass the directory `vaelab train` wrote")
    history, bad = read_metrics(paths.metrics)
    config_text = paths.config.read_text(encoding="utf-8", errors="replace") if paths.config.is_file() else None
    others = tuple(sorted(p.stem[len("evaluation_"):] for p in root.glob("evaluation_*.json")
                          if p.stem != f"evaluation_{checkpoint}"))
    return RunFiles(root=root, info=_read_json(paths.info), config_text=config_text, history=history,
                    bad_metric_lines=bad, evaluation=_read_json(paths.evaluation),
                    evaluate=_read_json(root / f"evaluation_{checkpoint}.json"),
                    evaluate_dir=root / f"eval-{checkpoint}", other_evaluations=others)


def best_epoch(files: RunFiles) -> int | None:
    """The epoch of the best checkpoint: run.json's, else the last record marked best."""
    info = files.info or {}
    if isinstance(info.get("best_epoch"), int):
        return info["best_epoch"]
    best = [rec["epoch"] for rec in files.history if rec.get("best")]
    return int(best[-1]) if best else None


def config_dict(files: RunFiles, run: Run | None) -> dict[str, Any]:
    """The run's config as a dict: run.json's copy, else the checkpoint's."""
    cfg = (files.info or {}).get("config")
    if isinstance(cfg, dict):
        return cfg
    return to_dict(run.config) if run is not None else {}


def load_model(files: RunFiles, checkpoint: str, device: str | torch.device,
               model: torch.nn.Module | None = None) -> tuple[Run | None, str | None]:
    """The run's model, or (None, why) for a run that has written no checkpoint yet.

    A checkpoint that exists but cannot be loaded, or a name that is not among those present, is an
    error (CheckpointError), as in every other command."""
    try:
        return load_run(files.root, checkpoint=checkpoint, device=device, model=model), None
    except CheckpointError:
        root = RunPaths(files.root).checkpoints
        written = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
        if written or files.info is None:
            raise
        return None, ("the run has written no checkpoint yet (the first epoch has not finished), so there is no "
                      "model to draw from; write the report again later")


def load_data(run: Run, data_dir: str | Path | None) -> tuple[DatasetSplits | None, str | None]:
    """The run's dataset on this machine, or (None, why) when it is not found; never downloads (a report
    should not wait on one)."""
    try:
        return load_run_data(run, data_dir, download=False), None
    except DataError as exc:
        name = run.config.data.dataset
        return None, (f"they need the run's dataset ({name}), which was not found here ({str(exc).rstrip('.')}); "
                      "write the report again with --data-dir DIR, the directory holding the dataset's files "
                      "(for a folder: dataset, the directory holding the folder)")
