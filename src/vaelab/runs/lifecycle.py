"""The life of a run directory while a process trains into it: checked to be new, locked against a
second process, its log file, run.json, and whether it finished.

Nothing is written until the data and the model are ready, so a mistake leaves no half-made run; the
log lines said before the file can be opened are kept and written first.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

from vaelab._version import __version__
from vaelab.config import RunConfig, to_dict
from vaelab.data.sources import folder_root
from vaelab.errors import ConfigError
from vaelab.runs.paths import RunPaths


def check_new_run_dir(root: Path) -> None:
    """Refuse a directory that is a file or already holds a run (one clear line, the fix named)."""
    paths = RunPaths(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a directory; choose another --out for the run")
    if paths.config.exists() or paths.checkpoints.exists():
        raise ConfigError(
            f"run directory {root} already holds a run; choose another --out (or delete it to start over)"
        )


def absolute_paths(config: RunConfig) -> RunConfig:
    """The config with its data paths made absolute, so the run can be evaluated from any directory.

    `data.data_dir` becomes absolute; a folder: dataset's path too, unless it is relative to
    data_dir (then it stays relative, so `--data-dir` can point a later command at a moved copy).
    """
    dc = config.data
    changes: dict[str, str] = {}
    if dc.data_dir:
        changes["data_dir"] = str(Path(dc.data_dir).expanduser().resolve())
    if dc.dataset.startswith("folder:"):
        path = dc.dataset[len("folder:"):]
        if not (dc.data_dir and not Path(path).expanduser().is_absolute()):
            changes["dataset"] = f"folder:{folder_root(path, None).resolve()}"
    return config.replace(data=changes) if changes else config


def lock_run_dir(root: Path):
    """An exclusive lock on RUN/.lock for the life of a training process; a second one is refused."""
    handle = open(root / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run directory {root} is in use by {holder}; wait for it to finish, or choose "
                          "another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"vaelab process {os.getpid()}\n")
    handle.flush()
    return handle


def create_run_dir(root: Path) -> TextIO:
    """Make the directory (parents too) and lock it; the lock's handle (close it to release)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {root}: {exc.strerror}; choose another --out") from None
    return lock_run_dir(root)


class RunLog:
    """The run's train.log beside the caller's own output (`echo`): every line goes to both.

    Lines said before `open` (while the data and the model are made) are kept and written first."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._file: TextIO | None = None
        self._pending: list[str] = []

    def open(self, path: Path) -> None:
        try:
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write in the run directory {path.parent}: {exc.strerror}; "
                              "choose another --out") from None
        for line in self._pending:
            self._file.write(line + "\n")
        self._pending.clear()

    def __call__(self, message: str) -> None:
        self.echo(message)
        if self._file is None:
            self._pending.append(message)
            return
        self._file.write(message + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:  # a full disk: what the log could not take was printed already
                pass


def run_info(config: RunConfig, splits, model: torch.nn.Module, device: torch.device, processes: int,
             status: str, **extra: Any) -> dict[str, Any]:
    """run.json: versions, machine, dataset, parameter count, the config and the run's status."""
    s = splits
    return {
        "status": status,
        "vaelab_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "processes": processes,
        "dataset": {
            "name": s.name, "source": s.source, "image_shape": list(s.image_shape),
            "sizes": {"train": len(s.train), "val": len(s.val), "test": len(s.test)},
            "notes": list(s.notes),
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": to_dict(config),
        **extra,
    }


def finished(paths: RunPaths) -> bool:
    """True when the run's final evaluation was written (the last thing training does)."""
    try:
        info = json.loads(paths.info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return paths.evaluation.is_file() and isinstance(info, dict) and info.get("status") == "finished"


def snapshot_name(epoch: int) -> str:
    """The checkpoint that train.snapshot_every keeps after `epoch`: epoch-0010."""
    return f"epoch-{epoch:04d}"


__all__ = ["RunLog", "absolute_paths", "check_new_run_dir", "create_run_dir", "finished", "lock_run_dir",
           "run_info", "snapshot_name"]
