"""The lines a training run starts with: what is trained on what, how, and from where it resumes."""

from __future__ import annotations

from typing import Any

import torch

from vaelab.config import ModelConfig
from vaelab.models import Model


def article(phrase: str) -> str:
    """'a VAE ...', 'an AE ...', 'an HVAE ...' (the letters as they are spoken)."""
    return ("an " if phrase[:1] in "AEFHILMNORSX" or phrase[:1].lower() in "aeiou" else "a ") + phrase


def describe_model(model: Model, mc: ModelConfig, own: bool = False) -> str:
    """One line: the model's own description, and the prior and likelihood when not the defaults."""
    text = model.describe()
    if own:  # a model of the user's: config.model does not describe it
        return text
    extras = [f"prior {mc.prior}"] if model.variational and model.n_layers == 1 and mc.prior != "standard" else []
    if mc.likelihood != "bernoulli":
        extras.append(f"likelihood {mc.likelihood}")
    return text + (f" [{', '.join(extras)}]" if extras else "")


def announce(trainer: Any) -> None:
    """Log the start of a run (or of its resumed part)."""
    cfg, s, log = trainer.cfg, trainer.splits, trainer.log
    tc = cfg.train
    log(f"training {article(describe_model(trainer.model, cfg.model, trainer.own_model))} on {s.name} "
        f"{s.image_shape} from {s.source}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)}; "
        f"device {trainer.device}")
    log("losses are per image in nats, summed over pixels and latent dims: loss = recon + beta*KL")
    if tc.patience and trainer.val_images is None:
        log("note: train.patience is set but there is no validation split: early stopping is off")
    if trainer.group.active:
        log(f"data-parallel on {trainer.group.world} processes (torch.distributed, "
            f"{torch.distributed.get_backend()}): each takes its share of every batch of {tc.batch_size}")
    if trainer.resumed:
        log(f"resuming from {trainer.saved_at}, written to {trainer.paths.checkpoint('last')}")
        if trainer.resumed_processes not in (None, trainer.group.world):
            log(f"note: the checkpoint was written by {trainer.resumed_processes} process(es) and this run "
                f"has {trainer.group.world}; the batches and the steps stay the same")
