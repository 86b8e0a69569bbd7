"""Distributions a model is made of: the Gaussian posterior and the pixel likelihoods."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab import objectives as obj


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
    params_per_channel = 1

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
    params_per_channel = 1

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


class LogisticMixtureLikelihood:
    """p(x|z): per pixel and channel, a mixture of K logistics discretized into the 256 levels of 8-bit data
    (Salimans et al. 2017). The decoder outputs 3K values per channel (mixture logits, means on [-1, 1],
    log scales); `log_prob` is already a probability of the 8-bit data."""

    name = "logistic_mixture"

    def __init__(self, components: int) -> None:
        self.components = int(components)
        self.params_per_channel = 3 * self.components

    def _split(self, params: torch.Tensor):
        b, ck, h, w = params.shape
        p = params.view(b, ck // self.params_per_channel, 3, self.components, h, w)
        return p[:, :, 0], p[:, :, 1], p[:, :, 2].clamp(min=-7.0)  # (B, C, K, H, W) each

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return obj.discretized_logistic_mixture_log_likelihood(x, params)

    def discrete_log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] on [0, 1]: the mixture-weighted mean of the component means (edges ignored)."""
        logits, means, _ = self._split(params)
        m = (torch.softmax(logits, dim=2) * means).sum(2)  # (B, C, H, W) on [-1, 1]
        return ((m + 1.0) / 2.0).clamp(0.0, 1.0)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """8-bit images on [0, 1]: a component per pixel, then a logistic draw, rounded to the nearest level."""
        logits, means, log_scales = self._split(params)
        b, c, k, h, w = logits.shape
        probs = torch.softmax(logits, dim=2).permute(0, 1, 3, 4, 2).reshape(-1, k).float().cpu()
        pick = torch.multinomial(probs, 1, generator=generator).view(b, c, h, w, 1).permute(0, 1, 4, 2, 3)
        pick = pick.to(params.device)
        mu = means.gather(2, pick).squeeze(2)
        s = log_scales.gather(2, pick).squeeze(2).exp()
        u = torch.rand(mu.shape, generator=generator).clamp(1e-5, 1 - 1e-5).to(params.device)
        v = (mu + s * (torch.log(u) - torch.log1p(-u))).clamp(-1.0, 1.0)
        return torch.round((v + 1.0) / 2.0 * 255.0) / 255.0


def make_likelihood(name: str, gaussian_std: float, components: int = 5):
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(gaussian_std)
    if name == "logistic_mixture":
        return LogisticMixtureLikelihood(components)
    raise ValueError(f"unknown likelihood {name!r}")
