"""The text of `vaelab evaluate --on`'s OOD tables: every score with AUROC, AUPRC and FPR at 95% TPR, each
`value [low, high]` (three decimals, bootstrap 95% interval), the typicality test, DoSE and the timing.

Works on the JSON-ready record (`datasets_eval` of evaluation.json), so the Markdown report
(`vaelab.report.markdown`) shows the same numbers from the file.
"""

from __future__ import annotations

from typing import Any

from vaelab.evaluation.oodsuite import PUBLISHED_2DP

FPR_KEY = "fpr_at_95_tpr"


def interval_text(m: dict[str, float] | None) -> str:
    """`0.969 [0.962, 0.975]` of an interval record ({value, low, high})."""
    if not m:
        return "-"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def ordered_scores(result: dict[str, Any], scores: list[str]) -> list[str]:
    """The default score first, then the others in their order."""
    default = result.get("default_score")
    return ([default] if default in scores else []) + [s for s in scores if s != default]


def interval_rows(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(dataset, score, metrics) of every row of the interval table, the default score first in each."""
    rows = []
    for name, scores in result.get("ood_intervals", {}).items():
        for score in ordered_scores(result, list(scores)):
            rows.append((name, score, scores[score]))
    return rows


def _published(result: dict[str, Any], trained_on: str) -> list[str]:
    if trained_on != "fashion-mnist" or "mnist" not in result.get("ood_intervals", {}):
        return []
    return ["published, Fashion-MNIST (in) vs MNIST (out), two decimals: "
            + ", ".join(f"{k} {v:.2f}" for k, v in PUBLISHED_2DP.items())]


def _dose_lines(result: dict[str, Any]) -> list[str]:
    d = result.get("dose")
    if not d:
        return []
    flagged = ", ".join(f"{name} {100 * v:.1f}%" for name, v in d.get("flagged_at_99", {}).items())
    where = "read from" if not d.get("fitted") else "fitted and stored in"
    turns = (d.get("orientation") or {}).get("transforms")  # absent from evaluations made before it existed
    joined = (f"; joined with the orientation test over {', '.join(turns)} (the transforms the model resists on "
              "validation images)" if turns else "; no orientation test (the model resists no flip or rotation)"
              if turns is not None else "")
    return [f"DoSE: {d['density']}; chosen by held-out likelihood among {d['candidates']} candidates on "
            f"{d['validation_images']} validation images only ({where} {d.get('scorer') or 'memory'}){joined}",
            f"DoSE flags at the 99th percentile of held-out validation scores ({d['threshold_99']:.2f}): {flagged}"]


BATCH_TITLES = (
    ("typicality", "typicality test (Nalisnick et al. 2019) for batches of M images: |mean NLL - H| above its "
                   "{level}% bootstrap quantile, both from validation images only; flagged = fraction of disjoint "
                   "batches beyond it"),
    ("dose_batches", "DoSE batch test for the same batches: the M images' DoSE scores among held-out validation "
                     "scores, pooled as mean -log tail p (Fisher) and as mean percentile (rank), -log of the "
                     "smaller p-value above its {level}% bootstrap quantile; flagged = fraction of disjoint "
                     "batches beyond it"),
)


def _format_batches(record: dict[str, Any], title: str) -> list[str]:
    first = next(iter(record["rows"].values()))["test"]
    lines = [title.format(level=f"{100 * (1 - first['alpha']):.0f}")]
    w = max([12] + [len(name) + 2 for row in record["rows"].values() for name in row["sets"]])  # names fit
    head = f"{'M':>3}  {'dataset':<{w}}{'batches':>8}{'flagged':>9}  {'AUROC over batches':<22}{'FPR@95':<22}"
    lines += [head, "-" * len(head)]
    for m, row in record["rows"].items():
        ci = row.get("fpr_in_ci95")  # absent from evaluations made before it was recorded
        span = f", exact 95% interval [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"{m:>3}  {'test (in)':<{w}}{row['batches_in']:>8}{row['fpr_in']:9.3f}  "
                     f"(false-positive rate{span}; nominal {row['test']['alpha']})")
        for name, r in row["sets"].items():
            lines.append(f"{'':>3}  {name:<{w}}{r['batches']:>8}{r['flagged']:9.3f}  "
                         f"{interval_text(r['auroc']):<22}{interval_text(r[FPR_KEY]):<22}")
    if record.get("skipped_sizes"):
        lines.append(f"(batch sizes {', '.join(map(str, record['skipped_sizes']))} left out: too few images)")
    return lines


def format_typicality(result: dict[str, Any]) -> list[str]:
    """The typicality test's table, then the DoSE batch test's (each when the evaluation has it)."""
    parts = [_format_batches(result[key], title) for key, title in BATCH_TITLES
             if (result.get(key) or {}).get("rows")]
    return [line for i, part in enumerate(parts) for line in ([""] if i else []) + part]


def format_timing(result: dict[str, Any]) -> list[str]:
    t = result.get("timing")
    if not t:
        return []
    parts = "; ".join(f"{k} {v:.3g} s" for k, v in t["seconds_per_1000_images"].items())
    lines = [f"time per 1,000 images (measured, {t['images']} images): {parts}"]
    if t.get("once_per_model"):
        lines.append("once per model (kept in the run): "
                     + "; ".join(f"{k}: {v}" for k, v in t["once_per_model"].items()))
    return lines


def format_intervals(result: dict[str, Any], trained_on: str) -> list[str]:
    """The interval table of every score, then DoSE, the typicality test, the timing and the notes."""
    proto = result.get("intervals_protocol", {})
    lines = [f"out-of-distribution detection against the {trained_on} test split (OOD = positive; balanced sizes; "
             f"95% bootstrap intervals, {proto.get('resamples', '?')} resamples; * = the default score, "
             f"{result.get('default_score')}):"]
    rows = [(name, score + (" *" if score == result.get("default_score") else ""), m)
            for name, score, m in interval_rows(result)]
    dw = max([14] + [len(name) + 2 for name, _, _ in rows])  # each column as wide as its longest cell
    sw = max([22] + [len(label) + 2 for _, label, _ in rows])
    head = f"{'dataset':<{dw}}{'score':<{sw}}{'AUROC':<22}{'AUPRC':<22}{'FPR@95':<22}{'n':>6}"
    lines += [head, "-" * len(head)]
    last = None
    for name, label, m in rows:
        shown_name = name if name != last else ""
        last = name
        if "error" in m:
            lines.append(f"{shown_name:<{dw}}{label:<{sw}}{m['error']}")
            continue
        lines.append(f"{shown_name:<{dw}}{label:<{sw}}{interval_text(m['auroc']):<22}"
                     f"{interval_text(m['auprc']):<22}{interval_text(m[FPR_KEY]):<22}{m['n_in']:>6}")
    lines += _published(result, trained_on)
    lines += _dose_lines(result)
    for extra in (format_typicality(result), format_timing(result)):
        if extra:
            lines += [""] + extra
    lines += [f"note: {n}" for n in result.get("ood_notes", [])]
    return lines


__all__ = ["format_intervals", "format_timing", "format_typicality", "interval_rows", "interval_text",
           "ordered_scores"]
