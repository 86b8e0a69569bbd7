"""One training step, as small functions: the loss and its gradients, then the guarded update.

`backward` computes the loss of a batch and its gradients (with several processes, each its own rows,
and the gradients summed over processes). `apply_update` decides what the gradients may do: nothing when
the loss or gradient is not finite or its norm explodes (skipped, counted by the caller), clipped when
train.grad_clip says so, else one optimizer step at the given learning rate. The loop (vaelab.training.loop)
owns the counters, the policy after bad steps and the schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from vaelab import noise
from vaelab.config import TrainConfig
from vaelab.objectives import LossTerms
from vaelab.training.distributed import Group
from vaelab.training.guard import grad_norm
from vaelab.training.loss import training_loss
from vaelab.training.schedules import lr_factor


class Outcome(Enum):
    APPLIED = "applied"
    NOT_FINITE = "not finite"  # the loss or the gradient was NaN or infinite: skipped, counted as bad
    TOO_LARGE = "too large"  # the gradient norm was above train.skip_grad_norm: skipped, counted


@dataclass(frozen=True)
class StepStats:
    """What an applied step measured: the loss optimized, the per-image terms (B,) of this process's rows
    (None for a process without rows), the gradient norm before clipping, and whether it was clipped."""

    loss: torch.Tensor  # 0-d
    recon: torch.Tensor  # (B,) -log p(x|z) per image, detached
    kl: torch.Tensor  # (B,) KL per image, detached
    grad_norm: torch.Tensor  # 0-d
    clipped: bool | torch.Tensor  # a 0-d bool tensor on the device-resident path (read it only when needed)


@dataclass(frozen=True)
class Backward:
    terms: LossTerms | None  # None: this process had no rows of the batch
    finite: bool  # the loss was finite on every process
    flags: tuple[float, ...] = ()  # with several processes: the extra flags summed over processes


def batch_lr_factor(cfg: TrainConfig) -> float:
    """train.lr_scaling: (batch_size / lr_base_batch) ** 1/2 (sqrt, Adam's rule: Malladi et al. 2022), ** 1
    (linear, Goyal et al. 2017's SGD rule) or 1 (none)."""
    ratio = cfg.batch_size / cfg.lr_base_batch
    return {"none": 1.0, "sqrt": ratio ** 0.5, "linear": ratio}[cfg.lr_scaling]


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, restores: int) -> float:
    """Base rate (x the batch-size rule) x schedule at this step x train.nan_lr_factor per restore after bad
    steps."""
    base = cfg.lr if cfg.lr_scaling == "none" else cfg.lr * batch_lr_factor(cfg)
    return base * lr_factor(step, total_steps, cfg.lr_schedule, cfg.lr_warmup_steps) * cfg.nan_lr_factor ** restores


def backward(model, x: torch.Tensor, cfg: TrainConfig, beta: float) -> Backward:
    """The loss of batch x and, when it is finite, its gradients."""
    terms = training_loss(model, x, cfg, beta)
    finite = bool(torch.isfinite(terms.loss))
    if finite:
        terms.loss.backward()
    return Backward(terms, finite)


def backward_distributed(model, x: torch.Tensor, cfg: TrainConfig, beta: float, group: Group,
                         flags: list[float]) -> Backward:
    """This process's rows of batch x (x is the whole batch): loss, backward, and the gradient sum over
    processes, each weighted by its share of the rows. `flags` travel with the gradients and come back summed
    (a non-finite loss anywhere, rank 0's checkpoint clock, a stop request)."""
    start, stop = group.rows(len(x))
    terms, finite = None, True
    if stop > start:  # a last batch smaller than the number of processes leaves some without rows
        with noise.shard(start, stop, len(x)):
            terms = training_loss(model, x[start:stop], cfg, beta)
        finite = bool(torch.isfinite(terms.loss))
        if finite:
            terms.loss.backward()
    summed = group.sync_gradients(list(model.parameters()), (stop - start) / len(x),
                                  [0.0 if finite else 1.0, *flags])
    return Backward(terms, summed[0] == 0, tuple(summed[1:]))


def apply_update(model, optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float,
                 finite: bool) -> tuple[Outcome, torch.Tensor | None, bool]:
    """Apply the gradients as train.* says: (outcome, the gradient norm, whether it was clipped).

    A non-finite loss or gradient, or a norm above train.skip_grad_norm, applies nothing (the gradients are
    cleared); otherwise the gradient is clipped to train.grad_clip when above it, and the optimizer steps."""
    norm = grad_norm(model.parameters()) if finite else None
    if norm is None or not bool(torch.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        return Outcome.NOT_FINITE, norm, False
    if cfg.skip_grad_norm and norm > cfg.skip_grad_norm:  # an exploding update
        optimizer.zero_grad(set_to_none=True)
        return Outcome.TOO_LARGE, norm, False
    clipped = bool(cfg.grad_clip and norm > cfg.grad_clip)
    if clipped:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return Outcome.APPLIED, norm, clipped


__all__ = ["Backward", "Outcome", "StepStats", "apply_update", "backward", "backward_distributed", "batch_lr_factor",
           "learning_rate"]
