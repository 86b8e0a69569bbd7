"""Typed, frozen run configuration: defaults, TOML files, `key=value` overrides.

A run is configured by one `RunConfig`, made of four sections that mirror the
TOML file layout::

    [data]              # which images, how they are split and binarized
    dataset = "fashion-mnist"
    [model]             # which network and likelihood
    latent_dim = 20
    [train]             # optimisation
    epochs = 10
    [eval]              # likelihood and out-of-distribution evaluation
    nll_k = 1000

Every key has a default, so an empty file (or no file) is a valid config.
Unknown sections or keys, wrong types and out-of-range values raise
`ConfigError` naming the key. TOML has no null: a key whose default is
"none" (e.g. `data.image_size`) is left out, or given the string "none".
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from vaelab.errors import ConfigError

_UNION_TYPE = getattr(types, "UnionType", None)  # `int | None` on Python >= 3.10

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with a help text (shown by `vaelab train --help`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _opt("fashion-mnist", "fashion-mnist | mnist | digits | folder:PATH")
    data_dir: str | None = _opt(None, "directory holding the dataset's files (searched first)")
    image_size: int | None = _opt(None, "resize images to SIZE x SIZE (none: native size)")
    resize: Literal["resize", "pad"] = _opt("resize", "how to reach image_size: resample, or pad with zeros")
    channels: int | None = _opt(None, "1 (grayscale) or 3 (RGB); none: the dataset's own")
    val_size: int | None = _opt(
        None, "validation images carved from the training split (0: none; none: 5000, or 10% of the "
              "training images when that is fewer)"
    )
    test_fraction: float = _opt(0.2, "share held out as test split by datasets that have none (digits, folders)")
    split_seed: int = _opt(0, "seed of the train/validation/test carving")
    binarize: Literal["dynamic", "static", "none"] = _opt(
        "dynamic", "training pixels: resampled Bernoulli each use, binarized once, or grey values"
    )
    binarize_seed: int = _opt(1234, "seed of static binarization (evaluation splits are always binarized once with it)")
    download: bool = _opt(True, "download missing datasets into the cache (set VAELAB_OFFLINE=1 to forbid)")
    augment_shift: int = _opt(
        0, "training images only: translate each by a random offset of up to N pixels in each direction, "
           "filling with zeros (0: off); validation and test images are never augmented"
    )
    augment_hflip: bool = _opt(
        False, "training images only: mirror each left-right with probability 1/2. Valid only where mirrored "
               "images belong to the data (not digits or text; Fashion-MNIST's shoes all point left)"
    )
    max_train: int | None = _opt(None, "use only the first N training images (quick runs)")
    max_eval: int | None = _opt(None, "use only the first N validation and test images (quick runs)")

    def __post_init__(self) -> None:
        _check_types(self, "data")
        if not self.dataset:
            raise ConfigError("data.dataset is empty; use fashion-mnist, mnist, digits or folder:PATH")
        _positive(self, "data", "image_size", allow_none=True)
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"data.image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 or 3 (or none), got {self.channels}")
        if self.val_size is not None:
            _non_negative(self, "data", "val_size")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        _non_negative(self, "data", "split_seed")
        _non_negative(self, "data", "binarize_seed")
        _non_negative(self, "data", "augment_shift")
        if self.augment_shift > 8:
            raise ConfigError(f"data.augment_shift must be at most 8 pixels, got {self.augment_shift}")
        _positive(self, "data", "max_train", allow_none=True)
        _positive(self, "data", "max_eval", allow_none=True)


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["vae", "ae", "hvae"] = _opt(
        "vae", "vae (variational), ae (plain autoencoder baseline) or hvae (hierarchical VAE with top-down "
               "inference, LVAE / Havtorn et al. 2021: model.hvae_* keys; arch, conv_channels, latent_dim unused)"
    )
    arch: Literal["conv", "mlp"] = _opt("conv", "conv (strided convolutions) or mlp (fully connected)")
    latent_dim: int = _opt(20, "size of the latent code z")
    conv_channels: tuple[int, ...] = _opt((32, 64), "channels of the stride-2 conv layers (decoder mirrors them)")
    kernel_size: int = _opt(4, "conv kernel size (even sizes downsample exactly by 2)")
    fc_hidden: int = _opt(0, "conv: width of an extra fully connected layer before z (0: none)")
    mlp_hidden: tuple[int, ...] = _opt((400,), "mlp: hidden layer widths (784-400-20 is the classic)")
    likelihood: Literal["bernoulli", "gaussian", "logistic_mixture"] = _opt(
        "bernoulli", "p(x|z): bernoulli (pixels in [0,1]), gaussian with fixed std, or logistic_mixture (a mixture "
                     "of discretized logistics per pixel for 8-bit images, Salimans et al. 2017)"
    )
    mixture_components: int = _opt(5, "logistic_mixture: logistics per pixel and channel")
    gaussian_std: float = _opt(0.1, "gaussian likelihood: the fixed standard deviation sigma")
    prior: Literal["standard", "vamp"] = _opt(
        "standard", "vae: p(z) is standard (N(0, I)) or vamp (VampPrior: a mixture of the posteriors of "
                    "learned pseudo-inputs, Tomczak & Welling 2018)"
    )
    pseudo_inputs: int = _opt(500, "vamp prior: the number of pseudo-inputs (mixture components)")
    hvae_latents: tuple[int, ...] = _opt(
        (8, 16, 8), "hvae: channels of each stochastic layer, bottom (nearest the data) to top; the number of "
                    "entries is the number of layers (2 to 8); each layer halves the resolution down to 4x4 "
                    "(28x28: 14x14, 7x7, 4x4)"
    )
    hvae_channels: int = _opt(32, "hvae: channels of the deterministic residual networks (bottom-up and top-down)")
    hvae_blocks: int = _opt(1, "hvae: residual blocks per stochastic layer in each of the two passes (0 to 8)")
    dropout: float = _opt(
        0.0, "dropout probability after each hidden activation of the encoder and decoder (hvae: inside each "
             "residual block), in training only; 0: off"
    )

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _positive(self, "model", "mixture_components")
        if self.mixture_components > 64:
            raise ConfigError(f"model.mixture_components must be at most 64, got {self.mixture_components}")
        _positive(self, "model", "latent_dim")
        _positive(self, "model", "kernel_size")
        if self.kernel_size < 2:
            raise ConfigError("model.kernel_size must be at least 2 for stride-2 convolutions")
        if not self.conv_channels or any(c <= 0 for c in self.conv_channels):
            raise ConfigError(f"model.conv_channels must be a non-empty list of positive ints, got {list(self.conv_channels)}")
        if any(h <= 0 for h in self.mlp_hidden):
            raise ConfigError(f"model.mlp_hidden must hold positive ints, got {list(self.mlp_hidden)}")
        _non_negative(self, "model", "fc_hidden")
        for name in ("latent_dim", "fc_hidden", "conv_channels", "mlp_hidden"):
            value = getattr(self, name)
            if max(value if isinstance(value, tuple) else (value,), default=0) > MAX_WIDTH:
                raise ConfigError(f"model.{name} must be at most {MAX_WIDTH:,} wide, got {value}")
        if len(self.conv_channels) > 8 or len(self.mlp_hidden) > 16:
            raise ConfigError("model.conv_channels takes at most 8 layers and model.mlp_hidden at most 16")
        if not self.gaussian_std > 0:
            raise ConfigError(f"model.gaussian_std must be > 0, got {self.gaussian_std}")
        _positive(self, "model", "pseudo_inputs")
        if not 2 <= len(self.hvae_latents) <= 8 or any(c <= 0 or c > 1024 for c in self.hvae_latents):
            raise ConfigError(f"model.hvae_latents must list 2 to 8 layer sizes between 1 and 1,024 channels, "
                              f"got {list(self.hvae_latents)}")
        _positive(self, "model", "hvae_channels")
        if self.hvae_channels > 1024:
            raise ConfigError(f"model.hvae_channels must be at most 1,024, got {self.hvae_channels}")
        if not 0 <= self.hvae_blocks <= 8:
            raise ConfigError(f"model.hvae_blocks must lie between 0 and 8, got {self.hvae_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if self.pseudo_inputs > 10_000:
            raise ConfigError(f"model.pseudo_inputs must be at most 10,000, got {self.pseudo_inputs}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(10, "passes over the training split")
    batch_size: int = _opt(128, "images per Adam step")
    lr: float = _opt(1e-3, "Adam learning rate")
    beta: float = _opt(1.0, "weight of the KL term: loss = recon + beta * KL")
    seed: int = _opt(0, "seed of weights, data order, binarization and sampling")
    eval_batch_size: int = _opt(1000, "images per batch when evaluating")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    channels_last: bool = _opt(True, "conv models: channels-last memory format (faster convolutions on CPU)")
    grid_every: int = _opt(1, "write a sample grid every N epochs (0: only at the end)")
    grid_size: int = _opt(64, "images in each sample / reconstruction grid")
    tensorboard: bool = _opt(
        False, "write TensorBoard event files into RUN/tensorboard/: per-epoch losses, gap, learning rate, "
               "beta, speed and image grids (step = epoch), the config and the final evaluation; needs "
               "pip install 'vaelab[tensorboard]'"
    )
    monitor_images: int | None = _opt(
        None, "per epoch, -ELBO on fixed, equal-size subsets of train and validation, binarized once "
              "(none: the validation split's size; 0: off)"
    )
    patience: int = _opt(0, "early stopping: stop after N epochs without a better validation loss (0: off)")
    min_delta: float = _opt(0.0, "early stopping: an improvement must exceed this many nats")
    grad_clip: float = _opt(0.0, "clip the gradient's global L2 norm to this (0: off); clipped steps are counted")
    nan_patience: int = _opt(
        20, "bad steps (NaN or infinite loss or gradient; skipped, never applied) in a row before train.on_nan acts"
    )
    on_nan: Literal["restore", "stop"] = _opt(
        "restore", "restore: go back to the weights and optimizer of the last good checkpoint and multiply the "
                   "learning rate by train.nan_lr_factor; stop: end the run with an error naming the step"
    )
    nan_lr_factor: float = _opt(0.5, "learning-rate factor applied at each restore after bad steps")
    max_restores: int = _opt(3, "restores after bad steps before the run stops with an error")
    checkpoint_minutes: float = _opt(
        10.0, "also write the `last` checkpoint inside an epoch every N minutes of training, resumable to the "
              "step (0: only at the end of each epoch); SIGTERM and Ctrl-C always write one"
    )
    checkpoint_steps: int = _opt(0, "also write the `last` checkpoint every N steps inside an epoch (0: off)")
    snapshot_every: int = _opt(
        0, "keep the evaluation weights of every Nth epoch as checkpoint epoch-NNNN (0: off); `vaelab evaluate "
           "RUN --checkpoint epoch-0010` scores one, bench/time_to_quality.py all of them"
    )
    objective: Literal["elbo", "iwae"] = _opt(
        "elbo", "elbo: recon + beta * KL, one sample; iwae: the importance-weighted bound with train.iwae_k "
                "samples per image (Burda et al. 2015)"
    )
    iwae_k: int = _opt(5, "iwae objective: importance samples per image")
    warmup: int = _opt(0, "KL warm-up: beta rises linearly from 0 to train.beta over this many train.warmup_unit "
                          "(0: off; Sonderby et al. 2016)")
    warmup_unit: Literal["epochs", "steps"] = _opt("epochs", "the unit of train.warmup")
    free_bits: float = _opt(
        0.0, "free bits (Kingma et al. 2016): the KL term of the loss is at least this many nats, per latent "
             "dimension (train.free_bits_mode = dim) or for the whole code (group), averaged over the batch; 0: off"
    )
    free_bits_mode: Literal["dim", "group"] = _opt("dim", "what train.free_bits applies to")
    weight_decay: float = _opt(0.0, "decoupled weight decay (AdamW, Loshchilov & Hutter 2019); 0: plain Adam")
    lr_schedule: Literal["constant", "cosine"] = _opt(
        "constant", "learning rate over training: constant, or cosine decay to 0 at the last step"
    )
    lr_warmup_steps: int = _opt(0, "steps of linear learning-rate warm-up from 0 (0: none)")
    ema: float = _opt(
        0.0, "decay of an exponential moving average of the weights, used for validation, the best checkpoint "
             "and every evaluation (e.g. 0.999; 0: off)"
    )
    skip_grad_norm: float = _opt(
        0.0, "skip an update whose gradient norm exceeds this (counted as skipped_large; 0: off; vdvae-style)"
    )

    def __post_init__(self) -> None:
        _check_types(self, "train")
        for name in ("epochs", "batch_size", "eval_batch_size", "grid_size"):
            _positive(self, "train", name)
        _non_negative(self, "train", "threads")
        _non_negative(self, "train", "seed")
        if self.threads > MAX_THREADS:
            raise ConfigError(f"train.threads must be at most {MAX_THREADS}, got {self.threads}")
        _non_negative(self, "train", "grid_every")
        _non_negative(self, "train", "patience")
        if self.monitor_images is not None:
            _non_negative(self, "train", "monitor_images")
        if not self.min_delta >= 0:
            raise ConfigError(f"train.min_delta must be >= 0, got {self.min_delta}")
        for name in ("grad_clip", "checkpoint_minutes"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {getattr(self, name)}")
        _positive(self, "train", "nan_patience")
        _non_negative(self, "train", "max_restores")
        _non_negative(self, "train", "checkpoint_steps")
        _non_negative(self, "train", "snapshot_every")
        if not 0 < self.nan_lr_factor <= 1:
            raise ConfigError(f"train.nan_lr_factor must lie in (0, 1], got {self.nan_lr_factor}")
        _positive(self, "train", "iwae_k")
        if self.iwae_k > 5000:
            raise ConfigError(f"train.iwae_k must be at most 5,000, got {self.iwae_k}")
        _non_negative(self, "train", "warmup")
        _non_negative(self, "train", "lr_warmup_steps")
        for name in ("free_bits", "weight_decay", "skip_grad_norm"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema must lie in [0, 1) (a decay such as 0.999; 0 is off), got {self.ema}")
        if self.free_bits and self.objective == "iwae":
            raise ConfigError("train.free_bits applies to the elbo objective; set train.objective = 'elbo' "
                              "or train.free_bits = 0")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not self.beta >= 0:
            raise ConfigError(f"train.beta must be >= 0, got {self.beta}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {_show(self.device)}")


@dataclass(frozen=True)
class EvalConfig:
    nll_k: int = _opt(1000, "importance samples per image for the log-likelihood (IWAE bound, Burda et al. 2015)")
    nll_images: int = _opt(
        500, "images per split (train, val, test: the same number) for the NLL at the end of training "
             "(0: skip); `vaelab evaluate --nll-images all` scores whole splits"
    )
    nll_batch_size: int = _opt(64, "images per batch of importance sampling (memory stays bounded for any k)")
    ood_images: int = _opt(1000, "images per dataset for `vaelab evaluate --on` (the test split gets as many)")
    ood_k: int = _opt(100, "importance samples per image for `vaelab evaluate --on`: datasets differ by 10s "
                           "to 100s of nats, k=100 sat 0.7 nats above k=1000 on the default VAE (BENCHMARKS.md)")
    gap_images: int = _opt(100, "test images whose posterior is refined for the amortization gap (0: skip)")
    refine_steps: int = _opt(200, "Adam steps per image when refining q(z|x) (Cremer et al. 2018)")
    refine_lr: float = _opt(1e-2, "learning rate of that refinement")
    seed: int = _opt(2025, "seed of the importance samples and the image subsets")
    llr_k: int = _opt(1, "hvae: the LLR>k score of `vaelab evaluate --on` draws the k lowest latent layers from "
                         "the prior (Havtorn et al. 2021)")
    llr_mode: Literal["mode", "sample"] = _opt(
        "mode", "hvae: how LLR>k takes those k layers from their conditional prior: mode (set to its mean, as "
                "Havtorn et al.'s published code does) or sample (drawn from it; far weaker, BENCHMARKS.md)"
    )

    def __post_init__(self) -> None:
        _check_types(self, "eval")
        _positive(self, "eval", "llr_k")
        _positive(self, "eval", "nll_k")
        if self.nll_k > 100_000:
            raise ConfigError(f"eval.nll_k must be at most 100,000, got {self.nll_k}")
        _positive(self, "eval", "nll_batch_size")
        _positive(self, "eval", "ood_images")
        _positive(self, "eval", "ood_k")
        if self.ood_k > 100_000:
            raise ConfigError(f"eval.ood_k must be at most 100,000, got {self.ood_k}")
        for name in ("nll_images", "gap_images", "seed"):
            _non_negative(self, "eval", name)
        _positive(self, "eval", "refine_steps")
        if not self.refine_lr > 0:
            raise ConfigError(f"eval.refine_lr must be > 0, got {self.refine_lr}")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not _DEFERRED_CHECKS:
            check_combinations(self)

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with some sections or keys replaced: `cfg.replace(train={"epochs": 1})`."""
        return apply_mapping(self, sections)


_DEFERRED_CHECKS: list[bool] = []  # non-empty while load_config applies one override after another


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
    if m.kind == "ae" and t.ema:
        raise ConfigError("train.ema averages the weights of VAEs; set train.ema = 0 for the autoencoder")
    if m.kind == "ae" and (t.objective != "elbo" or t.free_bits or t.warmup):
        raise ConfigError("train.objective = 'iwae', train.free_bits and train.warmup shape the KL term, which "
                          "an autoencoder (model.kind = 'ae') does not have; leave them at their defaults")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}


# --------------------------------------------------------------------------- checks


MAX_INT = 2**31 - 1  # sizes, counts and seeds; bigger values are typos and would overflow torch
MAX_THREADS = 1024
MAX_IMAGE_SIZE = 1024  # pixels per side
MAX_WIDTH = 65_536  # latent size and layer widths


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


def _check_types(obj: Any, section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        coerced = _coerce(value, hints[f.name], f"{section}.{f.name}")
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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, _UNION_TYPE):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message (e.g. "out of range") says more
            return _coerce(value, options[0], key)
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"{key} must be one of {choices}; got {_show(value)}")
        return value
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                    and -MAX_INT <= v <= MAX_INT for v in value):
            return value if isinstance(value, tuple) else tuple(value)
        raise ConfigError(f"{key} must be a list of integers like [32, 64], got {_show(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_INT <= value <= MAX_INT:
                raise ConfigError(f"{key} = {_show(value)} is out of range (at most {MAX_INT:,} in size)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not abs(value) <= sys.float_info.max:  # NaN, inf, and ints too big for a float
                raise ConfigError(f"{key} must be a finite number, got {_show(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {_show(value)}")


def _show(value: Any, limit: int = 80) -> str:
    """`repr(value)` for an error message: shortened, and safe for huge ints and deep nesting."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints over 4300 digits, lists nested thousands deep
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- building


def apply_mapping(base: RunConfig, mapping: Mapping[str, Any], origin: str = "config") -> RunConfig:
    """Return `base` with the sections/keys of a nested mapping replaced.

    Unknown sections and keys raise `ConfigError` listing the valid ones.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{origin} must be a table of sections ({', '.join(SECTIONS)}), got {_show(mapping)}")
    new_sections = {}
    for section, values in mapping.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section [{_show(section)}] in {origin}; valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] in {origin} must be a table of key = value pairs")
        current = getattr(base, section)
        names = {f.name for f in dataclasses.fields(current)}
        for key in values:
            if key not in names:
                if not isinstance(key, str):
                    raise ConfigError(f"unknown key {_show(key)} in [{section}] of {origin}; "
                                      f"valid keys: {', '.join(sorted(names))}")
                hint = _closest(key, names)
                raise ConfigError(
                    f"unknown key {section}.{key} in {origin}"
                    + (f"; did you mean {section}.{hint}?" if hint else f"; valid keys: {', '.join(sorted(names))}")
                )
        merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        merged.update(values)
        new_sections[section] = type(current)(**merged)
    return dataclasses.replace(base, **new_sections)


def _closest(key: str, names: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value`; the value is read as TOML, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {_show(text)} must look like section.key=value, e.g. train.epochs=5")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ConfigError(
            f"override key {_show(dotted)} must be section.key (sections: {', '.join(SECTIONS)}), e.g. train.epochs=5"
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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the TOML file (if any), then `section.key=value` overrides."""
    cfg = RunConfig()
    _DEFERRED_CHECKS.append(True)
    try:
        if path is not None:
            cfg = apply_mapping(cfg, load_toml(path), origin=str(path))
        for text in overrides:
            section, key, value = parse_override(text)
            cfg = apply_mapping(cfg, {section: {key: value}},
                                origin=f"--set {text if len(text) <= 80 else text[:77] + '...'}")
    finally:
        _DEFERRED_CHECKS.pop()
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
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    """A config value as TOML (bool, int, finite float, string or list of ints)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
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
