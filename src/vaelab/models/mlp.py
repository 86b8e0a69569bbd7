"""Fully connected encoder and decoder (784-400-20 in the classic examples)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models.conv import relu


def _stack(sizes: list[int], dropout: float = 0.0) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(relu(dropout))
    return layers


class MLPEncoder(nn.Module):
    """x (B, C, H, W) -> (B, out_dim) through hidden layers of the given widths."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], out_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), *_stack([math.prod(image_shape), *hidden, out_dim], dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """z (B, latent) -> image parameters (B, C, H, W), hidden widths mirrored."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], latent_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [latent_dim, *reversed(hidden), math.prod(image_shape)]
        self.net = nn.Sequential(*_stack(sizes, dropout), nn.Unflatten(1, tuple(image_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
