"""The generalization suite behind `vaelab evaluate`: likelihoods on unseen datasets, OOD detection, inside the model.

For a trained VAE and a list of dataset specs it computes, with one protocol for every set:

- the importance-sampled log p(x) (and the ELBO from the same samples) of images of the
  run's test split and of each other dataset, as a table and histograms;
- out-of-distribution detection of each other dataset against the test split, balanced
  sizes, with three scores: -log p(x), -ELBO, and Serra et al.'s complexity-corrected
  score -log2 p(x) - L(x) (L: the PNG code length of the image in bits), each with AUROC,
  AUPRC and FPR at 80% TPR (the OOD set is the positive class);
- inside the model: the amortization and approximation gaps (Cremer et al. 2018) and
  posterior collapse (active units, KL per latent dimension).

Dataset specs: `test`, `train`, `val` (the run's own splits), `fashion-mnist`, `mnist`
(optionally `mnist@DIR` to say where its IDX files are), `digits` (resized to the run's
size), `folder:PATH`, and the synthetic shifts `noise`, `constant`, `inverted`, `flipped`
(the last two transform the run's own test images). Every set is converted to the run's
image shape and, when the run binarizes, binarized once with a fixed seed, exactly like the
test split.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from vaelab.log import say
from vaelab.config import RunConfig
from vaelab.data import batches, binarize_once, eval_view, load_raw, spread_index, to_float
from vaelab.data.shifts import SHIFTS, make_shift
from vaelab.data.splits import DatasetSplits, to_channels, to_size
from vaelab.errors import ConfigError, DataError
from vaelab.evaluation.detect import scores_from_estimate
from vaelab.evaluation.likelihood import describe_prior, estimate_nll, format_nll_table, likelihood_protocol, llr_scores
from vaelab.evaluation.posterior import collapse_report, inference_gaps
from vaelab.models import Model, eval_mode
from vaelab.evaluation.ood import (PUBLISHED_AUROC, PUBLISHED_AUROC_2DP, balanced_index, detection_metrics,
                  png_code_length_bits, roc_points)

OWN_SPLITS = ("test", "train", "val")
SCORES = ("-log p(x)", "-ELBO", "complexity-corrected")
SCORE_NOTES = {
    "-log p(x)": "the negative importance-sampled log-likelihood (nats)",
    "-ELBO": "the negative ELBO, averaged over the same k samples (nats)",
    "complexity-corrected": "Serra et al. 2020: -log2 p(x) - L(x), L(x) = PNG code length of the image in bits "
                            "(1-bit PNG for binarized images)",
}
LLR_NOTE = ("Havtorn et al. 2021: L - L>{j}, the importance-sampled bound minus the same bound with the {j} "
            "lowest latent layer(s) {how} (nats; both with k={k} samples, one seed)")
LLR_HOW = {"mode": "set to their conditional prior's mean", "sample": "drawn from their conditional prior "
                                                                       "(eval.llr_mode = sample)"}
DEFAULT_LLR_K = 1  # latent layers taken from the prior by the LLR>k score (eval.llr_k)


def llr_layers(cfg: RunConfig, model: Model | None = None) -> int | None:
    """How many of the lowest layers the LLR>k score takes from the prior (None: the model has no LLR score).

    `eval.llr_k` when the config has that key, else 1; at most the model's number of layers minus one."""
    layers = getattr(model, "n_layers", None) if model is not None else cfg.model.latent_layers
    if not layers or layers < 2:
        return None
    k = int(getattr(cfg.eval, "llr_k", DEFAULT_LLR_K))
    if not 1 <= k < layers:
        raise ConfigError(f"eval.llr_k must lie between 1 and {layers - 1} (the model has {layers} latent layers), "
                        f"got {k}")
    return k


ANCHOR_NOTE = ("published, Fashion-MNIST (in) vs MNIST (out): a hierarchical VAE's log p(x) 0.268 and its LLR>1 "
               "0.984 (Havtorn et al. 2021), Ren et al. 2019's likelihood ratio 0.994")


@dataclass(frozen=True)
class EvalSet:
    """Images of one dataset, ready for the model (uint8, the run's shape, binarized as the protocol says)."""

    name: str
    images: torch.Tensor
    source: str
    available: int  # how many images the source had before the random subset was drawn


def split_spec(spec: str) -> tuple[str, str | None]:
    """`mnist@DIR` -> ("mnist", "DIR"); anything else -> (spec, None)."""
    if "@" in spec and not spec.startswith("folder:"):
        name, where = spec.split("@", 1)
        if not where:
            raise DataError(f"dataset {spec!r}: give a directory after @, e.g. mnist@~/data/mnist")
        return name, where
    return spec, None


def _stable_offset(name: str) -> int:
    return 5000 + zlib.crc32(name.encode("utf-8")) % 100_000


def has_likelihood(cfg: RunConfig) -> bool:
    """False for a Bernoulli decoder trained on grey pixels: its cross-entropy is no probability of anything."""
    return not (cfg.data.binarize == "none" and cfg.model.likelihood == "bernoulli")


def _prepare(images: torch.Tensor, cfg: RunConfig, image_shape: tuple[int, int, int], name: str) -> torch.Tensor:
    """To the run's channels and size, then binarized once (seeded by the name) if the run binarizes.

    Constant images are thresholded at 128 instead: sampling each pixel would turn one grey level into
    salt-and-pepper noise, which is not what the shift is meant to probe.
    """
    c, h, w = image_shape
    images = to_channels(images, c)
    if images.shape[2:] != (h, w):
        if h != w:
            raise DataError(f"dataset {name}: cannot resize to the run's non-square {h}x{w} images")
        images = to_size(images, h, cfg.data.resize)
    if cfg.data.binarize != "none":
        if name == "constant":
            return (images >= 128).to(torch.uint8) * 255
        images = binarize_once(images, cfg.data.binarize_seed + _stable_offset(name))
    return images


def load_eval_set(spec: str, cfg: RunConfig, splits: DatasetSplits, n: int, seed: int) -> EvalSet:
    """The images a dataset spec names: at most n, a seeded random choice, prepared like the test split."""
    name, where = split_spec(spec)
    if where is not None and (name in OWN_SPLITS or name in SHIFTS or name == "digits"):
        raise DataError(f"dataset {spec!r}: NAME@DIR only applies to datasets read from files (mnist, "
                        f"fashion-mnist, cifar10, svhn, ...: `vaelab datasets`); {name} needs no directory")
    if name == cfg.data.dataset:
        raise DataError(f"{name} is the run's own dataset: use test (or train, val) to score its splits")
    if name in OWN_SPLITS:
        split = splits.split(name)
        if not len(split):
            raise DataError(f"the run's {name} split is empty; leave it out of --on")
        pick = spread_index(len(split), n, seed)
        view = eval_view(split, name, cfg.data.binarize, cfg.data.binarize_seed).subset(pick)
        return EvalSet(name, view.images, f"{splits.name} {name} split", len(split))
    if name in SHIFTS:
        images = make_shift(name, splits.test.images, n, seed)
        what = {"inverted": "the test split inverted (255 - x)", "flipped": "the test split upside down",
                "noise": "uniform noise", "constant": "constant images"}[name]
        return EvalSet(name, _prepare(images, cfg, splits.image_shape, name), what, len(images))
    c, h, w = splits.image_shape
    raw = load_raw(name, data_dir=where, download=cfg.data.download, image_size=h if h == w else None,
                   channels=c, test_only=True)  # celeba: decode its test partition only
    # the dataset's own test images when it has them (fewer duplicates of anything seen anywhere)
    images = raw.test_images if raw.test_images is not None and len(raw.test_images) else raw.train_images
    if not len(images):
        raise DataError(f"dataset {spec} has no images")
    available = len(images)
    images = images[spread_index(available, n, seed)]
    return EvalSet(name, _prepare(images, cfg, splits.image_shape, name), raw.source, available)


def _score_names(scores: dict[str, np.ndarray]) -> list[str]:
    """The OOD scores of a per-image table: the three of every VAE, then LLR>k where computed."""
    return list(SCORES) + [name for name in scores if name.startswith("LLR>")]


def _ood_metrics(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    n_in, n_out = len(scores_in[SCORES[0]]), len(scores_out[SCORES[0]])
    i_in, i_out = balanced_index(n_in, n_out, seed)
    out: dict[str, Any] = {}
    for score in _score_names(scores_in):
        a, b = scores_in[score][i_in], scores_out[score][i_out]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            out[score] = {"error": "non-finite scores"}
            continue
        m = detection_metrics(a, b)
        fpr, tpr = roc_points(a, b)
        out[score] = {**m.as_dict(), "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
    return out


def load_eval_sets(specs: list[str], cfg: RunConfig, splits: DatasetSplits) -> list[EvalSet]:
    """The test split first, then each named dataset (a name given twice gets a #2, #3 ... suffix)."""
    ec = cfg.eval
    specs = ["test"] + [s for s in specs if s != "test"]
    sets: list[EvalSet] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        s = load_eval_set(spec, cfg, splits, ec.ood_images, ec.seed + 10 + i)
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s = EvalSet(f"{s.name}#{seen[s.name]}", s.images, s.source, s.available)
        sets.append(s)
    return sets


def evaluate_datasets(model: Model, cfg: RunConfig, sets: list[EvalSet], *,
                      device: torch.device | str = "cpu", log: Callable[[str], None] = say) -> dict[str, Any]:
    """Likelihoods of the test split (sets[0]) and each other set, and OOD detection against the test split."""
    ec = cfg.eval
    binary = cfg.data.binarize != "none"
    results: dict[str, Any] = {}
    per_image: dict[str, dict[str, np.ndarray]] = {}
    estimates: dict[str, Any] = {}  # each set's importance-sampled pass (and LLR>j), for its statistics
    j = llr_layers(cfg, model)  # hierarchical VAEs: LLR>j beside the three scores
    llr_name = f"LLR>{j}" if j else None
    mode = ec.llr_mode  # how L>j takes the j lowest layers from their prior: its mean, or a draw
    for s in sets:
        log(f"  {s.name}: {len(s.images)} images from {s.source}, k={ec.ood_k}"
            + (f", and L>{j} for {llr_name}" if j else "") + " ...")
        summary, est = estimate_nll(model, s.images, likelihood=cfg.model.likelihood, binarize=cfg.data.binarize,
                                    binarize_seed=cfg.data.binarize_seed, k=ec.ood_k, batch_size=ec.nll_batch_size,
                                    seed=ec.seed, device=device, compile=ec.compile)
        bits = png_code_length_bits(s.images, binary=binary and s.images.shape[1] == 1)
        per_image[s.name] = scores_from_estimate(est, s.images, binary, bits)
        results[s.name] = {"source": s.source, "available": s.available, "nll": summary.as_dict(),
                           "png_bits_mean": float(bits.mean())}
        estimates[s.name] = (est, {})
        if j:
            ratio = llr_scores(model, s.images, prior_layers=j, k=ec.ood_k, batch_size=ec.nll_batch_size,
                               seed=ec.seed, device=device, log_px=est, prior_mode=mode == "mode",
                               compile=ec.compile)
            per_image[s.name][llr_name] = ratio.llr.numpy()
            estimates[s.name][1][j] = ratio
            results[s.name]["llr"] = {"prior_layers": j, "k": ec.ood_k, "mode": mode, "mean": float(ratio.llr.mean()),
                                      "log_px_gt_mean": float(ratio.log_px_gt.mean())}
    ood = {name: _ood_metrics(per_image[sets[0].name], per_image[name], ec.seed)
           for name in per_image if name != sets[0].name}
    notes = dict(SCORE_NOTES)
    if j:
        notes[llr_name] = LLR_NOTE.format(j=j, k=ec.ood_k, how=LLR_HOW[mode])
    return {"k": ec.ood_k, "images_per_set": ec.ood_images, "datasets": results, "ood": ood,
            "model": cfg.model.kind, "llr_k": j,
            "score_notes": notes, "per_image": per_image, "estimates": estimates,
            "protocol": likelihood_protocol(cfg.model.likelihood, cfg.data.binarize, cfg.data.binarize_seed,
                                            ec.ood_k, ec.ood_images, ec.seed, describe_prior(model))
            | {"images": f"at most {ec.ood_images} per dataset, a seeded random choice; OOD metrics on "
                         "balanced sizes (the smaller of the two sets)",
               "data": ("the run's test split binarized once as a whole (data.binarize_seed + 2000); other "
                        "datasets converted to the run's channels and size and binarized once with a seed derived "
                        "from data.binarize_seed and the dataset's name; constant images thresholded at 128"
                        if binary else "8-bit grey values (no binarization), converted to the run's channels "
                                       "and size"),
               "complexity": ("L(x): PNG file size in bits, " + ("1-bit PNG of the binary image"
                                                                  if binary else "8-bit PNG")
                              + " (Pillow, compress_level 9)")}}


def format_dataset_tables(result: dict[str, Any], trained_on: str) -> str:
    """The likelihood table per dataset and the OOD table per dataset and score."""
    nll_rows = {name: r["nll"] for name, r in result["datasets"].items()}
    lines = [format_nll_table(nll_rows, title=f"log-likelihood per dataset (model trained on {trained_on}; "
                                              f"k={result['k']}; nats per image; higher NLL = less likely):")]
    if result["ood"] and "ood_intervals" in result:  # every score, with bootstrap intervals
        from vaelab.evaluation.oodformat import format_intervals

        lines += [""] + format_intervals(result, trained_on)
        if trained_on == "fashion-mnist" and "mnist" in result["ood"]:
            lines.append(ANCHOR_NOTE)
        lines.append("scores: " + "; ".join(f"{k}: {v}" for k, v in result.get("score_notes", SCORE_NOTES).items()))
    elif result["ood"]:
        lines += ["", f"out-of-distribution detection against the {trained_on} test split (OOD = positive; "
                      "balanced sizes):"]
        dw = max([14] + [len(name) + 2 for name in result["ood"]])  # each column as wide as its longest cell
        sw = max([22] + [len(score) + 2 for scores in result["ood"].values() for score in scores])
        head = f"{'':<{dw}}{'score':<{sw}}{'AUROC':>8}{'AUPRC':>8}{'FPR80':>8}{'n':>7}"
        lines += [head, "-" * len(head)]
        for name, scores in result["ood"].items():
            dataset = name
            for score, m in scores.items():
                if "error" in m:
                    lines.append(f"{name:<{dw}}{score:<{sw}}{m['error']:>24}")
                    continue
                published = ""
                if score == "LLR>1" and dataset == "mnist" and trained_on == "fashion-mnist":
                    published = f"   (published LLR>1, Havtorn et al. 2021: {PUBLISHED_AUROC['hvae_llr_gt1']:.3f})"
                lines.append(f"{name:<{dw}}{score:<{sw}}{m['auroc']:8.3f}{m['auprc']:8.3f}{m['fpr_at_80_tpr']:8.3f}"
                             f"{m['n_in']:>7}{published}")
                name = ""
        if trained_on == "fashion-mnist" and "mnist" in result["ood"]:
            lines.append(f"{ANCHOR_NOTE}")
        lines.append("scores: " + "; ".join(f"{k}: {v}" for k, v in result.get("score_notes", SCORE_NOTES).items()))
    return "\n".join(lines)


def anchors(result: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Our AUROCs for Fashion-MNIST vs MNIST beside the published ones (None when that pair was not run)."""
    mnist = result.get("ood", {}).get("mnist")
    if not mnist:
        return None
    model = {"hvae": "HVAE"}.get(result.get("model", "vae"), "VAE")
    rows = [{"method": f"vaelab {model}, {score}", "auroc": m.get("auroc")} for score, m in mnist.items()]
    extra = result.get("ood_intervals", {}).get("mnist", {})  # DoSE, Likelihood Regret: with their intervals
    rows += [{"method": f"vaelab {model}, {score}", "auroc": m["auroc"]["value"], "auroc_interval": m["auroc"]}
             for score, m in extra.items() if score not in mnist and "auroc" in m]
    rows += [{"method": method, "auroc": value, "decimals": 2} for method, value in PUBLISHED_AUROC_2DP.items()]
    rows += [{"method": "HVAE log p(x) (Havtorn et al. 2021)", "auroc": PUBLISHED_AUROC["hvae_log_px"]},
             {"method": "HVAE LLR>1 (Havtorn et al. 2021)", "auroc": PUBLISHED_AUROC["hvae_llr_gt1"]},
             {"method": "likelihood ratio (Ren et al. 2019)", "auroc": PUBLISHED_AUROC["ren2019_likelihood_ratio"]}]
    return rows


# --------------------------------------------------------------------------- inside the model


def inside_the_model(model: Model, cfg: RunConfig, splits: DatasetSplits, *, device: torch.device | str = "cpu",
                     log: Callable[[str], None] = say) -> dict[str, Any]:
    """Inference gaps on a few test images and posterior collapse on the test split."""
    ec, dc = cfg.eval, cfg.data
    test = eval_view(splits.test, "test", dc.binarize, dc.binarize_seed)
    out: dict[str, Any] = {}
    collapse_images = test.images[spread_index(len(test), 10_000, ec.seed + 20)]
    hierarchical = model.n_layers > 1
    if len(collapse_images) >= 2:
        out["collapse"] = collapse_report(model, collapse_images, batch_size=cfg.train.eval_batch_size,
                                          device=device)
        out["collapse"]["images"] = len(collapse_images)
        if hierarchical:
            out["collapse"]["layer"] = f"top (z_{model.n_layers}; its prior is N(0, I))"
            out["collapse"]["kl_per_layer"] = kl_per_layer(model, collapse_images, cfg.train.eval_batch_size,
                                                           device, seed=ec.seed + 23)
    else:
        log("  note: no active-unit count: it needs at least 2 test images")
    if ec.gap_images and hierarchical:
        note = ("no inference gaps: posterior refinement (Cremer et al. 2018) is implemented for single-latent "
                "VAEs only; a hierarchical VAE's q has one conditional Gaussian per layer")
        out["gaps_skipped"] = note  # printed by format_inside
    elif ec.gap_images and not has_likelihood(cfg):
        log("  note: no inference gaps: a Bernoulli decoder on grey pixels has no likelihood to compare with")
    elif ec.gap_images and len(test):
        x8 = test.images[spread_index(len(test), ec.gap_images, ec.seed + 21)]
        log(f"  inference gaps: {len(x8)} test images, q(z|x) refined by {ec.refine_steps} Adam steps, "
            f"log p(x) with k={ec.nll_k} ...")
        summary, est = estimate_nll(model, x8, likelihood=cfg.model.likelihood, binarize=dc.binarize,
                                    binarize_seed=dc.binarize_seed, k=ec.nll_k, batch_size=ec.nll_batch_size,
                                    seed=ec.seed, device=device, compile=ec.compile)
        x = to_float(x8, device)
        gaps = inference_gaps(model, x, est.log_px.to(device), steps=ec.refine_steps, lr=ec.refine_lr,
                              train_samples=1, eval_samples=100, discrete=True,
                              generator=torch.Generator().manual_seed(ec.seed + 22))
        out["gaps"] = gaps.as_dict()
    return out


@torch.no_grad()
def kl_per_layer(model: Model, images: torch.Tensor, batch_size: int, device: torch.device | str,
                 seed: int) -> list[float]:
    """Mean KL(q(z_l | x, z_>l) || p(z_l | z_>l)) of each stochastic layer of a hierarchical VAE (nats per image,
    bottom to top), one posterior sample per image from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    total, n = None, 0
    with eval_mode(model):
        for x in batches(images, batch_size, device=device):
            kl = model(x, generator=gen).kl_layers.double().sum(0).cpu()
            total = kl if total is None else total + kl
            n += len(x)
    return (total / max(n, 1)).tolist()


def format_inside(inside: dict[str, Any]) -> str:
    lines = []
    c = inside.get("collapse")
    if c:
        where = f" of the {c['layer']} layer" if c.get("layer") else ""
        lines.append(f"posterior collapse: {c['active_units']} of {c['latent_dim']} latent units{where} active "
                     f"(Cov_x E[z|x] > {c['threshold']}); KL {c['kl_total']:.2f} nats per image")
        if c.get("kl_per_layer"):
            lines.append("KL per stochastic layer, bottom to top (nats per image): "
                         + ", ".join(f"z_{i + 1} {v:.2f}" for i, v in enumerate(c["kl_per_layer"])))
    if inside.get("gaps_skipped"):
        lines.append(f"note: {inside['gaps_skipped']}")
    g = inside.get("gaps")
    if g:
        lines.append(f"inference gaps on {g['n']} test images (Cremer et al. 2018), nats per image: "
                     f"ELBO amortized {g['elbo_amortized']:.2f}, refined {g['elbo_refined']:.2f}, "
                     f"log p(x) {g['log_px']:.2f}; amortization gap {g['amortization_gap']:.2f}, "
                     f"approximation gap {g['approximation_gap']:.2f}")
    return "\n".join(lines)
