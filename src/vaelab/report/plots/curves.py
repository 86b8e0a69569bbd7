"""The training curves of a run: the loss per epoch of the fixed train and validation subsets, and their gap."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.ticker import FixedLocator

from vaelab.report.plots.style import COLORS, MINUS, new_figure, render, short_number


def _number(d: Any, key: str) -> float:
    """d[key] as a float; NaN when d is not a dict or the value is missing, None or not a number."""
    if not isinstance(d, Mapping):
        return math.nan
    v = d.get(key)
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _is_autoencoder(history: Sequence[Mapping[str, Any]]) -> bool:
    """True when the records hold no ELBO: a None "nelbo", or (without validation) a KL of exactly zero."""
    evaluated = []
    for rec in history:
        monitor = rec.get("monitor") if isinstance(rec.get("monitor"), Mapping) else {}
        evaluated += [d for d in (monitor.get("train"), monitor.get("val"), rec.get("val")) if isinstance(d, Mapping)]
    if evaluated:
        return any("nelbo" in d and d["nelbo"] is None for d in evaluated)
    running = [rec.get("train") for rec in history if isinstance(rec.get("train"), Mapping)]
    if running and all(d.get("nelbo") is None for d in running):
        return True
    kls = [_number(d, "kl") for d in running]
    return bool(kls) and all(k == 0.0 for k in kls)


def _y_limits(series: list[np.ndarray]) -> tuple[float, float, float] | None:
    """(low, high, clipped max) when the first epoch dwarfs the rest; None keeps matplotlib's limits.

    The first epoch's running average starts from random weights and can be far
    above everything after it, flattening the curves that matter.
    """
    later = np.concatenate([s[1:] for s in series])
    later = later[np.isfinite(later)]
    first = np.array([s[0] for s in series if len(s)])
    first = first[np.isfinite(first)]
    if later.size < 2 or first.size == 0:
        return None
    lo, hi = float(later.min()), float(later.max())
    span = max(hi - lo, 1e-9 * max(abs(hi), 1.0))
    if float(first.max()) <= hi + 2 * span:
        return None
    low = min(lo, float(first.min()))
    return low - 0.08 * (hi - low + span), hi + 0.25 * span, float(first.max())


@dataclass(frozen=True)
class _Curves:
    """What the training-curve plot draws, read from the metrics records (sorted by epoch)."""

    epochs: np.ndarray
    series: list[tuple[np.ndarray, str, dict[str, Any]]]  # (values, legend label, line style), top panel
    gap: np.ndarray | None  # validation - train of the fixed subsets (bottom panel); None: no gap panel
    measure: str  # "-ELBO" or, for an autoencoder, "reconstruction loss"


def _read_curves(history: list[dict]) -> _Curves:
    """The curves of a history, checked: ValueError for anything that is not a list of metrics records."""
    if isinstance(history, Mapping) or not isinstance(history, Sequence) or len(history) == 0:
        raise ValueError("plot_training_curves needs a non-empty list of per-epoch metrics records")
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping) or "epoch" not in rec:
            raise ValueError(f"history[{i}] is not a metrics record with an 'epoch' (got {type(rec).__name__})")
    autoencoder = _is_autoencoder(history)
    key = "loss" if autoencoder else "nelbo"
    measure = "reconstruction loss" if autoencoder else f"{MINUS}ELBO"

    epochs = np.array([_number(rec, "epoch") for rec in history])
    if not np.isfinite(epochs).all():
        raise ValueError("every history record needs a numeric 'epoch'")
    monitors = [rec.get("monitor") if isinstance(rec.get("monitor"), Mapping) else {} for rec in history]
    mon_train = np.array([_number(m.get("train"), key) for m in monitors])
    mon_val = np.array([_number(m.get("val"), key) for m in monitors])
    running = np.array([_number(rec.get("train"), key) for rec in history])
    full_val = np.array([_number(rec.get("val"), key) for rec in history])
    gap = np.array([_number(m, "gap") for m in monitors])
    # a record with a monitor but no gap: the difference of its two subsets
    gap = np.where(np.isfinite(gap), gap, mon_val - mon_train)
    sizes = sorted({int(m["images"]) for m in monitors if isinstance(m.get("images"), (int, float))})
    n_text = f", {sizes[0]} images" if len(sizes) == 1 else ""

    series: list[tuple[np.ndarray, str, dict[str, Any]]] = []
    if np.isfinite(mon_train).any():
        series.append((mon_train, f"train, fixed subset{n_text}", dict(color=COLORS[0], linestyle="-")))
    if np.isfinite(mon_val).any():
        series.append((mon_val, f"validation, fixed subset{n_text}", dict(color=COLORS[1], linestyle="-")))
    elif np.isfinite(full_val).any():  # validation without the fixed monitoring subsets
        series.append((full_val, "validation (whole split)", dict(color=COLORS[1], linestyle="-")))
    if np.isfinite(running).any():
        series.append((running, "train (running average during the epoch)",
                       dict(color=COLORS[0], linestyle="--", alpha=0.75)))
    if not series:
        raise ValueError(f"the history has no {measure} values to plot (no 'monitor', 'val' or 'train' numbers)")
    order = np.argsort(epochs, kind="stable")
    return _Curves(epochs[order], [(values[order], label, style) for values, label, style in series],
                   gap[order] if np.isfinite(gap).any() else None, measure)


def plot_training_curves(history: list[dict], path: str | Path, *, best_epoch: int | None = None,
                         stopped_epoch: int | None = None, title: str = "") -> Path:
    """-ELBO per epoch (nats per image) of the fixed train/validation subsets and the running train average,
    and below it their gap; returns the PNG path.

    Records without "monitor" (no validation split) plot what they have: the
    running training average and, if present, the full validation split. For the
    autoencoder ("nelbo" is None) the reconstruction loss ("loss") is plotted.
    """
    curves = _read_curves(history)
    x, measure, unit = curves.epochs, curves.measure, "nats per image"
    marker = dict(marker="o", markersize=3.5) if len(x) <= 60 else {}
    fig = new_figure(6.6 if curves.gap is not None else 4.6)
    if curves.gap is not None:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.0]})
        axes = [top, bottom]
    else:
        top, bottom = fig.subplots(), None
        axes = [top]
    for values, label, style in curves.series:
        top.plot(x, values, label=label, linewidth=1.6, **style, **marker)
    limits = _y_limits([values for values, _, _ in curves.series]) if len(x) >= 4 else None
    if limits is not None:
        top.set_ylim(limits[0], limits[1])
        top.text(0.99, 0.97, f"epoch {short_number(float(x[0]))} reaches {short_number(limits[2])} (above the axis)",
                 transform=top.transAxes, ha="right", va="top", fontsize=8, color="#555555")
    top.set_ylabel(f"{measure} ({unit})")
    top.set_title(title or f"training curves: {measure} per epoch")
    if bottom is not None:
        bottom.plot(x, curves.gap, color=COLORS[4], linewidth=1.6, label="validation − train (fixed subsets)",
                    **marker)
        bottom.axhline(0.0, color="black", linewidth=0.8, zorder=0)
        bottom.set_ylabel(f"gap ({unit})")
    _mark_epochs(axes, best_epoch, stopped_epoch)
    axes[-1].set_xlabel("epoch")
    if np.all(x == np.round(x)) and len(x) <= 20:
        axes[-1].xaxis.set_major_locator(FixedLocator(np.unique(x)))
    top.legend(loc="best", fontsize=9, framealpha=0.9)
    if bottom is not None:
        bottom.legend(loc="best", fontsize=8, framealpha=0.9)
    return render(fig, path, "the training-curve plot")


def _mark_epochs(axes: list[Any], best_epoch: int | None, stopped_epoch: int | None) -> None:
    """Vertical lines at the best epoch and where early stopping ended training, and the grid, on every panel."""
    for ax in axes:
        if best_epoch is not None:
            ax.axvline(float(best_epoch), color=COLORS[2], linestyle=":", linewidth=1.5,
                       label=f"best (epoch {best_epoch})")
        if stopped_epoch is not None:
            ax.axvline(float(stopped_epoch), color="#555555", linestyle="-.", linewidth=1.3,
                       label=f"early stop (epoch {stopped_epoch})")
        ax.grid(True, alpha=0.3)
