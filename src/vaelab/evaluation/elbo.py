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
from vaelab.models import Model, eval_mode, use_channels_last
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
    if model.likelihood.name != "bernoulli":
        # a Gaussian density on [0, 1]: no probability of the 8-bit data, so no bits/dim (the NLL has them)
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
    """A fixed-width table of loss summaries (nats per image)."""
    head = f"{'':<16}{'n':>7}{'-ELBO':>10}{'recon':>10}{'KL':>9}{'±se':>7}{'bits/dim':>10}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, s in rows:
        nelbo = f"{s.nelbo:10.2f}" if s.nelbo is not None else f"{'n/a':>10}"
        kl = f"{s.kl:9.2f}" if s.nelbo is not None else f"{'-':>9}"
        bpd = f"{s.bits_per_dim:10.4f}" if s.bits_per_dim is not None else f"{'-':>10}"
        lines.append(f"{name:<16}{s.n:>7}{nelbo}{s.recon:10.2f}{kl}{s.stderr:7.2f}{bpd}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sample fidelity

SAMPLE_FD_IMAGES = 10_000
SAMPLE_FD_DIMS = 64
MIN_FD_DIMS = 8  # below 80 test images no score is given


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mean1, cov1) and N(mean2, cov2).

    |m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2), with the matrix square roots taken
    by symmetric eigendecompositions (float64; tiny negative eigenvalues from rounding are clipped).
    """
    m1, m2, c1, c2 = (t.double() for t in (mean1, mean2, cov1, cov2))
    w, v = torch.linalg.eigh((c1 + c1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root1 @ c2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross)


@dataclass(frozen=True)
class PcaFeatures:
    """Projection of flattened images onto the top principal components of a reference set."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (D, k)

    @classmethod
    def fit(cls, images: torch.Tensor, k: int, seed: int = 0) -> "PcaFeatures":
        """Fit on float images (N, C, H, W) in [0, 1] (randomized SVD, reproducible with `seed`)."""
        x = images.flatten(1).double()
        k = min(k, x.shape[0] - 1, x.shape[1])
        mean = x.mean(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(x - mean, q=min(k + 10, *x.shape), center=False, niter=6)
        return cls(mean, v[:, :k])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1).double().cpu() - self.mean) @ self.components


def sample_fidelity(model: Model, splits: DatasetSplits, *, n: int = SAMPLE_FD_IMAGES, dims: int = SAMPLE_FD_DIMS,
                    seed: int = EVAL_SEED, batch_size: int = 1000) -> dict[str, Any]:
    """How close the model's samples are to the test images, as a Frechet distance in PCA space.

    Features: the top `dims` principal components of (up to n) training images, grey values in [0, 1]
    (fewer components when there are fewer than 10 images per component; no score below 80 images).
    `fd_samples_test`: n samples from the prior (decoded means) against n test images.
    `fd_train_test`: n real training images against the same test images: the value a perfect
    generator would get with this many images (the floor). Lower is better for both. A pixel-space
    proxy, cheap and deterministic; not the Inception-network FID of natural-image papers.
    """
    from vaelab.data import spread_index
    from vaelab.models.generate import sample

    n = min(n, len(splits.test), len(splits.train))
    dims = min(dims, n // 10)  # at least 10 images per feature dimension, or the covariances mean little
    if dims < MIN_FD_DIMS:
        return {}
    train = splits.train.images[spread_index(len(splits.train), n, seed)].float().div(255)
    test = splits.test.images[spread_index(len(splits.test), n, seed + 1)].float().div(255)
    features = PcaFeatures.fit(train, dims, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    samples = torch.cat([sample(model, min(batch_size, n - i), 1.0, gen).cpu() for i in range(0, n, batch_size)])
    test_stats = gaussian_stats(features(test))
    return {
        "fd_samples_test": frechet_distance(*gaussian_stats(features(samples)), *test_stats),
        "fd_train_test": frechet_distance(*gaussian_stats(features(train)), *test_stats),
        "images": n, "pca_dims": features.components.shape[1],
        "protocol": f"Frechet distance between Gaussians fitted to {n} images each, in the space of the top "
                    f"{features.components.shape[1]} principal components of {n} training images (grey values "
                    "in [0, 1]); samples are decoded means at temperature 1; fd_train_test is real training "
                    "images against the same test images (the floor); lower is better",
    }


# --------------------------------------------------------------------------- the whole evaluation


def nll_on_splits(model: Model, cfg: RunConfig, splits: DatasetSplits, device: torch.device | str = "cpu",
                  log=print) -> dict[str, Any] | None:
    """The importance-sampled NLL on equal-size random subsets of train, validation and test (or whole splits).

    None for an autoencoder, with eval.nll_images = 0, or when the likelihood is undefined (a
    Bernoulli decoder on grey pixels).
    """
    from vaelab.data import spread_index
    from vaelab.evaluation.likelihood import estimate_nll

    ec, dc = cfg.eval, cfg.data
    if not (ec.nll_images and model.variational):
        return None
    if dc.binarize == "none" and cfg.model.likelihood == "bernoulli":
        log("note: no NLL: a Bernoulli decoder on grey pixels has no likelihood (train with data.binarize=dynamic "
            "or model.likelihood=gaussian)")
        return None
    present = [name for name in SPLITS if len(splits.split(name))]
    n = min([ec.nll_images] + [len(splits.split(name)) for name in present])
    log(f"importance-sampled NLL: k={ec.nll_k} on {n} images of each split ({', '.join(present)}) ...")
    out: dict[str, Any] = {}
    for i, name in enumerate(present):
        split = splits.split(name)
        view = eval_view(split, name, dc.binarize, dc.binarize_seed)  # the whole split, then the subset:
        if n < len(split):                                             # the same bits as every evaluation
            view = view.subset(spread_index(len(split), n, ec.seed + i))
        summary, _ = estimate_nll(model, view.images, likelihood=cfg.model.likelihood, binarize=dc.binarize,
                                  binarize_seed=dc.binarize_seed, k=ec.nll_k, batch_size=ec.nll_batch_size,
                                  seed=ec.seed, device=device)
        log(f"  {name}: NLL {summary.nll:.2f} ± {summary.stderr:.2f} ({summary.images_per_s:.1f} images/s)")
        out[name] = summary.as_dict()
    gap = gap_se = None
    if "test" in out and "train" in out:
        gap = out["test"]["nll"] - out["train"]["nll"]
        gap_se = math.sqrt(out["test"]["stderr"] ** 2 + out["train"]["stderr"] ** 2) if n > 1 else float("nan")
    return {"k": ec.nll_k, "images": n, "splits": out, "gap_test_minus_train": gap, "gap_stderr": gap_se,
            "subsets": "whole splits" if all(n == len(splits.split(s)) for s in present)
            else f"a random {n} images of each split (seed eval.seed + split index), taken from the split binarized "
                 "once as a whole (the same bits as its -ELBO row)"}


def _per_image_csv(per_image: dict[str, dict[str, Any]]) -> bytes:
    """One row per image: dataset, index, and each per-image score."""
    import io

    buf = io.StringIO()
    names = list(next(iter(per_image.values())).keys())
    buf.write("dataset,index," + ",".join(n.replace(",", ";") for n in names) + "\n")
    for dataset, scores in per_image.items():
        for i in range(len(scores[names[0]])):
            buf.write(f"{dataset},{i}," + ",".join(f"{float(scores[n][i]):.6g}" for n in names) + "\n")
    return buf.getvalue().encode("utf-8")


def run_evaluation(run, cfg: RunConfig, splits: DatasetSplits, out_dir, json_path, *, on: list[str] = (),
                   checkpoint: str = "best", log=print) -> dict[str, Any]:
    """Everything `vaelab evaluate` computes, printed, and written to out_dir (JSON, report.md, plots, CSV)."""
    from pathlib import Path

    from vaelab.evaluation import unseen as gen
    from vaelab.errors import ConfigError
    from vaelab.fileio import atomic_write
    from vaelab.evaluation.likelihood import format_nll_table
    from vaelab.report.markdown import write_markdown
    from vaelab.runs.load import write_json

    model, device = run.model, run.device
    out_dir = Path(out_dir)
    if on and not model.variational:
        raise ConfigError("--on needs a VAE run: an autoencoder has no likelihood to compare datasets with")
    if on and not gen.has_likelihood(cfg):
        raise ConfigError("--on needs a likelihood, and a Bernoulli decoder trained on grey pixels has none; "
                          "train with data.binarize=dynamic or model.likelihood=gaussian")
    # every dataset is loaded before the long computations start: a typo costs seconds, not minutes
    eval_sets = gen.load_eval_sets(list(on), cfg, splits) if on else None
    if on:
        gen.llr_layers(cfg, model)  # a bad eval.llr_k fails now, not after the first dataset
    use_channels_last(model)  # faster convolutions on CPU; the numbers are the same
    title = (f"{run.path} ({cfg.model.kind}, {checkpoint} checkpoint, epoch {run.meta.get('epoch')}) "
             f"on {splits.name}")
    summaries = evaluate_splits(model, splits, cfg, device)
    gap = generalization_gap(summaries["train"], summaries["test"])
    log(format_table(list(summaries.items()), title=f"{title}, nats per image:"))
    log(f"generalization gap (test - train): {gap:.2f} ± {gap_stderr(summaries['train'], summaries['test']):.2f} "
        "nats per image")
    result: dict[str, Any] = {
        "run": str(run.path), "checkpoint": checkpoint, "epoch": run.meta.get("epoch"), "model": cfg.model.kind,
        "dataset": splits.name, "protocol": evaluation_protocol(cfg),
        "splits": {k: v.as_dict() for k, v in summaries.items()}, "gap_test_minus_train": gap,
        "gap_stderr": gap_stderr(summaries["train"], summaries["test"]),
        "eval_config": {k: getattr(cfg.eval, k) for k in cfg.eval.__dataclass_fields__},
    }
    nll = nll_on_splits(model, cfg, splits, device, log)
    if nll:
        result["nll"] = nll
        log(format_nll_table(nll["splits"], title=f"importance-sampled NLL (k={nll['k']}, {nll['images']} images "
                                                  "per split, nats per image):"))
        if nll["gap_test_minus_train"] is not None:
            log(f"generalization gap of the NLL (test - train): {nll['gap_test_minus_train']:.2f} ± "
                f"{nll['gap_stderr']:.2f} nats per image")
    result["samples"] = sample_fidelity(model, splits, batch_size=cfg.train.eval_batch_size)
    fd = result["samples"]
    if fd:
        log(f"samples: Frechet distance to {fd['images']} test images in PCA-{fd['pca_dims']} pixel space "
            f"{fd['fd_samples_test']:.2f} (real training images: {fd['fd_train_test']:.2f}; lower is better)")
    if model.variational:
        log("inside the model:")
        result["inside"] = gen.inside_the_model(model, cfg, splits, device=device, log=log)
        log(gen.format_inside(result["inside"]))
    per_image = None
    if on:
        log(f"unseen datasets ({', '.join(on)}):")
        data = gen.evaluate_datasets(model, cfg, eval_sets, device=device, log=log)
        per_image = data.pop("per_image")
        result["datasets_eval"] = data
        log(gen.format_dataset_tables(data, splits.name))
        result["anchors"] = gen.anchors(data) if splits.name == "fashion-mnist" else None
    curves = run.path / "images" / "curves.png"
    if curves.is_file():
        result["curves"] = str(Path("..") / "images" / "curves.png") if out_dir.parent == run.path else str(curves)
    plot_input = dict(result)
    if per_image is not None:
        plot_input["datasets_eval"] = {**result["datasets_eval"], "per_image": per_image}
    images = gen.write_plots(plot_input, out_dir)
    result["plots"] = images
    if per_image is not None:
        atomic_write(out_dir / "per_image_scores.csv", _per_image_csv(per_image), "the per-image scores")
    write_json(out_dir / "evaluation.json", result)
    report = write_markdown(result, out_dir, images)
    if json_path is not None:
        write_json(json_path, result)
    log(f"wrote {out_dir / 'evaluation.json'}, {report}" + (f" and {json_path}" if json_path else ""))
    return result
