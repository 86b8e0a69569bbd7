"""The models: the VAE and the plain autoencoder baseline.

Both wrap an encoder and a decoder network and a pixel likelihood, and know
nothing of optimisers or training loops. `forward` returns a `ModelOutput`
whose per-image `kl` is the closed-form KL(q(z|x) || N(0, I)) for the VAE and
zero for the autoencoder, so one objective serves both.
"""

from __future__ import annotations

from contextlib import contextmanager

from typing import Iterator

import torch
from torch import nn

from vaelab import noise
from vaelab import objectives as obj
from vaelab.models.base import ModelBase, ModelOutput
from vaelab.models.distributions import DiagonalGaussian


class _ImageModel(ModelBase):
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

    def prior_sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latent codes from the model's generative prior, std scaled by `temperature`."""
        device = next(self.parameters()).device
        eps = torch.randn((n, self.latent_dim), generator=generator).to(device)
        return self._prior_loc() + temperature * self._prior_scale() * eps

    def _prior_loc(self) -> torch.Tensor | float:
        return 0.0

    def _prior_scale(self) -> torch.Tensor | float:
        return 1.0

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{self.kind.upper()} ({self.arch}, latent {self.latent_dim}, {n:,} parameters)"


class VAE(_ImageModel):
    """Gaussian q(z|x), reparameterized single-sample ELBO, and one of two priors p(z):

    - "standard": N(0, I); the KL term is closed-form;
    - "vamp": the VampPrior (Tomczak & Welling 2018), p(z) = (1/K) sum_k q(z | u_k), the mixture of
      the posteriors of K learned pseudo-inputs u_k (images in [0, 1], a sigmoid of free
      parameters); the KL term is the single-sample estimate log q(z|x) - log p(z).
    """

    variational = True
    kind = "vae"

    def __init__(self, *args, prior: str = "standard", pseudo_inputs: int = 500, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prior not in ("standard", "vamp"):
            raise ValueError(f"unknown prior {prior!r}")
        self.prior = prior
        self._prior_cache: DiagonalGaussian | None = None
        if prior == "vamp":
            # small noise around grey: every pseudo-input starts as a plausible, distinct image
            self.pseudo_logits = nn.Parameter(0.1 * torch.randn(pseudo_inputs, *self.image_shape))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).mean

    def prior_description(self) -> str:
        if self.prior == "standard":
            return "N(0, I)"
        return f"VampPrior: a mixture of the posteriors of {len(self.pseudo_logits)} learned pseudo-inputs"

    def pseudo_inputs(self) -> torch.Tensor:
        """The VampPrior's pseudo-inputs as images in [0, 1], (K, C, H, W)."""
        return torch.sigmoid(self.pseudo_logits)

    def prior_components(self) -> DiagonalGaussian | None:
        """The VampPrior's K components q(z | u_k), (K, D) each; None for the standard normal prior.

        Evaluation computes them once (`fixed_prior`) instead of at every `log_prior` call."""
        return self.encode(self.pseudo_inputs()) if self.prior == "vamp" else None

    @contextmanager
    def fixed_prior(self) -> Iterator[None]:
        """For its duration, the VampPrior's components are computed once, without gradient, and reused by
        `log_prior`: evaluation and posterior refinement score many codes under one unchanging prior."""
        if self.prior == "standard" or self._prior_cache is not None:
            yield
            return
        with torch.no_grad():
            self._prior_cache = self.prior_components()
        try:
            yield
        finally:
            self._prior_cache = None

    def log_prior(self, z: torch.Tensor, components: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(z) for z (N, D): (N,)."""
        if self.prior == "standard":
            return obj.log_standard_normal(z)
        comp = components or self._prior_cache or self.prior_components()
        return obj.log_mixture_diag(z, comp.mean, comp.logvar)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor, discrete: bool = False,
                  components: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(x | z) + log p(z) for x (N, C, H, W) and z (N, D): (N,). `discrete` scores x with the
        likelihood's probability of 8-bit pixels (`discrete_log_prob`) instead of `log_prob`."""
        lik = self.likelihood
        log_px_z = (lik.discrete_log_prob if discrete else lik.log_prob)(x, self.decode(z))
        return log_px_z + self.log_prior(z, components)

    def kl(self, q: DiagonalGaussian, z: torch.Tensor) -> torch.Tensor:
        """The KL term of the ELBO per image: closed form under N(0, I), else log q(z|x) - log p(z)."""
        if self.prior == "standard":
            return q.kl_standard_normal()
        return q.log_prob(z) - self.log_prior(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        q = self.encode(x)
        z = q.rsample(generator)
        return ModelOutput(x_params=self.decode(z), z=z, kl=self.kl(q, z), posterior=q)

    def inference_context(self, x: torch.Tensor) -> DiagonalGaussian:
        """What `log_weights` needs of x that does not depend on the samples: q(z|x)."""
        return self.encode(x)

    def log_weights(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None, discrete: bool = False,
                    prior_layers: int = 0, context: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for S samples z ~ q(z|x) per image of x (B, C, H, W): (S, B) float64.

        The noise (S, B, D) is one draw from `generator` (on its device); `context` is q(z|x) when the caller
        already has it (`inference_context`), so that the encoder runs once for many calls. A single latent
        layer has no lower layers to take from the prior: `prior_layers` must be 0. No gradient is blocked.
        """
        if prior_layers != 0:
            raise ValueError("the single-latent VAE has one stochastic layer: prior_layers must be 0 "
                             "(the L>k bound needs a hierarchical VAE, model.kind = 'hvae')")
        q, z, xs = self._draw(x, s, generator, context)
        s, b, d = z.shape
        log_joint = self.log_joint(xs, z.reshape(s * b, d), discrete).view(s, b).double()
        return log_joint - self._log_q(z, q).double()

    def log_weight_terms(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                         discrete: bool = False,
                         context: DiagonalGaussian | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z) - log q(z|x)) for S samples per image, each (S, B), in x's dtype and
        differentiable: the two parts of `log_weights`, apart for the IWAE objective's KL weight."""
        q, z, xs = self._draw(x, s, generator, context)
        s, b, d = z.shape
        lik = self.likelihood
        z_flat = z.reshape(s * b, d)
        log_px_z = (lik.discrete_log_prob if discrete else lik.log_prob)(xs, self.decode(z_flat)).view(s, b)
        return log_px_z, self.log_prior(z_flat).view(s, b) - self._log_q(z, q)

    def _draw(self, x: torch.Tensor, s: int, generator: torch.Generator | None,
              context: DiagonalGaussian | None) -> tuple[DiagonalGaussian, torch.Tensor, torch.Tensor]:
        """q(z|x), S reparameterized samples z (S, B, D) and x repeated to match (S*B, C, H, W)."""
        q = context if context is not None else self.encode(x)
        b, d = q.mean.shape
        if generator is None:
            eps = noise.standard_normal((s, b, d), q.mean, batch_dim=1)
        else:
            eps = torch.randn((s, b, d), generator=generator, device=generator.device).to(x.device)
        z = q.mean + q.std * eps  # (S, B, D)
        return q, z, x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])

    @staticmethod
    def _log_q(z: torch.Tensor, q: DiagonalGaussian) -> torch.Tensor:
        """log q(z|x) of samples z (S, B, D) under q with (B, D) parameters: (S, B)."""
        return -0.5 * (obj.LOG_2PI + q.logvar + (z - q.mean).pow(2) / q.logvar.exp()).sum(-1)

    def prior_sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.prior == "standard":
            return super().prior_sample(n, temperature, generator)
        with torch.no_grad():
            comp = self.prior_components()
        pick = torch.randint(len(comp.mean), (n,), generator=generator).to(comp.mean.device)
        eps = torch.randn((n, self.latent_dim), generator=generator).to(comp.mean.device)
        return comp.mean[pick] + temperature * comp.std[pick] * eps


class Autoencoder(_ImageModel):
    """Deterministic code z = f(x); trained on reconstruction alone.

    To sample, it decodes codes drawn from a diagonal Gaussian fitted to the
    training codes (`fit_codes`): the fairest simple generative
    use of a plain autoencoder, and still the baseline the VAE beats.
    """

    variational = False
    kind = "ae"

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

    def log_weight_terms(self, x, s, generator=None, discrete=False, prior_layers=0, context=None, prior_mode=False):
        raise ValueError("an autoencoder has no prior or posterior, so no importance weights")

    def prior_description(self) -> str:
        return "none (an autoencoder)"

    @torch.no_grad()
    def fit_codes(self, codes: torch.Tensor) -> None:
        """Set the sampling distribution to N(mean, diag(var)) of the given codes (N, latent_dim)."""
        if len(codes) < 2:
            raise ValueError("fit_codes needs the codes of at least 2 images")
        self.code_mean.copy_(codes.mean(0))
        self.code_std.copy_(codes.std(0).clamp_min(1e-6))

    def _prior_loc(self) -> torch.Tensor:
        return self.code_mean

    def _prior_scale(self) -> torch.Tensor:
        return self.code_std
