"""The device-resident training path (train.device_data): the training images live on the training device
as one uint8 tensor, the data order, binarization and augmentation are drawn there from a seeded device
generator, and a step never waits for the host.

What changes against the host path (`Trainer._step`), and why:

- **The guard is decided on the device.** The loss and the gradient norm give a 0-d `ok` tensor; on CUDA
  the update goes through fused Adam with `found_inf = not ok`, which skips the whole update on the device
  (weights, moments and step count untouched: exactly what the host path's skip does). On the CPU, where a
  read costs nothing, plain Adam steps when `ok` says so (fused Adam rounds differently there). Gradient clipping
  always runs (`clip_grads_with_norm_`, a factor of exactly 1 below train.grad_clip), the EMA update is
  weighted by `ok`. Nothing is read back per step.
- **Counters are read every train.sync_steps steps** (and at every checkpoint and epoch end): the bad steps,
  the skipped-large and clipped steps, the applied steps. A run of train.nan_patience bad steps in a row
  acts (restore or stop, train.on_nan) at that read, up to sync_steps - 1 steps later than the host path.
  Between reads the learning-rate and KL schedules count attempted steps; after a read they count applied
  steps again (the host path's count). Without bad steps the two paths are the same.
- **The epoch's sums** (reconstruction, KL, images) stay on the device in float64.

On the CPU the device generator is the data generator itself and the optimizer is plain Adam, so this path
gives the host path's losses and weights bit for bit when no step is bad
(tests/test_device_path.py); on CUDA its random stream is the device's own (a GPU run resumes exactly on
a GPU; on a CPU it resumes with a fresh data stream, said in a note).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vaelab.config import TrainConfig
from vaelab.training.guard import grad_norm
from vaelab.training.loss import training_loss
from vaelab.training.step import StepStats


def wants_device_data(cfg: TrainConfig, device: torch.device, distributed: bool) -> bool:
    """train.device_data: on, off, or auto (on for CUDA or with train.compile / bf16, off otherwise on CPU);
    never with several processes (their rows are split on the host)."""
    if distributed:
        return False
    auto = device.type == "cuda" or cfg.compile or cfg.precision != "fp32"
    return cfg.device_data == "on" or (cfg.device_data == "auto" and auto)


def device_generator(device: torch.device, seed: int, data_gen: torch.Generator) -> torch.Generator:
    """The generator of the data order, binarization and augmentation: on CPU the data generator itself
    (so the host path's stream is kept); on CUDA a generator of the device seeded like it."""
    if device.type == "cpu":
        return data_gen
    return torch.Generator(device=device).manual_seed(seed)


def apply_precision(cfg: TrainConfig, device: torch.device) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (train.tf32); nothing on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)


@dataclass
class Counters:
    """What a read of the device counters found since the previous read."""

    bad: int  # steps with a non-finite loss or gradient
    large: int  # steps skipped for a gradient norm above train.skip_grad_norm
    clipped: int
    applied: int
    in_a_row: int  # bad steps in a row at the read
    hit: bool  # train.nan_patience bad steps in a row were reached since the previous read


class DeviceSteps:
    """The training step of the device-resident path, with its counters on the device."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 device: torch.device, ema: Any = None, compiled_loss: Any = None) -> None:
        self.model, self.optimizer, self.cfg, self.device, self.ema = model, optimizer, cfg, device, ema
        self.loss_fn = compiled_loss or (lambda m, x, beta: training_loss(m, x, cfg, beta))
        self.params = [p for p in model.parameters() if p.requires_grad]
        # bad, large, clipped, applied, in_a_row, hit
        self.counts = torch.zeros(6, dtype=torch.int64, device=device)
        self.pending = 0  # steps since the last read
        self.attempted = 0  # steps the trainer counted since the last read (its schedules' step)
        self.autocast = cfg.precision == "bf16"
        self.compiled = compiled_loss is not None
        self.beta = torch.zeros((), device=device)
        self.fused = bool(optimizer.defaults.get("fused"))

    def step(self, x: torch.Tensor, lr: float, beta: float) -> tuple[StepStats, torch.Tensor]:
        """One step on batch x: (its stats, `ok` 0-d bool tensor: whether the update was applied)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if self.fused:
            for group in self.optimizer.param_groups:
                group["fused"] = True  # a host-path checkpoint's groups may have said otherwise: the skip needs it
        if self.compiled:  # a tensor: no recompilation as the KL weight moves (fill_: no copy from the host)
            beta = self.beta.fill_(beta)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            terms = self.loss_fn(self.model, x, beta)
        terms.loss.float().backward()
        norm = grad_norm(self.params)
        finite = torch.isfinite(norm) & torch.isfinite(terms.loss.detach())
        large = finite & (norm > cfg.skip_grad_norm) if cfg.skip_grad_norm else torch.zeros_like(finite)
        ok = finite & ~large
        clipped = ok & (norm > cfg.grad_clip) if cfg.grad_clip else torch.zeros_like(ok)
        if cfg.grad_clip:  # the host path's clip_grad_norm_, as one factor (1 below the threshold)
            grads = [p.grad for p in self.params if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(self.params, cfg.grad_clip, torch.nn.utils.get_total_norm(grads))
        if self.fused:
            self.optimizer.found_inf = (~ok).float()  # fused Adam skips the whole update where set
            self.optimizer.step()
        elif bool(ok):  # plain Adam on the CPU, where reading `ok` back costs nothing
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, ok)
        self._count(finite, large, clipped, ok)
        self.attempted += 1
        stats = StepStats(terms.loss.detach(), terms.recon.detach(), terms.kl.detach(), norm, clipped)
        return stats, ok

    def _count(self, finite: torch.Tensor, large: torch.Tensor, clipped: torch.Tensor, ok: torch.Tensor) -> None:
        c = self.counts
        bad = (~finite).long()
        c[0] += bad
        c[1] += large.long()
        c[2] += clipped.long()
        c[3] += ok.long()
        c[4] = (c[4] + 1) * bad  # reset by a finite step (a too-large one included, as on the host)
        reached = c[4] >= self.cfg.nan_patience
        c[5] = c[5] | reached.long()
        c[4] = torch.where(reached, torch.zeros_like(c[4]), c[4])  # the policy acts once per patience run
        self.pending += 1

    def due(self) -> bool:
        return self.pending >= self.cfg.sync_steps

    def read(self) -> Counters:
        """Read the counters back (one transfer) and reset those counted since the previous read."""
        bad, large, clipped, applied, in_a_row, hit = (int(v) for v in self.counts.tolist())
        self.counts[:4].zero_()
        self.counts[5].zero_()
        self.pending = 0
        return Counters(bad, large, clipped, applied, in_a_row, bool(hit))

    def reset_run(self) -> None:
        """After a restore: no bad steps in a row."""
        self.counts[4].zero_()


def device_path(trainer: Any, images: torch.Tensor) -> tuple[torch.Generator, torch.Tensor, DeviceSteps | None]:
    """What a Trainer needs for its data and steps: (the generator of the data order and binarization, the
    training images (uint8) where the batches are cut, the device steps or None for the host path)."""
    tc, device = trainer.cfg.train, trainer.device
    apply_precision(tc, device)
    if not trainer.on_device:
        if tc.compile or tc.precision != "fp32":
            trainer.log("note: train.compile and train.precision apply to the device-resident path "
                        "(train.device_data = on); this run trains on the host path")
        return trainer.data_gen, images, None
    gen = device_generator(device, tc.seed + 1, trainer.data_gen)
    steps = DeviceSteps(trainer.model, trainer.optimizer, tc, device, trainer.ema, compile_loss(tc, trainer.log))
    return gen, images.to(device), steps


def compile_loss(cfg: TrainConfig, log: Any) -> Any:
    """train.compile: the training loss through torch.compile (CUDA graphs are left to the user's
    torch.compile mode defaults); a compile failure at the first call falls back to eager with one line."""
    if not cfg.compile:
        return None
    compiled = torch.compile(lambda m, x, beta: training_loss(m, x, cfg, beta), dynamic=False)
    state = {"fn": compiled}

    def loss(m, x, beta):
        try:
            return state["fn"](m, x, beta)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train on, eagerly
            if state["fn"] is not compiled:
                raise
            log(f"note: train.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "training eagerly")
            state["fn"] = lambda m_, x_, b_: training_loss(m_, x_, cfg, b_)
            return state["fn"](m, x, beta)

    return loss


__all__ = ["Counters", "DeviceSteps", "apply_precision", "compile_loss", "device_generator", "device_path",
           "wants_device_data"]
