"""The run configuration's sections: frozen dataclasses with their defaults and help texts.

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
`ConfigError` naming the key (the rules live in `vaelab.config.validation`).
TOML has no null: a key whose default is "none" (e.g. `data.image_size`) is
left out, or given the string "none". `apply_mapping` builds a new config from
a nested mapping of sections and keys; reading and writing files is
`vaelab.config.io`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from vaelab.config.validation import (check_combinations, check_data, check_eval, check_model, check_train,
                                      check_types, closest_name, combination_checks_deferred, short_repr)
from vaelab.errors import ConfigError


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with a help text (shown by `vaelab train --help`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _opt(
        "fashion-mnist", "fashion-mnist | mnist | digits | cifar10 | svhn | celeba | omniglot | kmnist | emnist | "
                         "emnist-letters | binarized-mnist | folder:PATH (`vaelab datasets` lists them); NAME@DIR is NAME with "
                         "data.data_dir = DIR"
    )
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
    max_train: int | None = _opt(None, "use only N training images, a random subset drawn with data.split_seed (quick runs)")
    max_eval: int | None = _opt(None, "use only N validation and N test images, random subsets drawn with data.split_seed (quick runs)")

    def __post_init__(self) -> None:
        check_types(self, "data")
        if "@" in self.dataset and not self.dataset.startswith("folder:"):  # mnist@DIR, as --on spells it
            name, where = self.dataset.split("@", 1)
            if not where or self.data_dir not in (None, where):
                raise ConfigError(f"data.dataset = {self.dataset!r}: NAME@DIR needs a directory after @ and no "
                                  "other data.data_dir (or give data.dataset = NAME and data.data_dir = DIR)")
            object.__setattr__(self, "dataset", name)  # frozen: set once, before anything reads it
            object.__setattr__(self, "data_dir", where)
        check_data(self)


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
                    "entries is the number of layers (2 to 64); without model.hvae_stages each layer halves the "
                    "resolution down to 4x4 (28x28: 14x14, 7x7, 4x4)"
    )
    hvae_stages: tuple[int, ...] = _opt(
        (), "hvae: stochastic layers at each resolution, bottom to top (e.g. [2, 4, 4]: 2 layers at 14x14, 4 at "
            "7x7, 4 at 4x4 on 28x28 images; they must add up to len(hvae_latents)); layers of one resolution share "
            "its bottom-up features (VDVAE-style skip connections); empty: one layer per resolution"
    )
    hvae_cell: Literal["plain", "bottleneck"] = _opt(
        "plain", "hvae: residual cell: plain (two 3x3 convs) or bottleneck (1x1, 3x3, 3x3, 1x1 through a quarter "
                 "of the channels, GELU, as VDVAE's; the prior and posterior nets are bottleneck cells too)"
    )
    hvae_channels: int = _opt(32, "hvae: channels of the deterministic residual networks (bottom-up and top-down)")
    hvae_blocks: int = _opt(1, "hvae: residual blocks per stochastic layer in each of the two passes (0 to 8)")
    dropout: float = _opt(
        0.0, "dropout probability after each hidden activation of the encoder and decoder (hvae: inside each "
             "residual block), in training only; 0: off"
    )

    def __post_init__(self) -> None:
        check_types(self, "model")
        check_model(self)

    @property
    def latent_layers(self) -> int:
        """The number of stochastic layers: len(hvae_latents) for the hierarchical VAE, else 1."""
        return len(self.hvae_latents) if self.kind == "hvae" else 1


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
           "RUN --checkpoint epoch-0010` scores one, bench/presets.py all of them"
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
    device_data: Literal["auto", "on", "off"] = _opt(
        "auto", "keep the training images on the training device as one uint8 tensor and draw the data order, "
                "binarization and augmentation there, with no host synchronization inside a step (the guard's "
                "counters are read every train.sync_steps); auto: on for CUDA and with train.compile or bf16, else off"
    )
    sync_steps: int = _opt(
        100, "device-resident path: read the step counters and the bad-step guard every N steps (and at every "
             "checkpoint and epoch end); a restore after train.nan_patience bad steps happens at that read"
    )
    compile: bool = _opt(
        False, "torch.compile the model's training loss on the device-resident path (the first steps compile: "
               "seconds on CUDA, about a minute on CPU); falls back to eager with a one-line note when "
               "compilation fails"
    )
    precision: Literal["fp32", "bf16"] = _opt(
        "fp32", "fp32, or bf16 autocast of the forward pass (CUDA: faster; the loss and the likelihoods stay "
                "float32)"
    )
    tf32: bool = _opt(True, "CUDA: allow TF32 matmuls and convolutions (about 10 mantissa bits in their inputs)")
    lr_scaling: Literal["none", "sqrt", "linear"] = _opt(
        "none", "scale train.lr with the batch size relative to train.lr_base_batch: sqrt (Adam's usual rule, "
                "Malladi et al. 2022), linear, or none"
    )
    lr_base_batch: int = _opt(128, "the batch size at which train.lr is meant (see train.lr_scaling)")

    def __post_init__(self) -> None:
        check_types(self, "train")
        check_train(self)


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
                "Havtorn et al.'s published code does) or sample (drawn from it). The default follows their code, "
                "and was kept after comparing both by their AUROC on MNIST, an OOD set they are then scored on: "
                "tuned on MNIST, not chosen on in-distribution data alone (BENCHMARKS.md)"
    )
    dose_llr: Literal["table", "all"] = _opt(
        "table", "hvae: the LLR>j statistics of DoSE: table (only the --on table's LLR>k, k = eval.llr_k: reused, "
                 "no extra cost) or all (every j from 1 to layers - 1: one more importance-sampled pass per image "
                 "for each j beyond the table's)"
    )
    dose_orientation: bool = _opt(
        True, "join DoSE with the orientation test (does the model prefer the image to its own flips and rotations? "
              "7 x 8 ELBO draws per image, about half an importance-sampled pass at k=100): the default score is then "
              "the smaller of the two p-values; false: the density alone, and the preferences are not computed"
    )
    dose_images: int = _opt(
        5000, "validation images whose per-image statistics fit the DoSE density and the typicality test (a seeded "
              "choice; never test or OOD images; the default takes the whole default validation split: the density "
              "is over 40+ statistics); at least 100"
    )
    ood_resamples: int = _opt(1000, "bootstrap resamples of the 95% intervals of AUROC, AUPRC and FPR at 95% TPR")
    regret_images: int = _opt(
        200, "images per dataset scored by Likelihood Regret (`vaelab evaluate --on ... --regret`; a seeded "
             "choice): the slowest score, 0.34 s per 28x28 image with 100 steps on one CPU thread (default VAE)"
    )
    regret_steps: int = _opt(
        100, "Likelihood Regret (Xiao et al. 2020): Adam steps fine-tuning a copy of the encoder on each image "
             "(their code: 100; eval.refine_steps refines q(z|x) itself, a different problem)"
    )
    regret_lr: float = _opt(2e-4, "learning rate of those steps on the encoder's weights (their code: 2e-4)")
    compile: bool = _opt(
        False, "torch.compile the model's importance weights (log_weights) for the NLL: the same numbers within "
               "float32 rounding; for GPUs (on the 2-core CPU it ran at 0.85x eager); the first call compiles (tens "
               "of seconds); falls back to eager with a one-line note when compilation fails"
    )

    def __post_init__(self) -> None:
        check_types(self, "eval")
        check_eval(self)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not combination_checks_deferred():
            check_combinations(self)

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with some sections or keys replaced: `cfg.replace(train={"epochs": 1})`."""
        return apply_mapping(self, sections)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}


def apply_mapping(base: RunConfig, mapping: Mapping[str, Any], origin: str = "config") -> RunConfig:
    """Return `base` with the sections/keys of a nested mapping replaced.

    Unknown sections and keys raise `ConfigError` listing the valid ones.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{origin} must be a table of sections ({', '.join(SECTIONS)}), got {short_repr(mapping)}")
    new_sections = {}
    for section, values in mapping.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section [{short_repr(section)}] in {origin}; valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] in {origin} must be a table of key = value pairs")
        current = getattr(base, section)
        names = {f.name for f in dataclasses.fields(current)}
        for key in values:
            if key not in names:
                if not isinstance(key, str):
                    raise ConfigError(f"unknown key {short_repr(key)} in [{section}] of {origin}; "
                                      f"valid keys: {', '.join(sorted(names))}")
                hint = closest_name(key, names)
                raise ConfigError(
                    f"unknown key {section}.{key} in {origin}"
                    + (f"; did you mean {section}.{hint}?" if hint else f"; valid keys: {', '.join(sorted(names))}")
                )
        merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        merged.update(values)
        new_sections[section] = type(current)(**merged)
    return dataclasses.replace(base, **new_sections)
