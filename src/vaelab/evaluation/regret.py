"""Likelihood Regret (Xiao, Yan & Amit 2020, "Likelihood Regret: an out-of-distribution detection score for
variational auto-encoder", NeurIPS 2020): how much better one image could be explained by an encoder made for
it alone.

    LR(x) = L(x; tau*(x), theta) - L(x; phi, theta),   tau*(x) = argmax_tau L(x; tau, theta)

with theta the trained decoder, phi the trained encoder and L a bound on log p(x). A VAE's decoder can give
any image a good likelihood once the posterior is right, but an amortized encoder trained on one
distribution gives a poor posterior to an image of another: the regret of an in-distribution image is
small, that of an out-of-distribution image large, whether its likelihood is high or low.

As in the authors' code (github.com/XavierXiao/Likelihood-Regret, compute_LR.py): a copy of the encoder is
fine-tuned on the single image for `steps` Adam steps (lr 2e-4, betas (0.9, 0.999), weight decay 5e-5) on
its single-sample ELBO, the decoder frozen; both encoders are then scored by the importance-sampled bound
L_k. vaelab draws the k samples' noise once and scores both encoders with it (common random numbers), and
takes the better of the two encoders (the trained one is itself a candidate of the argmax), so the regret
is never negative: LR = max(L_after, L_before) - L_before.

Many images are fine-tuned at once, each with its own copy of the encoder (`torch.func.vmap` over stacked
copies of the weights): the per-image ELBOs share no parameter, so one Adam step on their sum is the
per-image Adam step of each copy. It is the slowest of vaelab's scores: `steps` forward and backward passes
per image (0.34 s per 28x28 image with 100 steps on one CPU thread, the default VAE), hence opt-in (`vaelab evaluate
--regret`) and on at most eval.regret_images images per dataset.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vaelab.data import to_float
from vaelab.errors import ConfigError
from vaelab.evaluation.likelihood import NLL_SEED
from vaelab.models import DiagonalGaussian, eval_mode
from vaelab.objectives import log_normal_diag

STEPS = 100  # Xiao et al.'s code: --num_iter 100
LR = 2e-4  # --lr 2e-4
WEIGHT_DECAY = 5e-5  # their Adam's weight_decay
MAX_DECODE = 4096  # codes decoded at once when scoring the bound


@dataclass(frozen=True)
class RegretResult:
    """Per-image Likelihood Regret (float64, (N,)) and the two bounds it is the difference of, nats."""

    regret: np.ndarray  # max(after, before) - before >= 0
    before: np.ndarray  # L_k with the trained encoder
    after: np.ndarray  # L_k with the encoder fine-tuned on the image
    steps: int
    lr: float
    k: int
    seconds: float


def check_regret_model(model: Any) -> None:
    """ConfigError unless `model` is a single-latent VAE whose encoder network can be fine-tuned."""
    if not getattr(model, "variational", False):
        raise ConfigError("Likelihood Regret needs a VAE: an autoencoder has no likelihood to regret")
    if getattr(model, "n_layers", 1) > 1 or not isinstance(getattr(model, "encoder", None), nn.Module) \
            or getattr(model, "kind", "") != "vae":
        raise ConfigError(f"Likelihood Regret fine-tunes the encoder of a single-latent VAE (model.kind = vae); "
                          f"this model is {getattr(model, 'kind', type(model).__name__)!r}: leave out --regret")


def _encoder_net(model: Any) -> nn.Module:
    """The encoder's layers: vaelab's encoders are a Sequential `net` (what their forward computes on
    contiguous images); any other encoder is used as it is."""
    net = getattr(model.encoder, "net", None)
    return net if isinstance(net, nn.Sequential) else model.encoder


def _posterior(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) (B, D) of each image of x (B, C, H, W) under its own copy of the encoder (params (B, ...))."""
    def one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, p, (xi.unsqueeze(0),)).squeeze(0)

    out = torch.func.vmap(one)(params, x)
    return out.chunk(2, dim=1)


def _bound(model: Any, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_k = log mean_i w_i (B,) float64 with the given noise eps (k, B, D), decoded in chunks."""
    k, b, d = eps.shape
    parts = []
    chunk = max(1, MAX_DECODE // max(b, 1))
    for e in eps.split(chunk):
        s = e.shape[0]
        z = (mean + torch.exp(0.5 * logvar) * e).reshape(s * b, d)
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        log_q = log_normal_diag(z, mean.expand(s, b, d).reshape(s * b, d), logvar.expand(s, b, d).reshape(s * b, d))
        parts.append((model.log_joint(xs, z, discrete=True) - log_q).view(s, b).double())
    return torch.logsumexp(torch.cat(parts), 0) - math.log(k)


def _fine_tune(model: Any, net: nn.Module, x: torch.Tensor, *, steps: int, lr: float,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One copy of the encoder's weights per image, each fine-tuned on its image's single-sample ELBO."""
    b = x.shape[0]
    params = {name: p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).clone().requires_grad_(True)
              for name, p in net.named_parameters()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY)
    lik = model.likelihood
    for _ in range(steps):
        mean, logvar = _posterior(net, params, x)
        q = DiagonalGaussian(mean, logvar)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        elbo = lik.discrete_log_prob(x, model.decode(z)) - model.kl(q, z)
        optimizer.zero_grad(set_to_none=True)
        (-elbo.sum()).backward()
        optimizer.step()
    return {name: p.detach() for name, p in params.items()}


def likelihood_regret(model: Any, images: torch.Tensor, *, steps: int = STEPS, lr: float = LR, k: int = 100,
                      seed: int = NLL_SEED, batch_size: int = 32, device: torch.device | str = "cpu",
                      log: Callable[[str], None] | None = None) -> RegretResult:
    """Likelihood Regret of each uint8 image (N, C, H, W), prepared as the run scores them (binarized once
    when it binarizes); see the module docstring. Deterministic for a given seed and batch size. The
    model's weights are not changed (its parameters' requires_grad is restored afterwards)."""
    check_regret_model(model)
    if steps < 1 or not lr > 0 or k < 1:
        raise ConfigError(f"Likelihood Regret needs steps >= 1, lr > 0 and k >= 1, got {steps}, {lr} and {k}")
    net = _encoder_net(model)
    gen = torch.Generator().manual_seed(seed)  # the fine-tuning steps' draws
    score_gen = torch.Generator().manual_seed(seed + 1)  # the bounds' draws: the same whatever the steps
    before, after = [], []
    flags = [p.requires_grad for p in model.parameters()]
    started = time.perf_counter()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with eval_mode(model):  # eval mode, no gradient but where asked, the VampPrior's components held fixed
            for start in range(0, len(images), max(1, batch_size)):
                x = to_float(images[start:start + batch_size], device).contiguous()
                trained = {name: p.detach().unsqueeze(0).expand(len(x), *p.shape)
                           for name, p in net.named_parameters()}
                with torch.enable_grad():
                    tuned = _fine_tune(model, net, x, steps=steps, lr=lr, generator=gen)
                with torch.no_grad():
                    eps = torch.randn((k, len(x), model.latent_dim), generator=score_gen).to(x.device)
                    before.append(_bound(model, x, *_posterior(net, trained, x), eps))
                    after.append(_bound(model, x, *_posterior(net, tuned, x), eps))
                if log is not None:
                    log(f"    Likelihood Regret: {start + len(x)}/{len(images)} images")
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    b = torch.cat(before).cpu().numpy() if before else np.zeros(0)
    a = torch.cat(after).cpu().numpy() if after else np.zeros(0)
    return RegretResult(regret=np.maximum(a, b) - b, before=b, after=a, steps=steps, lr=lr, k=k,
                        seconds=time.perf_counter() - started)


__all__ = ["LR", "STEPS", "RegretResult", "check_regret_model", "likelihood_regret"]
