"""Typed, frozen run configuration: defaults, TOML files, `key=value` overrides.

- `schema`: the sections (`DataConfig`, `ModelConfig`, `TrainConfig`,
  `EvalConfig`, `RunConfig`) with their defaults and help texts, and
  `apply_mapping`, which builds a new config from a nested mapping;
- `validation`: type checks and coercion, each section's range rules and the
  rules that tie sections together (`check_combinations`);
- `io`: TOML files, `--set` overrides, `load_config`, dict and TOML output,
  the `--help` listing of keys.

Import from here (`from vaelab.config import RunConfig, load_config`); the
three modules import only downwards: validation <- schema <- io.
"""

from vaelab.config.io import (apply_overrides, describe_keys, from_dict, load_config, load_toml, parse_override,
                              to_dict, to_toml, tomllib, toml_value)
from vaelab.config.schema import (SECTIONS, DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig,
                                  apply_mapping)
from vaelab.config.validation import (MAX_IMAGE_SIZE, MAX_INT, MAX_THREADS, MAX_WIDTH, check_combinations,
                                      check_types, closest_name, coerce, short_repr)

__all__ = [
    "SECTIONS", "DataConfig", "ModelConfig", "TrainConfig", "EvalConfig", "RunConfig",
    "apply_mapping", "apply_overrides", "load_config", "load_toml", "parse_override", "from_dict", "to_dict", "to_toml",
    "toml_value",
    "describe_keys", "check_combinations", "check_types", "coerce", "closest_name", "short_repr",
    "MAX_INT", "MAX_THREADS", "MAX_IMAGE_SIZE", "MAX_WIDTH",
]
