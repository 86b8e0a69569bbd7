"""The Optuna side of a sweep: the SQLite study, its samplers and pruner, resuming and counting trials.

A sweep directory holds one study, named `STUDY_NAME`, in `study.db`. The study remembers what it
searches (space, objective, direction, base config) in a user attribute; a later run on the same
directory resumes it only when those are unchanged. Trials a dead process left RUNNING are marked
failed ("interrupted") and their parameters queued again, so the sampled point is not lost.

Samplers are made afresh for every trial with the seed `sweep.seed + trials so far`: a sweep with
one process draws the same parameters whether it runs in one go or is stopped and resumed.
The grid sampler is a queue: every point of the grid is enqueued once when the study is created,
and workers pop them one at a time under the storage's own check, so each point runs exactly once
whatever the number of processes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig, to_dict
from vaelab.errors import ConfigError
from vaelab.sweep.space import Choice, IntRange, SweepConfig

STUDY_NAME = "vaelab-sweep"
IDENTITY_ATTR = "vaelab_sweep"
INTERRUPTED = "interrupted"  # user attr "failure" of a trial whose process died or was stopped


def require_optuna():
    """The optuna module, quiet; a one-line ConfigError when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("vaelab sweep needs Optuna, which is not installed: pip install 'vaelab[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"


def make_storage(out_dir: Path):
    """SQLite storage shared by the sweep's processes (a writer waits up to a minute for another)."""
    optuna = require_optuna()
    return optuna.storages.RDBStorage(storage_url(out_dir), engine_kwargs={"connect_args": {"timeout": 60}})


def make_sampler(sweep: SweepConfig, seed: int, parallel: bool):
    """The sampler for the next trial (a grid's points are queued: the random sampler never runs for it)."""
    optuna = require_optuna()
    if sweep.settings.sampler == "tpe":
        return (optuna.samplers.TPESampler(seed=seed, constant_liar=True) if parallel
                else optuna.samplers.TPESampler(seed=seed))
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(sweep: SweepConfig):
    optuna = require_optuna()
    s = sweep.settings
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                       n_warmup_steps=s.pruner_warmup_epochs)


def _normal(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples become lists), for comparisons with the stored identity."""
    return json.loads(json.dumps(data))


def _with_defaults(base: dict[str, Any]) -> dict[str, Any]:
    """A stored base config with the keys a newer vaelab added filled with their defaults, so an upgrade
    alone never blocks a resume."""
    defaults = _normal(to_dict(RunConfig()))
    return {section: {**values, **base.get(section, {})}
            for section, values in defaults.items()} | {s: v for s, v in base.items() if s not in defaults}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two sweep identities, in a few words; None when they are the same search."""
    if (old.get("objective"), old.get("direction")) != (new["objective"], new["direction"]):
        return (f"objective ({old.get('direction')} {old.get('objective')} there, {new['direction']} "
                f"{new['objective']} here)")
    if old.get("space") != new["space"]:
        keys = list(dict.fromkeys([*old.get("space", {}), *new["space"]]))
        for key in keys:
            a, b = old.get("space", {}).get(key), new["space"].get(key)
            if a != b:
                return (f"search space ({key}: {json.dumps(a) if a is not None else 'absent'} there, "
                        f"{json.dumps(b) if b is not None else 'absent'} here)")
    before, now = _with_defaults(old.get("base", {})), _with_defaults(new["base"])
    for section in dict.fromkeys([*before, *now]):
        for key in dict.fromkeys([*before.get(section, {}), *now.get(section, {})]):
            a, b = before.get(section, {}).get(key), now.get(section, {}).get(key)
            if a != b:
                return f"base config ({section}.{key} = {json.dumps(a)} there, {json.dumps(b)} here)"
    return None


def open_study(sweep: SweepConfig, out_dir: Path, storage):
    """Create the sweep's study (queueing a grid's points), or load it after checking it is the same search."""
    optuna = require_optuna()
    identity = _normal(sweep.identity())
    existing = optuna.study.get_all_study_names(storage)
    if existing and STUDY_NAME not in existing:
        raise ConfigError(f"{out_dir / 'study.db'} holds no vaelab sweep (studies: {', '.join(existing)}); "
                          "choose another --out")
    if STUDY_NAME in existing:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=make_pruner(sweep))
        old = study.user_attrs.get(IDENTITY_ATTR)
        if old is None:
            raise ConfigError(f"{out_dir / 'study.db'} was not written by vaelab sweep; choose another --out")
        difference = _difference(old, identity)
        if difference is not None:
            raise ConfigError(f"{out_dir} holds a sweep with another {difference}; resume it "
                              "with its own sweep file, or choose another --out")
        return study
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=sweep.settings.direction,
                                pruner=make_pruner(sweep))
    study.set_user_attr(IDENTITY_ATTR, identity)
    if sweep.settings.sampler == "grid":
        for point in sweep.grid():
            study.enqueue_trial(optuna_params(sweep, point))
    return study


def optuna_params(sweep: SweepConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Parameter values as Optuna stores them (a list-valued choice as its JSON text)."""
    out = {}
    for p in sweep.space:
        value = params[p.key]
        out[p.key] = json.dumps(list(value)) if isinstance(p, Choice) and isinstance(value, tuple) else value
    return out


def decoded_params(sweep: SweepConfig, stored: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `optuna_params`: config values, in the order of the space (absent keys left out)."""
    return {p.key: p.value_of(stored[p.key]) if isinstance(p, Choice) else stored[p.key]
            for p in sweep.space if p.key in stored}


def suggest(trial, sweep: SweepConfig) -> dict[str, Any]:
    """Draw (or take the queued) values of every parameter of the space for an Optuna trial."""
    params: dict[str, Any] = {}
    for p in sweep.space:
        if isinstance(p, Choice):
            params[p.key] = p.value_of(trial.suggest_categorical(p.key, p.labels()))
        elif isinstance(p, IntRange):
            params[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step, log=p.log)
        else:
            params[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return params


def state_of(trial) -> str:
    """complete | pruned | failed | interrupted | running | waiting."""
    name = trial.state.name.lower()
    if name == "fail":
        return INTERRUPTED if trial.user_attrs.get("failure") == INTERRUPTED else "failed"
    return name


def counted(trials) -> int:
    """Trials that count toward the sweep's target: ended, and not by an interruption (those run again)."""
    return sum(state_of(t) in ("complete", "pruned", "failed") for t in trials)


def recover(study, storage, sweep: SweepConfig, log) -> int:
    """Mark trials left RUNNING by a process that died as interrupted, and queue their parameters again."""
    optuna = require_optuna()
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, "failure", INTERRUPTED)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        requeue(study, sweep, t.params)
        log(f"trial {t.number} was still running when its sweep stopped: marked interrupted, its parameters "
            "queued again")
    return len(stale)


def requeue(study, sweep: SweepConfig, stored_params: dict[str, Any]) -> None:
    """Queue an interrupted trial's parameters again (a trial stopped before it drew them all is dropped)."""
    if all(p.key in stored_params for p in sweep.space):
        study.enqueue_trial(dict(stored_params))
