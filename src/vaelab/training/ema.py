"""An exponential moving average of a model's weights (Polyak averaging), for evaluation.

The trainer updates it after every applied step; validation, the `best` checkpoint and every
evaluation use the averaged weights, which generalize better than the last iterate.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class EMA:
    """ema <- d * ema + (1 - d) * w after each update, with d = min(decay, (1 + n) / (10 + n)) at update n,
    so that early on the average is not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, ok: torch.Tensor | None = None) -> None:
        """One update; `ok` (a 0-d bool tensor, the device-resident path) weights it on the device: 0 leaves
        the average as it is (the step was skipped), with no read back to the host. The update count then
        counts attempted steps."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        weight = 1.0 - d if ok is None else ok.float() * (1.0 - d)  # a scalar operand: no copy to the device
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), weight)
            else:
                self.shadow[k].copy_(v)
        self.updates += 1

    def state(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
        self.updates = updates

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights for the duration; its own weights restored afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)
