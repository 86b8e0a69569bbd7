"""Distributions a model is made of: the Gaussian posterior and the pixel likelihoods."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import objectives as obj


@dataclass(frozen=True)
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); tensors (B, latent_dim)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return obj.reparameterize(self.mean, self.logvar, generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return obj.log_normal_diag(z, self.mean, self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        return obj.kl_standard_normal(self.mean, self.logvar)


class BernoulliLikelihood:
    """p(x|z) = prod Bernoulli(sigmoid(logits)); the decoder outputs logits."""

    name = "bernoulli"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return obj.bernoulli_log_likelihood(x, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def discrete_log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log P(x | z) as a probability of the observed data: exact for binary pixels (and only for them)."""
        return self.log_prob(x, params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class GaussianLikelihood:
    """p(x|z) = N(mean, std^2 I) with a fixed std; the decoder outputs the mean through a sigmoid."""

    name = "gaussian"

    def __init__(self, std: float) -> None:
        self.std = float(std)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return obj.gaussian_log_likelihood(x, torch.sigmoid(params), self.std)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def discrete_log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log P(x | z) of 8-bit pixels: the Gaussian discretized into 256 bins (a probability, not a density)."""
        return obj.discretized_gaussian_log_likelihood(x, torch.sigmoid(params), self.std)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(params.shape, generator=generator, dtype=params.dtype).to(params.device)
        return (torch.sigmoid(params) + self.std * noise).clamp(0.0, 1.0)


def make_likelihood(name: str, gaussian_std: float):
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(gaussian_std)
    raise ValueError(f"unknown likelihood {name!r}")
