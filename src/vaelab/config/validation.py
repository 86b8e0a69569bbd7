"""The rules a configuration obeys: value types, ranges and combinations of keys.

Three layers, each raising `ConfigError` with a one-line message that names the key:

- `check_types` checks every field of a section against its annotation and
  converts where that is lossless (an int for a float key, a list for a tuple);
- `check_data`, `check_model`, `check_train` and `check_eval` hold the range
  rules of one section each (run by the section's `__post_init__`);
- `check_combinations` ties keys of different sections and runs on the finished
  `RunConfig`; `load_config` defers it while it applies one override after
  another (`deferred_combination_checks`).

This module knows the sections only by their attributes, so `schema` can use
it and any other frozen dataclass (the sweep's `[sweep]` table) can too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Literal

from vaelab.errors import ConfigError

if TYPE_CHECKING:  # only for annotations: schema imports this module
    from vaelab.config.schema import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig

_UNION_TYPE = getattr(types, "UnionType", None)  # `int | None` on Python >= 3.10

MAX_INT = 2**31 - 1  # sizes, counts and seeds; bigger values are typos and would overflow torch
MAX_THREADS = 1024
MAX_IMAGE_SIZE = 1024  # pixels per side
MAX_WIDTH = 65_536  # latent size and layer widths


# --------------------------------------------------------------------------- messages


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` for an error message: shortened, and safe for huge ints and deep nesting."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints over 4300 digits, lists nested thousands deep
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def closest_name(key: str, names: set[str]) -> str | None:
    """The name in `names` that `key` most likely misspells (for "did you mean ...?"), or None."""
    matches = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


# --------------------------------------------------------------------------- types


def check_types(obj: Any, section: str) -> None:
    """Check each field of the frozen dataclass `obj` against its annotation, converting in place where lossless."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        coerced = coerce(value, hints[f.name], f"{section}.{f.name}")
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of integers"
    if origin in (typing.Union, _UNION_TYPE):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
        if type(None) in args:
            return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # `X | None`: X's own message (e.g. "out of range") says more
        return coerce(value, options[0], key)
    for arg in options:
        try:
            return coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {short_repr(value)}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless; `key` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, _UNION_TYPE):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"{key} must be one of {choices}; got {short_repr(value)}")
        return value
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                    and -MAX_INT <= v <= MAX_INT for v in value):
            return value if isinstance(value, tuple) else tuple(value)
        raise ConfigError(f"{key} must be a list of integers like [32, 64], got {short_repr(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_INT <= value <= MAX_INT:
                raise ConfigError(f"{key} = {short_repr(value)} is out of range (at most {MAX_INT:,} in size)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not abs(value) <= sys.float_info.max:  # NaN, inf, and ints too big for a float
                raise ConfigError(f"{key} must be a finite number, got {short_repr(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {short_repr(value)}")


# --------------------------------------------------------------------------- ranges, one section each


def _positive(obj: Any, section: str, name: str, allow_none: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{section}.{name} must be a positive integer, got {value}")


def _non_negative(obj: Any, section: str, name: str) -> None:
    value = getattr(obj, name)
    if value < 0:
        raise ConfigError(f"{section}.{name} must be >= 0, got {value}")


def _finite_non_negative(obj: Any, section: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not (getattr(obj, name) >= 0 and math.isfinite(getattr(obj, name))):
            raise ConfigError(f"{section}.{name} must be a finite number >= 0, got {getattr(obj, name)}")


def check_data(d: DataConfig) -> None:
    """The range rules of the [data] section."""
    if not d.dataset:
        raise ConfigError("data.dataset is empty; use a name `vaelab datasets` lists (fashion-mnist, mnist, "
                          "cifar10, ...) or folder:PATH")
    _positive(d, "data", "image_size", allow_none=True)
    if d.image_size is not None and d.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"data.image_size must be at most {MAX_IMAGE_SIZE}, got {d.image_size}")
    if d.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 or 3 (or none), got {d.channels}")
    if d.val_size is not None:
        _non_negative(d, "data", "val_size")
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must lie strictly between 0 and 1, got {d.test_fraction}")
    _non_negative(d, "data", "split_seed")
    _non_negative(d, "data", "binarize_seed")
    _non_negative(d, "data", "augment_shift")
    if d.augment_shift > 8:
        raise ConfigError(f"data.augment_shift must be at most 8 pixels, got {d.augment_shift}")
    _positive(d, "data", "max_train", allow_none=True)
    _positive(d, "data", "max_eval", allow_none=True)


def _check_widths(m: ModelConfig) -> None:
    if not m.conv_channels or any(c <= 0 for c in m.conv_channels):
        raise ConfigError(f"model.conv_channels must be a non-empty list of positive ints, got {list(m.conv_channels)}")
    if any(h <= 0 for h in m.mlp_hidden):
        raise ConfigError(f"model.mlp_hidden must hold positive ints, got {list(m.mlp_hidden)}")
    _non_negative(m, "model", "fc_hidden")
    for name in ("latent_dim", "fc_hidden", "conv_channels", "mlp_hidden"):
        value = getattr(m, name)
        if max(value if isinstance(value, tuple) else (value,), default=0) > MAX_WIDTH:
            raise ConfigError(f"model.{name} must be at most {MAX_WIDTH:,} wide, got {value}")
    if len(m.conv_channels) > 8 or len(m.mlp_hidden) > 16:
        raise ConfigError("model.conv_channels takes at most 8 layers and model.mlp_hidden at most 16")


def check_model(m: ModelConfig) -> None:
    """The range rules of the [model] section."""
    _positive(m, "model", "mixture_components")
    if m.mixture_components > 64:
        raise ConfigError(f"model.mixture_components must be at most 64, got {m.mixture_components}")
    _positive(m, "model", "latent_dim")
    _positive(m, "model", "kernel_size")
    if m.kernel_size < 2:
        raise ConfigError("model.kernel_size must be at least 2 for stride-2 convolutions")
    _check_widths(m)
    if not m.gaussian_std > 0:
        raise ConfigError(f"model.gaussian_std must be > 0, got {m.gaussian_std}")
    _positive(m, "model", "pseudo_inputs")
    if not 2 <= len(m.hvae_latents) <= 64 or any(c <= 0 or c > 1024 for c in m.hvae_latents):
        raise ConfigError(f"model.hvae_latents must list 2 to 64 layer sizes between 1 and 1,024 channels, "
                          f"got {list(m.hvae_latents)}")
    if any(n <= 0 for n in m.hvae_stages) or len(m.hvae_stages) > 8:
        raise ConfigError(f"model.hvae_stages must list at most 8 positive layer counts, got {list(m.hvae_stages)}")
    _positive(m, "model", "hvae_channels")
    if m.hvae_channels > 1024:
        raise ConfigError(f"model.hvae_channels must be at most 1,024, got {m.hvae_channels}")
    if not 0 <= m.hvae_blocks <= 8:
        raise ConfigError(f"model.hvae_blocks must lie between 0 and 8, got {m.hvae_blocks}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must lie in [0, 1), got {m.dropout}")
    if m.pseudo_inputs > 10_000:
        raise ConfigError(f"model.pseudo_inputs must be at most 10,000, got {m.pseudo_inputs}")


def check_train(t: TrainConfig) -> None:
    """The range rules of the [train] section."""
    for name in ("epochs", "batch_size", "eval_batch_size", "grid_size"):
        _positive(t, "train", name)
    _non_negative(t, "train", "threads")
    _non_negative(t, "train", "seed")
    if t.threads > MAX_THREADS:
        raise ConfigError(f"train.threads must be at most {MAX_THREADS}, got {t.threads}")
    _non_negative(t, "train", "grid_every")
    _non_negative(t, "train", "patience")
    if t.monitor_images is not None:
        _non_negative(t, "train", "monitor_images")
    if not t.min_delta >= 0:
        raise ConfigError(f"train.min_delta must be >= 0, got {t.min_delta}")
    _finite_non_negative(t, "train", ("grad_clip", "checkpoint_minutes"))
    _positive(t, "train", "nan_patience")
    for name in ("max_restores", "checkpoint_steps", "snapshot_every"):
        _non_negative(t, "train", name)
    _positive(t, "train", "sync_steps")
    _positive(t, "train", "lr_base_batch")
    if not 0 < t.nan_lr_factor <= 1:
        raise ConfigError(f"train.nan_lr_factor must lie in (0, 1], got {t.nan_lr_factor}")
    _positive(t, "train", "iwae_k")
    if t.iwae_k > 5000:
        raise ConfigError(f"train.iwae_k must be at most 5,000, got {t.iwae_k}")
    _non_negative(t, "train", "warmup")
    _non_negative(t, "train", "lr_warmup_steps")
    _finite_non_negative(t, "train", ("free_bits", "weight_decay", "skip_grad_norm"))
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema must lie in [0, 1) (a decay such as 0.999; 0 is off), got {t.ema}")
    if t.free_bits and t.objective == "iwae":
        raise ConfigError("train.free_bits applies to the elbo objective; set train.objective = 'elbo' "
                          "or train.free_bits = 0")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if not t.beta >= 0:
        raise ConfigError(f"train.beta must be >= 0, got {t.beta}")
    if t.device != "auto" and t.device != "cpu" and not t.device.startswith("cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {short_repr(t.device)}")


def check_eval(e: EvalConfig) -> None:
    """The range rules of the [eval] section."""
    _positive(e, "eval", "llr_k")
    _positive(e, "eval", "nll_k")
    if e.nll_k > 100_000:
        raise ConfigError(f"eval.nll_k must be at most 100,000, got {e.nll_k}")
    _positive(e, "eval", "nll_batch_size")
    _positive(e, "eval", "ood_images")
    _positive(e, "eval", "ood_k")
    if e.dose_images < 100:
        raise ConfigError(f"eval.dose_images must be at least 100 (the DoSE density needs them), got {e.dose_images}")
    _positive(e, "eval", "ood_resamples")
    _positive(e, "eval", "regret_images")
    _positive(e, "eval", "regret_steps")
    if e.regret_steps > 10_000:
        raise ConfigError(f"eval.regret_steps must be at most 10,000, got {e.regret_steps}")
    if not e.regret_lr > 0:
        raise ConfigError(f"eval.regret_lr must be > 0, got {e.regret_lr}")
    if e.ood_k > 100_000:
        raise ConfigError(f"eval.ood_k must be at most 100,000, got {e.ood_k}")
    for name in ("nll_images", "gap_images", "seed"):
        _non_negative(e, "eval", name)
    _positive(e, "eval", "refine_steps")
    if not e.refine_lr > 0:
        raise ConfigError(f"eval.refine_lr must be > 0, got {e.refine_lr}")


# --------------------------------------------------------------------------- combinations


_DEFERRED: list[bool] = []  # non-empty while load_config applies one override after another


@contextmanager
def deferred_combination_checks() -> Iterator[None]:
    """Inside this block a new `RunConfig` skips `check_combinations` (its caller runs it at the end)."""
    _DEFERRED.append(True)
    try:
        yield
    finally:
        _DEFERRED.pop()


def combination_checks_deferred() -> bool:
    """Whether a `deferred_combination_checks` block is open."""
    return bool(_DEFERRED)


def check_combinations(cfg: RunConfig) -> None:
    """Rules that tie keys of different sections; checked on the finished config, not between overrides."""
    m, t = cfg.model, cfg.train
    if m.kind == "hvae" and m.prior != "standard":
        raise ConfigError(f"model.prior = {m.prior!r} is for model.kind = 'vae'; the hierarchical VAE's top prior "
                          "is N(0, I) (set model.prior = 'standard')")
    if m.kind == "hvae" and t.free_bits and t.free_bits_mode == "dim":
        raise ConfigError("train.free_bits_mode = 'dim' is not supported by model.kind = 'hvae': use "
                          "train.free_bits_mode = 'group', which for the hierarchical VAE means per stochastic layer")
    if m.prior != "standard" and m.kind != "vae":
        raise ConfigError(f"model.prior = {m.prior!r} needs model.kind = 'vae' (an autoencoder has no prior)")
    if t.free_bits and t.free_bits_mode == "dim" and m.prior != "standard":
        raise ConfigError("train.free_bits_mode = 'dim' needs the standard normal prior (the KL splits by "
                          "dimension only there); use train.free_bits_mode = 'group'")
    if m.likelihood == "logistic_mixture" and cfg.data.binarize != "none":
        raise ConfigError("model.likelihood = 'logistic_mixture' models 8-bit pixels; set data.binarize = 'none' "
                          "(or use the bernoulli likelihood for binarized images)")
    if m.kind == "hvae" and cfg.eval.llr_k >= len(m.hvae_latents):
        raise ConfigError(f"eval.llr_k = {cfg.eval.llr_k} must be below the number of latent layers "
                          f"({len(m.hvae_latents)}, model.hvae_latents)")
    if m.kind == "hvae" and m.hvae_stages and sum(m.hvae_stages) != len(m.hvae_latents):
        raise ConfigError(f"model.hvae_stages {list(m.hvae_stages)} must add up to len(model.hvae_latents) = "
                          f"{len(m.hvae_latents)} (one entry of hvae_latents per stochastic layer)")
    if m.kind == "ae" and t.ema:
        raise ConfigError("train.ema averages the weights of VAEs; set train.ema = 0 for the autoencoder")
    if m.kind == "ae" and (t.objective != "elbo" or t.free_bits or t.warmup):
        raise ConfigError("train.objective = 'iwae', train.free_bits and train.warmup shape the KL term, which "
                          "an autoencoder (model.kind = 'ae') does not have; leave them at their defaults")
