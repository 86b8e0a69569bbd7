"""Inside the model: how good is q(z|x), and which latent dimensions are used.

Two diagnostics of a trained VAE, in the conventions of `vaelab.objectives`
(nats per image, summed over pixels and latent dimensions):

**Inference gaps** (Cremer, Li & Duvenaud 2018, "Inference suboptimality in
variational autoencoders", ICML). The gap between log p(x) and the ELBO of the
encoder's q(z|x) splits in two::

    log p(x) - ELBO(q_amortized)
      = [log p(x) - ELBO(q*)]                  approximation gap: q* is the best
                                               diagonal Gaussian for this image
      + [ELBO(q*) - ELBO(q_amortized)]         amortization gap: what one shared
                                               encoder loses against per-image fitting

q* is found by `refine_posterior`: gradient ascent on the single-image ELBO
from the encoder's output, model frozen. log p(x) itself is the caller's
estimate (an importance-weighted bound with many samples, `objectives.iwae_bound`):
it is a lower bound too, so a small negative approximation gap means "zero
within the estimator's error", not a bug.

**Posterior collapse.** A latent dimension the decoder ignores has q(z_d|x) =
p(z_d) for every x: its posterior mean does not vary with x and its KL is 0.
`active_units` counts the dimensions whose posterior mean does vary (Burda,
Grosse & Salakhutdinov 2015, "Importance weighted autoencoders", sec. 5.2),
`kl_per_dimension` says how many nats each dimension carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vaelab.data import batches
from vaelab.models import DiagonalGaussian, eval_mode
from vaelab.objectives import log_normal_diag

MAX_DECODER_INPUTS = 4096  # latent codes decoded at once when averaging over many samples
DEFAULT_ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: active when Cov_x(E_q[z_d|x]) > 0.01


def _require_variational(model: Any, what: str) -> None:
    if not getattr(model, "variational", False):
        raise ValueError(f"{what} needs a variational model (a VAE with q(z|x)); "
                         f"{type(model).__name__} has no posterior")


def _require_single_latent(model: Any, what: str) -> None:
    if getattr(model, "n_layers", 1) > 1:
        raise ValueError(f"{what} refines a single Gaussian q(z|x) and is implemented for single-latent VAEs only; "
                         f"{type(model).__name__} has {model.n_layers} stochastic layers")


# --------------------------------------------------------------------------- Monte-Carlo ELBO


def _standard_normal(shape: tuple[int, ...], like: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """eps ~ N(0, I) of `shape`, drawn like `objectives.reparameterize` draws it (on the generator's device)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _log_weights(model: Any, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                 eps: torch.Tensor, path_only: bool = False, discrete: bool = False) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) at z = mean + sigma * eps, shape (S, B).

    x (B, C, H, W); mean, logvar (B, D); eps (S, B, D). All S * B codes go through the
    decoder in one call: callers chunk `eps`. Differentiable in mean and logvar; with
    `path_only` the gradient flows through z alone, not through q's parameters in
    log q(z|x) ("sticking the landing", Roeder, Wu & Duvenaud 2017): the same values,
    an unbiased gradient of lower variance, exactly zero when q is the true posterior.
    `discrete`: log p(x|z) is the likelihood's `discrete_log_prob` (a probability of 8-bit
    pixels) instead of its `log_prob`.
    """
    s, b, d = eps.shape
    z = mean + torch.exp(0.5 * logvar) * eps  # (S, B, D), the reparameterization trick
    z_flat = z.reshape(s * b, d)  # (S*B, D)
    x_rep = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])  # (S*B, C, H, W)
    lik = model.likelihood
    log_px_z = (lik.discrete_log_prob if discrete else lik.log_prob)(x_rep, model.decode(z_flat))  # (S*B,)
    log_pz = model.log_prior(z_flat)  # (S*B,)
    if path_only:
        mean, logvar = mean.detach(), logvar.detach()
    log_qz = log_normal_diag(z_flat, mean.expand(s, b, d).reshape(s * b, d),
                             logvar.expand(s, b, d).reshape(s * b, d))  # (S*B,)
    return (log_px_z + log_pz - log_qz).view(s, b)


def _samples_per_chunk(batch: int) -> int:
    """Draws per decoder call so that at most max(B, MAX_DECODER_INPUTS) codes are decoded at once."""
    return max(1, max(batch, MAX_DECODER_INPUTS) // max(batch, 1))


def _elbo_fixed_eps(model: Any, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                    eps: torch.Tensor, discrete: bool = False) -> torch.Tensor:
    """The ELBO estimate (B,) averaged over the given draws eps (S, B, D), decoded in chunks."""
    k = _samples_per_chunk(x.shape[0])
    total = sum(_log_weights(model, x, mean, logvar, chunk, discrete=discrete).sum(0) for chunk in eps.split(k))
    return total / eps.shape[0]


def elbo_samples(model: Any, x: torch.Tensor, q: DiagonalGaussian, n_samples: int,
                 generator: torch.Generator | None = None, *, discrete: bool = False) -> torch.Tensor:
    """Monte-Carlo ELBO per image (B,): E_q[log p(x|z) + log N(z; 0, I) - log q(z|x)].

    The average over `n_samples` reparameterized draws z ~ q (Kingma & Welling 2014,
    eq. 6, the generic estimator, not the closed-form-KL one): any q given, not only the
    encoder's, which is what `refine_posterior` needs. Differentiable in q.mean and
    q.logvar. Draws are decoded in chunks of at most max(B, 4096) codes, so memory stays
    bounded for many samples (wrap the call in `torch.no_grad()` then, or the graph of
    every chunk is kept). The model is used as it is: put it in eval mode first
    (`models.eval_mode`). With a `generator` the estimate is repeatable.

    log p(x|z) is `model.likelihood.log_prob`, or with `discrete=True` its
    `discrete_log_prob` (the probability of 8-bit pixels, as `vaelab.evaluation.likelihood` uses by
    default; the same for a Bernoulli decoder, different for the Gaussian one).
    """
    _require_single_latent(model, "elbo_samples")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    return _mc_elbo(model, x, q.mean, q.logvar, n_samples, generator, discrete=discrete)


def _mc_elbo(model: Any, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, n_samples: int,
             generator: torch.Generator | None, path_only: bool = False, discrete: bool = False) -> torch.Tensor:
    """`elbo_samples` on mean, logvar (B, D); `path_only`, `discrete` as in `_log_weights`. (B,)"""
    b, d = mean.shape
    k = _samples_per_chunk(b)
    total = mean.new_zeros(b)
    for start in range(0, n_samples, k):
        s = min(k, n_samples - start)
        eps = _standard_normal((s, b, d), mean, generator)  # (s, B, D)
        total = total + _log_weights(model, x, mean, logvar, eps, path_only, discrete).sum(0)
    return total / n_samples


# --------------------------------------------------------------------------- per-image refinement


SELECT_SAMPLES = 32  # common draws on which the refined q is compared with the encoder's


def refine_posterior(model: Any, x: torch.Tensor, *, steps: int = 100, lr: float = 1e-2, n_samples: int = 1,
                     generator: torch.Generator | None = None, select_samples: int = SELECT_SAMPLES,
                     discrete: bool = False) -> DiagonalGaussian:
    """The best diagonal Gaussian q(z|x) for each image, found by gradient ascent on its ELBO.

    Starts at the encoder's q(z|x) and runs `steps` Adam steps (Kingma & Ba 2015, constant
    `lr`) on (mean, logvar) of every image of the batch at once: the per-image ELBOs are
    independent, so ascending their sum ascends each. Each step estimates the ELBO's
    gradient with `n_samples` fresh reparameterized draws (the local, per-image
    optimisation of q of Cremer, Li & Duvenaud 2018), through z only ("sticking the
    landing", Roeder, Wu & Duvenaud 2017: unbiased, and its noise vanishes as q reaches a
    posterior the family can hold, so the iterates settle instead of jittering). The model is put in
    eval mode and its parameters' `requires_grad` are switched off for the duration (both
    restored afterwards, also on error): its weights are not changed and their `.grad` is
    not touched.

    Which iterate is returned, per image: the last one, unless the start (the encoder's q)
    scores higher, both scored on the same `select_samples` draws (common random numbers,
    so the two scores differ by the two ELBOs rather than by the luck of their draws). A
    learning rate that diverges (or NaN) thus falls back to the encoder's q instead of
    ending below it; the guard costs two forward passes of `select_samples` draws. A
    best-so-far over *all* iterates (or checkpoints) was tried and rejected: selecting the
    maximum among many near-optimal iterates on any finite set of draws is biased (fresh
    draws reward the luckiest iterate; common draws reward the optimum of those particular
    draws, e.g. a logvar off by their sample variance), and it measurably ended *below* the
    last iterate (by up to 0.1-0.2 nats on an image, on a model whose last iterate was
    exact). Comparing only the start and the end can err only when the two are within
    that bias of each other.

    `discrete` picks the likelihood term as in `elbo_samples`. Returns the refined q, detached: mean, logvar (B, D).
    """
    _require_variational(model, "refine_posterior")
    _require_single_latent(model, "refine_posterior")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if select_samples < 1:
        raise ValueError(f"select_samples must be at least 1, got {select_samples}")
    x = x.detach()
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    fixed = model.fixed_prior()
    fixed.__enter__()
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            q0 = model.encode(x)
        start_mean, start_logvar = q0.mean.detach().clone(), q0.logvar.detach().clone()  # (B, D)
        if steps == 0:
            return DiagonalGaussian(start_mean, start_logvar)
        eps_select = _standard_normal((select_samples, *start_mean.shape), start_mean, generator)  # (S, B, D)
        mean = start_mean.clone().requires_grad_(True)  # (B, D)
        logvar = start_logvar.clone().requires_grad_(True)  # (B, D)
        optimizer = torch.optim.Adam([mean, logvar], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = -_mc_elbo(model, x, mean, logvar, n_samples, generator, True, discrete).sum()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            end_score = _elbo_fixed_eps(model, x, mean, logvar, eps_select, discrete)  # (B,)
            start_score = _elbo_fixed_eps(model, x, start_mean, start_logvar, eps_select, discrete)  # (B,)
            keep_start = ~(end_score >= start_score)[:, None]  # (B, 1); a NaN end keeps the start
            mean = torch.where(keep_start, start_mean, mean.detach())
            logvar = torch.where(keep_start, start_logvar, logvar.detach())
    finally:
        fixed.__exit__(None, None, None)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return DiagonalGaussian(mean, logvar)


@dataclass(frozen=True)
class InferenceGaps:
    """Mean ELBOs and gaps over `n` images, nats per image; a positive gap is nats lost.

    amortization_gap = elbo_refined - elbo_amortized (the encoder against per-image q*),
    approximation_gap = log_px - elbo_refined (the diagonal Gaussian family itself),
    inference_gap = log_px - elbo_amortized = their sum (Cremer, Li & Duvenaud 2018).
    """

    n: int
    elbo_amortized: float
    elbo_refined: float
    log_px: float  # the caller's estimate of log p(x) (e.g. an importance-weighted bound)
    steps: int  # refinement: Adam steps,
    lr: float  # its learning rate,
    train_samples: int  # draws per step,
    eval_samples: int  # and draws per image for both ELBOs compared (the same draws for both)
    discrete: bool = False  # log p(x|z) as a probability of 8-bit pixels (`discrete_log_prob`)

    @property
    def amortization_gap(self) -> float:
        return self.elbo_refined - self.elbo_amortized

    @property
    def approximation_gap(self) -> float:
        return self.log_px - self.elbo_refined

    @property
    def inference_gap(self) -> float:
        return self.log_px - self.elbo_amortized

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "amortization_gap": self.amortization_gap,
                "approximation_gap": self.approximation_gap, "inference_gap": self.inference_gap}


def _seeded(seed: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def inference_gaps(model: Any, x: torch.Tensor, log_px: torch.Tensor | float, *, steps: int = 100,
                   lr: float = 1e-2, train_samples: int = 1, eval_samples: int = 100,
                   generator: torch.Generator | None = None, discrete: bool = False) -> InferenceGaps:
    """Amortization and approximation gaps of a VAE on a batch x (Cremer, Li & Duvenaud 2018).

    `log_px`: the caller's estimate of log p(x), per image (B,) or already averaged (a
    scalar); an importance-weighted bound with many samples is the usual choice (the
    paper uses IWAE with 5000 samples and AIS). The encoder's q and the refined q
    (`refine_posterior` with `steps`, `lr`, `train_samples`) are both scored with
    `eval_samples` draws per image, and with the *same* draws eps (one seed, taken from
    `generator`, restarts the evaluation for each): the two ELBOs differ by their q,
    not by sampling luck. Repeatable with a seeded `generator`.

    The ELBOs must score x with the same likelihood term as `log_px`: with
    `vaelab.evaluation.likelihood.importance_sampled` (whose default is `discrete=True`) on a
    Gaussian decoder, pass `discrete=True` here too, or the gaps compare a density with
    a probability (for a Bernoulli decoder the two terms are the same).
    """
    _require_variational(model, "inference_gaps")
    _require_single_latent(model, "inference_gaps")
    if eval_samples < 1:
        raise ValueError(f"eval_samples must be at least 1, got {eval_samples}")
    b = x.shape[0]
    log_px = torch.as_tensor(log_px).detach()
    if log_px.dim() > 1 or (log_px.dim() == 1 and len(log_px) != b):
        raise ValueError(f"log_px must be one number per image ({b},) or a scalar, got shape {tuple(log_px.shape)}")
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    refined = refine_posterior(model, x, steps=steps, lr=lr, n_samples=train_samples,
                               generator=_seeded(seed + 1, device), discrete=discrete)
    with eval_mode(model):
        amortized = model.encode(x)
        elbo_a = elbo_samples(model, x, amortized, eval_samples, _seeded(seed, device), discrete=discrete)  # (B,)
        elbo_r = elbo_samples(model, x, refined, eval_samples, _seeded(seed, device), discrete=discrete)  # same eps
    return InferenceGaps(
        n=b, elbo_amortized=float(elbo_a.double().mean()), elbo_refined=float(elbo_r.double().mean()),
        log_px=float(log_px.double().mean()), steps=steps, lr=lr, train_samples=train_samples,
        eval_samples=eval_samples, discrete=discrete,
    )


# --------------------------------------------------------------------------- posterior collapse


@dataclass(frozen=True)
class ActiveUnits:
    """Which latent dimensions are used: Cov_x(E_q[z_d|x]) > threshold (Burda et al. 2015, sec. 5.2)."""

    variance: torch.Tensor  # (D,) variance over images of the posterior mean, float64
    active: torch.Tensor  # (D,) bool
    count: int
    threshold: float


def active_units(means: torch.Tensor, threshold: float = DEFAULT_ACTIVE_THRESHOLD) -> ActiveUnits:
    """Count the active latent units from the posterior means E_q[z|x] of N images, (N, D).

    A unit d is active when A_d = Cov_x(E_q[z_d|x]) > threshold (Burda, Grosse &
    Salakhutdinov 2015, sec. 5.2, threshold 0.01): its code moves with the image. A
    collapsed unit has q(z_d|x) = N(0, 1) for every x, hence A_d = 0. The variance is
    the population one (divided by N), in float64.
    """
    if means.dim() != 2:
        raise ValueError(f"active_units wants posterior means of shape (N, D), got {tuple(means.shape)}")
    if means.shape[0] < 2:
        raise ValueError("active_units needs the posterior means of at least 2 images")
    variance = means.double().var(dim=0, correction=0)  # (D,)
    active = variance > threshold  # (D,)
    return ActiveUnits(variance=variance, active=active, count=int(active.sum()), threshold=float(threshold))


def kl_per_dimension(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Data-averaged KL(q(z_d|x) || N(0, 1)) per latent dimension, (D,), in nats.

    0.5 * mean over images of (mean_d^2 + exp(logvar_d) - 1 - logvar_d) (Kingma & Welling
    2014, appendix B, one dimension at a time); it sums to the mean total KL of
    `objectives.kl_standard_normal`. mean, logvar: (N, D).
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)


def _float_batches(images: torch.Tensor, batch_size: int, device: torch.device | str):
    """Float batches in [0, 1]: uint8 images are scaled by 1/255, float images used as they are."""
    if images.dtype == torch.uint8:
        yield from batches(images, batch_size, device=device)
    else:
        for chunk in images.split(batch_size):
            yield chunk.to(device=device, dtype=torch.float32)


def collapse_report(model: Any, images: torch.Tensor, batch_size: int = 1000, device: torch.device | str = "cpu",
                    threshold: float = DEFAULT_ACTIVE_THRESHOLD) -> dict[str, Any]:
    """Active units and the KL carried by each latent dimension, on images (N, C, H, W).

    `images`: uint8 (scaled to [0, 1]) or float in [0, 1], already binarized as the
    evaluation protocol wants (`data.eval_view`); the model must be on `device`.
    Returns {"active_units", "latent_dim", "threshold", "variance" (per dimension, of
    the posterior mean over images), "kl_per_dim" (nats), "kl_total" (their sum: the mean
    KL per image), "n" (images)}. Raises ValueError for a non-variational model. For a hierarchical
    VAE, `encode` is the top layer's q(z_L|x), whose prior is N(0, I): the report is that layer's
    (`generalization.kl_per_layer` gives the KL of every layer).
    """
    _require_variational(model, "collapse_report")
    if images.dim() != 4 or len(images) < 2:
        raise ValueError(f"collapse_report wants at least 2 images (N, C, H, W), got {tuple(images.shape)}")
    means, logvars = [], []
    with eval_mode(model):
        for x in _float_batches(images, batch_size, device):
            q = model.encode(x)
            means.append(q.mean.double().cpu())  # (b, D)
            logvars.append(q.logvar.double().cpu())  # (b, D)
    mean, logvar = torch.cat(means), torch.cat(logvars)  # (N, D)
    units = active_units(mean, threshold)
    kl = kl_per_dimension(mean, logvar)  # (D,)
    return {
        "active_units": units.count, "latent_dim": int(mean.shape[1]), "threshold": units.threshold,
        "variance": units.variance.tolist(), "kl_per_dim": kl.tolist(), "kl_total": float(kl.sum()),
        "n": int(mean.shape[0]),
    }
