"""The math of VAEs as small pure functions on tensors.

Conventions, used everywhere in vaelab (README, `--help`, metrics, reports):
every quantity is **per image**, **summed** over pixels (and channels) and
over latent dimensions, in **nats**; a batch is summarised by its mean.

    loss  = recon + beta * KL          (what the optimiser minimises)
    recon = -log p(x | z),  z ~ q(z|x) (one reparameterized sample)
    KL    = KL(q(z|x) || p(z))         (closed form for Gaussians)
    nelbo = recon + KL                 (the negative ELBO; equals loss at beta = 1)

Functions return per-example tensors of shape (B,); reducing is the caller's
choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaelab import noise

LOG_2PI = math.log(2.0 * math.pi)


def _sum_per_example(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mean + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, sec. 2.4).

    Differentiable in `mean` and `logvar`; with a `generator`, eps is drawn
    from it (on its device) and moved to the mean's device.
    """
    if generator is None:
        eps = noise.standard_normal(tuple(mean.shape), mean)  # a shard of the batch's noise when asked
    else:
        eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)), per example, in nats.

    = 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)  (Kingma & Welling 2014, appendix B).
    """
    return 0.5 * _sum_per_example(mean.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_diag_gaussians(mean_q: torch.Tensor, logvar_q: torch.Tensor,
                      mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) for diagonal Gaussians, per example, in nats."""
    return 0.5 * _sum_per_example(
        logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).pow(2)) / logvar_p.exp() - 1.0
    )


def kl_standard_normal_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each dimension, (B, D); sums over D to `kl_standard_normal`."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term of a loss with free bits (Kingma et al. 2016, "Improved variational inference with
    inverse autoregressive flow", eq. 15): sum over groups of max(free_bits, batch mean of the group's KL).

    kl: (B,) for one group (the whole code) or (B, D) for one group per dimension. A group whose
    average KL is under `free_bits` gets no gradient towards a smaller KL, so it is not driven to
    collapse early in training. Returns a scalar (already averaged over the batch).
    """
    if kl.dim() == 1:
        return kl.mean().clamp(min=free_bits)
    return kl.mean(0).clamp(min=free_bits).sum()


def log_normal_diag(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(logvar))), summed per example."""
    return -0.5 * _sum_per_example(LOG_2PI + logvar + (x - mean).pow(2) / logvar.exp())


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed per example."""
    return -0.5 * _sum_per_example(LOG_2PI + z.pow(2))


def log_mixture_diag(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k N(z; means_k, diag(exp(logvars_k))) for z (N, D) and K components (K, D): (N,).

    The density of the VampPrior (Tomczak & Welling 2018), whose components are the posteriors of
    its K pseudo-inputs. The squared distances are expanded into matrix products, so memory is
    O(N*K), not O(N*K*D); the sums run in float64 to keep the expansion exact enough.
    """
    z64, m, lv = z.double(), means.double(), logvars.double()
    inv_var = torch.exp(-lv)  # (K, D)
    sq = (z64.pow(2) @ inv_var.T - 2.0 * z64 @ (m * inv_var).T
          + (m.pow(2) * inv_var).sum(1) + lv.sum(1))  # (N, K): sum_d (z_d - m_kd)^2 / v_kd + log v_kd
    log_components = -0.5 * (z.shape[1] * LOG_2PI + sq)
    return (torch.logsumexp(log_components, dim=1) - math.log(means.shape[0])).to(z.dtype)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) for pixels x in [0, 1], summed per example (= -binary cross-entropy).

    For binary x this is an exact log-probability; for grey x it is the usual
    "continuous Bernoulli without normaliser" and is not a normalised density.
    """
    return -_sum_per_example(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2 I), summed per example: -SSE / (2 std^2) - D log(std sqrt(2 pi))."""
    d = x[0].numel()
    sse = _sum_per_example((x - mean).pow(2))
    return -sse / (2.0 * std * std) - d * (math.log(std) + 0.5 * LOG_2PI)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and far below it (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor,
                                        levels: int = 256) -> torch.Tensor:
    """log P(x) of 8-bit pixels under a Gaussian discretized into `levels` bins, summed per example.

    Pixel values x = i / (levels - 1) own the bin [x - h, x + h] with h = 1 / (2 (levels - 1)); the
    outermost bins extend to -inf and +inf, so the probabilities of all levels sum to exactly 1 and
    the result is a log-probability that compares with published 8-bit bits/dim (as in PixelCNN++'s
    discretized logistic, Salimans et al. 2017, with a Gaussian). Computed in float64 in the lower
    tail of the normal CDF, where `log_ndtr` keeps its precision.
    """
    m64 = mean.double()
    s64 = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    level = (x.double() * (levels - 1)).round()  # bin edges from the exact level: adjacent bins share them
    top = levels - 1
    lo = torch.where(level <= 0, torch.full_like(m64, -math.inf), ((level - 0.5) / top - m64) / s64)
    hi = torch.where(level >= top, torch.full_like(m64, math.inf), ((level + 0.5) / top - m64) / s64)
    # P = Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): use the side where both arguments sit in the lower tail
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_p = log_b + _log1mexp((torch.special.log_ndtr(a) - log_b).clamp_max(0.0))
    return _sum_per_example(log_p).to(x.dtype if x.is_floating_point() else torch.float32)


def discretized_logistic_mixture_log_likelihood(x: torch.Tensor, params: torch.Tensor,
                                                n_bins: int = 256) -> torch.Tensor:
    """log P(x) of 8-bit pixels under a mixture of K discretized logistics per pixel, summed per example.

    The pixel likelihood of PixelCNN++ (Salimans et al. 2017, sec. 2.1), channels independent given z.
    x: (B, C, H, W) in [0, 1] on the grid k / (n_bins - 1). params: (B, C * 3K, H, W), per channel c the
    blocks [mixture logits (K), means (K), log scales (K)] at channels c*3K ... (c+1)*3K, means on the
    [-1, 1] scale. Each level k gets the logistic mass of [k - 1/2, k + 1/2] (levels rescaled to
    [-1, 1]); the lowest level takes everything below, the highest everything above, so the
    probabilities of the n_bins levels sum to 1. Differences of CDFs are taken as
    log sigmoid(a) + log(1 - exp(log sigmoid(b) - log sigmoid(a))): stable when both are tiny or near 1.
    """
    b, c, h, w = x.shape
    k = params.shape[1] // (3 * c)
    if params.shape != (b, 3 * k * c, h, w) or k < 1:
        raise ValueError(f"params of shape {tuple(params.shape)} do not hold 3K values per channel for x of shape "
                         f"{tuple(x.shape)}")
    p = params.view(b, c, 3, k, h, w)
    logit_probs, means = p[:, :, 0], p[:, :, 1]  # (B, C, K, H, W)
    log_scales = p[:, :, 2].clamp(min=-7.0)
    xs = (x * 2.0 - 1.0).unsqueeze(2)  # (B, C, 1, H, W) on [-1, 1]
    half_bin = 1.0 / (n_bins - 1)
    inv_s = torch.exp(-log_scales)
    upper = inv_s * (xs + half_bin - means)  # logistic CDF argument at the bin's upper edge
    lower = inv_s * (xs - half_bin - means)
    log_cdf_upper = F.logsigmoid(upper)  # log F(upper)
    log_sf_lower = F.logsigmoid(-lower)  # log (1 - F(lower))
    # interior bins: log (F(upper) - F(lower)) = log F(upper) + log(1 - F(lower)/F(upper)); symmetric form
    # log(1 - F(lower)) + log(1 - (1 - F(upper))/(1 - F(lower))) when the bin lies in the upper tail
    in_upper_tail = upper + lower > 0
    ratio = torch.where(in_upper_tail, F.logsigmoid(-upper) - log_sf_lower, F.logsigmoid(lower) - log_cdf_upper)
    log_mass = torch.where(in_upper_tail, log_sf_lower, log_cdf_upper) + _log1mexp(ratio.clamp(max=-1e-5))
    # a bin far narrower than the logistic (ratio within 1e-5 of 0): its mass is the density at the
    # centre times the bin width, without the cancellation of two nearly equal CDFs
    mid = inv_s * (xs - means)
    log_pdf_mass = mid - log_scales - 2.0 * F.softplus(mid) + math.log(2.0 * half_bin)
    log_mass = torch.where(ratio > -1e-5, log_pdf_mass, log_mass)
    edge_low, edge_high = xs < -1.0 + half_bin / 2, xs > 1.0 - half_bin / 2
    log_mass = torch.where(edge_low, log_cdf_upper, torch.where(edge_high, log_sf_lower, log_mass))
    log_probs = log_mass + F.log_softmax(logit_probs, dim=2)
    return _sum_per_example(torch.logsumexp(log_probs, dim=2))


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound log (1/K) sum_k w_k from log w of shape (K, B) (Burda et al. 2015)."""
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k)


def bits_per_dim(nats_per_image: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """Convert nats per image to bits per dimension."""
    return nats_per_image / (dims * math.log(2.0))


@dataclass(frozen=True)
class LossTerms:
    """Named terms of one batch. `loss` is a scalar to backpropagate; the rest are per image (B,)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def nelbo(self) -> torch.Tensor:
        """Negative ELBO per image, independent of beta."""
        return self.recon + self.kl


def beta_vae_loss(log_px_z: torch.Tensor, kl: torch.Tensor, beta: float) -> LossTerms:
    """loss = mean over the batch of (-log p(x|z) + beta * KL)  (Higgins et al. 2017 for beta != 1).

    With kl = 0 (a deterministic autoencoder) this is the reconstruction loss alone.
    """
    recon = -log_px_z
    return LossTerms(loss=(recon + beta * kl).mean(), recon=recon, kl=kl)
