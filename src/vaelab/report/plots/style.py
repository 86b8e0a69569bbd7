"""What every plot shares: the figure size, colours and line styles, number formatting, and rendering.

Figures are `matplotlib.figure.Figure` objects with the Agg canvas attached; pyplot and the global
backend are never touched, so plotting works on headless machines and never disturbs a caller's own
figures. `render` lays a figure out once, writes PNG bytes without software or date metadata (the same
inputs give the same bytes) with `fileio.atomic_write`, and frees it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaelab.fileio import atomic_write

DPI = 110
WIDTH = 8.5  # inches: 935 pixels at DPI
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", "-.", ":")
INACTIVE = "#aaaaaa"  # bars of inactive latent units
MINUS = "\u2212"  # a typographic minus: "−ELBO" reads better than "-ELBO"


def new_figure(height: float) -> Figure:
    """A white figure WIDTH inches wide with the Agg canvas attached (no pyplot)."""
    fig = Figure(figsize=(WIDTH, height), dpi=DPI, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, path: str | Path, what: str) -> Path:
    """Render `fig` to PNG bytes (no metadata that changes between runs), write atomically, free it."""
    buffer = io.BytesIO()
    try:
        # lay the figure out once, then freeze it: savefig would otherwise run the layout twice
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", edgecolor="white",
                    metadata={"Software": None})
    finally:
        fig.clear()
    return atomic_write(path, buffer.getvalue(), what)


def as_array(values: Any, name: str) -> np.ndarray:
    """A flat float64 copy of an array, list or (CPU) tensor; ValueError if it is not numeric."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, got {type(values).__name__}") from exc
    return arr.reshape(-1)


def series_style(i: int) -> tuple[str, str]:
    """Colour and line style of the i-th series (the style changes once the colours run out)."""
    return COLORS[i % len(COLORS)], LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)]


def short_number(x: float) -> str:
    """A short number: 4 significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"

