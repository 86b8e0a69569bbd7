"""vaelab's messages go through the standard `logging` module, to the logger named "vaelab".

Library code never prints: it calls `say(text)` (or takes a `log` callable whose default is `say`). When
the program has configured no logging of its own, vaelab shows its INFO messages on standard output as
plain lines (what the command line prints); a notebook or an application silences or redirects them the
usual way, e.g. `logging.getLogger("vaelab").setLevel(logging.WARNING)`.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("vaelab")


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of the message (pytest and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _default_handler() -> None:
    """Plain lines on stdout at INFO, unless the program set up logging before importing vaelab."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger would print each line a second time once configured


_default_handler()


def say(message: str) -> None:
    """One INFO line of vaelab's output."""
    logger.info(message)


__all__ = ["logger", "say"]
