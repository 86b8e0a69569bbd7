"""Honest likelihoods: the importance-sampled log p(x) of a VAE, in bounded memory for any k.

    log p(x) >= L_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x)   (Burda et al. 2015)

L_1 is the ELBO; L_k grows with k and tends to log p(x). With k = 1000 or 5000 it is
the number papers report as the test log-likelihood ("NLL" = -L_k, nats per image).

The likelihood term is a probability of the data actually observed:

- binarized images (dynamic / static training, every evaluation set binarized once
  with a fixed seed): the Bernoulli pmf, exact;
- 8-bit images (`data.binarize = none`) with the Gaussian decoder: the Gaussian
  discretized into 256 bins, so bits/dim compare with published 8-bit results;
- a Bernoulli decoder on grey pixels has no likelihood (binary cross-entropy on grey
  values is not a probability): `importance_sampled` refuses grey images for it.

Memory: the encoder runs once per image; the k latent samples are decoded in chunks
of at most `max_decode` images (512 on the CPU, 16,384 on a GPU), and the k log-weights
are folded into running log-sum-exps, so memory does not grow with k.

On a GPU the loop never waits for the host: the images cross to the device once, the
noise comes from a seeded generator on the device (`noise="auto"`), the running sums stay
there, and the results come back in one transfer at the end. `compile=True`
(`eval.compile`) runs the model's `log_weights` through torch.compile
(`vaelab.evaluation.compiled`, eager when compilation fails).

Every variational model provides `log_weights(x, S, generator, discrete, prior_layers, context)`
(S, B): the single-latent VAE and the hierarchical VAE, whose `prior_layers = j` gives the
L>j bound of Havtorn et al. 2021 (the j lowest layers from their conditional prior);
`llr_scores` turns L and L>j into their LLR>j out-of-distribution score.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from vaelab import objectives as obj
from vaelab.data import as_uint8_images, batches
from vaelab.errors import ConfigError
from vaelab.evaluation.compiled import log_weights_fn
from vaelab.models import Model, as_scorer, eval_mode, use_channels_last
from vaelab.models.base import ForeignScorer

DEFAULT_K = 1000
MAX_K = 100_000
MAX_DECODE = 512  # decoder inputs per call on CPU: bounds memory whatever k and the batch are, and keeps the
# decoder's activations in the caches (python bench/kernels.py compares it with 4096)
MAX_DECODE_CUDA = 16384  # a GPU wants large batches: k=1000 at B=64 is 4 calls of 250 x 64 codes
NLL_SEED = 2025
NOISE = ("auto", "device", "cpu")  # where the importance samples' noise is drawn (see importance_sampled)


@dataclass(frozen=True)
class ImportanceEstimate:
    """Per-image results of importance sampling with k samples, float64, shape (N,)."""

    log_px: torch.Tensor  # L_k: the importance-sampled lower bound on log p(x)
    elbo: torch.Tensor  # mean of the k log-weights: an unbiased estimate of the ELBO
    ess: torch.Tensor  # effective sample size (sum w)^2 / sum w^2, between 1 and k
    k: int
    prior_layers: int = 0  # > 0: the L>k bound (the k lowest layers from their conditional prior)


def _check_scorable(model: Model) -> None:
    if not model.variational:
        raise ConfigError("the importance-sampled likelihood needs a VAE; an autoencoder has no likelihood")


def _check_prior_layers(model: Model, prior_layers: int) -> None:
    layers = model.n_layers
    if prior_layers and layers == 1:
        raise ConfigError("L>k (prior_layers > 0) needs a hierarchical VAE (model.kind = 'hvae'); this model has "
                          "a single stochastic layer")
    if not 0 <= prior_layers <= layers:
        raise ConfigError(f"prior_layers must lie between 0 and the model's {layers} stochastic layers, "
                          f"got {prior_layers}")


@dataclass(frozen=True)
class _Plan:
    """Where the noise of one evaluation is drawn and how the k samples are split into calls."""

    generator_device: torch.device  # the device of the generator that the model draws its noise from
    max_decode: int  # decoder inputs per call (S * B)
    uniform: bool  # every call draws the same S (the last one's surplus dropped), the last image batch padded


def _plan(model: Model, device: torch.device, noise: str, max_decode: int | None) -> _Plan:
    """The noise and chunking of an evaluation on `device` (see `importance_sampled`'s `noise`).

    On the CPU (and with noise="cpu" anywhere) the samples come from one CPU generator in calls of
    max_decode // B samples, the last call taking the rest: the stream, and so every number, of vaelab's
    CPU evaluation. With the noise on the device, nothing crosses to the host inside the loop, and every call
    has one shape (S, B): a compiled `log_weights` is compiled once."""
    if noise not in NOISE:
        raise ConfigError(f"noise must be one of {', '.join(NOISE)}, got {noise!r}")
    cpu = torch.device("cpu")
    fast = MAX_DECODE_CUDA if device.type == "cuda" else MAX_DECODE
    # vaelab's models draw their noise on generator.device; a model of your own may call torch.randn with the
    # generator and no device, which a CUDA generator would refuse: "auto" gives it the CPU generator it has always had
    own = type(model).__module__.split(".")[0] == "vaelab" and not isinstance(model, ForeignScorer)
    if device.type == "cpu" or noise == "cpu" or (noise == "auto" and not own):
        cpu_numbers = noise == "cpu" and device.type != "cpu"  # the CPU's chunking too: the CPU's numbers
        return _Plan(cpu, max_decode or (MAX_DECODE if cpu_numbers else fast), uniform=False)
    return _Plan(device, max_decode or fast, uniform=True)


def _batch_sums(weights: Callable[..., torch.Tensor], model: Model, x: torch.Tensor, k: int,
                generator: torch.Generator, max_decode: int, uniform: bool,
                options: dict[str, Any]) -> torch.Tensor:
    """(3, B) float64 on x's device: L_k (or L>j), the ELBO and the ESS of each image of x (B, C, H, W).

    `weights(x, S, generator, context=..., **options)` -> (S, B) log-weights is called on chunks of S = max(1,
    max_decode // B) samples per image (uniform: k split into equal calls of at most that many), so at most
    max(B, max_decode) decoder inputs at once; they are folded into running log-sum-exps that stay on the
    device (no host synchronization in the loop). What does not depend on the samples (the encoder / the
    bottom-up pass) runs once per batch (`model.inference_context`)."""
    b = x.shape[0]
    context = model.inference_context(x)  # once per image, reused by all k samples
    chunk = max(1, max_decode // b)
    if uniform:
        calls = -(-k // chunk)
        chunk = -(-k // calls)  # e.g. k=1000, 16 per call: 63 calls of 16 (the last 8 surplus samples dropped)
    lse = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)  # log sum w
    lse2 = lse.clone()  # log sum w^2
    total = torch.zeros(b, dtype=torch.float64, device=x.device)  # sum log w
    for start in range(0, k, chunk):
        s = min(chunk, k - start)
        lw = weights(x, chunk if uniform else s, generator, context=context, **options)[:s]  # (S, B)
        lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        total += lw.sum(0)
    return torch.stack([lse - math.log(k), total / k, torch.exp(2 * lse - lse2)])


def _options(discrete: bool, prior_layers: int, prior_mode: bool) -> dict[str, Any]:
    extra = {"prior_mode": True} if prior_mode else {}  # hierarchical VAEs only
    return {"discrete": discrete, "prior_layers": prior_layers, **extra}


def _estimate(sums: torch.Tensor, k: int, prior_layers: int) -> ImportanceEstimate:
    """An `ImportanceEstimate` of (3, N) sums on the CPU: one transfer from the device for all of them."""
    log_px, elbo, ess = sums.cpu()
    return ImportanceEstimate(log_px=log_px, elbo=elbo, ess=ess, k=k, prior_layers=prior_layers)


@torch.no_grad()
def importance_sampled_batch(model: Model, x: torch.Tensor, k: int, generator: torch.Generator,
                             max_decode: int | None = None, discrete: bool = True,
                             prior_layers: int = 0, prior_mode: bool = False,
                             compile: bool = False) -> ImportanceEstimate:
    """L_k (or L>k_k with `prior_layers`), the ELBO and the ESS of each image of one batch x (B, C, H, W).

    The model's `log_weights` draws its noise from `generator` (on the generator's device) in chunks of at most
    max(1, max_decode // B) samples per image, so at most max(B, max_decode) decoder inputs at once; the weights
    are folded into running log-sum-exps on x's device. With a generator on the CPU the chunks are those of
    `importance_sampled` on the CPU; with one on the device they are equal-sized (see `_batch_sums`).
    `compile`: `log_weights` through torch.compile (`vaelab.evaluation.compiled`)."""
    if max_decode is None:
        max_decode = MAX_DECODE_CUDA if x.device.type == "cuda" else MAX_DECODE
    weights = log_weights_fn(model, compile, x.device.type)
    sums = _batch_sums(weights, model, x, k, generator, max_decode, generator.device.type != "cpu",
                       _options(discrete, prior_layers, prior_mode))
    return _estimate(sums, k, prior_layers)


def importance_sampled(model: Model, images: torch.Tensor, *, k: int = DEFAULT_K, batch_size: int = 64,
                       seed: int = NLL_SEED, device: torch.device | str = "cpu", discrete: bool = True,
                       max_decode: int | None = None, prior_layers: int = 0, prior_mode: bool = False,
                       progress: Callable[[int, int], None] | None = None, compile: bool = False,
                       noise: str = "auto") -> ImportanceEstimate:
    """L_k for every image of a uint8 (or float in [0, 1]) tensor (N, C, H, W), in order.

    Deterministic for a given seed, device and batch size. `discrete=True` scores the data with a probability
    (see the module docstring); False uses the training likelihood as it is (a density for the Gaussian
    decoder). `prior_layers = j > 0` (hierarchical VAEs only) gives Havtorn et al.'s L>j instead: the j lowest
    latent layers drawn from their conditional prior, their terms left out of the weights; with `prior_mode`
    those layers are set to the conditional prior's mean instead of drawn (the variant of Havtorn et al.'s code).

    `noise`: where the samples' noise is drawn. "auto" (default): on the evaluation device for vaelab's models
    (on a GPU: a seeded CUDA generator, chunks of up to 16,384 decoder inputs, no host synchronization until the
    one transfer of the results at the end; the same distribution as the CPU's stream but other draws, so each
    image's L_k differs from the CPU's by Monte-Carlo noise, the means by far less than their standard error),
    on the CPU for models of your own; "device": on the device for any model; "cpu": from the CPU generator in
    the CPU's chunks, so a GPU gives the CPU's numbers within float32 noise (slow: one host round trip per chunk).
    On the CPU all three are today's stream, unchanged.

    `compile` (`eval.compile`): the model's `log_weights` through torch.compile; the same numbers within
    float32 rounding; when compilation fails, one line says why and the evaluation runs eagerly.
    """
    if prior_mode and not prior_layers:
        raise ConfigError("prior_mode applies to the layers taken from the prior: set prior_layers >= 1")
    model = as_scorer(model)  # vaelab's models, yours, or any object with log_weights(x, k, generator)
    if not isinstance(images, torch.Tensor):  # a numpy array, a torch Dataset of images, PIL images
        images = as_uint8_images(images)
    _check_scorable(model)
    _check_prior_layers(model, prior_layers)
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"k (importance samples per image) must lie between 1 and {MAX_K:,}, got {k}")
    device = torch.device(device)
    plan = _plan(model, device, noise, max_decode)
    gen = torch.Generator(device=plan.generator_device).manual_seed(seed)
    data = images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)
    bernoulli = model.likelihood is not None and model.likelihood.name == "bernoulli"
    if discrete and bernoulli and not ((data == 0) | (data == 255)).all():
        raise ConfigError("the Bernoulli likelihood is a probability of binary images only, and these hold grey "
                          "values; binarize them once first (vaelab.data.eval_view / binarize_once)")
    if not len(data):
        empty = torch.zeros(0, dtype=torch.float64)
        return ImportanceEstimate(empty, empty, empty, k, prior_layers)
    # faster convolutions, the same numbers
    memory_format = torch.channels_last if use_channels_last(model) else torch.contiguous_format
    weights = log_weights_fn(model, compile, device.type)
    options = _options(discrete, prior_layers, prior_mode)
    parts: list[torch.Tensor] = []  # (3, B) per batch, on the device until the end
    done = 0
    with eval_mode(model):
        # the uint8 images cross to the device once, not batch by batch (each copy would wait for the device)
        for x in batches(data.to(device), batch_size, device=device, memory_format=memory_format):
            n = len(x)
            if plan.uniform and n < min(batch_size, len(data)):  # the last batch: padded to the others' shape
                x = torch.cat([x, x[:1].expand(batch_size - n, *x.shape[1:])]).contiguous(memory_format=memory_format)
            parts.append(_batch_sums(weights, model, x, k, gen, plan.max_decode, plan.uniform, options)[:, :n])
            done += n
            if progress is not None:
                progress(done, len(data))
    return _estimate(torch.cat(parts, 1), k, prior_layers)


@dataclass(frozen=True)
class LikelihoodRatio:
    """Havtorn et al. 2021's LLR>j per image (float64, (N,)): L - L>j, both with k importance samples.

    Higher = more out-of-distribution: the data are explained by the model's high-level layers
    alone much worse than by all layers."""

    llr: torch.Tensor
    log_px: torch.Tensor  # L: the ordinary importance-sampled bound
    log_px_gt: torch.Tensor  # L>j: the j lowest layers from their conditional prior
    k: int  # importance samples per image, the same for both bounds
    prior_layers: int  # j
    seed: int


def llr_scores(model: Model, images: torch.Tensor, *, prior_layers: int = 1, k: int = DEFAULT_K,
               batch_size: int = 64, seed: int = NLL_SEED, device: torch.device | str = "cpu",
               discrete: bool = True, max_decode: int | None = None,
               log_px: ImportanceEstimate | None = None, prior_mode: bool = False, compile: bool = False,
               noise: str = "auto") -> LikelihoodRatio:
    """LLR>j = L - L>j per image (Havtorn et al. 2021, "Hierarchical VAEs know what they don't know"), j =
    `prior_layers`, both bounds importance-sampled with the same k and seed (so they share their noise).

    `log_px`: the ordinary bound when the caller already has it, computed with the same k, seed and
    batch size (it is then not recomputed). `prior_mode`: the j layers are set to their conditional prior's
    mean instead of drawn from it (as in Havtorn et al.'s published code). Deterministic for a given seed.
    `compile` and `noise`: as in `importance_sampled`.
    """
    if prior_layers < 1:
        raise ConfigError(f"LLR>k needs k >= 1 latent layers taken from the prior, got {prior_layers}")
    if log_px is None:
        log_px = importance_sampled(model, images, k=k, batch_size=batch_size, seed=seed, device=device,
                                    discrete=discrete, max_decode=max_decode, compile=compile, noise=noise)
    elif log_px.k != k or log_px.prior_layers != 0 or len(log_px.log_px) != len(images):
        raise ValueError("log_px must be the ordinary bound (prior_layers 0) of the same images with the same k")
    gt = importance_sampled(model, images, k=k, batch_size=batch_size, seed=seed, device=device,
                            discrete=discrete, max_decode=max_decode, prior_layers=prior_layers,
                            prior_mode=prior_mode, compile=compile, noise=noise)
    return LikelihoodRatio(llr=log_px.log_px - gt.log_px, log_px=log_px.log_px, log_px_gt=gt.log_px, k=k,
                           prior_layers=prior_layers, seed=seed)


@dataclass(frozen=True)
class NllSummary:
    """The importance-sampled negative log-likelihood of a set of images, with its protocol."""

    n: int
    k: int
    nll: float  # -L_k, mean over images, nats per image
    stderr: float  # standard error of that mean over images
    bits_per_dim: float
    nelbo: float  # -ELBO from the same samples (k-sample average of -log w)
    ess: float  # mean effective sample size; far below k means q(z|x) is a poor proposal
    seconds: float
    images_per_s: float
    protocol: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(est: ImportanceEstimate, image_shape: tuple[int, ...], seconds: float = float("nan"),
              protocol: dict[str, Any] | None = None) -> NllSummary:
    """Means over images of an `ImportanceEstimate`, in nats per image and bits per dimension."""
    n = len(est.log_px)
    if n == 0:
        raise ValueError("no images to summarize")
    nll = -est.log_px
    dims = math.prod(image_shape)
    return NllSummary(
        n=n, k=est.k, nll=float(nll.mean()), stderr=float(nll.std() / math.sqrt(n)) if n > 1 else float("nan"),
        bits_per_dim=float(obj.bits_per_dim(float(nll.mean()), dims)), nelbo=float(-est.elbo.mean()),
        ess=float(est.ess.mean()), seconds=round(seconds, 3),
        images_per_s=round(n / seconds, 2) if seconds > 0 else float("nan"), protocol=dict(protocol or {}),
    )


def describe_prior(model: Model | None) -> str:
    """The prior p(z) of a model, in words, for the protocol record."""
    return "N(0, I)" if model is None else model.prior_description()


def likelihood_protocol(likelihood: str, binarize: str, binarize_seed: int, k: int, n: int,
                        seed: int = NLL_SEED, prior: str = "N(0, I)") -> dict[str, Any]:
    """What an NLL number means, stored beside it."""
    if binarize == "none":
        if likelihood == "bernoulli":
            raise ConfigError("a Bernoulli decoder trained on grey (unbinarized) pixels has no likelihood to "
                              "estimate; train with data.binarize=dynamic or model.likelihood=gaussian")
        data = "8-bit grey values (no binarization)"
        pixel = ("a mixture of logistics per pixel discretized into the 256 levels (Salimans et al. 2017)"
                 if likelihood == "logistic_mixture" else
                 "Gaussian p(x|z) discretized into 256 bins (a probability of the 8-bit data)")
    else:
        data = (f"binarized once with a fixed seed (data.binarize_seed={binarize_seed}, +1000 per split); "
                f"training binarization: {binarize}")
        pixel = "Bernoulli p(x|z) on the binary pixels"
    return {
        "estimator": f"importance-sampled bound L_k (Burda et al. 2015), k={k} samples from q(z|x) per image",
        "images": n, "k": k, "seed": seed, "units": "nats per image; bits/dim = nats / (pixels * ln 2)",
        "data": data, "pixel_likelihood": pixel, "prior": prior,
    }


def estimate_nll(model: Model, images: torch.Tensor, *, likelihood: str, binarize: str, binarize_seed: int,
                 k: int = DEFAULT_K, batch_size: int = 64, seed: int = NLL_SEED,
                 device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
                 compile: bool = False, noise: str = "auto") -> tuple[NllSummary, ImportanceEstimate]:
    """Importance-sampled NLL of already prepared images (binarized as the protocol says), with its protocol.
    `compile` (`eval.compile`) and `noise`: as in `importance_sampled`."""
    protocol = likelihood_protocol(likelihood, binarize, binarize_seed, k, len(images), seed, describe_prior(model))
    t0 = time.perf_counter()
    est = importance_sampled(model, images, k=k, batch_size=batch_size, seed=seed, device=device,
                             progress=progress, compile=compile, noise=noise)
    return summarize(est, tuple(images.shape[1:]), time.perf_counter() - t0, protocol), est


def format_nll_table(rows: dict[str, dict[str, Any] | NllSummary], title: str = "") -> str:
    """A table of NLL summaries: n, NLL, its standard error, -ELBO, bits/dim, ESS; the name column as wide as
    the longest name (a dataset such as folder:/data/my-images)."""
    w = max([16] + [len(name) + 2 for name in rows])
    head = f"{'':<{w}}{'n':>7}{'NLL':>10}{'±se':>7}{'-ELBO':>10}{'bits/dim':>10}{'ESS':>8}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, s in rows.items():
        d = s.as_dict() if isinstance(s, NllSummary) else s
        lines.append(f"{name:<{w}}{d['n']:>7}{d['nll']:10.2f}{d['stderr']:7.2f}{d['nelbo']:10.2f}"
                     f"{d['bits_per_dim']:10.4f}{d['ess']:8.1f}")
    return "\n".join(lines)
