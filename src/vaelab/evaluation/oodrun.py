"""A run's DoSE scorer, fitted once on its validation images and kept in the run: `run_dose(...)`.

`vaelab evaluate --on` and `vaelab serve` both score images with the DoSE density of
`vaelab.evaluation.dose`, fitted on the per-image statistics (`vaelab.evaluation.statistics`) of a seeded
slice of the run's validation split (eval.dose_images images; never the test split, never an OOD set). The
first of them to need it computes and stores, inside the run directory:

    RUN/ood/statistics-val-TAG.safetensors   the validation slice's statistics (safetensors)
    RUN/ood/dose-KEY.json, .safetensors      the fitted scorer (JSON and safetensors, no pickle)
    RUN/ood/dose-KEY-reference.safetensors   the validation images' held-out scores (`RunDose.density_reference`)

TAG is a hash of the model's weights, KEY a hash of the statistics' protocol (the weights, k, seed, the
images) and the fit's seed: another checkpoint, another protocol or other validation images get their own
files, and a stale file is never reused. A run evaluated before DoSE existed simply has no such files yet:
they are made on demand. A run directory that cannot be written is scored all the same (nothing cached).

`fit_run_dose` fits the same scorer in memory from validation statistics a caller already has (the
benchmarks that vary the statistics), reading and keeping nothing.

`RunDose.density_reference` holds each validation image's DoSE density score under a density that did
not see it (`dose.held_out_scores`, 5 folds).

When the model resists some of the grid's flips and rotations (vaelab.evaluation.orientation), the
density's columns include the orientation statistic itself (`ORIENTATION`, the smallest preference over
those transforms): an in-distribution image with a weak preference is then less unusual to the density
too, so the two tests below disagree less often on in-distribution images and their union raises fewer
false alarms (BENCHMARKS.md: on 13 of 18 development sets of the Fashion-MNIST model it raised the AUROC
by 0.001-0.010 and lowered none; on sets sealed until it was fixed it gained up to 0.002).

The run's score, `RunDose.score` (the "DoSE" of every table), joins two tests with Tippett's rule
(vaelab.evaluation.tails): the DoSE density's upper-tail p-value among those held-out scores, and
the orientation test's lower-tail p-value among the validation images' smallest preference for their own
orientation, over the transforms the model resists on validation images. A model with no such transform
(an autoencoder, or data with no way up) is scored by the density alone. `RunDose.reference`, the same
score of each validation image, is the yardstick a new image is compared with (its percentile, the
threshold at the 99th percentile). `RunDose.density_score` is the density alone ("DoSE density").
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.data import DatasetSplits
from vaelab.errors import CheckpointError, ConfigError
from vaelab.evaluation.dose import DoseScorer, fit_dose, held_out_scores, images_needed
from vaelab.evaluation.orientation import PREFERENCE_RATE, orientation_statistic, orientation_transforms
from vaelab.evaluation.tails import combined_score, held_out_tail_log_p, tail_log_p
from vaelab.evaluation.statistics import (VALIDATION, ImageStatistics, compute_statistics, statistics_protocol,
                                          validation_images)
from vaelab.fileio import atomic_write
from vaelab.log import say

OOD_DIR = "ood"  # inside the run directory
DOSE = "DoSE"  # the score's name in every table: the density of statistics joined with the orientation test
DOSE_DENSITY = "DoSE density"  # the density alone (Morningstar et al. 2021)
FLAG_PERCENTILE = 99.0  # an image is flagged at or above this percentile of in-distribution images (fixed a priori)
HELD_OUT_FOLDS = 5
ORIENTATION = "orientation"  # the density's column that holds the orientation statistic

Log = Callable[[str], None]


def with_orientation(stats: ImageStatistics, transforms: tuple[str, ...]) -> ImageStatistics:
    """`stats` with the column ORIENTATION (the smallest preference over `transforms`) added; unchanged when
    there are no transforms."""
    if not transforms:
        return stats
    columns = {**stats.columns, ORIENTATION: orientation_statistic(stats.columns, transforms)}
    return ImageStatistics(stats.split, columns, stats.protocol)


def model_tag(model: Any) -> str:
    """16 hex digits of the SHA-256 of the model's weights and buffers: what the cached files belong to."""
    h = hashlib.sha256()
    state = model.state_dict() if isinstance(model, torch.nn.Module) else {}
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def statistics_kwargs(cfg: RunConfig, tag: str) -> dict[str, Any]:
    """The run's statistics protocol (`compute_statistics` keywords): k = eval.ood_k, seed = eval.seed, batch
    size = eval.nll_batch_size, LLR>j as eval.llr_mode says (j = eval.llr_k alone, or every j with eval.dose_llr
    = "all"), the model's weights as its tag, the orientation preferences when eval.dose_orientation."""
    ec = cfg.eval
    return {"k": ec.ood_k, "seed": ec.seed, "batch_size": ec.nll_batch_size, "llr_mode": ec.llr_mode,
            "llr_layers": None if ec.dose_llr == "all" else [ec.llr_k], "binary": cfg.data.binarize != "none",
            "model_tag": tag, "orientation": ec.dose_orientation}


def dose_problem(cfg: RunConfig, splits: DatasetSplits) -> str | None:
    """Why this run cannot have a DoSE score (one line, with the number of images needed), or None."""
    n = len(splits.val)
    if n == 0:
        return ("no DoSE score: it is fitted on the validation split, and this run has none (train with "
                "data.val_size > 0)")
    need = images_needed()
    if min(n, cfg.eval.dose_images) < need:
        return (f"no DoSE score: it needs at least {need} validation images to fit and choose its density, "
                f"this run's validation split has {n}")
    return None


@dataclass
class RunDose:
    """The run's fitted scorer, the validation statistics it was fitted on, their held-out density scores
    and the orientation test's transforms (see the module docstring)."""

    scorer: DoseScorer
    validation: ImageStatistics
    density_reference: np.ndarray  # held-out DoSE density score of each validation image
    info: dict[str, Any] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()  # the orientation test's preference columns; () = the density alone

    def __post_init__(self) -> None:
        self.orientation_reference = (orientation_statistic(self.validation.columns, self.transforms)
                                      if self.transforms else None)
        # each validation image's log p-value under the density and the orientation test, among the others
        self.reference_log_p = ([held_out_tail_log_p(self.density_reference),
                                 held_out_tail_log_p(-self.orientation_reference)] if self.transforms else [])
        self.reference = combined_score(self.reference_log_p) if self.transforms else self.density_reference

    def density_score(self, stats: ImageStatistics) -> np.ndarray:
        """The DoSE density's score of each image: -log density (higher = more out-of-distribution)."""
        return self.scorer.score(with_orientation(stats, self.transforms))

    def tests_log_p(self, stats: ImageStatistics) -> list[np.ndarray]:
        """Each image's log p-value under the two tests `score` joins: the density's upper tail among the
        held-out validation scores, the orientation statistic's lower tail among the validation images'.
        Only for a run with an orientation test (`transforms` not empty)."""
        moved = with_orientation(stats, self.transforms)  # the statistic once, for the density and the test
        low = -moved.columns[ORIENTATION]  # high = no preferred way up
        return [tail_log_p(self.density_reference, self.scorer.score(moved)),
                tail_log_p(-self.orientation_reference, low)]

    def score(self, stats: ImageStatistics) -> np.ndarray:
        """The run's OOD score of each image (higher = more out-of-distribution): -log of the smaller of the
        density's and the orientation test's p-values, or the density score when there is no orientation test."""
        if not self.transforms:
            return self.density_score(stats)
        return combined_score(self.tests_log_p(stats))

    def threshold(self, percentile: float = FLAG_PERCENTILE) -> float:
        """The score at `percentile` of the validation images' scores: flagged at or above it."""
        return float(np.percentile(self.reference, percentile))


def fit_run_dose(validation: ImageStatistics, seed: int) -> RunDose:
    """A DoSE scorer fitted in memory on validation statistics, as `run_dose` fits one (the orientation test's
    transforms chosen on them, the density's family and size by held-out likelihood, the held-out reference
    scores), with nothing read from or kept in a run directory."""
    transforms = orientation_transforms(validation.columns)
    fit_on = with_orientation(validation, transforms)
    scorer = fit_dose(fit_on, features=fit_on.features(), seed=seed)
    return RunDose(scorer, validation, held_out_scores(scorer, fit_on, folds=HELD_OUT_FOLDS, seed=seed),
                   transforms=transforms)


def _scorer_key(validation: ImageStatistics, seed: int, features: tuple[str, ...]) -> str:
    # the columns are named only when they include ORIENTATION: a run without an orientation test keeps the
    # key (and the stored scorer) it had before that column existed; one with it gets a new key, never the old fit
    text = json.dumps({"protocol": validation.protocol, "seed": seed, "split": validation.split,
                       **({"features": list(features)} if ORIENTATION in features else {})}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _saved(write: Callable[[], Any], what: str, log: Log) -> bool:
    """Run `write`; a run directory that cannot be written costs a note, not the evaluation."""
    try:
        write()
        return True
    except OSError as exc:
        log(f"  note: could not keep {what} in the run ({exc}); it is recomputed next time")
        return False


def _validation_statistics(model: Any, cfg: RunConfig, splits: DatasetSplits, folder: Path | None, tag: str,
                           device: torch.device | str, log: Log) -> tuple[ImageStatistics, bool]:
    """The validation slice's statistics, from the run's cache when it holds them; (stats, computed)."""
    kwargs = statistics_kwargs(cfg, tag)
    images = validation_images(cfg, splits)
    path = folder / f"statistics-val-{tag}.safetensors" if folder is not None else None
    if path is not None and path.is_file():
        try:
            cached = ImageStatistics.load(path)
        except CheckpointError:
            cached = None
        expected = statistics_protocol(model, images, samples=8, **kwargs)
        if cached is not None and cached.split == VALIDATION and cached.protocol == expected:
            return cached, False
    log(f"  DoSE: statistics of {len(images)} validation images (k={cfg.eval.ood_k}; once per model, kept in "
        f"{folder if folder is not None else 'memory'}) ...")
    stats = compute_statistics(model, images, split=VALIDATION, device=device, log=log, **kwargs)
    if path is not None:
        _saved(lambda: stats.save(path), "the validation statistics", log)
    return stats, True


def _held_out_reference(scorer: DoseScorer, validation: ImageStatistics, folder: Path | None, name: str, seed: int,
                        fitted: bool, log: Log) -> np.ndarray:
    """The held-out DoSE score of each validation image: read from RUN/ood/NAME-reference.safetensors when the
    scorer was read from the run and the file holds one score per validation image, else computed (5 refits)
    and kept there. It is a function of the scorer's choice and the validation statistics, which NAME names."""
    from safetensors.numpy import load_file, save

    path = folder / f"{name}-reference.safetensors" if folder is not None else None
    if path is not None and not fitted and path.is_file():
        try:
            stored = load_file(str(path)).get("reference")
            if stored is not None and stored.shape == (len(validation),):
                return stored
        except Exception:  # safetensors' SafetensorError for a damaged file: computed again below
            pass
    reference = held_out_scores(scorer, validation, folds=HELD_OUT_FOLDS, seed=seed)
    if path is not None:
        _saved(lambda: atomic_write(path, save({"reference": np.ascontiguousarray(reference)}),
                                    "the held-out DoSE scores"), "the held-out DoSE scores", log)
    return reference


def run_dose(model: Any, cfg: RunConfig, splits: DatasetSplits, run_dir: str | Path | None, *,
             tag: str | None = None, device: torch.device | str = "cpu", log: Log = say) -> RunDose:
    """The run's DoSE scorer: read from RUN/ood/ when it was fitted before with this protocol, else fitted
    on the validation slice's statistics (computed, or read from RUN/ood/) and stored there. `run_dir` None:
    nothing is read or kept. ConfigError (one line, with the number needed) when the run has too few
    validation images (`dose_problem`)."""
    problem = dose_problem(cfg, splits)
    if problem:
        raise ConfigError(problem)
    tag = tag or model_tag(model)
    folder = Path(run_dir) / OOD_DIR if run_dir is not None else None
    t0 = time.perf_counter()
    validation, computed = _validation_statistics(model, cfg, splits, folder, tag, device, log)
    stats_s = time.perf_counter() - t0
    seed = cfg.eval.seed
    transforms = orientation_transforms(validation.columns)
    fit_on = with_orientation(validation, transforms)
    features = fit_on.features()
    name = f"dose-{_scorer_key(validation, seed, features)}"
    scorer, fit_s, fitted = None, 0.0, False
    if folder is not None and (folder / f"{name}.json").is_file():
        try:
            scorer = DoseScorer.load(folder, name)
        except (CheckpointError, KeyError, ValueError) as exc:
            log(f"  note: the stored DoSE scorer {folder / name}.json is unreadable ({exc}); fitting it again")
    if scorer is None:
        t0 = time.perf_counter()
        scorer = fit_dose(fit_on, features=features, seed=seed)
        fit_s, fitted = time.perf_counter() - t0, True
        if folder is not None:
            _saved(lambda: scorer.save(folder, name), "the DoSE scorer", log)
    t0 = time.perf_counter()
    reference = _held_out_reference(scorer, fit_on, folder, name, seed, fitted, log)
    held_s = time.perf_counter() - t0
    info = {"density": scorer.describe(), "family": scorer.family, "chosen": scorer.selection.get("chosen"),
            "features": list(scorer.features), "validation_images": len(validation),
            "candidates": len(scorer.selection.get("candidates", [])),
            "scorer": str(folder / f"{name}.json") if folder is not None else None,
            "statistics_computed": computed, "fitted": fitted, "seconds": {
                "validation_statistics": round(stats_s, 3), "fit": round(fit_s, 3), "held_out": round(held_s, 3)},
            "fit": "on statistics of a seeded slice of the validation split only; family and size chosen by "
                   "held-out likelihood on that slice"}
    info["orientation"] = {"transforms": [t.removeprefix("prefer_") for t in transforms],
                           "rule": "the grid symmetries whose image the model scores below the original's in at "
                                   f"least {PREFERENCE_RATE:.0%} of the validation images"}
    run = RunDose(scorer, validation, reference, info, transforms)
    info["threshold_99"] = run.threshold()
    return run


__all__ = ["DOSE", "DOSE_DENSITY", "FLAG_PERCENTILE", "OOD_DIR", "ORIENTATION", "RunDose", "dose_problem",
           "fit_run_dose", "model_tag", "run_dose", "statistics_kwargs", "with_orientation"]
