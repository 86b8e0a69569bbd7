"""What keeps a training process safe: orderly stops on signals, and the policy for bad steps (a NaN
or infinite loss or gradient). The run directory's lock is in vaelab.runs.lifecycle.

The trainer owns the loop; these pieces only decide. `StopSignals` turns SIGTERM and SIGINT into a
request that the loop honours after the current step (it then writes a checkpoint), and into an
immediate KeyboardInterrupt outside the steps or on a second signal. `BadSteps` counts skipped steps
and says when the run must act: restore the last good state with a lower learning rate, or stop.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

import torch

from vaelab.errors import VaelabError


class TrainingDiverged(VaelabError):
    """The loss or gradient stayed NaN/inf for too many steps, or too many restores did not help."""


class StopSignals:
    """SIGTERM and SIGINT while installed (main thread only; elsewhere it does nothing).

    Inside the steps (`stepping` true) the first signal only sets `requested`: the step in flight
    finishes, the trainer writes a checkpoint and then stops. Outside the steps (validation, a
    checkpoint write, the final evaluation) or on a second signal, KeyboardInterrupt is raised at once:
    the checkpoint already on disk is the one to resume from.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.stepping = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stepping and self.requested is None:
            self.requested = name
            return
        raise KeyboardInterrupt(name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


@dataclass
class BadSteps:
    """Counts steps that were skipped because the loss or the gradient was not finite.

    `record_bad` returns the action due: None (skip and go on), "restore" or "stop". After
    `patience` bad steps in a row the policy acts; a restore that is followed by `patience` more
    bad steps counts again, and past `max_restores` the answer is "stop".
    """

    patience: int
    policy: str  # "restore" | "stop"
    max_restores: int
    total: int = 0
    in_a_row: int = 0
    restores: int = 0

    def record_good(self) -> None:
        self.in_a_row = 0

    def record_bad(self) -> str | None:
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row < self.patience:
            return None
        self.in_a_row = 0
        return self.act()

    def act(self) -> str:
        """train.nan_patience bad steps in a row were reached: "restore" while restores are left, else "stop"."""
        if self.policy == "restore" and self.restores < self.max_restores:
            self.restores += 1
            return "restore"
        return "stop"


def grad_norm(parameters) -> torch.Tensor:
    """The global L2 norm of the gradients (a 0-d tensor; inf or NaN when any entry is)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in parameters if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))
