"""Configs in and out: TOML files, `--set section.key=value` overrides, plain dicts, help text.

`load_config` resolves a run's configuration in three layers (defaults, then
a TOML file, then overrides) and checks the combinations of keys once, on the
finished config. `to_dict`/`from_dict` are the JSON form stored in run.json and
checkpoints; `to_toml` writes the config.toml that re-runs a run;
`describe_keys` lists every key for `--help`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from vaelab.config.schema import SECTIONS, RunConfig, apply_mapping
from vaelab.config.validation import check_combinations, deferred_combination_checks, short_repr
from vaelab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value`; the value is read as TOML, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)} must look like section.key=value, e.g. train.epochs=5")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ConfigError(
            f"override key {short_repr(dotted)} must be section.key (sections: {', '.join(SECTIONS)}), e.g. train.epochs=5"
        )
    section, key = dotted.split(".")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except (ValueError, RecursionError):  # an int over 4300 digits, arrays nested ~1000 deep
        raise ConfigError(f"override {dotted}: the value is too long or too deeply nested to read") from None
    return section, key, value


def load_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file at `path` as a dict; a missing, unreadable or invalid file is a `ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError):  # an int over 4300 digits, arrays nested ~1000 deep
        raise ConfigError(f"config file {path} holds a value too long or too deeply nested to read") from None


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """`cfg` with each `section.key=value` override applied in turn (checked as a TOML file's keys are)."""
    for text in overrides:
        section, key, value = parse_override(text)
        cfg = apply_mapping(cfg, {section: {key: value}},
                            origin=f"--set {text if len(text) <= 80 else text[:77] + '...'}")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the TOML file (if any), then `section.key=value` overrides."""
    cfg = RunConfig()
    with deferred_combination_checks():
        if path is not None:
            cfg = apply_mapping(cfg, load_toml(path), origin=str(path))
        cfg = apply_overrides(cfg, overrides)
    check_combinations(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples become lists), suitable for JSON."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        sub = getattr(cfg, section)
        out[section] = {
            f.name: list(v) if isinstance((v := getattr(sub, f.name)), tuple) else v for f in dataclasses.fields(sub)
        }
    return out


def from_dict(data: Mapping[str, Any], origin: str = "config") -> RunConfig:
    """Inverse of `to_dict`; `None` values are accepted (JSON has null)."""
    return apply_mapping(RunConfig(), data, origin=origin)


def to_toml(cfg: RunConfig) -> str:
    """The full resolved config as TOML (keys whose value is none are written as comments)."""
    lines = ["# vaelab run config: the full resolved configuration of this run.",
             "# Re-run it with: vaelab train --config config.toml", ""]
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = none")
            else:
                lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """A config value as TOML (bool, int, finite float, string or list of ints)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = []
    for ch in str(value):
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04X}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def describe_keys(only: str | None = None) -> str:
    """One line per config key with its default and help, for `--help` (all sections, or `only` one)."""
    lines = []
    for section, cls in SECTIONS.items():
        if only is not None and section != only:
            continue
        for f in dataclasses.fields(cls):
            default = f.default
            shown = "none" if default is None else json.dumps(list(default) if isinstance(default, tuple) else default)
            lines.append(f"  {section}.{f.name} = {shown}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
