"""When to write the `last` checkpoint inside an epoch: every train.checkpoint_steps batches and every
train.checkpoint_minutes minutes (the loop asks; under torchrun rank 0's answer counts for all)."""

from __future__ import annotations

import time
from typing import Any

from vaelab.training.callbacks.base import Callback


class CheckpointClock(Callback):
    """Knows how long ago `last` was written; `due(batches_done)` says whether to write it now."""

    def __init__(self, steps: int = 0, minutes: float = 0.0) -> None:
        self.steps = steps
        self.minutes = minutes
        self.last_save = time.monotonic()

    def due(self, batches_done: int) -> bool:
        if self.steps and batches_done % self.steps == 0:
            return True
        return bool(self.minutes) and time.monotonic() - self.last_save >= 60 * self.minutes

    def on_checkpoint(self, trainer: Any, name: str) -> None:
        if name == "last":
            self.last_save = time.monotonic()
