"""The run's metrics.jsonl, one JSON object per epoch, as a callback."""

from __future__ import annotations

import json
from typing import Any, TextIO

from vaelab.runs import json_safe
from vaelab.training.callbacks.base import Callback


class MetricsFile(Callback):
    """Appends each epoch's record to RUN/metrics.jsonl (strict JSON: NaN and infinities become null).

    A resumed run rewrote the file from its checkpoint's history before training starts, so the file holds
    each epoch once."""

    def __init__(self) -> None:
        self.file: TextIO | None = None

    def on_train_start(self, trainer: Any) -> None:
        self.file = open(trainer.paths.metrics, "a", encoding="utf-8")

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self.file.flush()

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        self.close()

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            try:
                self.file.close()
            except OSError:  # a full disk: the error that stopped the run is the one to report
                pass
        self.file = None
