"""What vaelab needs from a model: the `Model` protocol, `ModelBase` with its defaults, and `check_model`.

Training calls `forward` (one reparameterized sample: the likelihood's parameters and the KL per image)
and, for the IWAE objective, `log_weight_terms`. Evaluation calls `log_weights` (importance weights for k
samples per image), `encode`/`code`, `decode`/`decode_mean`, `prior_sample` and `sample_images`. The rest
(`fixed_prior`, `fit_codes`, `describe`, `prior_description`) has a default in `ModelBase`.

A model of your own: subclass `ModelBase` (an `nn.Module`), set `image_shape`, `latent_dim` and
`likelihood` (one of `vaelab.models.distributions`, or any object with `name`, `log_prob(x, params)`,
`discrete_log_prob(x, params)` and `mean(params)`), and write the five required methods:

    forward(x) -> ModelOutput
    log_weight_terms(x, s, generator=None, discrete=False, prior_layers=0, context=None, prior_mode=False)
        -> (log p(x|z), log p(z) - log q(z|x)), each (S, B)
    encode(x) -> DiagonalGaussian (or the code, for an autoencoder)
    decode(z) -> the likelihood's parameters
    prior_sample(n, temperature=1.0, generator=None) -> (n, latent_dim)

Then `vaelab.train(config, run_dir, model=MyVAE(...))` trains, checkpoints, resumes and evaluates it.
To score a model trained elsewhere, an object with `log_weights(x, k, generator=None) -> (k, B)` is
enough (`vaelab.evaluation.likelihood.importance_sampled`, the OOD scores).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from vaelab.errors import ConfigError
from vaelab.models.distributions import DiagonalGaussian


@dataclass(frozen=True)
class ModelOutput:
    """One pass of a model over a batch x (B, C, H, W), for the training loss."""

    x_params: torch.Tensor  # decoder output (B, C', H, W): the likelihood's parameters (logits, means, ...)
    z: torch.Tensor  # the latent code used (B, latent_dim)
    kl: torch.Tensor  # KL(q(z|x) || p(z)) per image (B,); zeros for the autoencoder
    posterior: DiagonalGaussian | None  # q(z|x); None for the autoencoder (the HVAE: its top layer's, flattened)
    kl_layers: torch.Tensor | None = None  # hierarchical models: the KL of each stochastic layer (B, L), bottom to top


@runtime_checkable
class Model(Protocol):
    """The interface every trainable vaelab model implements (VAE, Autoencoder, HVAE, and yours)."""

    image_shape: tuple[int, int, int]
    latent_dim: int
    variational: bool  # False: a plain autoencoder (no prior, no likelihood bound, no KL)
    n_layers: int  # stochastic layers: 1, or more for a hierarchical VAE (the L>k bounds)
    likelihood: Any  # the pixel likelihood p(x|z): name, log_prob, discrete_log_prob, mean

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput: ...

    def log_weight_terms(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                         discrete: bool = False, prior_layers: int = 0, context: Any = None,
                         prior_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_weights(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                    discrete: bool = False, prior_layers: int = 0, context: Any = None,
                    prior_mode: bool = False) -> torch.Tensor: ...

    def inference_context(self, x: torch.Tensor) -> Any: ...

    def encode(self, x: torch.Tensor) -> Any: ...

    def code(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor: ...

    def prior_sample(self, n: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor: ...

    def sample_images(self, n: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor: ...

    def fixed_prior(self) -> AbstractContextManager: ...

    def fit_codes(self, codes: torch.Tensor) -> None: ...

    def describe(self) -> str: ...

    def prior_description(self) -> str: ...


# the methods a model must write itself (ModelBase has the others), with their signatures for error messages
REQUIRED = {
    "forward": "forward(x) -> ModelOutput",
    "log_weight_terms": "log_weight_terms(x, s, generator=None, discrete=False, prior_layers=0, context=None, "
                        "prior_mode=False) -> (log p(x|z), log p(z) - log q(z|x))",
    "encode": "encode(x) -> q(z|x)",
    "decode": "decode(z) -> the likelihood's parameters",
    "prior_sample": "prior_sample(n, temperature=1.0, generator=None) -> (n, latent_dim)",
}
OPTIONAL = ("log_weights", "inference_context", "code", "decode_mean", "sample_images", "fixed_prior", "fit_codes",
            "describe", "prior_description")
ATTRIBUTES = ("image_shape", "latent_dim", "variational", "n_layers", "likelihood")


class ModelBase(nn.Module):
    """Defaults for the optional half of the `Model` protocol; subclasses write the five required methods."""

    variational: bool = True
    n_layers: int = 1
    arch: str = "custom"  # what `describe` names the networks; vaelab's own builder sets "conv" or "mlp"

    def inference_context(self, x: torch.Tensor) -> Any:
        """What `log_weights` needs of x that does not depend on the samples (reused across chunks); none here."""
        return None

    def log_weights(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                    discrete: bool = False, prior_layers: int = 0, context: Any = None,
                    prior_mode: bool = False) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for S samples z ~ q(z|x) per image of x (B, C, H, W): (S, B) float64."""
        log_px_z, log_ratio = self.log_weight_terms(x, s, generator, discrete=discrete, prior_layers=prior_layers,
                                                    context=context, prior_mode=prior_mode)
        return log_px_z.double() + log_ratio.double()

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of x (B, latent_dim): the posterior mean."""
        return self.encode(x).mean

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image E[x | z] in [0, 1]."""
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample_images(self, n: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """n mean images E[x | z], z from the prior with its std scaled by `temperature`: (n, C, H, W) in [0, 1]."""
        return self.decode_mean(self.prior_sample(n, temperature, generator))

    def fixed_prior(self) -> AbstractContextManager:
        """A context in which the prior is constant (evaluation may cache what it computes of it)."""
        return nullcontext()

    def fit_codes(self, codes: torch.Tensor) -> None:
        """Called after every epoch with codes of training images; the autoencoder fits its sampling Gaussian."""

    def describe(self) -> str:
        """One line for the training log: the kind, the networks, the latent size and the parameter count."""
        n = sum(p.numel() for p in self.parameters())
        return f"{type(self).__name__} ({self.arch}, latent {self.latent_dim}, {n:,} parameters)"

    def prior_description(self) -> str:
        """The prior p(z) in words, for the protocol stored beside every NLL."""
        return "N(0, I)"


def check_model(model: Any) -> None:
    """One clear error when `model` lacks a method or attribute of the `Model` protocol (named, with its form)."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise ConfigError(f"the model {name} is not a torch.nn.Module; vaelab trains and checkpoints nn.Modules "
                          "(subclass vaelab.models.ModelBase)")
    for method, form in REQUIRED.items():
        if not callable(getattr(model, method, None)):
            raise ConfigError(f"the model {name} lacks the method {method} of vaelab's Model protocol: write "
                              f"{form} (see vaelab.models.base)")
    for method in OPTIONAL:
        if not callable(getattr(model, method, None)):
            raise ConfigError(f"the model {name} lacks the method {method} of vaelab's Model protocol: subclass "
                              "vaelab.models.ModelBase for its default, or write it")
    for attr in ATTRIBUTES:
        if not hasattr(model, attr):
            raise ConfigError(f"the model {name} lacks the attribute {attr} of vaelab's Model protocol "
                              "(see vaelab.models.base)")


class ForeignScorer:
    """A model trained elsewhere, seen through the one method importance sampling needs:
    `log_weights(x, k, generator=None) -> (k, B)` (log p(x, z) - log q(z|x) for k samples z ~ q(z|x) per image)."""

    variational = True
    n_layers = 1
    likelihood = None  # unknown: the caller answers for the data it scores

    def __init__(self, obj: Any) -> None:
        if not callable(getattr(obj, "log_weights", None)):
            raise ConfigError(f"{type(obj).__name__} has no method log_weights(x, k, generator=None) -> (k, B); "
                              "it is what vaelab's importance sampler calls")
        self.obj = obj

    def inference_context(self, x: torch.Tensor) -> None:
        return None

    def log_weights(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None, discrete: bool = False,
                    prior_layers: int = 0, context: Any = None, prior_mode: bool = False) -> torch.Tensor:
        if prior_layers:
            raise ConfigError("L>k (prior_layers > 0) needs a hierarchical vaelab model")
        lw = self.obj.log_weights(x, s, generator)
        if tuple(lw.shape) != (s, x.shape[0]):
            raise ConfigError(f"{type(self.obj).__name__}.log_weights returned shape {tuple(lw.shape)}; "
                              f"expected (k, B) = ({s}, {x.shape[0]})")
        return lw.double()

    def fixed_prior(self) -> AbstractContextManager:
        return nullcontext()


def as_scorer(model: Any) -> Any:
    """`model` itself when it implements the whole `Model` protocol, else a `ForeignScorer` around it."""
    return model if isinstance(model, Model) else ForeignScorer(model)
