"""A progress bar over each epoch's batches (on an interactive terminal), as a callback."""

from __future__ import annotations

import sys
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
