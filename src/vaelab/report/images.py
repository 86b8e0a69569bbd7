"""Image grids and PNG files, with numpy and Pillow only.

`make_grid` tiles images; `label_grid` enlarges a finished grid (nearest neighbour, DISPLAY_SCALE times)
and draws a title band, column labels and row labels around it with Pillow's built-in bitmap font (no
font file, no new dependency): the pictures a user opens say what each row and column is."""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

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


def square_columns(n: int) -> int:
    """Columns of the `square_grid` of n images."""
    return int(math.ceil(math.sqrt(n)))


def square_grid(images: torch.Tensor) -> np.ndarray:
    """A grid as close to square as possible."""
    return make_grid(images, nrow=square_columns(len(images)))


def pairs_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Originals and their reconstructions side by side (o, r, o, r, ...), in a near-square grid."""
    pairs = torch.stack([originals.cpu(), reconstructions.cpu()], 1).flatten(0, 1)
    return make_grid(pairs, nrow=pairs_columns(len(originals)))


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


# --------------------------------------------------------------------------- labelled grids

DISPLAY_SCALE = 2  # labelled pictures enlarge their grid this many times (28-px tiles become 56 px)
TEXT_MARGIN = 4  # pixels around each label
TEXT_COLOUR = 0


@lru_cache(maxsize=1)
def _font():
    """Pillow's built-in bitmap font: the same pixels on every machine (no FreeType version in the loop)."""
    from PIL import ImageFont

    loader = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1; older: load_default is bitmap
    return loader() if loader is not None else ImageFont.load_default()


def text_size(text: str) -> tuple[int, int]:
    """Width and height in pixels of one line drawn in the label font (0, 0 for an empty line)."""
    if not text:
        return 0, 0
    left, top, right, bottom = _font().getbbox(text)
    return int(right), int(bottom)


def _line_height() -> int:
    return text_size("Ag|")[1] + 2


def grid_shape(n: int, nrow: int) -> tuple[int, int]:
    """(rows, columns) of tiles that `make_grid(images, nrow)` lays `n` images out in."""
    cols = max(1, min(nrow, n))
    return max(1, -(-n // cols)), cols


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """A uint8 image (H, W) or (H, W, 3) enlarged `factor` times by repeating pixels (nearest neighbour)."""
    if factor < 1:
        raise ValueError(f"upscale needs a factor >= 1, got {factor}")
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def _spans(length: int, count: int, padding: int, scale: int) -> list[tuple[int, int]]:
    """Start and end (enlarged pixels) of each of `count` tiles along a grid side of `length` raw pixels."""
    cell = (length - padding) // count - padding
    return [(scale * (padding + i * (cell + padding)), scale * (padding + i * (cell + padding) + cell))
            for i in range(count)]


def label_grid(grid: np.ndarray, rows: int, cols: int, *, title: str | Sequence[str] = (),
               column_labels: Sequence[str] = (), row_labels: Sequence[str] = (), padding: int = 2,
               scale: int = DISPLAY_SCALE) -> np.ndarray:
    """`grid` (from `make_grid`: rows x cols tiles, `padding` pixels apart) enlarged `scale` times, with the
    `title` lines in a band on top, a label above each column and one left of each row (black on white).

    The canvas widens when a title line is longer than the grid; an empty label leaves its place blank."""
    from PIL import Image, ImageDraw

    lines = [title] if isinstance(title, str) else list(title)
    big = upscale(grid, scale)
    line = _line_height()
    left = max([text_size(t)[0] for t in row_labels] + [0])
    left = left + 2 * TEXT_MARGIN if left else 0
    top = len(lines) * line + (line if any(column_labels) else 0)
    top = top + 2 * TEXT_MARGIN if top else 0
    width = max([left + big.shape[1]] + [text_size(t)[0] + 2 * TEXT_MARGIN for t in lines])
    mode = "L" if big.ndim == 2 else "RGB"
    canvas = Image.new(mode, (width, top + big.shape[0]), 255 if mode == "L" else (255, 255, 255))
    canvas.paste(Image.fromarray(big), (left, top))
    draw, font = ImageDraw.Draw(canvas), _font()
    ink = TEXT_COLOUR if mode == "L" else (TEXT_COLOUR,) * 3
    for i, text in enumerate(lines):
        draw.text((TEXT_MARGIN, TEXT_MARGIN + i * line), text, fill=ink, font=font)
    for (x0, x1), text in zip(_spans(grid.shape[1], cols, padding, scale), column_labels):
        draw.text((left + (x0 + x1 - text_size(text)[0]) // 2, top - TEXT_MARGIN - line + 1), text, fill=ink,
                  font=font)
    for (y0, y1), text in zip(_spans(grid.shape[0], rows, padding, scale), row_labels):
        draw.text((left - TEXT_MARGIN - text_size(text)[0], top + (y0 + y1 - line) // 2 + 1), text, fill=ink,
                  font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def pairs_columns(n: int) -> int:
    """Columns of the `pairs_grid` of n originals (always even: an original and its reconstruction)."""
    return 2 * int(math.ceil(math.sqrt(n / 2)))


def labelled_pairs(grid: np.ndarray, n: int, left: str = "image", right: str = "recon",
                   title: str | Sequence[str] = ()) -> np.ndarray:
    """A `pairs_grid` of n originals, enlarged, each column headed `left` or `right` under `title`."""
    rows, cols = grid_shape(2 * n, pairs_columns(n))
    return label_grid(grid, rows, cols, title=title, column_labels=[left, right] * (cols // 2))


def labelled_square(grid: np.ndarray, n: int, title: str | Sequence[str] = ()) -> np.ndarray:
    """A `square_grid` of n images (samples, say), enlarged, under `title`."""
    rows, cols = grid_shape(n, square_columns(n))
    return label_grid(grid, rows, cols, title=title)


def labelled_side_by_side(left: np.ndarray, right: np.ndarray, left_title: str | Sequence[str],
                          right_title: str | Sequence[str], gap: int = 16) -> np.ndarray:
    """Two grids enlarged, each under its own title, next to each other (e.g. the VAE's and the AE's samples)."""
    return side_by_side(label_grid(left, 1, 1, title=left_title), label_grid(right, 1, 1, title=right_title), gap)
