"""Every figure vaelab draws: training curves, score histograms, ROC curves, KL per unit, NLL against k.

Figures are `matplotlib.figure.Figure` objects rendered with the Agg canvas
into PNG bytes in memory; pyplot and the global backend are never touched, so
plotting works on headless machines and never disturbs a caller's own figures.
The PNG carries no software or date metadata: the same inputs give the same
bytes. Files are written with `fileio.atomic_write` (missing directories are
created, no temporary file is left behind).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator,
                               ScalarFormatter)

from vaelab.fileio import atomic_write

DPI = 110
WIDTH = 8.5  # inches: 935 pixels at DPI
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", "-.", ":")
INACTIVE = "#aaaaaa"  # bars of inactive latent units
MINUS = "\u2212"  # a typographic minus: "−ELBO" reads better than "-ELBO"
DEFAULT_ACTIVE_KL = 0.01  # nats: the default "active unit" cut when plot_kl_per_dimension gets no mask
HIST_QUANTILES = (0.005, 0.995)  # each dataset's central 99% is always inside the histogram's x range


# --------------------------------------------------------------------------- shared helpers


def _figure(height: float) -> Figure:
    """A white figure WIDTH inches wide with the Agg canvas attached (no pyplot)."""
    fig = Figure(figsize=(WIDTH, height), dpi=DPI, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure, path: str | Path, what: str) -> Path:
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


def _array(values: Any, name: str) -> np.ndarray:
    """A flat float64 copy of an array, list or (CPU) tensor; ValueError if it is not numeric."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, got {type(values).__name__}") from exc
    return arr.reshape(-1)


def _style(i: int) -> tuple[str, str]:
    """Colour and line style of the i-th series (the style changes once the colours run out)."""
    return COLORS[i % len(COLORS)], LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)]


def _fmt(x: float) -> str:
    """A short number: 4 significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


# --------------------------------------------------------------------------- training curves


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


def plot_training_curves(history: list[dict], path: str | Path, *, best_epoch: int | None = None,
                         stopped_epoch: int | None = None, title: str = "") -> Path:
    """-ELBO per epoch (nats per image) of the fixed train/validation subsets and the running train average,
    and below it their gap; returns the PNG path.

    Records without "monitor" (no validation split) plot what they have: the
    running training average and, if present, the full validation split. For the
    autoencoder ("nelbo" is None) the reconstruction loss ("loss") is plotted.
    """
    if isinstance(history, Mapping) or not isinstance(history, Sequence) or len(history) == 0:
        raise ValueError("plot_training_curves needs a non-empty list of per-epoch metrics records")
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping) or "epoch" not in rec:
            raise ValueError(f"history[{i}] is not a metrics record with an 'epoch' (got {type(rec).__name__})")
    autoencoder = _is_autoencoder(history)
    key = "loss" if autoencoder else "nelbo"
    measure = "reconstruction loss" if autoencoder else f"{MINUS}ELBO"
    unit = "nats per image"

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
    has_gap = bool(np.isfinite(gap).any())

    order = np.argsort(epochs, kind="stable")
    x = epochs[order]
    marker = dict(marker="o", markersize=3.5) if len(x) <= 60 else {}
    fig = _figure(6.6 if has_gap else 4.6)
    if has_gap:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.0]})
        axes = [top, bottom]
    else:
        top, bottom = fig.subplots(), None
        axes = [top]
    for values, label, style in series:
        top.plot(x, values[order], label=label, linewidth=1.6, **style, **marker)
    limits = _y_limits([values[order] for values, _, _ in series]) if len(x) >= 4 else None
    if limits is not None:
        top.set_ylim(limits[0], limits[1])
        top.text(0.99, 0.97, f"epoch {_fmt(float(x[0]))} reaches {_fmt(limits[2])} (above the axis)",
                 transform=top.transAxes, ha="right", va="top", fontsize=8, color="#555555")
    top.set_ylabel(f"{measure} ({unit})")
    top.set_title(title or f"training curves: {measure} per epoch")
    if bottom is not None:
        bottom.plot(x, gap[order], color=COLORS[4], linewidth=1.6, label="validation − train (fixed subsets)",
                    **marker)
        bottom.axhline(0.0, color="black", linewidth=0.8, zorder=0)
        bottom.set_ylabel(f"gap ({unit})")
    for ax in axes:
        if best_epoch is not None:
            ax.axvline(float(best_epoch), color=COLORS[2], linestyle=":", linewidth=1.5,
                       label=f"best (epoch {best_epoch})")
        if stopped_epoch is not None:
            ax.axvline(float(stopped_epoch), color="#555555", linestyle="-.", linewidth=1.3,
                       label=f"early stop (epoch {stopped_epoch})")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch")
    if np.all(x == np.round(x)) and len(x) <= 20:
        axes[-1].xaxis.set_major_locator(FixedLocator(np.unique(x)))
    top.legend(loc="best", fontsize=9, framealpha=0.9)
    if bottom is not None:
        bottom.legend(loc="best", fontsize=8, framealpha=0.9)
    return _render(fig, path, "the training-curve plot")


# --------------------------------------------------------------------------- histograms


def _shared_bins(finite: list[np.ndarray], bins: int) -> tuple[np.ndarray, bool]:
    """Bin edges shared by all datasets (non-empty, finite arrays), and whether they are logarithmic.

    The range covers the central 99% (HIST_QUANTILES) of every dataset, plus a
    3% margin, so one outlier cannot squeeze the others into a single bin. When
    all values in it are positive and the datasets lie an order of magnitude or
    more apart, the bins are logarithmic.
    """
    lo = min(float(np.quantile(f, HIST_QUANTILES[0])) for f in finite)
    hi = max(float(np.quantile(f, HIST_QUANTILES[1])) for f in finite)
    medians = [float(np.median(f)) for f in finite]
    if hi <= lo:  # one value everywhere: a small window around it
        pad = 0.05 * abs(lo) if lo != 0 else 0.5
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        return (edges + pad / bins if bins % 2 == 0 else edges), False  # the value mid-bin, not on an edge
    if lo > 0 and hi / lo >= 10 and max(medians) / min(medians) >= 3:
        pad = (hi / lo) ** 0.03
        return np.geomspace(lo / pad, hi * pad, bins + 1), True
    pad = 0.03 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, bins + 1), False


def plot_histograms(values: dict[str, np.ndarray], path: str | Path, *, xlabel: str, title: str = "",
                    bins: int = 60) -> Path:
    """Overlaid histograms of one score per dataset, on shared bins; returns the PNG path.

    Each histogram shows the fraction of that dataset's finite values per bin.
    Non-finite values are dropped and counted in the legend. The x range covers
    the central 99% of every dataset (values outside are counted per dataset);
    when positive scores span an order of magnitude or more the axis is logarithmic.
    """
    if not isinstance(values, Mapping) or len(values) == 0:
        raise ValueError("plot_histograms needs at least one dataset (a dict name -> values)")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    data: list[tuple[str, np.ndarray, int]] = []
    for name, v in values.items():
        arr = _array(v, f"the values of {name!r}")
        if arr.size == 0:
            raise ValueError(f"no values for {name!r}: every dataset needs at least one value")
        finite = arr[np.isfinite(arr)]
        data.append((str(name), finite, int(arr.size - finite.size)))
    present = [f for _, f, _ in data if f.size]
    if not present:
        raise ValueError("no finite values to plot: every value is NaN or infinite")

    edges, log_x = _shared_bins(present, int(bins))
    lo, hi = float(edges[0]), float(edges[-1])

    fig = _figure(5.0 + 0.22 * len(data))
    ax = fig.subplots()
    any_outside = False
    handles: list[Patch] = []
    for i, (name, finite, dropped) in enumerate(data):
        color, linestyle = _style(i)
        notes = []
        if finite.size:
            inside = finite[(finite >= lo) & (finite <= hi)]
            below, above = int((finite < lo).sum()), int((finite > hi).sum())
            weights = np.full(inside.size, 1.0 / finite.size)
            ax.hist(inside, bins=edges, weights=weights, histtype="stepfilled", color=color, alpha=0.22)
            ax.hist(inside, bins=edges, weights=weights, histtype="step", color=color, linewidth=1.6,
                    linestyle=linestyle)
            median = float(np.median(finite))
            ax.axvline(median, color=color, linestyle=":", linewidth=1.2)
            label = f"{name}: n={finite.size}, median {_fmt(median)}"
            if below or above:
                any_outside = True
                notes.append(", ".join(p for p in (f"{below} below" if below else "",
                                                   f"{above} above" if above else "") if p) + " the x range")
        else:
            label = f"{name}: no finite values"
        if dropped:
            notes.append(f"{dropped} non-finite dropped")
        if notes:
            label += " (" + "; ".join(notes) + ")"
        handles.append(Patch(facecolor=color, edgecolor=color, alpha=0.5, linestyle=linestyle, label=label))
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    notes = []
    if any_outside:
        central = 100 * (HIST_QUANTILES[1] - HIST_QUANTILES[0])
        notes.append(f"x range: covers the central {central:.0f}% of each dataset")
    if log_x:
        notes.append("log x axis")
    notes.append("dotted lines: medians")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of the dataset's values per bin")
    ax.set_title(title or "distribution per dataset")
    ax.set_ylim(0, None)
    ax.margins(y=0.05)
    ax.grid(True, alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, frameon=False, ncols=1,
               title="; ".join(notes), title_fontsize=8)
    return _render(fig, path, "the histogram plot")


# --------------------------------------------------------------------------- ROC curves


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, *,
                    title: str = "") -> Path:
    """ROC curves, name -> (false positive rates, true positive rates, AUROC), with the chance line."""
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise ValueError("plot_roc_curves needs at least one curve (a dict name -> (fpr, tpr, auroc))")
    parsed = []
    for name, curve in curves.items():
        try:
            fpr, tpr, auroc = curve
        except (TypeError, ValueError) as exc:
            raise ValueError(f"curve {name!r} must be a tuple (fpr, tpr, auroc)") from exc
        fpr, tpr = _array(fpr, f"the fpr of {name!r}"), _array(tpr, f"the tpr of {name!r}")
        if fpr.size == 0 or fpr.size != tpr.size:
            raise ValueError(f"curve {name!r}: fpr and tpr must be non-empty and of equal length "
                             f"(got {fpr.size} and {tpr.size})")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise ValueError(f"curve {name!r}: fpr and tpr must be finite")
        if fpr.min() < 0 or fpr.max() > 1 or tpr.min() < 0 or tpr.max() > 1:
            raise ValueError(f"curve {name!r}: fpr and tpr are rates and must lie in [0, 1]")
        auroc = float(auroc) if auroc is not None else math.nan
        parsed.append((str(name), fpr, tpr, auroc))

    fig = _figure(7.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1.0, label="chance (AUROC 0.500)")
    for i, (name, fpr, tpr, auroc) in enumerate(parsed):
        color, linestyle = _style(i)
        score = f"{auroc:.3f}" if math.isfinite(auroc) else "n/a"
        ax.plot(fpr, tpr, color=color, linestyle=linestyle, linewidth=1.8, drawstyle="default",
                label=f"{name} (AUROC {score})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (in-distribution images flagged)")
    ax.set_ylabel("true positive rate (out-of-distribution images flagged)")
    ax.set_title(title or "ROC curves")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    return _render(fig, path, "the ROC plot")


# --------------------------------------------------------------------------- KL per latent dimension


def plot_kl_per_dimension(kl: np.ndarray, path: str | Path, *, active: np.ndarray | None = None,
                          threshold_note: str = "") -> Path:
    """Bars of the mean KL (nats) per latent dimension, sorted descending, inactive units in grey.

    `active`: a boolean mask per dimension; without it a unit counts as active
    when its mean KL exceeds DEFAULT_ACTIVE_KL nats.
    """
    kl = _array(kl, "kl")
    if kl.size == 0:
        raise ValueError("plot_kl_per_dimension needs the KL of at least one latent dimension")
    if not np.isfinite(kl).all():
        raise ValueError("the KL per dimension must be finite (got NaN or infinite values)")
    if active is None:
        mask = kl > DEFAULT_ACTIVE_KL
        threshold_note = threshold_note or f"active: mean KL > {DEFAULT_ACTIVE_KL} nats"
    else:
        mask = np.asarray(active.detach().cpu().numpy() if hasattr(active, "detach") else active).reshape(-1)
        if mask.size != kl.size:
            raise ValueError(f"active has {mask.size} entries for {kl.size} latent dimensions")
        mask = mask.astype(bool)
    order = np.argsort(-kl, kind="stable")
    d, n_active = kl.size, int(mask.sum())

    fig = _figure(4.8)
    ax = fig.subplots()
    positions = np.arange(d)
    sorted_active = mask[order]
    colors = [COLORS[0] if a else INACTIVE for a in sorted_active]
    ax.bar(positions, kl[order], color=colors, width=0.8 if d > 1 else 0.5, edgecolor="none")
    # inactive units have next to no KL, so their bars vanish: shade their columns instead
    for pos in positions[~sorted_active]:
        ax.axvspan(pos - 0.5, pos + 0.5, color=INACTIVE, alpha=0.25, linewidth=0, zorder=0)
    handles = [Patch(color=COLORS[0], label=f"active ({n_active})"),
               Patch(color=INACTIVE, alpha=0.6, label=f"inactive ({d - n_active}; column shaded)")]
    if d <= 40:
        ax.set_xticks(positions, [str(int(i)) for i in order], fontsize=8 if d > 20 else 9)
        for tick, a in zip(ax.get_xticklabels(), sorted_active):
            tick.set_color("black" if a else "#888888")
        ax.set_xlabel("latent dimension (index), sorted by KL")
    else:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("rank of the latent dimension by KL (dimensions sorted, largest first)")
    ax.set_xlim(-0.6, d - 0.4)
    ax.set_ylim(0, None)
    ax.margins(y=0.08)
    ax.set_ylabel("mean KL per image (nats)")
    ax.set_title(f"KL per latent dimension: {n_active} of {d} units active, total {_fmt(float(kl.sum()))} nats")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9, title=threshold_note or None,
              title_fontsize=8)
    return _render(fig, path, "the KL-per-dimension plot")


# --------------------------------------------------------------------------- NLL against k


def plot_nll_vs_k(ks: list[int], values: list[float], path: str | Path, *, exact: float | None = None,
                  elbo: float | None = None) -> Path:
    """The importance-sampled bound on -log p(x) (nats per image) against k, log x axis; returns the PNG path.

    `exact`: the true -log p(x) when known; `elbo`: the -ELBO (the k=1 bound).
    """
    k_arr, v_arr = _array(ks, "ks"), _array(values, "values")
    if k_arr.size == 0:
        raise ValueError("plot_nll_vs_k needs at least one (k, value) pair")
    if k_arr.size != v_arr.size:
        raise ValueError(f"ks and values differ in length ({k_arr.size} and {v_arr.size})")
    if not (np.isfinite(k_arr).all() and (k_arr >= 1).all() and (k_arr == np.round(k_arr)).all()):
        raise ValueError("every k must be a positive integer")
    if not np.isfinite(v_arr).all():
        raise ValueError("the bound values must be finite")
    for name, ref in (("exact", exact), ("elbo", elbo)):
        if ref is not None and not math.isfinite(float(ref)):
            raise ValueError(f"{name} must be finite when given, got {ref!r}")
    order = np.argsort(k_arr, kind="stable")
    k_arr, v_arr = k_arr[order], v_arr[order]

    fig = _figure(4.8)
    ax = fig.subplots()
    ax.plot(k_arr, v_arr, color=COLORS[0], marker="o", markersize=5, linewidth=1.8,
            label=f"importance-sampled bound (k = {int(k_arr[0])} ... {int(k_arr[-1])})"
            if k_arr.size > 1 else f"importance-sampled bound (k = {int(k_arr[0])})")
    if elbo is not None:
        ax.axhline(float(elbo), color=COLORS[3], linestyle="--", linewidth=1.4,
                   label=f"{MINUS}ELBO: {_fmt(float(elbo))}")
    if exact is not None:
        ax.axhline(float(exact), color=COLORS[2], linestyle="-.", linewidth=1.4,
                   label=f"exact {MINUS}log p(x): {_fmt(float(exact))}")
    ax.set_xscale("log")
    lo, hi = float(k_arr[0]), float(k_arr[-1])
    ax.set_xlim(lo / 1.6, hi * 1.6) if hi > lo else ax.set_xlim(lo / 2, lo * 2)
    unique = np.unique(k_arr)
    if unique.size <= 12:
        ax.xaxis.set_major_locator(FixedLocator(unique))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("number of importance samples k (log scale)")
    ax.set_ylabel(f"{MINUS}log p(x) bound (nats per image)")
    ax.set_title(f"importance-sampled bound on {MINUS}log p(x) against k")
    ax.margins(y=0.15)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return _render(fig, path, "the NLL-against-k plot")


# --------------------------------------------------------------------------- latent map


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
    lab = _array(labels, "labels")
    if lab.size != len(points) or not (lab == np.round(lab)).all():
        raise ValueError(f"labels must be {len(points)} integers, one per point")
    lab = lab.astype(np.int64)
    classes = np.unique(lab)
    labelled = bool(class_names) or classes.size > 1

    fig = _figure(7.0)
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
    return _render(fig, path, "the latent-map plot")


# --------------------------------------------------------------------------- latent traversals


def plot_traversals(images: np.ndarray, path: str | Path, *, row_labels: Sequence[str], values: Sequence[float],
                    xlabel: str = "value of the latent dimension", title: str = "") -> Path:
    """A grid of decoded images (R, S, C, H, W) in [0, 1]: one row per latent dimension, one column per value
    it takes, with the rows and columns labelled; returns the PNG path."""
    import torch  # imported here: the other plots need no torch

    from vaelab.report.images import make_grid

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

    fig = _figure(1.0 + 7.0 * height / width)
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
    return _render(fig, path, "the traversal plot")


# --------------------------------------------------------------------------- hyperparameter sweeps


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
        x = _array(params, "params")
        if x.size != len(params) or not np.isfinite(x).all():
            raise ValueError("numeric parameter values must be finite numbers")
        if log_x and (x <= 0).any():
            raise ValueError("a log x axis needs positive parameter values")
    done = (s == "complete") & np.isfinite(y)
    fig = _figure(4.6)
    ax = fig.subplots()
    if done.any():
        ax.scatter(x[done], y[done], s=36, color=COLORS[0], alpha=0.8, linewidths=0,
                   label=f"complete ({int(done.sum())})", zorder=3)
    else:
        ax.text(0.5, 0.5, "no complete trial yet", transform=ax.transAxes, ha="center", va="center",
                color=INACTIVE)
    if best is not None and 0 <= best < len(x) and done[best]:
        at = str(params[best]) if categories is not None else _fmt(float(x[best]))
        ax.scatter([x[best]], [y[best]], s=180, marker="*", color=COLORS[1], zorder=4,
                   label=f"best: {_fmt(float(y[best]))} at {param} = {at}")
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
    return _render(fig, path, f"the sweep plot of {param}")


def plot_sweep_history(numbers: Sequence[int], values: Sequence[float | None], states: Sequence[str],
                       path: str | Path, *, objective: str, direction: str = "minimize") -> Path:
    """The objective of each trial against its number, with the best so far as a step line; returns the PNG path."""
    y, s = _sweep_inputs(values, states, len(numbers))
    x = _array(numbers, "numbers")
    done = (s == "complete") & np.isfinite(y)
    fig = _figure(4.6)
    ax = fig.subplots()
    if done.any():
        ax.scatter(x[done], y[done], s=30, color=COLORS[0], alpha=0.8, linewidths=0,
                   label=f"complete ({int(done.sum())})", zorder=3)
        order = np.argsort(x[done], kind="stable")
        xs, ys = x[done][order], y[done][order]
        running = np.minimum.accumulate(ys) if direction == "minimize" else np.maximum.accumulate(ys)
        ax.step(np.append(xs, x.max()), np.append(running, running[-1]), where="post", color=COLORS[1],
                linewidth=1.8, label=f"best so far: {_fmt(float(running[-1]))}")
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
    return _render(fig, path, "the sweep history plot")
