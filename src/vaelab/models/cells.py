"""The building blocks of the deep hierarchical VAE (`model.hvae_cell = "bottleneck"`), in the style of
VDVAE (Child 2021) and Efficient-VDVAE (Hazami et al. 2022): bottleneck cells and a resize between
resolutions. The plain cells of the original HVAE stay in `models.hvae` (their parameter names are part
of older checkpoints).

Why bottlenecks: the 3x3 convolutions run on a quarter of the channels, so a cell costs about a sixth of
two full-width 3x3 convolutions, and many stochastic layers fit into the same compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import noise


class Bottleneck(nn.Module):
    """conv1x1(cin -> mid) -> GELU -> conv3x3 -> GELU -> conv3x3 -> GELU -> conv1x1(mid -> cout), each conv
    after a GELU (pre-activation). `residual`: h + cell(h) (cin == cout); else cell(h) alone (the prior
    and posterior heads). The last conv starts at `out_scale` of its default initialisation: residual
    cells at 1/sqrt(number of cells), so that a deep stack starts near the identity (VDVAE's rule), and
    the heads small, so every posterior starts at its prior and every prior near N(0, I)."""

    def __init__(self, cin: int, mid: int, cout: int, residual: bool, out_scale: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if residual and cin != cout:
            raise ValueError("a residual cell keeps its channels")
        self.residual = residual
        self.dropout = dropout
        self.c1 = nn.Conv2d(cin, mid, 1)
        self.c2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.c3 = nn.Conv2d(mid, mid, 3, padding=1)
        self.c4 = nn.Conv2d(mid, cout, 1)
        with torch.no_grad():
            self.c4.weight.mul_(out_scale)
            if not residual:
                self.c4.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H, W)
        a = self.c1(F.gelu(h))
        a = self.c2(F.gelu(a))
        a = self.c3(F.gelu(a))
        if self.dropout:
            a = noise.dropout(a, self.dropout, self.training)
        a = self.c4(F.gelu(a))
        return h + a if self.residual else a


def bottleneck_stack(channels: int, n: int, total_cells: int, dropout: float = 0.0) -> nn.Module:
    """n residual bottleneck cells of `channels` (a quarter in the middle), scaled for `total_cells` in all."""
    scale = 1.0 / math.sqrt(max(1, total_cells))
    cells = [Bottleneck(channels, max(1, channels // 4), channels, True, scale, dropout) for _ in range(n)]
    return nn.Sequential(*cells) if cells else nn.Identity()


class ToSize(nn.Module):
    """Resampling to a fixed size, identity when the size is already right: `up` is nearest-neighbour
    (VDVAE's unpooling between resolutions; it also handles the odd sizes 4 -> 7 -> 14 of 28x28 images), else
    average pooling (the bottom-up pass's step down a resolution; ceil for odd sizes)."""

    def __init__(self, size: tuple[int, int], up: bool) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.up = up

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if tuple(h.shape[-2:]) == self.size:
            return h
        if self.up:
            return F.interpolate(h, size=self.size, mode="nearest")
        return F.adaptive_avg_pool2d(h, self.size)


__all__ = ["Bottleneck", "ToSize", "bottleneck_stack"]
