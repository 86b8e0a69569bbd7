"""A grid of samples after every train.grid_every epochs: RUN/images/samples_epoch_NNN.png."""

from __future__ import annotations

from typing import Any

from vaelab.report.images import save_png
from vaelab.training.callbacks.base import Callback


class SampleGrids(Callback):
    """Saves the epoch's grid of samples (decoded from the same prior draws every time, so epochs compare)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.every and trainer.epoch % self.every == 0:
            save_png(trainer.epoch_samples(), trainer.paths.images / f"samples_epoch_{trainer.epoch:03d}.png")
