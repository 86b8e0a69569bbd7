"""The evaluation of a trained model, as one function: `evaluate_run(...) -> RunEvaluation`.

Training (its final evaluation) and `vaelab evaluate` both call it, so both compute the same numbers the
same way: the -ELBO on every split and the generalization gap, the importance-sampled NLL on equal-size
subsets of the splits, the sample fidelity, and (when asked) what goes on inside the model and how it
scores unseen datasets. It computes and returns; the callers print (`format_*` below give the text) and
write files (`vaelab.report.evaluation`). Long computations report progress through `log`, vaelab's
logger by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vaelab.config import RunConfig
from vaelab.data import SPLITS, DatasetSplits, eval_view, spread_index
from vaelab.errors import ConfigError
from vaelab.evaluation import unseen
from vaelab.evaluation.elbo import (LossSummary, evaluate_splits, evaluation_protocol, format_table,
                                    gap_stderr, generalization_gap)
from vaelab.evaluation.frechet import sample_fidelity
from vaelab.evaluation.likelihood import estimate_nll, format_nll_table
from vaelab.evaluation.oodsuite import OodOptions, extend_datasets
from vaelab.evaluation.regret import check_regret_model
from vaelab.log import say
from vaelab.models import Model

Log = Callable[[str], None]


@dataclass
class RunEvaluation:
    """Everything `evaluate_run` measured; the optional parts are None when they were not asked for."""

    protocol: dict[str, Any]
    splits: dict[str, LossSummary]
    gap: float  # test - train of the -ELBO (the reconstruction loss for an autoencoder), nats per image
    gap_stderr: float
    nll: dict[str, Any] | None = None  # nll_on_splits's record
    samples: dict[str, Any] = field(default_factory=dict)  # sample_fidelity's record ({} below 80 images)
    inside: dict[str, Any] | None = None  # unseen.inside_the_model's record
    datasets: dict[str, Any] | None = None  # unseen.evaluate_datasets's record, without per_image
    per_image: dict[str, dict[str, Any]] | None = None  # per-image scores of each dataset (not in the JSON)

    def splits_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self.splits.items()}


def nll_on_splits(model: Model, cfg: RunConfig, splits: DatasetSplits, device: torch.device | str = "cpu",
                  log: Log = say) -> dict[str, Any] | None:
    """The importance-sampled NLL on equal-size random subsets of train, validation and test (or whole splits).

    None for an autoencoder, with eval.nll_images = 0, or when the likelihood is undefined (a
    Bernoulli decoder on grey pixels). `log` gets a progress line per split.
    """
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
        summary, est = estimate_nll(model, view.images, likelihood=cfg.model.likelihood, binarize=dc.binarize,
                                    binarize_seed=dc.binarize_seed, k=ec.nll_k, batch_size=ec.nll_batch_size,
                                    seed=ec.seed, device=device, compile=ec.compile)
        log(f"  {name}: NLL {summary.nll:.2f} ± {summary.stderr:.2f} ({summary.images_per_s:.1f} images/s)")
        # per image, NLL - (-ELBO) varies far less than either: the subset's offset to its whole split is
        # carried by the -ELBO, which evaluate_splits has for every image (see whole_split_estimates)
        diff = (est.elbo - est.log_px).double()
        out[name] = summary.as_dict() | {
            "nll_minus_nelbo_stderr": float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")}
    gap = gap_se = None
    if "test" in out and "train" in out:
        gap = out["test"]["nll"] - out["train"]["nll"]
        gap_se = math.sqrt(out["test"]["stderr"] ** 2 + out["train"]["stderr"] ** 2) if n > 1 else float("nan")
    return {"k": ec.nll_k, "images": n, "splits": out, "gap_test_minus_train": gap, "gap_stderr": gap_se,
            "subsets": "whole splits" if all(n == len(splits.split(s)) for s in present)
            else f"a random {n} images of each split (seed eval.seed + split index), taken from the split binarized "
                 "once as a whole (the same bits as its -ELBO row)"}


def whole_split_estimates(nll: dict[str, Any], whole: dict[str, Any]) -> None:
    """Add to each subset's NLL row the whole split's -ELBO and an estimate of the whole split's NLL: the
    subset's NLL minus its offset (the subset's -ELBO - the whole split's), a difference estimator whose error is
    that of NLL - (-ELBO) on the subset (small: they move together per image) and of the whole split's -ELBO.
    A subset found 6 nats harder than its split then no longer makes the headline 6 nats worse; the gap is
    computed on these estimates too (`gap_whole_estimate`)."""
    for name, row in nll["splits"].items():
        w = whole.get(name)
        if w is None or w.nelbo is None or "nll_minus_nelbo_stderr" not in row:
            continue
        offset = row["nelbo"] - w.nelbo
        se = math.sqrt(row["nll_minus_nelbo_stderr"] ** 2 + w.stderr ** 2)
        row.update(nelbo_whole=w.nelbo, whole_n=w.n, subset_offset=offset, nll_whole_estimate=row["nll"] - offset,
                   nll_whole_estimate_stderr=se)
    rows = nll["splits"]
    if all("nll_whole_estimate" in rows.get(s, {}) for s in ("train", "test")):
        nll["gap_whole_estimate"] = rows["test"]["nll_whole_estimate"] - rows["train"]["nll_whole_estimate"]
        nll["gap_whole_estimate_stderr"] = math.hypot(rows["test"]["nll_whole_estimate_stderr"],
                                                      rows["train"]["nll_whole_estimate_stderr"])


def check_unseen(model: Model, cfg: RunConfig, on: list[str] | tuple[str, ...], regret: bool = False) -> None:
    """Fail before any long computation when unseen datasets cannot be scored by this model (or, with
    `regret`, not by Likelihood Regret)."""
    if regret and not on:
        raise ConfigError("--regret scores the datasets of --on: name at least one, e.g. --on mnist --regret")
    if not on:
        return
    if not model.variational:
        raise ConfigError("--on needs a VAE run: an autoencoder has no likelihood to compare datasets with")
    if not unseen.has_likelihood(cfg):
        raise ConfigError("--on needs a likelihood, and a Bernoulli decoder trained on grey pixels has none; "
                          "train with data.binarize=dynamic or model.likelihood=gaussian")
    unseen.llr_layers(cfg, model)  # a bad eval.llr_k fails now, not after the first dataset
    if regret:
        check_regret_model(model)


def evaluate_run(model: Model, cfg: RunConfig, splits: DatasetSplits, device: torch.device | str = "cpu", *,
                 inside: bool = False, eval_sets: list[unseen.EvalSet] | None = None, log: Log = say,
                 on_stage: Callable[[str, RunEvaluation], None] | None = None,
                 ood: OodOptions | None = None) -> RunEvaluation:
    """Evaluate `model` (already holding the weights to evaluate) on the run's splits.

    `inside`: also the inference gaps and posterior collapse (variational models). `eval_sets`: unseen
    datasets (`unseen.load_eval_sets`, the test split first) to score and to detect as out-of-distribution.
    `on_stage(name, result)` is called as each part is done ("splits", "nll", "samples", "inside",
    "datasets"; "inside:start" and "datasets:start" before those two begin), so a caller can show each part
    at once; `log` gets the progress lines of the long parts. `ood`: with `eval_sets`, also DoSE (fitted on
    the validation split, kept in the run), the typicality test, optionally Likelihood Regret, and every
    score's AUROC, AUPRC and FPR at 95% TPR with bootstrap intervals (`vaelab.evaluation.oodsuite`).
    """
    stage = on_stage or (lambda name, result: None)
    summaries = evaluate_splits(model, splits, cfg, device)
    result = RunEvaluation(protocol=evaluation_protocol(cfg), splits=summaries,
                           gap=generalization_gap(summaries["train"], summaries["test"]),
                           gap_stderr=gap_stderr(summaries["train"], summaries["test"]))
    stage("splits", result)
    result.nll = nll_on_splits(model, cfg, splits, device, log)
    if result.nll is not None:
        whole_split_estimates(result.nll, summaries)
    stage("nll", result)
    result.samples = sample_fidelity(model, splits, batch_size=cfg.train.eval_batch_size)
    stage("samples", result)
    if inside and model.variational:
        stage("inside:start", result)
        result.inside = unseen.inside_the_model(model, cfg, splits, device=device, log=log)
        stage("inside", result)
    if eval_sets:
        stage("datasets:start", result)
        data = unseen.evaluate_datasets(model, cfg, eval_sets, device=device, log=log)
        result.per_image = data.pop("per_image")
        estimates = data.pop("estimates")
        if ood is not None:
            extend_datasets(model, cfg, splits, eval_sets, data, result.per_image, estimates, ood, device=device,
                            log=log)
        result.datasets = data
        stage("datasets", result)
    return result


# --------------------------------------------------------------------------- the text callers print


def format_splits(result: RunEvaluation, title: str, measure: str | None = None) -> list[str]:
    """The -ELBO table and the gap line (`measure` names what the gap is of, when the caller says so)."""
    of = f" {measure}" if measure else ""
    return [format_table(list(result.splits.items()), title=title),
            f"generalization gap (test - train{of}): {result.gap:.2f} ± {result.gap_stderr:.2f} nats per image"]


def format_nll(result: RunEvaluation) -> list[str]:
    nll = result.nll
    if not nll:
        return []
    lines = [format_nll_table(nll["splits"], title=f"importance-sampled NLL (k={nll['k']}, {nll['images']} images "
                                                   "per split, nats per image):")]
    if nll["gap_test_minus_train"] is not None:
        lines.append(f"generalization gap of the NLL (test - train): {nll['gap_test_minus_train']:.2f} ± "
                     f"{nll['gap_stderr']:.2f} nats per image")
    rows = {name: row for name, row in nll["splits"].items() if "nll_whole_estimate" in row}
    if rows and any(row["n"] < row["whole_n"] for row in rows.values()):
        lines.append("each subset against its whole split (its -ELBO is known for every image), nats per image:")
        for name, row in rows.items():
            lines.append(f"  {name}: subset -ELBO {row['nelbo']:.2f}, whole split {row['nelbo_whole']:.2f} "
                         f"({row['whole_n']} images): offset {row['subset_offset']:+.2f}; whole-split NLL "
                         f"{row['nll_whole_estimate']:.2f} ± {row['nll_whole_estimate_stderr']:.2f}")
        if "gap_whole_estimate" in nll:
            lines.append(f"  gap of these (test - train): {nll['gap_whole_estimate']:.2f} ± "
                         f"{nll['gap_whole_estimate_stderr']:.2f}")
    return lines


def format_samples(result: RunEvaluation) -> list[str]:
    fd = result.samples
    if not fd:
        return []
    return [f"samples: Frechet distance to {fd['images']} test images in PCA-{fd['pca_dims']} pixel space "
            f"{fd['fd_samples_test']:.2f} (real training images: {fd['fd_train_test']:.2f}; lower is better)"]


__all__ = ["RunEvaluation", "check_unseen", "evaluate_run", "format_nll", "format_samples", "format_splits",
           "nll_on_splits"]
