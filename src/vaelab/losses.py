"""The training losses, built from a model and a batch: the ELBO (with beta, KL warm-up and free
bits) and the importance-weighted bound. The math lives in `objectives`; this module only wires
it to a model's encoder, decoder, prior and likelihood.
"""

from __future__ import annotations

import torch

from . import objectives as obj
from .config import TrainConfig


def training_loss(model, x: torch.Tensor, cfg: TrainConfig, beta: float) -> obj.LossTerms:
    """The loss of one batch x (B, C, H, W) as `cfg` asks, with the KL weight `beta` of this step.

    `recon` and `kl` of the result are per image and do not depend on beta or free bits (they are
    what the metrics report); only `loss` does.
    """
    if model.variational and cfg.objective == "iwae":
        return iwae_loss(model, x, cfg.iwae_k, beta)
    out = model(x)
    log_px_z = model.likelihood.log_prob(x, out.x_params)
    if not (model.variational and cfg.free_bits):
        return obj.beta_vae_loss(log_px_z, out.kl, beta)
    groups = (obj.kl_standard_normal_per_dim(out.posterior.mean, out.posterior.logvar)
              if cfg.free_bits_mode == "dim" else out.kl)  # (B, D) or (B,)
    loss = (-log_px_z).mean() + beta * obj.free_bits_kl(groups, cfg.free_bits)
    return obj.LossTerms(loss=loss, recon=-log_px_z, kl=out.kl)


def iwae_loss(model, x: torch.Tensor, k: int, beta: float = 1.0) -> obj.LossTerms:
    """-L_k averaged over the batch (Burda et al. 2015), with k reparameterized samples per image.

    log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)); beta = 1 is the IWAE bound itself,
    beta < 1 during KL warm-up. Returns recon = -mean_i log p(x|z_i) and kl = mean_i (log q - log p),
    per image (B,): the single-sample ELBO's terms, averaged over the k samples.
    """
    q = model.encode(x)  # once per image
    b, d = q.mean.shape
    eps = torch.randn((k, b, d), dtype=q.mean.dtype, device=q.mean.device)
    z = (q.mean + q.std * eps).reshape(k * b, d)  # (k*B, D)
    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    log_px_z = model.likelihood.log_prob(xs, model.decode(z)).view(k, b)
    log_pz = model.log_prior(z).view(k, b)
    log_qz = obj.log_normal_diag(z, q.mean.repeat(k, 1), q.logvar.repeat(k, 1)).view(k, b)
    log_w = log_px_z + beta * (log_pz - log_qz)
    loss = -obj.iwae_bound(log_w).mean()
    return obj.LossTerms(loss=loss, recon=-log_px_z.mean(0), kl=(log_qz - log_pz).mean(0))
