"""What a sweep leaves beside its study: the table of trials, the plots, and the best config as a preset.

    trials.csv      one row per trial: number, state, parameters, objective, validation -ELBO, epochs,
                    seconds, seed, note (why it failed), run directory
    trials.md       the same as a Markdown table, the best trial marked
    plots/KEY.png   the objective against each parameter (pruned and failed trials as ticks)
    plots/history.png   the objective against the trial number, with the best so far
    best.toml       the full run config of the best trial: vaelab train --config DIR/best.toml

All are rewritten from the study at the end of every run of the sweep, so they always describe
every trial the study holds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.config import load_config, to_toml
from vaelab.fileio import atomic_write
from vaelab.report import plots
from vaelab.sweep.space import Choice, FloatRange, IntRange, SweepConfig, show_value
from vaelab.sweep.study import decoded_params, state_of


@dataclass(frozen=True)
class TrialRow:
    """One trial as the tables show it."""

    number: int
    state: str  # complete | pruned | failed | interrupted | running
    params: dict[str, Any]
    value: float | None  # the objective (complete trials only)
    val_nelbo: float | None  # validation -ELBO: of the best checkpoint, or at the epoch a pruned trial stopped
    epochs: int | None
    seconds: float | None
    seed: int | None
    note: str
    run_dir: str | None


def trial_rows(study, sweep: SweepConfig) -> list[TrialRow]:
    """Every trial that started (queued grid points that never ran are left out), by number."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        state = state_of(t)
        if state == "waiting":
            continue
        attrs, metrics = t.user_attrs, t.user_attrs.get("metrics") or {}
        value = t.value if state == "complete" else None
        rows.append(TrialRow(
            number=t.number, state=state, params=decoded_params(sweep, t.params), value=value,
            val_nelbo=metrics.get("val_nelbo", metrics.get("val_at_stop")), epochs=attrs.get("epochs"),
            seconds=attrs.get("seconds"), seed=attrs.get("seed"),
            note=str(attrs.get("failure", "")) if state in ("failed", "interrupted") else "",
            run_dir=attrs.get("run_dir")))
    return rows


def best_row(rows: list[TrialRow], direction: str) -> TrialRow | None:
    """The complete trial with the best objective (the lowest number among equals)."""
    done = [r for r in rows if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    if not done:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(done, key=lambda r: (sign * r.value, r.number))


def _number(value: float | None, digits: str = ".6g") -> str:
    return "" if value is None else format(value, digits)


def _exact(value: Any) -> str:
    """A parameter value for the CSV: floats in full (repr), lists as [a, b]."""
    return repr(value) if isinstance(value, float) else show_value(value)


def table_csv(rows: list[TrialRow], sweep: SweepConfig) -> bytes:
    keys = [p.key for p in sweep.space]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", *keys, sweep.settings.objective, "val_nelbo", "epochs", "seconds", "seed",
                     "note", "run_dir"])
    for r in rows:
        writer.writerow([r.number, r.state, *(_exact(r.params[k]) if k in r.params else "" for k in keys),
                         _number(r.value, ".17g"), _number(r.val_nelbo, ".17g"),
                         r.epochs if r.epochs is not None else "",
                         _number(r.seconds, ".2f"), r.seed if r.seed is not None else "", r.note, r.run_dir or ""])
    return buffer.getvalue().encode("utf-8")


def table_markdown(rows: list[TrialRow], sweep: SweepConfig, best: TrialRow | None) -> str:
    s = sweep.settings
    keys = [p.key for p in sweep.space]
    counts = {state: sum(r.state == state for r in rows) for state in ("complete", "pruned", "failed", "interrupted")}
    lines = [f"# Sweep: {s.direction} {s.objective} ({s.sampler} sampler, {len(rows)} trials)", "",
             "The objective is computed on the validation split; the test split was never read. "
             + ", ".join(f"{n} {state}" for state, n in counts.items() if n) + ".", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {s.objective} = {best.value:.6g} ("
                  + ", ".join(f"{k} = {show_value(v)}" for k, v in best.params.items())
                  + f"); its run: `{best.run_dir}`, its config: `best.toml`.", ""]
    head = ["trial", "state", *keys, s.objective, "val -ELBO", "epochs", "seconds", "note"]
    numeric = [True, False, *(not isinstance(p, Choice) for p in sweep.space), True, True, True, True, False]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for r in rows:
        state = f"**{r.state} (best)**" if best is not None and r.number == best.number else r.state
        cells = [str(r.number), state, *(show_value(r.params[k]) if k in r.params else "" for k in keys),
                 _number(r.value, ".5g"), _number(r.val_nelbo, ".2f"), str(r.epochs if r.epochs is not None else ""),
                 _number(r.seconds, ".1f"), r.note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "val -ELBO: of the best epoch's weights on the whole validation split for a complete trial; "
              "after the epoch it stopped at for a pruned one. An autoencoder has no -ELBO: its complete trials leave it "
              "empty, its pruned ones show the validation loss the pruner compared."]
    return "\n".join(lines) + "\n"


def write_plots(rows: list[TrialRow], sweep: SweepConfig, best: TrialRow | None, plots_dir: Path) -> list[Path]:
    """One plot per parameter and the history; trials still running or interrupted are left out."""
    shown = [r for r in rows if r.state in ("complete", "pruned", "failed")]
    if not shown:
        return []
    s = sweep.settings
    values = [r.value for r in shown]
    states = [r.state for r in shown]
    best_index = next((i for i, r in enumerate(shown) if best is not None and r.number == best.number), None)
    written = []
    for p in sweep.space:
        have = [i for i, r in enumerate(shown) if p.key in r.params]  # a trial failed before drawing has none
        if not have:
            continue
        raw = [shown[i].params[p.key] for i in have]
        categorical = isinstance(p, Choice) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in raw + list(p.values))
        written.append(plots.plot_sweep_parameter(
            [show_value(v) for v in raw] if categorical else raw, [values[i] for i in have],
            [states[i] for i in have], plots_dir / f"{p.key}.png", param=p.key, objective=s.objective,
            log_x=isinstance(p, (FloatRange, IntRange)) and p.log,
            categories=[show_value(v) for v in p.values] if categorical else None,
            bounds=(p.low, p.high) if isinstance(p, (FloatRange, IntRange)) else None,
            best=have.index(best_index) if best_index in have else None, direction=s.direction))
    written.append(plots.plot_sweep_history([r.number for r in shown], values, states, plots_dir / "history.png",
                                      objective=s.objective, direction=s.direction))
    return written


def write_best_config(sweep: SweepConfig, best: TrialRow, out_dir: Path) -> Path:
    """best.toml: the best trial's full run config (train.threads back to the base's: a preset is not tied to
    the sweep's share of the cores)."""
    cfg = load_config(out_dir / best.run_dir / "config.toml")
    cfg = cfg.replace(train={"threads": sweep.base.train.threads})
    header = [f"# The best trial ({best.number}) of the sweep in {out_dir}: {sweep.settings.objective} = "
              f"{best.value:.6g} on the validation split.",
              "# " + ", ".join(f"{k} = {show_value(v)}" for k, v in best.params.items()),
              f"# Train it again (longer: --set train.epochs=N): vaelab train --config {out_dir / 'best.toml'}"]
    body = "\n".join(line for line in to_toml(cfg).splitlines() if not line.startswith("# Re-run it with"))
    return atomic_write(out_dir / "best.toml", ("\n".join(header) + "\n" + body + "\n").encode("utf-8"),
                        "the best config")


@dataclass(frozen=True)
class Outputs:
    rows: list[TrialRow]
    best: TrialRow | None
    csv: Path
    table: Path
    markdown: str
    plots: list[Path]
    best_config: Path | None


def write_outputs(study, sweep: SweepConfig, out_dir: Path) -> Outputs:
    """trials.csv, trials.md, plots/ and best.toml from the study as it stands."""
    rows = trial_rows(study, sweep)
    best = best_row(rows, sweep.settings.direction)
    csv_path = atomic_write(out_dir / "trials.csv", table_csv(rows, sweep), "the table of trials")
    markdown = table_markdown(rows, sweep, best)
    md_path = atomic_write(out_dir / "trials.md", markdown.encode("utf-8"), "the table of trials")
    plots = write_plots(rows, sweep, best, out_dir / "plots")
    best_config = write_best_config(sweep, best, out_dir) if best is not None else None
    return Outputs(rows, best, csv_path, md_path, markdown, plots, best_config)
