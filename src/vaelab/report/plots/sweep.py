"""Plots of a hyperparameter sweep: the objective against each parameter, and over the trials."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaelab.report.plots.style import COLORS, INACTIVE, as_array, new_figure, render, short_number


def _sweep_rug(ax: Any, x: np.ndarray, states: np.ndarray) -> None:
    """Pruned and failed trials have no objective: ticks along the bottom of the axes at their x."""
    transform = ax.get_xaxis_transform()  # x in data units, y in axes units
    for state, marker, color in (("pruned", "x", COLORS[3]), ("failed", "|", INACTIVE)):
        mask = states == state
        if mask.any():
            ax.plot(x[mask], np.full(int(mask.sum()), 0.03), linestyle="none", marker=marker, markersize=8,
                    color=color, transform=transform, clip_on=False,
                    label=f"{state} ({int(mask.sum())}; no objective)")


def _sweep_inputs(values: Sequence[float | None], states: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    s = np.array([str(v) for v in states])
    if y.size != n or s.size != n:
        raise ValueError(f"the parameter values, objectives and states differ in length ({n}, {y.size}, {s.size})")
    if n == 0:
        raise ValueError("a sweep plot needs at least one trial")
    return y, s


def plot_sweep_parameter(params: Sequence[Any], values: Sequence[float | None], states: Sequence[str],
                         path: str | Path, *, param: str, objective: str, log_x: bool = False,
                         categories: Sequence[str] | None = None, best: int | None = None,
                         direction: str = "minimize", bounds: tuple[float, float] | None = None) -> Path:
    """The objective of each trial against one parameter; returns the PNG path.

    `params[i]`, `values[i]`, `states[i]` describe trial i: its value of the parameter, its objective
    (None unless complete) and its state (complete, pruned, failed). With `categories` the parameter is
    categorical: `params` holds labels, drawn in the order of `categories`. `best`: the index of the
    best trial, drawn as a star. Pruned and failed trials are ticks along the bottom. `bounds`: the
    searched range of a numeric parameter, shown whole (where the sampler did not look is visible).
    """
    y, s = _sweep_inputs(values, states, len(params))
    if categories is not None:
        labels = [str(c) for c in categories]
        missing = [str(p) for p in params if str(p) not in labels]
        if missing:
            raise ValueError(f"parameter value {missing[0]!r} is not one of the categories")
        x = np.array([labels.index(str(p)) for p in params], dtype=np.float64)
    else:
        x = as_array(params, "params")
        if x.size != len(params) or not np.isfinite(x).all():
            raise ValueError("numeric parameter values must be finite numbers")
        if log_x and (x <= 0).any():
            raise ValueError("a log x axis needs positive parameter values")
    done = (s == "complete") & np.isfinite(y)
    fig = new_figure(4.6)
    ax = fig.subplots()
    if done.any():
        ax.scatter(x[done], y[done], s=36, color=COLORS[0], alpha=0.8, linewidths=0,
                   label=f"complete ({int(done.sum())})", zorder=3)
    else:
        ax.text(0.5, 0.5, "no complete trial yet", transform=ax.transAxes, ha="center", va="center",
                color=INACTIVE)
    if best is not None and 0 <= best < len(x) and done[best]:
        at = str(params[best]) if categories is not None else short_number(float(x[best]))
        ax.scatter([x[best]], [y[best]], s=180, marker="*", color=COLORS[1], zorder=4,
                   label=f"best: {short_number(float(y[best]))} at {param} = {at}")
    _sweep_rug(ax, x, s)
    if categories is not None:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20 if max(map(len, labels)) > 8 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        if log_x:
            ax.set_xscale("log")
        if bounds is not None:
            lo, hi = float(bounds[0]), float(bounds[1])
            pad = (hi / lo) ** 0.04 if log_x and lo > 0 else 0.04 * (hi - lo)
            ax.set_xlim(*((lo / pad, hi * pad) if log_x and lo > 0 else (lo - pad, hi + pad)))
    ax.set_xlabel(param + (" (log scale)" if log_x and categories is None else ""))
    ax.set_ylabel(f"{objective} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    ax.set_title(f"{objective} against {param}: {len(x)} trials")
    ax.margins(y=0.12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return render(fig, path, f"the sweep plot of {param}")


def plot_sweep_history(numbers: Sequence[int], values: Sequence[float | None], states: Sequence[str],
                       path: str | Path, *, objective: str, direction: str = "minimize") -> Path:
    """The objective of each trial against its number, with the best so far as a step line; returns the PNG path."""
    y, s = _sweep_inputs(values, states, len(numbers))
    x = as_array(numbers, "numbers")
    done = (s == "complete") & np.isfinite(y)
    fig = new_figure(4.6)
    ax = fig.subplots()
    if done.any():
        ax.scatter(x[done], y[done], s=30, color=COLORS[0], alpha=0.8, linewidths=0,
                   label=f"complete ({int(done.sum())})", zorder=3)
        order = np.argsort(x[done], kind="stable")
        xs, ys = x[done][order], y[done][order]
        running = np.minimum.accumulate(ys) if direction == "minimize" else np.maximum.accumulate(ys)
        ax.step(np.append(xs, x.max()), np.append(running, running[-1]), where="post", color=COLORS[1],
                linewidth=1.8, label=f"best so far: {short_number(float(running[-1]))}")
    else:
        ax.text(0.5, 0.5, "no complete trial yet", transform=ax.transAxes, ha="center", va="center",
                color=INACTIVE)
    _sweep_rug(ax, x, s)
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{objective} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    ax.set_title(f"{objective} over the sweep: {len(x)} trials")
    ax.margins(y=0.12)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return render(fig, path, "the sweep history plot")
