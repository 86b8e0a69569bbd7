"""Schedules of the KL weight (warm-up) and of the learning rate, as pure functions of the step.

Functions of the step count alone, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math


def kl_weight(step: int, warmup_steps: int, beta: float) -> float:
    """beta * min(1, step / warmup_steps): linear KL warm-up (Bowman et al. 2016; Sonderby et al. 2016).

    `step` counts the updates made before this one, so the first update has weight 0 when warming up.
    """
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def step_kl_weight(cfg, step: int, batches_per_epoch: int) -> float:
    """`kl_weight` at `step` as a TrainConfig says: train.warmup in train.warmup_unit (epochs or steps)."""
    warmup = cfg.warmup * (batches_per_epoch if cfg.warmup_unit == "epochs" else 1)
    return kl_weight(step, warmup, cfg.beta)


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """The multiplier of the base learning rate for update number `step` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps` updates, then constant, or
    a cosine from 1 down to 0 at `total_steps` (Loshchilov & Hutter 2017, without restarts).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")
