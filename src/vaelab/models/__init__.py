"""Models: build one from a `ModelConfig` and the image shape of the data."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

from vaelab.config import ModelConfig
from vaelab.models.base import Model, ModelBase, ModelOutput, as_scorer, check_model
from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.distributions import BernoulliLikelihood, DiagonalGaussian, GaussianLikelihood, make_likelihood
from vaelab.models.hvae import HVAE
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.vae import VAE, Autoencoder


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> Model:
    """A VAE, hierarchical VAE or autoencoder sized for images of shape (C, H, W)."""
    image_shape = tuple(int(s) for s in image_shape)
    if cfg.kind == "hvae":  # its own residual conv networks: model.arch, conv_channels, latent_dim do not apply
        return HVAE(image_shape, make_likelihood(cfg.likelihood, cfg.gaussian_std, cfg.mixture_components),
                    latents=cfg.hvae_latents,
                    channels=cfg.hvae_channels, blocks=cfg.hvae_blocks, dropout=cfg.dropout,
                    stages=cfg.hvae_stages, cell=cfg.hvae_cell)
    code_dim = 2 * cfg.latent_dim if cfg.kind == "vae" else cfg.latent_dim  # (mean, logvar) or the code
    likelihood = make_likelihood(cfg.likelihood, cfg.gaussian_std, cfg.mixture_components)
    c, h, w = image_shape
    out_shape = (c * likelihood.params_per_channel, h, w)  # the decoder outputs the likelihood's parameters
    if cfg.arch == "conv":
        encoder = ConvEncoder(image_shape, cfg.conv_channels, cfg.kernel_size, cfg.fc_hidden, code_dim, cfg.dropout)
        decoder = ConvDecoder(out_shape, cfg.conv_channels, cfg.kernel_size, cfg.fc_hidden, cfg.latent_dim,
                              cfg.dropout)
    else:
        encoder = MLPEncoder(image_shape, cfg.mlp_hidden, code_dim, cfg.dropout)
        decoder = MLPDecoder(out_shape, cfg.mlp_hidden, cfg.latent_dim, cfg.dropout)
    if cfg.kind == "ae":
        model = Autoencoder(encoder, decoder, likelihood, image_shape, cfg.latent_dim)
    else:
        model = VAE(encoder, decoder, likelihood, image_shape, cfg.latent_dim, prior=cfg.prior,
                    pseudo_inputs=cfg.pseudo_inputs)
    model.arch = cfg.arch
    return model


def use_channels_last(model: torch.nn.Module) -> bool:
    """Convert a model with convolutions to the channels-last memory format, in place (idempotent);
    True when it did (its inputs are then best given channels-last too).

    The numbers stay the same (up to float rounding); on CPU its convolutions run faster this way, and
    the conv encoder and decoder then also skip the copies between the formats. Models without
    convolutions are left as they are."""
    if isinstance(model, torch.nn.Module) and any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        return True
    return False


@contextmanager
def eval_mode(model: Model) -> Iterator[Model]:
    """Put `model` in eval mode, disable gradients and hold its prior fixed; restore its mode afterwards.
    (A scorer that is not an nn.Module, `ForeignScorer`, gets no eval(); a module that is not a Model, a
    feature classifier, no fixed prior.)"""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        # a vaelab model (or yours) holds its prior fixed; any other module (a classifier) only needs no_grad
        with torch.no_grad(), (model.fixed_prior() if isinstance(model, Model) else nullcontext()):
            yield model
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


__all__ = [
    "Autoencoder", "BernoulliLikelihood", "HVAE", "ConvDecoder", "ConvEncoder", "DiagonalGaussian",
    "GaussianLikelihood", "MLPDecoder", "MLPEncoder", "Model", "ModelBase",
    "ModelOutput", "VAE", "as_scorer", "build_model", "check_model", "eval_mode", "use_channels_last",
]
