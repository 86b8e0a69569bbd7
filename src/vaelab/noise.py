"""The training noise (reparameterization samples, dropout masks), drawable as one shard of a global batch.

Data-parallel training splits each global batch across processes. For the processes together to take
exactly the step one process would take on the whole batch, each must use the very noise that the
single process would have drawn for its rows. Inside `shard(start, stop, total)`, every process draws
the noise of the WHOLE batch from the torch generator (all processes hold the same generator state) and
keeps its rows [start, stop); outside it, these functions are plain torch.randn / dropout. The noise of
a batch is tiny next to its images, so drawing all of it costs nothing that shows.

A tensor whose batch dimension holds m groups of the batch (m samples per image laid out sample-major,
(m * B, ...), as the IWAE objective repeats them) is drawn as m groups of the whole batch, each cut the
same way.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

_SHARD: ContextVar[tuple[int, int, int] | None] = ContextVar("vaelab_noise_shard", default=None)


@contextmanager
def shard(start: int, stop: int, total: int) -> Iterator[None]:
    """Within the block, draw noise as rows [start, stop) of a batch of `total` rows."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"a shard needs 0 <= start < stop <= total, got {start}, {stop}, {total}")
    token = _SHARD.set((start, stop, total))
    try:
        yield
    finally:
        _SHARD.reset(token)


def _global(shape: tuple[int, ...], batch_dim: int) -> tuple[tuple[int, ...], tuple[int, int, int, int] | None]:
    """The shape to draw and how to cut it: (groups, start, local rows, total) or None outside a shard."""
    spec = _SHARD.get()
    if spec is None:
        return tuple(shape), None
    start, stop, total = spec
    local = stop - start
    rows = shape[batch_dim]
    if rows % local:
        raise ValueError(f"noise with {rows} rows along dim {batch_dim} does not match a shard of {local} rows")
    groups = rows // local
    full = list(shape)
    full[batch_dim] = groups * total
    return tuple(full), (groups, start, local, total)


def _cut(full: torch.Tensor, batch_dim: int, cut: tuple[int, int, int, int] | None) -> torch.Tensor:
    if cut is None:
        return full
    groups, start, local, total = cut
    grouped = full.unflatten(batch_dim, (groups, total)).narrow(batch_dim + 1, start, local)
    return grouped.flatten(batch_dim, batch_dim + 1)


def standard_normal(shape: tuple[int, ...], like: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
    """N(0, I) noise of `shape` on like's device and dtype, from torch's global generator (sharded when asked)."""
    full, cut = _global(tuple(shape), batch_dim)
    return _cut(torch.randn(full, device=like.device, dtype=like.dtype), batch_dim, cut)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p in training, scale the rest by 1 / (1 - p).

    The mask is drawn with torch.rand over the whole batch (inside a shard: the shard's rows of it), so
    one process and several processes drop the same elements."""
    if not training or p == 0:
        return x
    full, cut = _global(tuple(x.shape), 0)
    keep = _cut(torch.rand(full, device=x.device), 0, cut) >= p
    return x * keep.to(x.dtype) / (1 - p)
