"""Image grids and PNG files, with numpy and Pillow only."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from vaelab.fileio import atomic_write


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0,
              min_cell: int = 24) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into one uint8 array (H', W') or (H', W', 3).

    `nrow` images per row. Images smaller than `min_cell` pixels are enlarged
    by an integer factor (nearest neighbour), so 8x8 digits stay visible.
    """
    if images.dim() != 4:
        raise ValueError(f"make_grid wants (N, C, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1).numpy()
    n, c, h, w = x.shape
    scale = max(1, -(-min_cell // max(h, w)))
    if scale > 1:
        x = x.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    ncol = max(1, min(nrow, n))
    rows = max(1, -(-n // ncol))
    grid = np.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    out = np.rint(grid * 255).astype(np.uint8)
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def square_grid(images: torch.Tensor) -> np.ndarray:
    """A grid as close to square as possible."""
    return make_grid(images, nrow=int(math.ceil(math.sqrt(len(images)))))


def pairs_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Originals and their reconstructions side by side (o, r, o, r, ...), in a near-square grid."""
    pairs = torch.stack([originals.cpu(), reconstructions.cpu()], 1).flatten(0, 1)
    return make_grid(pairs, nrow=2 * int(math.ceil(math.sqrt(len(originals) / 2))))


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 array as PNG, atomically (temporary file, then rename)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write(path, buffer.getvalue(), "the PNG")


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two grids next to each other (padded to the same height) with a white gap."""
    if left.ndim != right.ndim:
        left, right = (np.stack([a] * 3, -1) if a.ndim == 2 else a for a in (left, right))
    h = max(left.shape[0], right.shape[0])

    def pad(a: np.ndarray) -> np.ndarray:
        widths = [(0, h - a.shape[0]), (0, 0)] + ([(0, 0)] if a.ndim == 3 else [])
        return np.pad(a, widths, constant_values=255)

    spacer = np.full((h, gap) + left.shape[2:], 255, dtype=np.uint8)
    return np.concatenate([pad(left), spacer, pad(right)], axis=1)
