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

from vaelab.log import say
from vaelab.config import DataConfig, RunConfig, apply_mapping
from vaelab.data import DatasetSplits, load_dataset
from vaelab.errors import VaelabError
from vaelab.sweep.objectives import check_objective, intermediate_value, seal_test, validation_metrics
from vaelab.sweep.space import SweepConfig, show_value, trial_mapping
from vaelab.sweep.study import INTERRUPTED, require_optuna, requeue


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


def run_trial(ctx: WorkerContext, study, trial, params: dict[str, Any], cache: SplitsCache,
              log: Callable[[str], None] = say) -> str:
    """Train one asked trial and tell the study how it ended; returns its state (complete, pruned, failed)."""
    from vaelab.runs import load_run, resolve_device
    from vaelab.training.loop import Trainer

    optuna = require_optuna()
    sweep, number = ctx.sweep, trial.number
    objective = sweep.settings.objective
    run_dir = ctx.out_dir / "trials" / trial_dir_name(number)
    trial.set_user_attr("run_dir", str(Path("trials") / trial_dir_name(number)))
    t0 = time.perf_counter()
    epochs: list[dict[str, Any]] = []  # the metrics record of every epoch trained
    seconds: list[float] = []

    def finish(state: str, reason: str | None = None, metrics: dict[str, Any] | None = None) -> str:
        seconds.append(round(time.perf_counter() - t0, 2))
        trial.set_user_attr("epochs", len(epochs))
        trial.set_user_attr("seconds", seconds[0])
        if reason is not None:
            trial.set_user_attr("failure", reason)
        if metrics is not None:
            trial.set_user_attr("metrics", metrics)
        if state == "complete":
            study.tell(trial, metrics[objective])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if state == "pruned"
                       else optuna.trial.TrialState.FAIL)
        return state

    try:
        cfg = trial_config(sweep, params, number, ctx.threads)
        trial.set_user_attr("seed", cfg.train.seed)
        check_objective(cfg, objective)
        splits = cache.get(cfg.data)
    except VaelabError as exc:
        finish("failed", str(exc))
        log(f"trial {number} failed before training: {exc}  [{format_params(params)}]")
        return "failed"

    pruned: list[int] = []

    def on_epoch(trainer, record: dict[str, Any]) -> bool:
        epochs.append(record)
        value = intermediate_value(record)
        if value is None:
            return False
        trial.report(value, record["epoch"])
        # after the last epoch there is nothing left to save: the trial completes and gets its objective
        if record["epoch"] < trainer.cfg.train.epochs and trial.should_prune():
            pruned.append(record["epoch"])
            return True
        return False

    try:
        Trainer(cfg, run_dir, splits=splits, log=lambda message: None,
                progress=False).run(on_epoch=on_epoch, evaluate=False)
        if pruned:
            last = intermediate_value(epochs[-1])
            finish("pruned", metrics={"val_at_stop": last})
            measure = "-ELBO" if epochs[-1]["val"].get("nelbo") is not None else "loss"
            log(f"trial {number} pruned after epoch {pruned[0]} (validation {measure} {last:.2f})  "
                f"[{format_params(params)}]  {seconds[0]:.1f} s")
            return "pruned"
        run = load_run(run_dir, checkpoint="best", device=resolve_device(cfg.train.device))
        metrics = validation_metrics(run.model, cfg, splits, objective, device=run.device)
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
        f"{seconds[0]:.1f} s{mark}")
    return "complete"


__all__ = ["SplitsCache", "WorkerContext", "format_params", "run_trial", "trial_config",
           "trial_dir_name"]
