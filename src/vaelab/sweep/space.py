"""The sweep file: a run config (the base of every trial) plus a `[sweep]` table with the search space.

::

    [data]                      # the base run config, as for `vaelab train`
    dataset = "fashion-mnist"
    [train]
    epochs = 10

    [sweep]
    sampler = "tpe"             # tpe | random | grid
    trials = 30                 # trials to finish in all (resumed sweeps count the earlier ones)
    objective = "val_nll"       # see vaelab.sweep.validation
    [sweep.space]
    "train.lr" = { low = 1e-4, high = 3e-3, log = true }   # a float range (the key is a float)
    "model.latent_dim" = { low = 8, high = 64, step = 8 }  # an int range (the key is an int)
    "model.prior" = ["standard", "vamp"]                   # choices

A range's kind follows the type of the config key it sets: an integer key gets integers, a float
key floats. Keys that are not numbers (strings, switches, lists) take a list of choices. Every
value is checked by the config's own section rules when the file is read, so a typo or an
out-of-range bound fails in one line before any training; combinations of values (rules that tie
keys together) are checked per trial, and a bad one fails only that trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from vaelab.config import (SECTIONS, RunConfig, apply_mapping, check_types, closest_name, load_toml, parse_override,
                           short_repr, to_dict)
from vaelab.errors import ConfigError
from vaelab.sweep.validation import OBJECTIVES

MAX_TRIALS = 100_000
MAX_JOBS = 256
MAX_GRID = 10_000  # grid points; a bigger grid is almost always a step typo
RANGE_KEYS = ("low", "high", "step", "log")
DEFAULT_TRIALS = 20  # tpe and random; a grid defaults to all its points


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class FloatRange:
    """A float key drawn from [low, high]: uniform, log-uniform (`log`), or on a grid of `step`."""

    key: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def points(self) -> list[float]:
        """The grid: low, low + step, ..., high (step is required for a grid)."""
        n = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(n + 1)]

    def describe(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class IntRange:
    """An integer key drawn from low, low + step, ..., high (log-uniformly with `log`)."""

    key: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def points(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def describe(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Choice:
    """A key that takes one of `values` (lists, for list-valued keys, are kept as tuples)."""

    key: str
    values: tuple[Any, ...]

    def points(self) -> list[Any]:
        return list(self.values)

    def labels(self) -> tuple[Any, ...]:
        """The values as Optuna stores them: scalars as they are, lists as their JSON text."""
        return tuple(json.dumps(list(v)) if isinstance(v, tuple) else v for v in self.values)

    def value_of(self, label: Any) -> Any:
        return self.values[self.labels().index(label)]

    def describe(self) -> dict[str, Any]:
        return {"choices": [list(v) if isinstance(v, tuple) else v for v in self.values]}


Param = FloatRange | IntRange | Choice


def show_value(value: Any) -> str:
    """A parameter value for tables and progress lines: 0.00123, 16, vamp, [32, 64]."""
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------- the [sweep] table


@dataclass(frozen=True)
class SweepSettings:
    """The scalar keys of the `[sweep]` table. `direction` and `pruner` default to what the objective calls for."""

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: int | None = None
    jobs: int = 1
    seed: int = 0
    objective: str = "val_nll"
    direction: Literal["minimize", "maximize", "auto"] = "auto"  # auto: the objective's own
    pruner: Literal["median", "none", "auto"] = "auto"  # auto: median where lower is better, else none
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1

    def __post_init__(self) -> None:
        check_types(self, "sweep")
        if self.objective not in OBJECTIVES:
            hint = closest_name(self.objective, set(OBJECTIVES))
            raise ConfigError(f"unknown sweep.objective {short_repr(self.objective)}"
                              + (f"; did you mean {hint}?" if hint else "")
                              + f" (choose from {', '.join(OBJECTIVES)})")
        if self.direction == "auto":
            object.__setattr__(self, "direction", OBJECTIVES[self.objective].direction)
        if self.pruner == "auto":  # pruning compares validation losses: only where lower is better
            object.__setattr__(self, "pruner", "median" if self.direction == "minimize" else "none")
        if self.pruner != "none" and self.direction == "maximize":
            raise ConfigError("sweep.pruner prunes on the validation loss (lower is better) and needs "
                              "sweep.direction = 'minimize'; set sweep.pruner = 'none'")
        if self.trials is not None and not 1 <= self.trials <= MAX_TRIALS:
            raise ConfigError(f"sweep.trials must lie between 1 and {MAX_TRIALS:,}, got {self.trials}")
        if not 1 <= self.jobs <= MAX_JOBS:
            raise ConfigError(f"sweep.jobs must lie between 1 and {MAX_JOBS}, got {self.jobs}")
        if not 0 <= self.seed <= 2**31 - 1:
            raise ConfigError(f"sweep.seed must lie between 0 and 2**31-1, got {self.seed}")
        if self.pruner_startup_trials < 0:
            raise ConfigError(f"sweep.pruner_startup_trials must be >= 0, got {self.pruner_startup_trials}")
        if self.pruner_warmup_epochs < 1:
            raise ConfigError(f"sweep.pruner_warmup_epochs must be >= 1 (the first epoch a trial may be pruned "
                              f"after), got {self.pruner_warmup_epochs}")


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep file: the base run config of every trial, the `[sweep]` settings and the search space."""

    base: RunConfig
    settings: SweepSettings
    space: tuple[Param, ...]
    source: str = "sweep config"

    def __post_init__(self) -> None:
        if not self.space:
            raise ConfigError("[sweep.space] is empty; give at least one key to vary, e.g. "
                              "\"train.lr\" = { low = 1e-4, high = 1e-2, log = true }")
        if self.settings.sampler == "grid":
            for p in self.space:
                if isinstance(p, FloatRange) and p.step is None:
                    raise ConfigError(f"[sweep.space] {p.key}: the grid sampler needs a list of values or a "
                                      "range with a step, e.g. { low = 0.5, high = 2.0, step = 0.5 }")
            if self.grid_size() > MAX_GRID:
                raise ConfigError(f"the grid of [sweep.space] has {self.grid_size():,} points (at most "
                                  f"{MAX_GRID:,}); use fewer values or larger steps, or sampler = 'tpe'")

    def grid_size(self) -> int:
        return math.prod(len(p.points()) for p in self.space)

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the grid, the first parameter varying slowest (sampler = 'grid')."""
        keys = [p.key for p in self.space]
        return [dict(zip(keys, values)) for values in itertools.product(*(p.points() for p in self.space))]

    def target(self, trials: int | None = None) -> int:
        """How many trials the sweep finishes: `trials`, else sweep.trials, else the default; a grid caps it."""
        n = trials if trials is not None else self.settings.trials
        if self.settings.sampler == "grid":
            return min(n, self.grid_size()) if n is not None else self.grid_size()
        return n if n is not None else DEFAULT_TRIALS

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same search: the space, the objective, its direction and the base config
        (less the keys that say where and how fast a trial runs, not what it computes)."""
        base = to_dict(self.base)
        for section, key in VOLATILE_KEYS:
            base[section].pop(key, None)
        return {"space": {p.key: p.describe() for p in self.space}, "objective": self.settings.objective,
                "direction": self.settings.direction, "base": base}


VOLATILE_KEYS = (("data", "data_dir"), ("data", "download"), ("train", "device"), ("train", "threads"))


# --------------------------------------------------------------------------- parsing


def _key_type(section: str, key: str) -> Any:
    """The annotated type of config key section.key, with `X | None` reduced to X."""
    tp = typing.get_type_hints(SECTIONS[section])[key]
    if typing.get_origin(tp) in (typing.Union, getattr(types, "UnionType", None)):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _check_key(dotted: Any) -> tuple[str, str]:
    """`section.key` of the run config, or a ConfigError naming the valid ones."""
    if not isinstance(dotted, str) or dotted.count(".") != 1:
        raise ConfigError(f"[sweep.space] key {short_repr(dotted)} must be section.key of the run config "
                          f"(sections: {', '.join(SECTIONS)}), e.g. \"train.lr\"")
    section, key = dotted.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"[sweep.space] {dotted}: unknown section {section!r}; valid sections: "
                          f"{', '.join(SECTIONS)}")
    names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in names:
        hint = closest_name(key, names)
        raise ConfigError(f"unknown config key {dotted} in [sweep.space]"
                          + (f"; did you mean {section}.{hint}?" if hint else
                             f"; valid keys of [{section}]: {', '.join(sorted(names))}"))
    return section, key


def _check_value(base: RunConfig, dotted: str, value: Any, what: str) -> Any:
    """`value` checked (and coerced) by the section's own rules, as if the base config had it."""
    section, key = dotted.split(".")
    current = getattr(base, section)
    merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
    merged[key] = value
    try:
        return getattr(type(current)(**merged), key)
    except ConfigError as exc:
        raise ConfigError(f"[sweep.space] {dotted}: {what}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_param(base: RunConfig, dotted: Any, spec: Any) -> Param:
    """One `[sweep.space]` entry: a list of choices, or a `{low, high[, step][, log]}` range."""
    _check_key(dotted)
    section, key = dotted.split(".")
    tp = _key_type(section, key)
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"[sweep.space] {dotted}: the list of choices is empty")
        values = tuple(_check_value(base, dotted, v, f"choice {short_repr(v)}") for v in spec)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"[sweep.space] {dotted}: the choices {short_repr(spec)} repeat a value")
        return Choice(dotted, values)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"[sweep.space] {dotted} must be a list of choices or a {{ low, high }} range, got "
                          f"{short_repr(spec)} (a fixed value belongs in the [{section}] table of the base config)")
    unknown = [k for k in spec if k not in RANGE_KEYS]
    if unknown:
        raise ConfigError(f"[sweep.space] {dotted}: unknown range key {short_repr(unknown[0])}; a range takes "
                          f"{', '.join(RANGE_KEYS)}")
    if tp not in (int, float):
        raise ConfigError(f"[sweep.space] {dotted} is not a number; give a list of choices, e.g. "
                          f"{dotted} = [{_choice_example(tp)}]")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"[sweep.space] {dotted}: a range needs both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"[sweep.space] {dotted}: log must be true or false, got {short_repr(log)}")
    kind = "an integer" if tp is int else "a number"
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is None:
            continue
        if not _is_number(v) or (tp is int and not isinstance(v, int)) or not math.isfinite(v):
            raise ConfigError(f"[sweep.space] {dotted}: {name} must be {kind} ({dotted} is "
                              f"{'an integer' if tp is int else 'a float'} key), got {short_repr(v)}")
    if not low < high:
        raise ConfigError(f"[sweep.space] {dotted}: low must be below high, got low = {low}, high = {high}")
    if log and low <= 0:
        raise ConfigError(f"[sweep.space] {dotted}: a log range needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ConfigError(f"[sweep.space] {dotted}: step must be > 0, got {step}")
    if log and step is not None and not (tp is int and step == 1):
        raise ConfigError(f"[sweep.space] {dotted}: a range is either log or stepped, not both")
    if step is not None and tp is float:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise ConfigError(f"[sweep.space] {dotted}: high - low = {high - low:g} is not a multiple of "
                              f"step = {step:g}")
    low = _check_value(base, dotted, low, "low")
    high = _check_value(base, dotted, high, "high")
    if tp is int:
        if (high - low) % (step or 1):
            raise ConfigError(f"[sweep.space] {dotted}: high - low = {high - low} is not a multiple of "
                              f"step = {step}")
        return IntRange(dotted, low, high, log, step or 1)
    return FloatRange(dotted, float(low), float(high), log, None if step is None else float(step))


def _choice_example(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(json.dumps(a) for a in typing.get_args(tp)[:2])
    if tp is bool:
        return "true, false"
    if typing.get_origin(tp) is tuple:
        return "[32, 64], [64, 128]"
    return '"a", "b"'


def _flatten_space(space: Any) -> dict[str, Any]:
    """`"train.lr" = ...`, `train.lr = ...` (TOML nests the dotted key) and `[sweep.space.train]` alike."""
    if not isinstance(space, Mapping):
        raise ConfigError(f"[sweep.space] must be a table of \"section.key\" = distribution, got {short_repr(space)}")
    flat: dict[str, Any] = {}
    for name, value in space.items():
        if name in SECTIONS and isinstance(value, Mapping):
            for key, spec in value.items():
                flat[f"{name}.{key}"] = spec
        else:
            flat[name] = value
    return flat


def parse_sweep(table: Any, base: RunConfig, source: str = "the sweep config") -> SweepConfig:
    """The `[sweep]` table, checked (unknown keys, types, the objective, every value of the space), with its base."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[sweep] in {source} must be a table")
    names = {f.name for f in dataclasses.fields(SweepSettings)} | {"space"}
    for key in table:
        if key not in names:
            hint = closest_name(str(key), names)
            raise ConfigError(f"unknown key sweep.{key} in {source}"
                              + (f"; did you mean sweep.{hint}?" if hint
                                 else f"; valid keys: {', '.join(sorted(names))}"))
    if "space" not in table:
        raise ConfigError(f"{source} has no [sweep.space] table; add one, e.g. "
                          "\"train.lr\" = { low = 1e-4, high = 1e-2, log = true }")
    space = tuple(parse_param(base, k, v) for k, v in _flatten_space(table["space"]).items())
    settings = SweepSettings(**{k: v for k, v in table.items() if k != "space"})
    return SweepConfig(base=base, settings=settings, space=space, source=source)


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read a sweep file: the base run config (with `section.key=value` overrides) and its `[sweep]` table."""
    data = dict(load_toml(path))
    if "sweep" not in data:
        raise ConfigError(f"{path} has no [sweep] table; a sweep file is a run config plus [sweep] and "
                          "[sweep.space] tables (see vaelab sweep --help)")
    table = data.pop("sweep")
    merged = {section: dict(values) if isinstance(values, Mapping) else values for section, values in data.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "sweep":
            raise ConfigError(f"--set {text}: the [sweep] table is set in the sweep file (or with --trials "
                              "and --jobs); --set changes the base run config")
        if not isinstance(merged.setdefault(section, {}), dict):
            merged[section] = {}
        merged[section][key] = value
    # one mapping, applied at once: rules that tie keys together see the finished base, not a half-made one
    base = apply_mapping(RunConfig(), merged, origin=str(path) + (" with --set" if overrides else ""))
    return parse_sweep(table, base, str(path))


def trial_mapping(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}} (tuples become lists for the config)."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in params.items():
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return nested


__all__ = ["Choice", "FloatRange", "IntRange", "Param", "SweepConfig", "SweepSettings", "load_sweep",
           "parse_param", "parse_sweep", "show_value", "trial_mapping"]
