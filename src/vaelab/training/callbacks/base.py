"""Callbacks: what observes training without being the loop.

The loop (`vaelab.training.loop`) owns the order of things and every piece of state; a callback is told
what happened and may write files, log or ask to stop. vaelab's own extras are callbacks (the metrics
file, the sample grids, the progress bar, TensorBoard, Weights & Biases, MLflow); pass your own with
`vaelab.train(config, run_dir, callbacks=[...])`.

What a callback may read of the `trainer` it is given (read only):

    trainer.config      the run's RunConfig          trainer.paths    its RunPaths (files of the run)
    trainer.model       the model being trained      trainer.splits   the data (train / val / test)
    trainer.epoch       epochs finished              trainer.step     optimizer steps applied
    trainer.history     the metrics records so far   trainer.is_main  False on torchrun ranks > 0
    trainer.log(text)   a line for the log           trainer.eval_weights()  a context with the weights
                                                                       evaluation uses (EMA when on)

Under torchrun every process calls its callbacks; write only where `trainer.is_main`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from vaelab.fileio import atomic_write

if TYPE_CHECKING:  # annotations only: callbacks sit below the loop that calls them
    from vaelab.training.step import StepStats


class Callback:
    """Override the hooks you need; each does nothing by default."""

    def on_train_start(self, trainer: Any) -> None:
        """Before the first epoch (of this process: after a resume, before the next epoch)."""

    def on_epoch_start(self, trainer: Any, batch: int, of: int) -> None:
        """Before the epoch's first step; `batch` batches of `of` are done already (a resumed epoch)."""

    def on_step_end(self, trainer: Any, batch: int, of: int, stats: StepStats | None) -> None:
        """After batch `batch` (1-based) of `of` in the epoch; `stats` is None when the step was skipped."""

    def on_validation_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """The epoch's record is complete (validation done); its checkpoints are not written yet."""

    def on_checkpoint(self, trainer: Any, name: str) -> None:
        """After the checkpoint `name` ("last", "best", "epoch-0010") was written."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> bool | None:
        """After an epoch's validation and checkpoints; `record` is its line of metrics.jsonl.
        Return True to stop training here (the run then ends normally, as with early stopping)."""

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        """After the last epoch and the final evaluation (None when the run ends without one)."""

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        """When training stops with an error or an interruption (the `last` checkpoint is on disk)."""


class CallbackList(Callback):
    """Calls every callback's hook in order; `on_epoch_end` asks to stop if any callback does."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, trainer: Any) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_epoch_start(self, trainer: Any, batch: int, of: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(trainer, batch, of)

    def on_step_end(self, trainer: Any, batch: int, of: int, stats: StepStats | None) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, batch, of, stats)

    def on_validation_end(self, trainer: Any, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_validation_end(trainer, record)

    def on_checkpoint(self, trainer: Any, name: str) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(trainer, name)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> bool:
        stop = False
        for cb in self.callbacks:
            stop = bool(cb.on_epoch_end(trainer, record)) or stop  # every callback sees every epoch
        return stop

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer, evaluation)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        for cb in self.callbacks:
            try:
                cb.on_exception(trainer, exc)
            except Exception:  # noqa: BLE001 - the error that stopped training is the one to report
                pass


def read_state(run_dir: Path, name: str) -> dict[str, str]:
    """The string entries of RUN/`name`, a small JSON file a callback keeps for the run's next process (a
    logging service's run id, ...); empty when missing or damaged: the worst outcome is a new run on that
    service, never a failed training."""
    try:
        data = json.loads((Path(run_dir) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and v} if isinstance(data, dict) else {}


def write_state(run_dir: Path, name: str, data: dict[str, str], what: str) -> None:
    """Write RUN/`name` atomically (see `read_state`)."""
    atomic_write(Path(run_dir) / name, (json.dumps(data, indent=2) + "\n").encode("utf-8"), what)


def flat_metrics(record: dict[str, Any], prefix: str = "", sep: str = "/") -> dict[str, float]:
    """The numbers of a metrics record as one flat dict, nested keys joined by `sep`:
    {"train": {"loss": 1.0}, "lr": 0.001} -> {"train/loss": 1.0, "lr": 0.001}. Booleans become 0/1;
    strings, None and non-finite numbers are left out (loggers take finite numbers)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_metrics(value, name, sep))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = value
    return out
