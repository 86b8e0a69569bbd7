"""The training losses, built from a model and a batch: the ELBO (with beta, KL warm-up and free
bits) and the importance-weighted bound. The math lives in `objectives`; this module only wires
it to a model's encoder, decoder, prior and likelihood. A hierarchical VAE (`models.HVAE`) takes free
bits per stochastic layer (mode "group", from `ModelOutput.kl_layers`) and its IWAE weights from
`log_weight_terms` (joint samples of every layer).
"""

from __future__ import annotations

import torch

from vaelab import objectives as obj
from vaelab.config import TrainConfig


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
    if cfg.free_bits_mode == "dim":
        if out.kl_layers is not None:
            raise ValueError("train.free_bits_mode = 'dim' is for single-latent VAEs; a hierarchical VAE takes "
                             "free bits per layer (train.free_bits_mode = 'group')")
        groups = obj.kl_standard_normal_per_dim(out.posterior.mean, out.posterior.logvar)  # (B, D)
    else:  # one group: the whole code, or each stochastic layer of a hierarchical VAE
        groups = out.kl if out.kl_layers is None else out.kl_layers  # (B,) or (B, L)
    loss = (-log_px_z).mean() + beta * obj.free_bits_kl(groups, cfg.free_bits)
    return obj.LossTerms(loss=loss, recon=-log_px_z, kl=out.kl)


def iwae_loss(model, x: torch.Tensor, k: int, beta: float = 1.0) -> obj.LossTerms:
    """-L_k averaged over the batch (Burda et al. 2015), with k reparameterized samples per image.

    log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)); beta = 1 is the IWAE bound itself,
    beta < 1 during KL warm-up. Returns recon = -mean_i log p(x|z_i) and kl = mean_i (log q - log p),
    per image (B,): the single-sample ELBO's terms, averaged over the k samples.
    """
    # joint samples: the VAE's single layer, or every layer of a hierarchical VAE from its top-down pass
    log_px_z, log_ratio = model.log_weight_terms(x, k)  # (k, B) each: log p(x|z), log p(z) - log q(z|x)
    loss = -obj.iwae_bound(log_px_z + beta * log_ratio).mean()
    return obj.LossTerms(loss=loss, recon=-log_px_z.mean(0), kl=-log_ratio.mean(0))
