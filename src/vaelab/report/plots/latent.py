"""Plots of the latent space: the 2-D map of codes coloured by label, and latent traversals."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vaelab.report.images import make_grid
from vaelab.report.plots.style import COLORS, as_array, new_figure, render

MAP_MARKERS = ("o", "s", "^", "D", "v", "P")  # the marker changes once the colours run out


def plot_latent_map(xy: np.ndarray, labels: np.ndarray, path: str | Path, *, class_names: Sequence[str] = (),
                    xlabel: str = "z[0]", ylabel: str = "z[1]", title: str = "") -> Path:
    """A scatter plot of 2-D latent coordinates (N, 2), one colour per label, with a legend; returns the PNG path.

    `labels` are integer class indices (N,); `class_names[i]` names label i (the index itself when absent).
    With no class names and a single label the points are drawn in one colour without a legend.
    """
    points = np.asarray(xy.detach().cpu().numpy() if hasattr(xy, "detach") else xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"plot_latent_map needs coordinates of shape (N, 2), N > 0, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("the latent coordinates must be finite")
    lab = as_array(labels, "labels")
    if lab.size != len(points) or not (lab == np.round(lab)).all():
        raise ValueError(f"labels must be {len(points)} integers, one per point")
    lab = lab.astype(np.int64)
    classes = np.unique(lab)
    labelled = bool(class_names) or classes.size > 1

    fig = new_figure(7.0)
    ax = fig.subplots()
    size = 36.0 if len(points) <= 200 else 14.0 if len(points) <= 1000 else 7.0  # fewer points, larger dots
    for i, c in enumerate(classes):
        mask = lab == c
        color = COLORS[i % len(COLORS)]
        marker = MAP_MARKERS[(i // len(COLORS)) % len(MAP_MARKERS)]
        name = class_names[c] if 0 <= c < len(class_names) else str(int(c))
        ax.scatter(points[mask, 0], points[mask, 1], s=size, color=color, marker=marker, alpha=0.7,
                   linewidths=0, label=f"{name} ({int(mask.sum())})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"latent space: {len(points)} images")
    ax.grid(True, alpha=0.3)
    if labelled:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9,
                  frameon=False, markerscale=2.0, title="label (images)", title_fontsize=9)
    return render(fig, path, "the latent-map plot")


# --------------------------------------------------------------------------- latent traversals


def plot_traversals(images: np.ndarray, path: str | Path, *, row_labels: Sequence[str], values: Sequence[float],
                    xlabel: str = "value of the latent dimension", title: str = "") -> Path:
    """A grid of decoded images (R, S, C, H, W) in [0, 1]: one row per latent dimension, one column per value
    it takes, with the rows and columns labelled; returns the PNG path."""
    arr = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=np.float32)
    if arr.ndim != 5 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"plot_traversals needs images of shape (rows, steps, C, H, W), got {arr.shape}")
    rows, steps = arr.shape[:2]
    if len(row_labels) != rows or len(values) != steps:
        raise ValueError(f"{rows} rows and {steps} columns need as many row labels and values "
                         f"(got {len(row_labels)} and {len(values)})")
    padding = 2
    grid = make_grid(torch.from_numpy(arr.reshape(rows * steps, *arr.shape[2:])), nrow=steps, padding=padding)
    height, width = grid.shape[:2]
    pitch_y, pitch_x = (height - padding) / rows, (width - padding) / steps  # one cell and its padding

    fig = new_figure(1.0 + 7.0 * height / width)
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([padding / 2 + (r + 0.5) * pitch_y for r in range(rows)], list(row_labels), fontsize=9)
    ax.set_xticks([padding / 2 + (s + 0.5) * pitch_x for s in range(steps)], [f"{float(v):g}" for v in values],
                  fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_title(title or "latent traversals")
    return render(fig, path, "the traversal plot")

