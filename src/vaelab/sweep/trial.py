"""One trial of a sweep: its config, its run directory, training with pruning, and its objective.

Each trial is a normal vaelab run in `DIR/trials/NNNN` (`vaelab report`, `evaluate` and `sample`
work on it), trained by `vaelab.training.loop.Trainer` without the final evaluation (which would read the
test split) on splits whose test images are sealed. After every epoch the validation -ELBO is
reported to the pruner; a pruned trial stops there, as early stopping does. A finished trial's
objective is computed from its `best` checkpoint on the validation split.

A sampled combination the config refuses (e.g. a VampPrior with the hierarchical VAE) fails only
that trial, with the config's own one-line reason; so does a run that diverges.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vaelab.config import DataConfig, RunConfig, apply_mapping
from vaelab.data import DatasetSplits, load_dataset
from vaelab.errors import VaelabError
from vaelab.log import say
from vaelab.runs import load_run, resolve_device
from vaelab.sweep.space import SweepConfig, show_value, trial_mapping
from vaelab.sweep.study import INTERRUPTED, require_optuna, requeue
from vaelab.sweep.validation import check_objective, intermediate_value, seal_test, validation_metrics
from vaelab.training import loop  # loop.Trainer is looked up at each trial (tests replace it)


@dataclass(frozen=True)
class WorkerContext:
    """What every worker process needs (picklable: it travels to spawned processes)."""

    sweep: SweepConfig
    out_dir: Path
    target: int  # trials the sweep finishes in all
    jobs: int  # worker processes
    threads: int  # torch threads per trial when the base config leaves train.threads at 0


class SplitsCache:
    """The splits of the latest data config, test sealed: trials that share data.* share them."""

    def __init__(self, data: DataConfig | None = None, splits: DatasetSplits | None = None) -> None:
        self.data, self.splits = (data, seal_test(splits)) if splits is not None else (None, None)

    def get(self, data: DataConfig) -> DatasetSplits:
        if self.splits is None or data != self.data:
            self.data, self.splits = data, seal_test(load_dataset(data))
        return self.splits


def trial_dir_name(number: int) -> str:
    return f"{number:04d}"


def trial_config(sweep: SweepConfig, params: dict[str, Any], number: int, threads: int) -> RunConfig:
    """The base config with the trial's parameters, its own seed (base seed + trial number, unless the space
    sets train.seed) and its share of the cores (unless the base sets train.threads). Raises ConfigError."""
    mapping = trial_mapping(params)
    train = mapping.setdefault("train", {})
    if "train.seed" not in params:
        train["seed"] = sweep.base.train.seed + number
    if not sweep.base.train.threads and "train.threads" not in params:
        train["threads"] = threads
    return apply_mapping(sweep.base, mapping, origin=f"trial {number}")


def format_params(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={show_value(v)}" for k, v in params.items())


def _best_value(study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


class _TrialRecord:
    """What one trial has done so far (its epochs, whether it was pruned), and how its end is told to the
    study: the user attributes (epochs, seconds, failure, metrics) and the state or the objective's value."""

    def __init__(self, study, trial, objective: str, trial_state) -> None:
        self.study, self.trial, self.objective, self.trial_state = study, trial, objective, trial_state
        self.t0 = time.perf_counter()
        self.epochs: list[dict[str, Any]] = []  # the metrics record of every epoch trained
        self.pruned: list[int] = []  # the epoch after which the pruner stopped the trial
        self.seconds: float | None = None  # set by the first `finish`

    def on_epoch(self, trainer, record: dict[str, Any]) -> bool:
        """The trainer's per-epoch hook: report the validation value; True stops the trial (pruned)."""
        self.epochs.append(record)
        value = intermediate_value(record)
        if value is None:
            return False
        self.trial.report(value, record["epoch"])
        # after the last epoch there is nothing left to save: the trial completes and gets its objective
        if record["epoch"] < trainer.cfg.train.epochs and self.trial.should_prune():
            self.pruned.append(record["epoch"])
            return True
        return False

    def finish(self, state: str, reason: str | None = None, metrics: dict[str, Any] | None = None) -> str:
        if self.seconds is None:
            self.seconds = round(time.perf_counter() - self.t0, 2)
        trial = self.trial
        trial.set_user_attr("epochs", len(self.epochs))
        trial.set_user_attr("seconds", self.seconds)
        if reason is not None:
            trial.set_user_attr("failure", reason)
        if metrics is not None:
            trial.set_user_attr("metrics", metrics)
        if state == "complete":
            self.study.tell(trial, metrics[self.objective])
        else:
            self.study.tell(trial, state=self.trial_state.PRUNED if state == "pruned" else self.trial_state.FAIL)
        return state


def _train_and_measure(cfg: RunConfig, run_dir: Path, splits: DatasetSplits, record: _TrialRecord):
    """Train the trial's run (pruned or to its end); the validation metrics of its best checkpoint, or None
    when the pruner stopped it."""
    loop.Trainer(cfg, run_dir, splits=splits, log=lambda message: None,
                 progress=False).run(on_epoch=record.on_epoch, evaluate=False)
    if record.pruned:
        return None
    run = load_run(run_dir, checkpoint="best", device=resolve_device(cfg.train.device))
    return validation_metrics(run.model, cfg, splits, record.objective, device=run.device)


def run_trial(ctx: WorkerContext, study, trial, params: dict[str, Any], cache: SplitsCache,
              log: Callable[[str], None] = say) -> str:
    """Train one asked trial and tell the study how it ended; returns its state (complete, pruned, failed)."""
    optuna = require_optuna()
    sweep, number = ctx.sweep, trial.number
    objective = sweep.settings.objective
    run_dir = ctx.out_dir / "trials" / trial_dir_name(number)
    trial.set_user_attr("run_dir", str(Path("trials") / trial_dir_name(number)))
    record = _TrialRecord(study, trial, objective, optuna.trial.TrialState)
    finish, epochs = record.finish, record.epochs

    try:
        cfg = trial_config(sweep, params, number, ctx.threads)
        trial.set_user_attr("seed", cfg.train.seed)
        check_objective(cfg, objective)
        splits = cache.get(cfg.data)
    except VaelabError as exc:
        finish("failed", str(exc))
        log(f"trial {number} failed before training: {exc}  [{format_params(params)}]")
        return "failed"

    try:
        metrics = _train_and_measure(cfg, run_dir, splits, record)
        if metrics is None:
            last = intermediate_value(epochs[-1])
            finish("pruned", metrics={"val_at_stop": last})
            measure = "-ELBO" if epochs[-1]["val"].get("nelbo") is not None else "loss"
            log(f"trial {number} pruned after epoch {record.pruned[0]} (validation {measure} {last:.2f})  "
                f"[{format_params(params)}]  {record.seconds:.1f} s")
            return "pruned"
    except KeyboardInterrupt:
        trial.set_user_attr("failure", INTERRUPTED)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        requeue(study, sweep, trial.params)
        raise
    except VaelabError as exc:  # diverged, or a data problem: this trial only
        finish("failed", str(exc))
        log(f"trial {number} failed: {exc}  [{format_params(params)}]")
        return "failed"
    except Exception as exc:  # noqa: BLE001 - recorded, then out-of-memory fails the trial and the rest is a bug
        first_line = (str(exc).splitlines() or [""])[0][:200]
        if isinstance(exc, RuntimeError) and "out of memory" in first_line.lower():
            finish("failed", f"out of memory: {first_line}")
            log(f"trial {number} failed: out of memory  [{format_params(params)}]")
            return "failed"
        finish("failed", f"crashed: {type(exc).__name__}: {first_line}")
        raise
    finish("complete", metrics=metrics)
    value, best = metrics[objective], _best_value(study)
    mark = "  *best so far" if best is not None and math.isclose(value, best) else ""
    log(f"trial {number} complete: {objective} {value:.4g}  [{format_params(params)}]  {len(epochs)} epoch(s), "
        f"{record.seconds:.1f} s{mark}")
    return "complete"


__all__ = ["SplitsCache", "WorkerContext", "format_params", "run_trial", "trial_config",
           "trial_dir_name"]
