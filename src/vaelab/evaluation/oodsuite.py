"""What `vaelab evaluate --on` adds to the likelihood scores: DoSE, Likelihood Regret, the typicality test,
and every score's AUROC, AUPRC and FPR at 95% TPR with bootstrap 95% intervals.

`extend_datasets` takes the record `vaelab.evaluation.unseen.evaluate_datasets` made (its importance-sampled
pass of every set is reused, not repeated) and adds, for the test split and each other set:

- the per-image statistics of `vaelab.evaluation.statistics` (the forward draws are all they add), kept in
  the evaluation's folder (statistics/NAME.safetensors);
- the DoSE score of every image, by the run's scorer (`vaelab.evaluation.oodrun.run_dose`: fitted on
  validation images only, stored in the run and reused), and which fraction of each set it flags at the
  99th percentile of held-out validation scores;
- with `regret`, Likelihood Regret (`vaelab.evaluation.regret`) of eval.regret_images images of each set;
- `ood_intervals`: for each other set and every score, AUROC, AUPRC and FPR at 95% TPR, each with its 95%
  percentile-bootstrap interval (eval.ood_resamples resamples), balanced sizes, OOD positive;
- `typicality`: the typicality test for batches of M = 1, 5, 10, 25 images, fitted on validation images;
- `dose_batches`: the same question asked of DoSE (the mean -log tail p-value of M images' DoSE scores
  among held-out validation scores, against its bootstrapped null), laid out as `typicality`;
- `timing`: the measured seconds per 1,000 images of each part.

The record keeps every key it had (`ood` still holds the FPR at 80% TPR and ROC points of the likelihood
scores), so older readers of evaluation.json keep working; `default_score` names the score to trust.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.data import DatasetSplits, spread_index
from vaelab.errors import CheckpointError
from vaelab.evaluation.intervals import detection_intervals
from vaelab.evaluation.ood import PUBLISHED_AUROC_2DP, balanced_index, roc_points
from vaelab.evaluation.oodrun import (DOSE, DOSE_DENSITY, FLAG_PERCENTILE, RunDose, dose_problem, model_tag, run_dose,
                                      statistics_kwargs)
from vaelab.evaluation.regret import likelihood_regret
from vaelab.evaluation.statistics import ImageStatistics, compute_statistics, statistics_protocol, validation_images
from vaelab.evaluation.typicality import score_batch_table, typicality_table
from vaelab.log import say

REGRET = "Likelihood Regret"
DOSE_DENSITY_NOTE = ("Morningstar et al. 2021 (DoSE): -log density of the image's statistics (log p(x), ELBO, "
                     "reconstruction, KL, the posterior's norms and per-unit means and log-variances, PNG code "
                     "length, and the orientation test's statistic when there is one) under a density fitted on "
                     "validation images only")
DOSE_NOTE = ("the default score: DoSE density joined with the orientation test (does the model prefer the image to "
             "its flips and rotations?) by Tippett's rule, -log of the smaller p-value among validation images; "
             "the density alone when the model resists no transform ({transforms})")
REGRET_NOTE = ("Xiao et al. 2020: the gain in L_k (k={k}) when a copy of the encoder is fine-tuned on the "
               "image alone ({steps} Adam steps, lr {lr}); {n} images per set")
PUBLISHED_2DP = PUBLISHED_AUROC_2DP  # Fashion-MNIST (in) -> MNIST (out), two decimals
NOT_SCORES = ("bits/dim",)  # per-image columns that are a scale of another score, not a score of their own

Log = Callable[[str], None]


@dataclass(frozen=True)
class OodOptions:
    """Where `vaelab evaluate --on` keeps what it computes, and whether it computes the slow score."""

    run_dir: Path | None = None  # the run: its DoSE scorer is kept in RUN/ood/ (None: not kept)
    stats_dir: Path | None = None  # per-image statistics of each set (None: not kept)
    regret: bool = False  # Likelihood Regret (slow)


def _file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40].strip("_") or "set"
    return f"{safe}-{zlib.crc32(name.encode('utf-8')):08x}.safetensors"


def set_statistics(model: Any, cfg: RunConfig, sets: list, estimates: dict[str, Any], folder: Path | None,
                   tag: str, device: torch.device | str, log: Log) -> tuple[dict[str, ImageStatistics], float]:
    """Statistics of each set, reusing its importance-sampled pass (and LLR>j); read from `folder` when it
    holds them for the same protocol and images, else computed and kept there. Returns them and the
    seconds the computing took."""
    kwargs = statistics_kwargs(cfg, tag)
    out: dict[str, ImageStatistics] = {}
    seconds = 0.0
    for s in sets:
        path = folder / _file_name(s.name) if folder is not None else None
        if path is not None and path.is_file():
            try:
                cached = ImageStatistics.load(path)
                if cached.split == s.name and cached.protocol == statistics_protocol(
                        model, s.images, samples=8, **kwargs):
                    out[s.name] = cached
                    continue
            except CheckpointError:
                pass
        est, ratios = estimates[s.name]
        t0 = time.perf_counter()
        out[s.name] = compute_statistics(model, s.images, split=s.name, device=device, estimate=est, ratios=ratios,
                                         **kwargs)
        seconds += time.perf_counter() - t0
        if path is not None:
            try:
                out[s.name].save(path)
            except OSError as exc:
                log(f"  note: could not keep the statistics of {s.name} ({exc})")
    return out, seconds


def _interval_entry(a: np.ndarray, b: np.ndarray, resamples: int, seed: int, roc: bool) -> dict[str, Any]:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]  # Likelihood Regret scores a subset: the others are NaN
    if not (len(a) and len(b)):
        return {"error": "no finite scores"}
    m = detection_intervals(a, b, resamples=resamples, seed=seed).as_dict()
    m.pop("bootstrap")
    if roc:
        i_in, i_out = balanced_index(len(a), len(b), seed)
        fpr, tpr = roc_points(a[i_in], b[i_out])
        m["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return m


def interval_tables(per_image: dict[str, dict[str, np.ndarray]], test: str, cfg: RunConfig,
                    with_roc: tuple[str, ...] = (DOSE, REGRET)) -> dict[str, dict[str, Any]]:
    """{dataset: {score: AUROC, AUPRC, FPR at 95% TPR with intervals}} against the test split, for every
    score of the per-image table; ROC points for the scores `with_roc` (the others have theirs in `ood`)."""
    ec = cfg.eval
    scores = [name for name in per_image[test] if name not in NOT_SCORES]
    return {name: {score: _interval_entry(per_image[test][score], values[score], ec.ood_resamples, ec.seed,
                                          score in with_roc)
                   for score in scores}
            for name, values in per_image.items() if name != test}


def typicality_record(validation: ImageStatistics, stats: dict[str, ImageStatistics], test: str,
                      cfg: RunConfig) -> dict[str, Any]:
    """The typicality test for each batch size M that the sets allow (fitted on validation statistics)."""
    ec = cfg.eval
    others = {name: s for name, s in stats.items() if name != test}
    return typicality_table(validation, stats[test], others, seed=ec.seed, resamples=ec.ood_resamples)


def dose_batch_record(dose: RunDose, per_image: dict[str, dict[str, np.ndarray]], test: str,
                      cfg: RunConfig) -> dict[str, Any]:
    """The DoSE batch test for each batch size M the sets allow: the mean -log tail p-value of M images' DoSE
    scores among the validation images' held-out scores (`RunDose.reference`), against its bootstrapped null."""
    ec = cfg.eval
    others = {name: scores[DOSE] for name, scores in per_image.items() if name != test}
    return score_batch_table(dose.reference, per_image[test][DOSE], others, seed=ec.seed,
                             resamples=ec.ood_resamples, score=DOSE)


def _regret(model: Any, cfg: RunConfig, sets: list, per_image: dict, device: torch.device | str,
            log: Log) -> dict[str, Any]:
    """Likelihood Regret of eval.regret_images images (a seeded choice) of each set; NaN for the others."""
    ec = cfg.eval
    seconds, n_total = 0.0, 0
    for i, s in enumerate(sets):
        pick = spread_index(len(s.images), ec.regret_images, ec.seed + 40 + i)
        log(f"  {s.name}: Likelihood Regret of {len(pick)} images ({ec.regret_steps} encoder steps each) ...")
        r = likelihood_regret(model, s.images[pick], steps=ec.regret_steps, lr=ec.regret_lr, k=ec.ood_k,
                              seed=ec.seed, batch_size=ec.nll_batch_size, device=device)
        values = np.full(len(s.images), np.nan)
        values[pick.numpy()] = r.regret
        per_image[s.name][REGRET] = values
        seconds, n_total = seconds + r.seconds, n_total + len(pick)
    return {"steps": ec.regret_steps, "lr": ec.regret_lr, "k": ec.ood_k, "images_per_set": ec.regret_images,
            "seconds": round(seconds, 2), "images": n_total}


def _validation_for_typicality(model: Any, cfg: RunConfig, splits: DatasetSplits, dose: RunDose | None,
                               tag: str, device: torch.device | str) -> ImageStatistics | None:
    if dose is not None:
        return dose.validation
    if len(splits.val) < 20:
        return None
    return compute_statistics(model, validation_images(cfg, splits), split="val", device=device,
                              **statistics_kwargs(cfg, tag))


def extend_datasets(model: Any, cfg: RunConfig, splits: DatasetSplits, sets: list, data: dict[str, Any],
                    per_image: dict[str, dict[str, np.ndarray]], estimates: dict[str, Any],
                    options: OodOptions, *, device: torch.device | str = "cpu", log: Log = say) -> None:
    """Add DoSE (and Likelihood Regret), the interval tables, the typicality test and the timing to the
    record `data` and the per-image scores (see the module docstring). `sets[0]` is the test split."""
    ec = cfg.eval
    tag = model_tag(model)
    test = sets[0].name
    notes: list[str] = []
    stats, stats_s = set_statistics(model, cfg, sets, estimates, options.stats_dir, tag, device, log)
    problem = dose_problem(cfg, splits)
    dose = None if problem else run_dose(model, cfg, splits, options.run_dir, tag=tag, device=device, log=log)
    score_s = 0.0
    if dose is not None:
        t0 = time.perf_counter()
        for name, s in stats.items():
            per_image[name][DOSE] = dose.score(s)
            per_image[name][DOSE_DENSITY] = dose.density_score(s)
        score_s = time.perf_counter() - t0
        threshold = dose.threshold()
        data["dose"] = {**dose.info, "flagged_at_99": {name: float((per_image[name][DOSE] >= threshold).mean())
                                                        for name in stats}}
    else:
        notes.append(problem)
    if options.regret:
        data["regret"] = _regret(model, cfg, sets, per_image, device, log)
        data["score_notes"][REGRET] = REGRET_NOTE.format(k=ec.ood_k, steps=ec.regret_steps, lr=ec.regret_lr,
                                                         n=ec.regret_images)
    if dose is not None:
        turns = dose.info["orientation"]["transforms"]
        data["score_notes"][DOSE] = DOSE_NOTE.format(
            transforms="orientation test over " + ", ".join(turns) if turns
            else "here: off, eval.dose_orientation = false" if not ec.dose_orientation
            else "here: the model resists none")
        data["score_notes"][DOSE_DENSITY] = DOSE_DENSITY_NOTE
    if dose is not None:
        data["dose_batches"] = dose_batch_record(dose, per_image, test, cfg)
    validation = _validation_for_typicality(model, cfg, splits, dose, tag, device)
    if validation is not None:
        data["typicality"] = typicality_record(validation, stats, test, cfg)
    else:
        notes.append("no typicality test: it needs at least 20 validation images")
    data["ood_intervals"] = interval_tables(per_image, test, cfg)
    data["default_score"] = DOSE if dose is not None else next(
        (s for s in per_image[test] if s.startswith("LLR>")), "complexity-corrected")
    data["intervals_protocol"] = {"resamples": ec.ood_resamples, "confidence": 0.95, "seed": ec.seed, "tpr": 0.95,
                                  "method": "percentile bootstrap, in- and out-of-distribution scores resampled "
                                            "independently; both sets first cut to the smaller one's size"}
    data["timing"] = _timing(data, stats, stats_s, score_s, dose)
    data["ood_notes"] = notes
    data["statistics_files"] = str(options.stats_dir) if options.stats_dir is not None else None


def _timing(data: dict[str, Any], stats: dict[str, ImageStatistics], stats_s: float, score_s: float,
            dose: RunDose | None) -> dict[str, Any]:
    """Measured seconds per 1,000 images of each part (the importance-sampled pass is the likelihood's)."""
    n = sum(len(s) for s in stats.values())
    pass_s = sum(r["nll"]["seconds"] for r in data["datasets"].values())
    per = {"importance-sampled pass (-log p(x), -ELBO, complexity-corrected)": pass_s,
           "DoSE: its statistics beyond that pass (forward draws, PNG)": stats_s, "DoSE: scoring": score_s}
    out: dict[str, Any] = {"images": n, "seconds_per_1000_images": {k: round(1000 * v / max(n, 1), 2)
                                                                      for k, v in per.items()}}
    if data.get("regret"):
        r = data["regret"]
        out["seconds_per_1000_images"][REGRET] = round(1000 * r["seconds"] / max(r["images"], 1), 1)
    if dose is not None:
        sec = dose.info["seconds"]
        out["once_per_model"] = {
            "validation statistics": "read from the run" if not dose.info["statistics_computed"]
            else f"{sec['validation_statistics']:.3g} s for {dose.info['validation_images']} images",
            "density choice and fit": "read from the run" if not dose.info["fitted"]
            else f"{sec['fit']:.3g} s ({dose.info['candidates']} candidates)",
            "held-out reference scores": f"{sec['held_out']:.3g} s"}
    return out


__all__ = ["DOSE", "FLAG_PERCENTILE", "OodOptions", "PUBLISHED_2DP", "REGRET", "dose_batch_record", "extend_datasets",
           "interval_tables", "set_statistics", "typicality_record"]
