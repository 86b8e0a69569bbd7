"""A DoSE-style OOD score: the negative log density of a model's per-image statistics.

Morningstar et al. 2021 ("Density of states estimation for out-of-distribution detection", AISTATS)
fit a density to the summary statistics a generative model gives held-out images of its own training
distribution (log p(x), the KL, the reconstruction term, posterior statistics, ...) and flag an image
whose statistics are improbable under that density, whether its likelihood is high or low.

vaelab's version, every choice made on in-distribution validation images only:

- the statistics: `vaelab.evaluation.statistics` (every column that is not a function of the others);
- standardized (scikit-learn's StandardScaler), then a density from scikit-learn: a GaussianMixture of
  1 to 16 components with each covariance type, or a KernelDensity over a grid of bandwidths;
- the family and its size (components and covariance type, or bandwidth) are chosen by the mean
  log-likelihood of a held-out part of the validation statistics (a seeded split: `select_fraction`
  of the images held out, the rest fitted), and the chosen density is then refitted on all of them;
- the score is the negative log density (in standardized units): higher = more out-of-distribution.

`fit_dose` takes one set of statistics and nothing else, and only statistics of the validation split
(`ImageStatistics.split == "val"`): the test split and OOD sets cannot reach the fit. The fitted
scorer is stored as JSON (the choice, the table of candidates, the sklearn parameters) beside a
safetensors file (the scaler, the mixture's weights, means, covariances and Cholesky factors of the
precisions, or the KDE's points): no pickle. `DoseScorer.load` rebuilds the sklearn objects, which
give the same scores to the last bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler

from vaelab.errors import CheckpointError, ConfigError
from vaelab.evaluation.statistics import PROTOCOL_KEYS, VALIDATION, ImageStatistics
from vaelab.fileio import atomic_write

FORMAT = "vaelab-dose-scorer"
VERSION = 1
DOSE_SEED = 2025
COMPONENTS = (1, 2, 3, 4, 6, 8, 12, 16)  # a geometric-ish grid: with per-unit statistics (40+ columns) each full
# mixture costs seconds, and held-out likelihood changes little between neighbouring sizes
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
BANDWIDTHS = tuple(float(b) for b in np.round(np.logspace(-1.5, 0.5, 17), 5))  # standardized units
KERNELS = ("gaussian",)
SELECT_FRACTION = 0.3
MIN_IMAGES = 100  # below this, 30 held-out images are too few to choose among dozens of densities
GMM_MAX_ITER = 200


def images_needed(components: Sequence[int] = COMPONENTS, select_fraction: float = SELECT_FRACTION) -> int:
    """Validation images a fit needs: MIN_IMAGES, and enough that the fitted part holds two images per
    component of the largest mixture."""
    return max(MIN_IMAGES, math.ceil(2 * max(components, default=1) / (1 - select_fraction)))


def _candidates(components: Sequence[int], covariance_types: Sequence[str], bandwidths: Sequence[float],
                kernels: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Simplest first, so a tie goes to the simpler density."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n in components:
        for cov in covariance_types:
            out.append(("gmm", {"n_components": int(n), "covariance_type": cov}))
    for kernel in kernels:
        for bw in sorted(bandwidths, reverse=True):  # wide (smooth) first
            out.append(("kde", {"kernel": kernel, "bandwidth": float(bw)}))
    return out


def _make(family: str, params: dict[str, Any], seed: int) -> GaussianMixture | KernelDensity:
    if family == "gmm":
        return GaussianMixture(**params, max_iter=GMM_MAX_ITER, random_state=seed)
    return KernelDensity(**params)


def _fit(family: str, params: dict[str, Any], x: np.ndarray, seed: int) -> GaussianMixture | KernelDensity:
    with warnings.catch_warnings():  # an unconverged mixture is still a density; its held-out score judges it
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _make(family, params, seed).fit(x)


@dataclass(frozen=True)
class DoseScorer:
    """A fitted density over standardized per-image statistics; `score` is its negative log density."""

    features: tuple[str, ...]
    scaler: StandardScaler
    density: GaussianMixture | KernelDensity
    family: str  # "gmm" or "kde"
    selection: dict[str, Any] = field(default_factory=dict)  # how the family and size were chosen
    protocol: dict[str, Any] = field(default_factory=dict)  # of the statistics it was fitted on

    def log_density(self, stats: ImageStatistics) -> np.ndarray:
        """log density of each image's standardized statistics (N,), float64."""
        for key in PROTOCOL_KEYS:
            if key in self.protocol and stats.protocol.get(key) != self.protocol[key]:
                raise ConfigError(f"the statistics of {stats.split} were computed with {key}="
                                  f"{stats.protocol.get(key)!r}, the DoSE scorer's with {self.protocol[key]!r}; "
                                  "compute both with one protocol")
        x = stats.matrix(self.features)
        _check_finite(x, self.features, stats.split)
        return self.density.score_samples(self.scaler.transform(x))

    def score(self, stats: ImageStatistics) -> np.ndarray:
        """The DoSE score of each image: -log density (higher = more out-of-distribution)."""
        return -self.log_density(stats)

    def describe(self) -> str:
        p = self.selection.get("chosen", {}).get("params", {})
        what = (f"Gaussian mixture, {p.get('n_components')} components, {p.get('covariance_type')} covariance"
                if self.family == "gmm" else f"kernel density, {p.get('kernel')} kernel, bandwidth "
                                             f"{p.get('bandwidth')}")
        return f"{what}, over {len(self.features)} statistics ({', '.join(feature_ranges(self.features))})"

    def save(self, directory: str | Path, name: str = "dose") -> Path:
        """`name`.json and `name`.safetensors in `directory` (tensors first, then the JSON that names their
        SHA-256); returns the JSON's path."""
        return _save(self, Path(directory), name)

    @classmethod
    def load(cls, directory: str | Path, name: str = "dose") -> "DoseScorer":
        """The scorer `save` wrote, its sklearn objects rebuilt from the stored arrays."""
        return _load(Path(directory), name)


def feature_ranges(names: Sequence[str]) -> list[str]:
    """Statistic names with numbered runs folded for display: post_mean_1 ... post_mean_20 -> post_mean_1..20."""
    out: list[tuple[str, int, int] | str] = []
    for name in names:
        m = re.fullmatch(r"(.*_)(\d+)", name)
        last = out[-1] if out else None
        if m and isinstance(last, tuple) and last[0] == m.group(1) and last[2] + 1 == int(m.group(2)):
            out[-1] = (last[0], last[1], int(m.group(2)))
        else:
            out.append((m.group(1), int(m.group(2)), int(m.group(2))) if m else name)
    return [x if isinstance(x, str) else f"{x[0]}{x[1]}" + (f"..{x[2]}" if x[2] > x[1] else "") for x in out]


def _check_finite(x: np.ndarray, names: Sequence[str], split: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        cols = sorted({names[j] for j in np.nonzero(bad)[1]})
        raise ValueError(f"the statistics of {split} hold {int(bad.sum())} non-finite value(s) in "
                         f"{', '.join(cols)}")


def _check_validation(validation: Any, needed: int) -> None:
    if not isinstance(validation, ImageStatistics):
        raise TypeError(f"fit_dose takes ImageStatistics of the validation split, got {type(validation).__name__}")
    if validation.split != VALIDATION:
        raise ConfigError(f"DoSE is fitted on statistics of the validation split only (in-distribution images "
                          f"held out of training); these are of {validation.split!r}")
    if len(validation) < needed:
        raise ConfigError(f"DoSE needs at least {needed} validation images to fit and choose its density, "
                          f"got {len(validation)}")


def fit_dose(validation: ImageStatistics, /, *, features: Sequence[str] | None = None, seed: int = DOSE_SEED,
             select_fraction: float = SELECT_FRACTION, components: Sequence[int] = COMPONENTS,
             covariance_types: Sequence[str] = COVARIANCE_TYPES, bandwidths: Sequence[float] = BANDWIDTHS,
             kernels: Sequence[str] = KERNELS) -> DoseScorer:
    """Fit the DoSE density to statistics of the validation split, and nothing else.

    `features`: the statistics to use (default: `validation.features()`, every column that is not a
    function of the others). The images are split (seeded) into a fitted part and a held-out
    `select_fraction`; every candidate (GaussianMixture: each size in `components` with each type in
    `covariance_types`; KernelDensity: each kernel and bandwidth) is fitted on the first and scored by
    its mean log-likelihood on the second; the best is refitted on all the images. Deterministic for a
    given seed. ConfigError: statistics of another split, or too few images (the number needed)."""
    if not 0 < select_fraction < 1:
        raise ConfigError(f"select_fraction must lie in (0, 1), got {select_fraction}")
    candidates = _candidates(components, covariance_types, bandwidths, kernels)
    if not candidates:
        raise ConfigError("DoSE needs at least one candidate density (components or bandwidths)")
    _check_validation(validation, images_needed(components, select_fraction))
    names = tuple(features) if features else validation.features()
    x = validation.matrix(names)
    _check_finite(x, names, validation.split)
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    n_select = max(1, round(n * select_fraction))
    held, fitted = np.sort(perm[:n_select]), np.sort(perm[n_select:])
    part_scaler = StandardScaler().fit(x[fitted])
    x_fit, x_held = part_scaler.transform(x[fitted]), part_scaler.transform(x[held])
    table = []
    for family, params in candidates:
        ll = _fit(family, params, x_fit, seed).score_samples(x_held)
        table.append({"family": family, "params": params, "held_out_loglik": float(ll.mean())})
    scores = np.array([row["held_out_loglik"] for row in table])
    best = table[int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))]
    scaler = StandardScaler().fit(x)
    density = _fit(best["family"], best["params"], scaler.transform(x), seed)
    selection = {"chosen": best, "n_fit": int(len(fitted)), "n_held_out": int(len(held)), "seed": seed,
                 "select_fraction": select_fraction, "n_images": int(n), "candidates": table,
                 "criterion": "mean log-likelihood of the held-out validation images (standardized statistics)"}
    protocol = {key: validation.protocol[key] for key in PROTOCOL_KEYS if key in validation.protocol}
    return DoseScorer(features=names, scaler=scaler, density=density, family=best["family"], selection=selection,
                      protocol=protocol)


def held_out_scores(scorer: DoseScorer, validation: ImageStatistics, /, *, folds: int = 5,
                    seed: int = DOSE_SEED) -> np.ndarray:
    """The DoSE score of each validation image by a density that did not see it (N,): the images are cut
    (seeded) into `folds` parts, and each part is scored by the scorer's chosen family and size refitted
    (scaler included) on the other parts. These are what a new in-distribution image's score should be
    compared with: the scorer's own scores of the images it was fitted on are too good (a kernel density
    or a large mixture sits on its points). ConfigError for statistics of another split."""
    if not isinstance(validation, ImageStatistics) or validation.split != VALIDATION:
        raise ConfigError("held-out DoSE scores are of the validation split only")
    if folds < 2 or len(validation) < 2 * folds:
        raise ConfigError(f"held-out DoSE scores need folds >= 2 and at least {2 * max(folds, 2)} validation "
                          f"images, got {folds} folds and {len(validation)} images")
    x = validation.matrix(scorer.features)
    _check_finite(x, scorer.features, validation.split)
    params = scorer.selection.get("chosen", {}).get("params") or scorer.density.get_params()
    params = {k: params[k] for k in (("n_components", "covariance_type") if scorer.family == "gmm"
                                     else ("kernel", "bandwidth"))}
    out = np.empty(len(x))
    perm = np.random.default_rng(seed).permutation(len(x))
    for held in np.array_split(perm, folds):
        fitted = np.setdiff1d(perm, held)
        scaler = StandardScaler().fit(x[fitted])
        density = _fit(scorer.family, params, scaler.transform(x[fitted]), seed)
        out[held] = -density.score_samples(scaler.transform(x[held]))
    return out


# --------------------------------------------------------------------------- storage: JSON + safetensors


def _tensors(scorer: DoseScorer) -> dict[str, np.ndarray]:
    sc, d = scorer.scaler, scorer.density
    out = {"scaler.mean": sc.mean_, "scaler.scale": sc.scale_, "scaler.var": sc.var_}
    if scorer.family == "gmm":
        out |= {"gmm.weights": d.weights_, "gmm.means": d.means_, "gmm.covariances": d.covariances_,
                "gmm.precisions_cholesky": d.precisions_cholesky_, "gmm.precisions": d.precisions_}
    else:
        out["kde.points"] = np.asarray(d.tree_.data)
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()}


def _save(scorer: DoseScorer, directory: Path, name: str) -> Path:
    from safetensors.numpy import save
    import sklearn

    blob = save(_tensors(scorer), metadata={"format": FORMAT})
    tensors = atomic_write(directory / f"{name}.safetensors", blob, "the DoSE scorer's arrays")
    d = scorer.density
    fitted = ({"converged": bool(d.converged_), "n_iter": int(d.n_iter_), "lower_bound": float(d.lower_bound_)}
              if scorer.family == "gmm" else {})
    meta = {"format": FORMAT, "version": VERSION, "family": scorer.family, "features": list(scorer.features),
            "sklearn_params": d.get_params(), "scaler_params": scorer.scaler.get_params(),
            "n_samples_seen": int(scorer.scaler.n_samples_seen_), "fitted": fitted,
            "protocol": scorer.protocol, "selection": scorer.selection, "tensors": tensors.name,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(), "sklearn_version": sklearn.__version__,
            "score": "-log density of the standardized statistics (higher = more out-of-distribution)"}
    return atomic_write(directory / f"{name}.json", (json.dumps(meta, indent=1) + "\n").encode(),
                        "the DoSE scorer")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the DoSE scorer ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vaelab DoSE scorer")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer vaelab (scorer version {meta.get('version')})")
    return meta


def _read_tensors(path: Path, sha256: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the DoSE scorer's arrays ({exc})") from exc
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise CheckpointError(f"{path} does not match its JSON (SHA-256 differs): refit the DoSE scorer")
    return load(blob)


def _load(directory: Path, name: str) -> DoseScorer:
    meta = _read_json(directory / f"{name}.json")
    t = _read_tensors(directory / meta["tensors"], meta["tensors_sha256"])
    scaler = StandardScaler(**meta["scaler_params"])
    scaler.mean_, scaler.scale_, scaler.var_ = t["scaler.mean"], t["scaler.scale"], t["scaler.var"]
    scaler.n_features_in_, scaler.n_samples_seen_ = len(scaler.mean_), meta["n_samples_seen"]
    if meta["family"] == "gmm":
        d = GaussianMixture(**meta["sklearn_params"])
        d.weights_, d.means_, d.covariances_ = t["gmm.weights"], t["gmm.means"], t["gmm.covariances"]
        d.precisions_cholesky_, d.precisions_ = t["gmm.precisions_cholesky"], t["gmm.precisions"]
        d.converged_, d.n_iter_ = meta["fitted"]["converged"], meta["fitted"]["n_iter"]
        d.lower_bound_, d.n_features_in_ = meta["fitted"]["lower_bound"], d.means_.shape[1]
    elif meta["family"] == "kde":
        d = KernelDensity(**meta["sklearn_params"]).fit(t["kde.points"])  # rebuilds the same tree
    else:
        raise CheckpointError(f"{directory / name}.json: unknown density family {meta['family']!r}")
    return DoseScorer(features=tuple(meta["features"]), scaler=scaler, density=d, family=meta["family"],
                      selection=meta["selection"], protocol=meta["protocol"])


__all__ = ["BANDWIDTHS", "COMPONENTS", "COVARIANCE_TYPES", "DoseScorer", "MIN_IMAGES", "feature_ranges", "fit_dose",
           "held_out_scores", "images_needed"]
