"""Evaluation: per-image loss terms on a split, and the generalization gap.

Numbers follow the conventions of `vaelab.objectives`: nats per image, summed
over pixels and latent dimensions. The negative ELBO is estimated with one
reparameterized sample per image, drawn from a generator with a fixed seed, so
evaluating the same model on the same split always gives the same number.

The generalization gap is reported as `gap = test - train` of the negative
ELBO (equivalently train ELBO minus test ELBO): positive when the model fits
its training images better than images it never saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data import SPLITS, DatasetSplits, ImageSet, batches, eval_view
from vaelab.models import Model, eval_mode
from vaelab.objectives import beta_vae_loss, bits_per_dim

EVAL_SEED = 2024


@dataclass(frozen=True)
class LossSummary:
    """Mean per-image terms over a split (nats), with the standard error of the mean objective."""

    n: int
    loss: float  # recon + beta * KL
    recon: float
    kl: float
    nelbo: float | None  # recon + KL; None for the autoencoder, which has no ELBO
    stderr: float  # standard error over images of `nelbo` (or of `loss` for the autoencoder)
    bits_per_dim: float | None  # nelbo in bits per dimension

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_images(model: Model, images: ImageSet, *, beta: float = 1.0, batch_size: int = 1000,
                    device: torch.device | str = "cpu", seed: int = EVAL_SEED) -> LossSummary:
    """Loss terms of `model` on the (already binarized) images of a split."""
    gen = torch.Generator().manual_seed(seed)
    recon_all, kl_all = [], []
    with eval_mode(model):
        for x in batches(images.images, batch_size, device=device):
            out = model(x, generator=gen)
            terms = beta_vae_loss(model.likelihood.log_prob(x, out.x_params), out.kl, beta)
            recon_all.append(terms.recon.double().cpu())
            kl_all.append(terms.kl.double().cpu())
    recon, kl = torch.cat(recon_all), torch.cat(kl_all)
    objective = recon + kl if model.variational else recon
    n = len(recon)
    stderr = float(objective.std() / math.sqrt(n)) if n > 1 else float("nan")
    nelbo = float(objective.mean()) if model.variational else None
    dims = math.prod(images.image_shape)
    if model.likelihood.name not in ("bernoulli", "logistic_mixture"):
        # a Gaussian density on [0, 1]: no probability of the 8-bit data, so no bits/dim (the NLL has them);
        # the logistic mixture is a pmf over the 256 levels: its -ELBO bounds their bits/dim
        dims = 0
    return LossSummary(
        n=n, loss=float((recon + beta * kl).mean()), recon=float(recon.mean()), kl=float(kl.mean()),
        nelbo=nelbo, stderr=stderr,
        bits_per_dim=float(bits_per_dim(nelbo, dims)) if nelbo is not None and dims else None,
    )


def evaluate_splits(model: Model, splits: DatasetSplits, cfg: RunConfig,
                    device: torch.device | str = "cpu") -> dict[str, LossSummary]:
    """Loss terms on every non-empty split, each binarized once as the protocol says."""
    dc = cfg.data
    out = {}
    for name in SPLITS:
        split = splits.split(name)
        if len(split):
            view = eval_view(split, name, dc.binarize, dc.binarize_seed)
            out[name] = evaluate_images(model, view, beta=cfg.train.beta, batch_size=cfg.train.eval_batch_size,
                                        device=device)
    return out


def evaluation_protocol(cfg: RunConfig) -> dict[str, Any]:
    """How the evaluation numbers were computed, stored beside them."""
    dc = cfg.data
    return {
        "estimator": "negative ELBO, one reparameterized sample per image (fixed seed)",
        "units": "nats per image, summed over pixels and latent dimensions",
        "train_binarization": dc.binarize,
        "eval_binarization": "none" if dc.binarize == "none" else f"static, seed {dc.binarize_seed} (+1000 per split)",
        "beta": cfg.train.beta,
        **({"caveat": "Bernoulli likelihood on grey (unbinarized) pixels: the -ELBO is a cross-entropy, "
                      "not a bound on a log-likelihood"}
           if dc.binarize == "none" and cfg.model.likelihood == "bernoulli" else {}),
        **({"density": "Gaussian likelihood: the -ELBO uses the Gaussian density on [0, 1], not a probability of "
                       "the 8-bit data (no bits/dim); the importance-sampled NLL uses the Gaussian discretized "
                       "into 256 bins, a probability"}
           if cfg.model.likelihood == "gaussian" else {}),
    }


def generalization_gap(train: LossSummary, test: LossSummary) -> float:
    """test - train of the negative ELBO (reconstruction loss for the AE), in nats per image."""
    a = test.nelbo if test.nelbo is not None else test.loss
    b = train.nelbo if train.nelbo is not None else train.loss
    return a - b


def gap_stderr(a: LossSummary, b: LossSummary) -> float:
    """Standard error of the difference of two means over independent image sets."""
    return math.sqrt(a.stderr ** 2 + b.stderr ** 2)


def format_table(rows: list[tuple[str, LossSummary]], title: str = "") -> str:
    """A table of loss summaries (nats per image); the name column as wide as the longest name."""
    w = max([16] + [len(name) + 2 for name, _ in rows])
    head = f"{'':<{w}}{'n':>7}{'-ELBO':>10}{'recon':>10}{'KL':>9}{'±se':>7}{'bits/dim':>10}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, s in rows:
        nelbo = f"{s.nelbo:10.2f}" if s.nelbo is not None else f"{'n/a':>10}"
        kl = f"{s.kl:9.2f}" if s.nelbo is not None else f"{'-':>9}"
        bpd = f"{s.bits_per_dim:10.4f}" if s.bits_per_dim is not None else f"{'-':>10}"
        lines.append(f"{name:<{w}}{s.n:>7}{nelbo}{s.recon:10.2f}{kl}{s.stderr:7.2f}{bpd}")
    return "\n".join(lines)
