"""Progress inside an epoch, as callbacks: a bar on an interactive terminal, else a line every minute with the
time left, and an estimate of the whole run up front."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from vaelab.training.callbacks.base import Callback


class ProgressBar(Callback):
    """tqdm on stderr, one bar per epoch, removed when the epoch ends; the loss every 20 steps."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, trainer: Any, batch: int, of: int) -> None:
        from tqdm import tqdm  # only when a bar is shown

        self.bar = tqdm(total=of, initial=batch, desc=f"epoch {trainer.epoch + 1}/{trainer.config.train.epochs}",
                        leave=False, file=sys.stderr)

    def on_step_end(self, trainer: Any, batch: int, of: int, stats: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if stats is not None and trainer.step % 20 == 0:
            self.bar.set_postfix(loss=f"{stats.loss.item():.1f}")

    def on_validation_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.close()

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def busy_note(device_type: str) -> str:
    """A note when the machine's load is above its cores (a CPU run then shares them), else ''."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return ""
    if device_type != "cpu" or load <= cores + 0.5:
        return ""
    return (f"; the machine is busy (load {load:.1f} on {cores} cores), so this run shares the CPU: "
            "fewer threads per run (train.threads) or fewer runs at once may help")


class ProgressLines(Callback):
    """Without a terminal (a log file, CI, a notebook): a line every `every` seconds inside an epoch with its
    speed and time left, and once, early in the run, an estimate of the whole run (only for runs longer than
    two such intervals, so short runs print nothing more)."""

    def __init__(self, every: float = 60.0, clock=time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.estimated = False
        self.started_at = self.next_at = 0.0
        self.first_batch = 0

    def on_epoch_start(self, trainer: Any, batch: int, of: int) -> None:
        self.started_at = self.clock()
        self.next_at = self.started_at + self.every
        self.first_batch = batch

    def on_step_end(self, trainer: Any, batch: int, of: int, stats: Any) -> None:
        now = self.clock()
        done = batch - self.first_batch
        if done <= 0:
            return
        per_batch = (now - self.started_at) / done
        tc = trainer.config.train
        epochs_left = tc.epochs - trainer.epoch - 1
        run_left = per_batch * ((of - batch) + epochs_left * of)
        if not self.estimated and done >= min(20, of):
            self.estimated = True
            total = per_batch * of * (tc.epochs - trainer.epoch)
            if total > 2 * self.every:
                trainer.log(f"estimate: about {_duration(total)} of training for the {tc.epochs - trainer.epoch} "
                            f"epoch(s) left ({per_batch * of:.0f} s per epoch, validation not counted)"
                            f"{busy_note(trainer.device.type)}")
        if now >= self.next_at:
            self.next_at = now + self.every
            rate = tc.batch_size / per_batch
            trainer.log(f"epoch {trainer.epoch + 1}/{tc.epochs}: batch {batch}/{of} ({100 * batch / of:.0f}%), "
                        f"{rate:,.0f} img/s, {_duration(per_batch * (of - batch))} left in the epoch, about "
                        f"{_duration(run_left)} in the run")
