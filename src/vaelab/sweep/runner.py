"""`run_sweep`: run (or resume) a sweep in a directory, in one process or several, and write its outputs.

Workers share the SQLite study. Each asks for its next trial under a file lock on
`DIR/.ask.lock`, so the number of trials never overshoots the target however many processes
run, and draws its parameters inside that lock, so a parallel TPE sees every running trial's
point. With `jobs` > 1 the workers are spawned processes (a fresh interpreter each: no state
is shared but the study), and each trial gets max(1, cores // jobs) torch threads.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from vaelab.data import load_dataset
from vaelab.errors import ConfigError, VaelabError
from vaelab.fileio import atomic_write
from vaelab.log import say
from vaelab.runs.lifecycle import lock_run_dir
from vaelab.sweep.outputs import write_outputs
from vaelab.sweep.space import MAX_JOBS, MAX_TRIALS, SweepConfig, load_sweep, show_value
from vaelab.sweep.study import (STUDY_NAME, counted, make_pruner, make_sampler, make_storage, open_study, recover,
                                require_optuna, state_of, suggest)
from vaelab.sweep.trial import SplitsCache, WorkerContext, run_trial
from vaelab.sweep.validation import check_objective

# keys that decide whether an objective can be computed at all (see validation.check_objective)
_OBJECTIVE_KEYS = {"model.kind", "model.likelihood", "data.binarize", "eval.nll_images", "data.val_size"}


@dataclass(frozen=True)
class SweepResult:
    """What a sweep found, and where it wrote it."""

    out_dir: Path
    objective: str
    direction: str
    best_number: int | None  # None when no trial completed
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None  # DIR/best.toml
    table: Path  # DIR/trials.md
    csv: Path  # DIR/trials.csv
    plots: tuple[Path, ...]
    counts: dict[str, int]  # trials per state: complete, pruned, failed, interrupted


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _AskLock:
    """An exclusive flock on DIR/.ask.lock while a worker counts the trials and asks for the next one."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / ".ask.lock"
        self.handle = None

    def __enter__(self) -> "_AskLock":
        self.handle = open(self.path, "a+", encoding="utf-8")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the lock


WORKERS_LOCK = ".workers.lock"  # each spawned worker holds a shared lock on it for its whole life


def _hold_worker_lock(out_dir: Path):
    """A shared lock on DIR/.workers.lock, held by a spawned worker until it exits (the handle keeps it)."""
    handle = open(out_dir / WORKERS_LOCK, "a+", encoding="utf-8")
    fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
    return handle


def _check_no_workers_left(out_dir: Path) -> None:
    """Refuse to start while workers of an earlier sweep still run here (their parent was killed): their
    trials are RUNNING, and marking them interrupted would be wrong."""
    with open(out_dir / WORKERS_LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"worker processes of an earlier sweep are still running in {out_dir}; wait for "
                              "them to finish (or stop them), then run the command again") from None


def work(ctx: WorkerContext, splits=None, log: Callable[[str], None] = say,
         ready: Callable[[], None] | None = None) -> int:
    """Run trials until the study holds `ctx.target` finished ones; returns how many this worker ran.

    `ready` is called once the worker has its study and data, before its first trial."""
    optuna = require_optuna()
    storage = make_storage(ctx.out_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=make_pruner(ctx.sweep))
    cache = SplitsCache(ctx.sweep.base.data, splits)
    cache.get(ctx.sweep.base.data)
    if ready is not None:
        ready()
    ran = 0
    while True:
        with _AskLock(ctx.out_dir):
            trials = study.get_trials(deepcopy=False)
            running = sum(state_of(t) == "running" for t in trials)
            if counted(trials) + running >= ctx.target:
                return ran
            study.sampler = make_sampler(ctx.sweep, ctx.sweep.settings.seed + len(trials), ctx.jobs > 1)
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            params = suggest(trial, ctx.sweep)  # drawn under the lock: the next ask sees this point
        run_trial(ctx, study, trial, params, cache, log)
        ran += 1


def _worker_main(ctx: WorkerContext, start) -> None:
    """Entry point of a spawned worker process. `start`: a barrier every worker reaches with its data loaded,
    so all begin their first trial together (a worker that fails before it breaks the barrier: the others
    go on without waiting)."""
    def ready() -> None:
        try:
            start.wait(timeout=600)
        except threading.BrokenBarrierError:
            pass

    held = _hold_worker_lock(ctx.out_dir)  # noqa: F841 - released when the process exits
    try:
        work(ctx, log=say, ready=ready)
    except VaelabError as exc:
        start.abort()
        print(f"vaelab: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        start.abort()
        sys.exit(130)
    except BaseException:
        start.abort()
        raise


def _run_workers(ctx: WorkerContext, log: Callable[[str], None]) -> None:
    """`ctx.jobs` spawned processes; waits for all of them."""
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(ctx.jobs)
    workers = [spawn.Process(target=_worker_main, args=(ctx, start), name=f"vaelab-sweep-{i}")
               for i in range(ctx.jobs)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except KeyboardInterrupt:  # the workers got the signal too: let them record their trials as interrupted
        for w in workers:
            w.join(timeout=60)
        raise
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join()
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise VaelabError(f"{len(failed)} of {ctx.jobs} sweep processes failed (exit code {failed[0]}; their "
                          f"message is above); run the same command again to resume")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory; choose another --out for the sweep")
    if (out_dir / "config.toml").exists() or (out_dir / "checkpoints").exists():
        raise ConfigError(f"{out_dir} holds a training run, not a sweep; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "study.db").exists():
        raise ConfigError(f"{out_dir} is not empty and holds no sweep (no study.db); choose a new --out")


def _check_base(sweep: SweepConfig) -> None:
    """Objective checks that no trial can escape fail the sweep now, not every trial."""
    if not _OBJECTIVE_KEYS & {p.key for p in sweep.space}:
        check_objective(sweep.base, sweep.settings.objective)


def run_sweep(sweep: SweepConfig | str | Path, out_dir: str | Path, *, overrides: list[str] | tuple[str, ...] = (),
              trials: int | None = None, jobs: int | None = None,
              log: Callable[[str], None] = say) -> SweepResult:
    """Run the sweep (a sweep file's path, or a loaded `SweepConfig`) in `out_dir`, or resume it there.

    `overrides` (`section.key=value`) change the base run config of a sweep file; `trials` and `jobs`
    replace sweep.trials and sweep.jobs. Returns the best trial and where the outputs are.
    """
    if not isinstance(sweep, SweepConfig):
        sweep = load_sweep(sweep, overrides)
    elif overrides:
        raise ConfigError("overrides apply to a sweep file; pass its path, or change the SweepConfig's base")
    if trials is not None and not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"--trials must lie between 1 and {MAX_TRIALS:,}, got {trials}")
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must lie between 1 and {MAX_JOBS}, got {jobs}")
    jobs = jobs or sweep.settings.jobs
    target = sweep.target(trials)
    require_optuna()
    _check_base(sweep)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    splits = load_dataset(sweep.base.data)  # a missing dataset fails here, once, not in every trial
    if not len(splits.val):
        raise ConfigError("the validation split is empty, and a sweep chooses on it; raise data.val_size")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the sweep directory {out_dir}: {exc.strerror}; "
                          "choose another --out") from None
    lock = lock_run_dir(out_dir)
    try:
        _check_no_workers_left(out_dir)
        storage = make_storage(out_dir)
        study = open_study(sweep, out_dir, storage)
        recover(study, storage, sweep, log)
        _write_record(sweep, out_dir, target)
        done = counted(study.get_trials(deepcopy=False))
        s = sweep.settings
        if sweep.target(trials) < (trials or s.trials or 0):
            log(f"note: the grid has {sweep.grid_size()} points; the sweep runs each once")
        if done >= target:
            log(f"sweep {out_dir}: all {target} trials are done (raise --trials to run more)")
        else:
            workers = min(jobs, target - done)
            threads = max(1, cores() // workers)
            ctx = WorkerContext(sweep, out_dir.resolve(), target, workers, threads)
            shown_threads = sweep.base.train.threads or threads
            log(f"sweep {out_dir}: {s.direction} {s.objective} on the validation split, {s.sampler} sampler, "
                f"pruner {s.pruner}; {done} of {target} trials done, {target - done} to run in {workers} "
                f"process(es) with {shown_threads} thread(s) each")
            try:
                if workers == 1:
                    work(ctx, splits=splits, log=log)
                else:
                    _run_workers(ctx, log)
            except KeyboardInterrupt:
                _finish(study, sweep, out_dir, log, interrupted=True)
                raise
        return _finish(study, sweep, out_dir, log)
    finally:
        lock.close()


def _write_record(sweep: SweepConfig, out_dir: Path, target: int) -> None:
    """DIR/sweep.json: what the sweep searches, with which settings, from which file."""
    record = {"source": sweep.source, "target_trials": target, "settings": asdict(sweep.settings),
              **sweep.identity()}
    atomic_write(out_dir / "sweep.json", (json.dumps(record, indent=2) + "\n").encode("utf-8"), "the sweep record")


def _finish(study, sweep: SweepConfig, out_dir: Path, log: Callable[[str], None],
            interrupted: bool = False) -> SweepResult:
    out = write_outputs(study, sweep, out_dir)
    counts = {state: sum(r.state == state for r in out.rows) for state in ("complete", "pruned", "failed",
                                                                          "interrupted")}
    if interrupted:
        log(f"sweep interrupted; the trials so far are in {out.table}; run the same command again to resume")
    else:
        log("")
        log(out.markdown.rstrip())
        log("")
        if out.best is not None:
            log(f"best trial {out.best.number}: {sweep.settings.objective} {out.best.value:.6g}  "
                + "  ".join(f"{k}={show_value(v)}" for k, v in out.best.params.items()))
            log(f"best config: {out.best_config} (train it: vaelab train --config {out.best_config})")
        else:
            log(f"no trial completed; see {out.table} for why")
        log(f"wrote {out.csv}, {out.table}, {len(out.plots)} plot(s) in {out_dir / 'plots'}")
    best = out.best
    return SweepResult(out_dir=out_dir, objective=sweep.settings.objective, direction=sweep.settings.direction,
                       best_number=best.number if best else None, best_value=best.value if best else None,
                       best_params=dict(best.params) if best else {}, best_config=out.best_config,
                       table=out.table, csv=out.csv, plots=tuple(out.plots), counts=counts)


__all__ = ["SweepResult", "cores", "run_sweep", "work"]
