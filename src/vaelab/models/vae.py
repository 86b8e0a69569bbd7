"""The models: the VAE and the plain autoencoder baseline.

Both wrap an encoder and a decoder network and a pixel likelihood, and know
nothing of optimisers or training loops. `forward` returns a `ModelOutput`
whose per-image `kl` is the closed-form KL(q(z|x) || N(0, I)) for the VAE and
zero for the autoencoder, so one objective serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .distributions import DiagonalGaussian


@dataclass(frozen=True)
class ModelOutput:
    x_params: torch.Tensor  # decoder output (B, C, H, W): logits or pre-sigmoid means
    z: torch.Tensor  # the latent code used (B, latent_dim)
    kl: torch.Tensor  # KL(q(z|x) || p(z)) per image (B,); zeros for the autoencoder
    posterior: DiagonalGaussian | None  # q(z|x); None for the autoencoder


class _ImageModel(nn.Module):
    """What the VAE and the AE share: the networks, the likelihood, decoding and sampling."""

    variational: bool = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood, image_shape: tuple[int, int, int],
                 latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits for Bernoulli, pre-sigmoid means for Gaussian)."""
        return self.decoder(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image E[x | z] in [0, 1]."""
        return self.likelihood.mean(self.decode(z))

    def prior_sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latent codes from the model's generative prior, std scaled by `temperature`."""
        device = next(self.parameters()).device
        eps = torch.randn((n, self.latent_dim), generator=generator).to(device)
        return self._prior_loc() + temperature * self._prior_scale() * eps

    def _prior_loc(self) -> torch.Tensor | float:
        return 0.0

    def _prior_scale(self) -> torch.Tensor | float:
        return 1.0

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of x: the posterior mean (VAE) or the code (AE), (B, latent_dim)."""
        raise NotImplementedError


class VAE(_ImageModel):
    """Gaussian q(z|x), standard normal prior, reparameterized single-sample ELBO."""

    variational = True

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).mean

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        q = self.encode(x)
        z = q.rsample(generator)
        return ModelOutput(x_params=self.decode(z), z=z, kl=q.kl_standard_normal(), posterior=q)


class Autoencoder(_ImageModel):
    """Deterministic code z = f(x); trained on reconstruction alone.

    To sample, it decodes codes drawn from a diagonal Gaussian fitted to the
    training codes (`fit_code_distribution`): the fairest simple generative
    use of a plain autoencoder, and still the baseline the VAE beats.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("code_mean", torch.zeros(self.latent_dim))
        self.register_buffer("code_std", torch.ones(self.latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        z = self.encode(x)
        return ModelOutput(x_params=self.decode(z), z=z, kl=z.new_zeros(len(z)), posterior=None)

    @torch.no_grad()
    def fit_code_distribution(self, codes: torch.Tensor) -> None:
        """Set the sampling distribution to N(mean, diag(var)) of the given codes (N, latent_dim)."""
        if len(codes) < 2:
            raise ValueError("fit_code_distribution needs the codes of at least 2 images")
        self.code_mean.copy_(codes.mean(0))
        self.code_std.copy_(codes.std(0).clamp_min(1e-6))

    def _prior_loc(self) -> torch.Tensor:
        return self.code_mean

    def _prior_scale(self) -> torch.Tensor:
        return self.code_std
