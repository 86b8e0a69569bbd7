"""Generation: samples from the prior, reconstructions, latent interpolations.

All functions return images in [0, 1] (the mean of p(x|z)), shape (N, C, H, W),
and run without gradients in eval mode. Randomness comes from an explicit
`torch.Generator`, so the same seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab.models import Model, eval_mode


def sample(model: Model, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """n images decoded from z ~ prior, its std scaled by `temperature` (1 = the model's prior)."""
    with eval_mode(model):
        return model.sample_images(n, temperature, generator)  # a hierarchical model: every layer from its prior


def reconstruct(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Decode the deterministic code of x (the posterior mean for a VAE)."""
    with eval_mode(model):
        return model.decode_mean(model.code(x))


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation, one row per t: (T, D)."""
    t = t.view(-1, 1)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation (White 2016), one row per t: (T, D).

    Follows the great circle between the two codes, so intermediate points keep
    a norm typical of Gaussian samples; falls back to lerp when they are parallel.
    """
    t = t.view(-1, 1)
    a, b = z0.double(), z1.double()
    norms = a.norm() * b.norm()
    if norms < eps:  # a zero code has no direction
        return lerp(z0, z1, t)
    omega = torch.arccos((torch.dot(a, b) / norms).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    if so < 1e-6:  # parallel or opposite: no unique great circle
        return lerp(z0, z1, t)
    td = t.double()
    return ((torch.sin((1 - td) * omega) / so) * a + (torch.sin(td * omega) / so) * b).to(z0.dtype)


def interpolate(model: Model, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10,
                method: str = "slerp") -> torch.Tensor:
    """Images along the path between the codes of two images x0, x1 (C, H, W): (steps, C, H, W)."""
    if method not in ("lerp", "slerp"):
        raise ValueError(f"interpolation method must be lerp or slerp, got {method!r}")
    with eval_mode(model):
        codes = model.code(torch.stack([x0, x1]))
        t = torch.linspace(0, 1, steps, device=codes.device)
        return model.decode_mean((lerp if method == "lerp" else slerp)(codes[0], codes[1], t))


@dataclass(frozen=True)
class LatentFrame:
    """Where each latent dimension is centred and how far one unit reaches, for traversals and activity."""

    loc: torch.Tensor  # (latent_dim,)
    scale: torch.Tensor  # (latent_dim,), > 0
    units: str  # what one unit is, in words


def latent_frame(model: Model, codes: torch.Tensor) -> LatentFrame:
    """The frame in which to move along latent dimensions, given the codes of some images (N, latent_dim).

    The prior's N(0, 1) for a VAE with the standard prior (and the top layer of a hierarchical VAE); the
    Gaussian fitted to the training codes for the autoencoder; for the VampPrior, which has no
    per-dimension scale, the mean and standard deviation of `codes` themselves.
    """
    codes = codes.detach().float()
    d = codes.shape[1]
    if not model.variational:
        return LatentFrame(model.code_mean.detach().float().to(codes.device),
                           model.code_std.detach().float().to(codes.device),
                           "standard deviations of the Gaussian fitted to the training codes")
    if getattr(model, "prior", "standard") == "standard":
        return LatentFrame(torch.zeros(d, device=codes.device), torch.ones(d, device=codes.device),
                           "prior standard deviations")
    spread = codes.std(0) if len(codes) > 1 else torch.ones(d, device=codes.device)
    return LatentFrame(codes.mean(0), spread.clamp_min(1e-6),
                       "standard deviations of the codes of the images shown (the VampPrior has no per-dimension "
                       "scale)")
