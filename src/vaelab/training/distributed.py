"""Data-parallel training over torch.distributed processes, launched by torchrun.

    torchrun --nproc_per_node=2 -m vaelab train --out runs/ddp           # 2 processes, this machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 --rdzv_id=vae1 -m vaelab train ...  # on each of 2 machines

What each process does:

- the same seed, so the same initial weights (rank 0's are broadcast to make sure), the same data order
  and the same binarization and augmentation draws: every process builds the SAME global batch of
  `train.batch_size` images and keeps its contiguous share of the rows (`Group.rows`);
- its share of the reparameterization noise and dropout masks is cut from the global batch's noise
  (`vaelab.noise.shard`), so the processes together use exactly the noise one process would;
- after backward, one all-reduce of all gradients (flattened into one buffer, each process's weighted by
  its share of the batch), the same operation DistributedDataParallel performs after backward; the
  optimizer step is then identical everywhere. The same buffer carries three flags: a loss that was not
  finite anywhere, rank 0's "write a checkpoint now" (time-based checkpoints) and a stop request
  (SIGTERM / Ctrl-C) on any process, so every decision is taken by all processes at the same step;
- only rank 0 writes into the run directory; the others write their copies of the files into a
  temporary directory that is deleted at the end.

Hence a run on N processes takes the same steps as a run on one process with the same global batch,
up to float rounding (tests/test_distributed.py checks it with 2 processes on gloo), and a checkpoint
resumes on any number of processes. Not covered: free bits average the KL over each process's share of
the batch, not over the whole batch, so with train.free_bits the steps differ slightly from one process's.

The explicit all-reduce instead of the DistributedDataParallel wrapper keeps the model's own API: the
objectives call the model's forward, its `log_weight_terms` (IWAE) and its prior (the VampPrior's
pseudo-inputs), and a DDP wrapper only sees its forward calls.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vaelab.errors import ConfigError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> tuple[int, int]:
        """[start, stop) of this process's rows of a global batch of n: contiguous, sizes differing by <= 1."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def sync_gradients(self, params: list[torch.nn.Parameter], weight: float, flags: list[float]) -> list[float]:
        """Sum over processes of weight * gradient, written back into every parameter's .grad, and the
        sum of each flag. A parameter without a gradient here contributes zeros."""
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device,
                                                                             dtype=p.dtype) for p in params]
        device = params[0].device
        flat = torch.cat([torch.cat(grads) * weight, torch.tensor(flags, device=device, dtype=grads[0].dtype)])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            part = flat[offset:offset + p.numel()].view(p.shape)
            if p.grad is None:
                p.grad = torch.empty_like(p).copy_(part)  # in the parameter's memory format
            else:
                p.grad.copy_(part)
            offset += p.numel()
        return flat[offset:].tolist()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum of each value over processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights and buffers to every process."""
        tensors = list(module.state_dict().values())
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view(t.shape).to(t.dtype))
                offset += t.numel()


def setup(device: torch.device) -> tuple[Group, torch.device]:
    """The process group torchrun describes in the environment (initialized on first use) and this process's
    device (its own GPU, cuda:LOCAL_RANK, on a machine with several); rank 0 of 1 when not distributed.

    Backend: NCCL for CUDA devices, gloo for CPU. Raises a ConfigError when the environment is incomplete."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be a number of processes, got {os.environ['WORLD_SIZE']!r}; launch "
                          "with torchrun") from None
    if world <= 1:
        return Group(), device
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch distributed training "
                          "with torchrun (e.g. torchrun --nproc_per_node=2 -m vaelab train ...)")
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; install one that does to train on "
                          "several processes")
    group = Group(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return group, device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def from_env() -> Group:
    """This process's place as the environment describes it, without joining any group (for file writes)."""
    try:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        return Group(rank=int(os.environ.get("RANK", "0")), world=world,
                     local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return Group()
