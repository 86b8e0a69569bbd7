"""The plots of `vaelab evaluate`: score histograms, ROC curves, KL per latent unit, the NLL bound against k."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter

from vaelab.report.plots.style import COLORS, INACTIVE, MINUS, as_array, new_figure, render, series_style, short_number

DEFAULT_ACTIVE_KL = 0.01  # nats: the default "active unit" cut when plot_kl_per_dimension gets no mask
HIST_QUANTILES = (0.005, 0.995)  # each dataset's central 99% is always inside the histogram's x range


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
        arr = as_array(v, f"the values of {name!r}")
        if arr.size == 0:
            raise ValueError(f"no values for {name!r}: every dataset needs at least one value")
        finite = arr[np.isfinite(arr)]
        data.append((str(name), finite, int(arr.size - finite.size)))
    present = [f for _, f, _ in data if f.size]
    if not present:
        raise ValueError("no finite values to plot: every value is NaN or infinite")

    edges, log_x = _shared_bins(present, int(bins))
    lo, hi = float(edges[0]), float(edges[-1])

    fig = new_figure(5.0 + 0.22 * len(data))
    ax = fig.subplots()
    any_outside = False
    handles: list[Patch] = []
    for i, (name, finite, dropped) in enumerate(data):
        color, linestyle = series_style(i)
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
            label = f"{name}: n={finite.size}, median {short_number(median)}"
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
    return render(fig, path, "the histogram plot")


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
        fpr, tpr = as_array(fpr, f"the fpr of {name!r}"), as_array(tpr, f"the tpr of {name!r}")
        if fpr.size == 0 or fpr.size != tpr.size:
            raise ValueError(f"curve {name!r}: fpr and tpr must be non-empty and of equal length "
                             f"(got {fpr.size} and {tpr.size})")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise ValueError(f"curve {name!r}: fpr and tpr must be finite")
        if fpr.min() < 0 or fpr.max() > 1 or tpr.min() < 0 or tpr.max() > 1:
            raise ValueError(f"curve {name!r}: fpr and tpr are rates and must lie in [0, 1]")
        auroc = float(auroc) if auroc is not None else math.nan
        parsed.append((str(name), fpr, tpr, auroc))

    fig = new_figure(7.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1.0, label="chance (AUROC 0.500)")
    for i, (name, fpr, tpr, auroc) in enumerate(parsed):
        color, linestyle = series_style(i)
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
    return render(fig, path, "the ROC plot")


# --------------------------------------------------------------------------- KL per latent dimension


def plot_kl_per_dimension(kl: np.ndarray, path: str | Path, *, active: np.ndarray | None = None,
                          threshold_note: str = "") -> Path:
    """Bars of the mean KL (nats) per latent dimension, sorted descending, inactive units in grey.

    `active`: a boolean mask per dimension; without it a unit counts as active
    when its mean KL exceeds DEFAULT_ACTIVE_KL nats.
    """
    kl = as_array(kl, "kl")
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

    fig = new_figure(4.8)
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
    ax.set_title(f"KL per latent dimension: {n_active} of {d} units active, total {short_number(float(kl.sum()))} nats")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9, title=threshold_note or None,
              title_fontsize=8)
    return render(fig, path, "the KL-per-dimension plot")


# --------------------------------------------------------------------------- NLL against k


def plot_nll_vs_k(ks: list[int], values: list[float], path: str | Path, *, exact: float | None = None,
                  elbo: float | None = None) -> Path:
    """The importance-sampled bound on -log p(x) (nats per image) against k, log x axis; returns the PNG path.

    `exact`: the true -log p(x) when known; `elbo`: the -ELBO (the k=1 bound).
    """
    k_arr, v_arr = as_array(ks, "ks"), as_array(values, "values")
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

    fig = new_figure(4.8)
    ax = fig.subplots()
    ax.plot(k_arr, v_arr, color=COLORS[0], marker="o", markersize=5, linewidth=1.8,
            label=f"importance-sampled bound (k = {int(k_arr[0])} ... {int(k_arr[-1])})"
            if k_arr.size > 1 else f"importance-sampled bound (k = {int(k_arr[0])})")
    if elbo is not None:
        ax.axhline(float(elbo), color=COLORS[3], linestyle="--", linewidth=1.4,
                   label=f"{MINUS}ELBO: {short_number(float(elbo))}")
    if exact is not None:
        ax.axhline(float(exact), color=COLORS[2], linestyle="-.", linewidth=1.4,
                   label=f"exact {MINUS}log p(x): {short_number(float(exact))}")
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
    return render(fig, path, "the NLL-against-k plot")

