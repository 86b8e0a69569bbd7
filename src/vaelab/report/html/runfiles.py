"""What a report reads: the run directory's files, the model of a checkpoint and the run's dataset.

A report works with whatever is there: a missing file, checkpoint or dataset becomes a reason, shown on
the page in place of the sections that need it; only a directory that is not a run, or a checkpoint that
exists but cannot be loaded, is an error (CheckpointError), as in every other command.
"""

from __future__ import annotations

import json
import shlex
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
    # every `vaelab evaluate` result in the run folder (evaluation_*.json, eval-*/evaluation.json), one entry per
    # distinct result, the shown one (`evaluate`) first when it is among them
    evaluations: tuple["EvaluationFile", ...] = ()

    @property
    def status(self) -> str:
        return str((self.info or {}).get("status", "unknown"))

    @property
    def shown_evaluation(self) -> "EvaluationFile | None":
        """Which of `evaluations` the page shows (`evaluate`)."""
        return next((e for e in self.evaluations if e.result is self.evaluate), None)


@dataclass(frozen=True)
class EvaluationFile:
    """One result of `vaelab evaluate` found in the run folder: its JSON files (the run's evaluation_CKPT.json
    and the copy in its output folder hold the same result) and the folder that holds its plots."""

    names: tuple[str, ...]  # paths relative to the run folder, e.g. ("evaluation_best.json", "eval-best/evaluation.json")
    result: dict[str, Any]
    plots_dir: Path

    @property
    def checkpoint(self) -> str:
        return str(self.result.get("checkpoint", "?"))

    def describe(self) -> str:
        """Its files and what it holds, in one line: checkpoint, epoch and the datasets of --on."""
        ev = self.result.get("datasets_eval")
        on = [k for k in ev.get("datasets", {}) if k not in ("train", "val", "test")] if isinstance(ev, dict) \
            and isinstance(ev.get("datasets"), dict) else []
        what = f"checkpoint {self.checkpoint}, epoch {self.result.get('epoch', '?')}"
        return f"{' = '.join(self.names)} ({what}{'; --on ' + ', '.join(on) if on else ''})"


def find_evaluations(root: Path, checkpoint: str) -> tuple[EvaluationFile, ...]:
    """Every readable `vaelab evaluate` result in the run folder, identical copies merged: evaluation_CKPT.json
    (evaluation_{checkpoint}.json first) and eval-*/evaluation.json (written by default or with --out inside
    the run), the others of the report's checkpoint before those of other checkpoints."""
    found: list[tuple[str, dict[str, Any], Path]] = []
    for path in sorted(root.glob("evaluation_*.json"), key=lambda p: p.name != f"evaluation_{checkpoint}.json"):
        found.append((path.name, _read_json(path), root / f"eval-{path.stem[len('evaluation_'):]}"))
    for path in sorted(root.glob("eval-*/evaluation.json"), key=lambda p: (p.parent.name != f"eval-{checkpoint}",
                                                                           p.parent.name)):
        found.append((f"{path.parent.name}/{path.name}", _read_json(path), path.parent))
    merged: list[EvaluationFile] = []
    for name, result, folder in found:
        if result is None:
            continue
        same = next((i for i, e in enumerate(merged) if e.result == result), None)
        if same is None:
            merged.append(EvaluationFile((name,), result, folder))
        else:  # the run's copy of an output folder's result: the plots are in that folder
            e = merged[same]
            merged[same] = EvaluationFile(e.names + (name,), e.result, folder if "/" in name else e.plots_dir)
    shown = [e for e in merged if f"evaluation_{checkpoint}.json" in e.names]
    rest = [e for e in merged if e not in shown]
    return tuple(shown + sorted(rest, key=lambda e: e.checkpoint != checkpoint))


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


def _is_run(path: Path) -> bool:
    paths = RunPaths(path)
    return path.is_dir() and (paths.info.is_file() or paths.checkpoints.is_dir())


def not_a_run(root: Path) -> str:
    """Why `root` is no run directory, in one line, naming the runs inside it: a demo folder's vae/ and ae/
    (`vaelab demo`), or the run folders of another folder of runs (a sweep's trials, say)."""
    try:
        runs = sorted(p for p in root.iterdir() if _is_run(p)) if root.is_dir() else []
    except OSError:
        runs = []
    names = {p.name for p in runs}
    if {"vae", "ae"} <= names:
        return (f"{root} is a demo folder; its runs are {root / 'vae'} and {root / 'ae'}: "
                f"vaelab report {shlex.quote(str(root / 'vae'))}")
    if runs:
        shown = ", ".join(p.name for p in runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
        return (f"{root} is not a vaelab run directory but holds {len(runs)} run(s) ({shown}): "
                f"vaelab report {shlex.quote(str(runs[0]))}")
    return f"{root} is not a vaelab run directory (no run.json or checkpoints/ inside); pass the directory " \
           "`vaelab train` wrote"


def read_run_files(root: str | Path, checkpoint: str = "best") -> RunFiles:
    """Read a run directory's result files; CheckpointError when `root` is not a run directory."""
    root = resolve_run_path(root)  # a path, or pretrained:NAME
    paths = RunPaths(root)
    if not root.exists():
        raise CheckpointError(f"run directory {root} does not exist; pass the directory `vaelab train` wrote")
    if not _is_run(root):
        raise CheckpointError(not_a_run(root))
    history, bad = read_metrics(paths.metrics)
    config_text = paths.config.read_text(encoding="utf-8", errors="replace") if paths.config.is_file() else None
    others = tuple(sorted(p.stem[len("evaluation_"):] for p in root.glob("evaluation_*.json")
                          if p.stem != f"evaluation_{checkpoint}"))
    evaluations = find_evaluations(root, checkpoint)
    # shown: evaluation_CKPT.json, else (an evaluation written with --out inside the run) one for CKPT in eval-*/
    shown = next((e for e in evaluations if e.checkpoint == checkpoint), None)
    return RunFiles(root=root, info=_read_json(paths.info), config_text=config_text, history=history,
                    bad_metric_lines=bad, evaluation=_read_json(paths.evaluation),
                    evaluate=shown.result if shown is not None else None,
                    evaluate_dir=shown.plots_dir if shown is not None else root / f"eval-{checkpoint}",
                    other_evaluations=others, evaluations=evaluations)


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
