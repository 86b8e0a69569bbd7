"""Are these images from the run's training distribution? One call from Python: `check_images(run, images)`.

    import vaelab
    run = vaelab.load_run("pretrained:fashion-mnist-vae")
    check = vaelab.check_images(run, images)      # uint8 or [0, 1] floats, (N, C, H, W) or (N, H, W)
    check.scores, check.percentiles, check.flagged   # each image, by the run's default score (DoSE)
    check.batch.flagged, check.batch.p_value          # the N images as one set (the DoSE batch test)

Each image is judged by the run's DoSE score (vaelab.evaluation.oodrun: the density of its statistics
joined with the orientation test), against the held-out scores of the run's validation images: its
percentile among them, and flagged at or above their 99th percentile, as `vaelab evaluate` and `vaelab
serve` flag. The images together are judged by the DoSE batch test (vaelab.evaluation.typicality): the
mean -log tail p-value of their scores against the same mean over as many validation scores, bootstrapped.
For 10 or more images from one source, the set's verdict is the one to trust (BENCHMARKS.md, "Sets of
images"): single images close to the training data often pass.

The scorer is the one `vaelab evaluate --on` fits and keeps in RUN/ood/; the first call on a run without it
fits it, which needs the run's dataset (`data_dir` says where it is) and takes a while. Each image is
prepared and measured on its own, with seeds taken from its pixels (`image_seed`): binarized once when the
run binarizes, and its statistics from the run's protocol (importance samples, forward draws) as if it were
the only image. So an image gets the same score, percentile and flag whatever it is checked with and
wherever it stands in the list, and the same DoSE score as `vaelab serve` gives it as an upload, while
different images get independent draws, as the set test assumes. (`vaelab evaluate` draws over a whole set
at once, so there an image's numbers differ a little; measuring one image at a time costs about 2.5 times
the batched pass on a CPU.)

The run's scorer is kept in memory after the first call (`run_scorer`), per run directory, weights,
settings and data folder: later calls on the same run neither read its dataset nor its RUN/ood/ files again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vaelab.data import as_uint8_images, binarize_once
from vaelab.errors import DataError
from vaelab.evaluation.oodrun import FLAG_PERCENTILE, RunDose, model_tag, run_dose, statistics_kwargs
from vaelab.evaluation.statistics import ImageStatistics, compute_statistics
from vaelab.evaluation.typicality import ALPHA, SetCheck, check_score_set, percentiles_among
from vaelab.runs import Run, load_run_data

# a user's image is binarized with data.binarize_seed + this + image_seed(image), here and in `vaelab serve`'s
# uploads, so an image gets the same DoSE score from `vaelab check` as from the explorer
IMAGE_SEED_OFFSET = 4242
KEPT_SCORERS = 4  # runs whose scorer check_images keeps in memory (the least recently used goes first)
_scorers: OrderedDict[tuple[str, ...], RunDose] = OrderedDict()
_scorers_lock = threading.Lock()  # check_images may be called from several threads


def image_seed(image: torch.Tensor) -> int:
    """A seed from one uint8 image's pixels (C, H, W), added to the run's seeds for its binarization and its
    statistics' draws: the same image gets the same draws wherever and with whatever it is checked, and
    different images get different draws. (One seed for every image would give each image of a set the same
    binarization noise and importance samples; their scores would then err together, and the set test,
    which takes them as independent, would raise false alarms.)"""
    digest = hashlib.sha256(str(tuple(image.shape)).encode() + image.contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # below 2**31


def user_image(run: Run, image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One uint8 image (1, C, H, W) as the run scores a user's image (binarized once when it binarizes, with
    the image's own seed), and that seed."""
    seed = image_seed(image[0])
    cfg = run.config
    if cfg.data.binarize == "none":
        return image, seed
    return binarize_once(image, cfg.data.binarize_seed + IMAGE_SEED_OFFSET + seed), seed


def user_image_statistics(model: Any, image: torch.Tensor, seed: int, kwargs: dict[str, Any], *,
                          device: torch.device | str, split: str, estimate: Any = None) -> ImageStatistics:
    """The statistics of one prepared user image (1, C, H, W) by the protocol `kwargs` (statistics_kwargs),
    its draws seeded by the protocol's seed plus the image's own `seed`. The protocol recorded keeps the
    run's seed (the DoSE scorer checks it) and adds the image's. `estimate`: its importance-sampled pass
    when the caller made it with that seed (compute_statistics then reuses it)."""
    stats = compute_statistics(model, image, split=split, device=device, estimate=estimate,
                               **(kwargs | {"seed": kwargs["seed"] + seed}))
    return ImageStatistics(split, stats.columns, stats.protocol | {"seed": kwargs["seed"], "image_seed": seed})


@dataclass(frozen=True)
class ImageCheck:
    """Each image's DoSE score and verdict, and the set's (see the module docstring)."""

    scores: np.ndarray  # DoSE score of each image (N,), higher = more out-of-distribution
    percentiles: np.ndarray  # of each score among the held-out validation scores (N,), 0-100
    flagged: np.ndarray  # bool (N,): at or above the validation scores' FLAG_PERCENTILE-th percentile
    threshold: float  # that percentile
    batch: SetCheck  # the images as one set: the DoSE batch test
    score: str  # what `scores` are: the run's default score and how it was fitted
    validation_images: int  # how many held-out validation scores the verdicts are judged against

    def summary(self) -> str:
        b = self.batch
        verdict = "not from the training distribution" if b.flagged else "consistent with the training distribution"
        return (f"{int(self.flagged.sum())} of {len(self.scores)} images flagged one by one (at the "
                f"{FLAG_PERCENTILE:g}th percentile of {self.validation_images} validation images); as a set: "
                f"{verdict} ({b.describe()})")


def _as_images(run: Run, images: Any) -> torch.Tensor:
    x8 = as_uint8_images(images, what="the images to check").cpu()
    if x8.dim() == 3:  # (N, H, W) grey images
        x8 = x8.unsqueeze(1)
    if tuple(x8.shape[1:]) != tuple(run.image_shape):
        shape = "x".join(map(str, run.image_shape))
        raise DataError(f"the images to check have shape {'x'.join(map(str, x8.shape[1:]))} but this model was "
                        f"trained on {shape} (channels x height x width); resize them first")
    if not len(x8):
        raise DataError("no images to check: pass at least one")
    return x8


def image_statistics(run: Run, images: torch.Tensor, *, log: Callable[[str], None] | None = None,
                     every: int = 200) -> ImageStatistics:
    """The run's statistics of each uint8 image (N, C, H, W), each prepared and measured alone (`user_image`,
    then the run's statistics protocol on a batch of one, its seed moved by the image's own), so its values
    do not depend on the other images; `log` hears progress every `every` images."""
    kwargs = statistics_kwargs(run.config, model_tag(run.model))
    parts = []
    for i in range(len(images)):
        x, seed = user_image(run, images[i:i + 1])
        parts.append(user_image_statistics(run.model, x, seed, kwargs, device=run.device, split="checked"))
        if log is not None and (i + 1) % every == 0 and i + 1 < len(images):
            log(f"  checked {i + 1} of {len(images)} images ...")
    columns = {name: np.concatenate([p.columns[name] for p in parts]) for name in parts[0].columns}
    protocol = {key: value for key, value in parts[0].protocol.items() if key not in ("images_sha256", "image_seed")}
    return ImageStatistics("checked", columns, protocol | {"images": len(images), "image_seeds": True})


def run_scorer(run: Run, data_dir: str | Path | None = None,
               log: Callable[[str], None] | None = None) -> RunDose:
    """The run's DoSE scorer (vaelab.evaluation.oodrun.run_dose), from memory after the first call for the
    same run directory, weights (their hash), settings and data folder. Loading it from RUN/ood/ needs the
    run's dataset (its validation images identify the stored statistics), which would otherwise be read on
    every call, several times the cost of one image's statistics. The data folder is keyed by its path, not
    its contents: a dataset changed in place while the process runs keeps the scorer fitted before."""
    tag = model_tag(run.model)
    key = (str(Path(run.path).resolve()), tag, repr(run.config), str(data_dir), str(run.device))
    with _scorers_lock:
        dose = _scorers.get(key)
    if dose is None:  # fitted or read outside the lock: two threads may both do it, and keep the same scorer
        splits = load_run_data(run, data_dir)
        dose = run_dose(run.model, run.config, splits, run.path, tag=tag, device=run.device,
                        log=log or (lambda _msg: None))
    with _scorers_lock:
        _scorers[key] = dose
        _scorers.move_to_end(key)
        while len(_scorers) > KEPT_SCORERS:
            _scorers.popitem(last=False)
    return dose


def check_images(run: Run, images: Any, *, data_dir: str | Path | None = None, alpha: float = ALPHA,
                 log: Callable[[str], None] | None = None) -> ImageCheck:
    """Judge `images` (N of the run's image shape) one by one and as a set (see the module docstring).
    ConfigError (one line) when the run has too few validation images for DoSE; DataError for images of
    another shape, or when fitting the scorer needs the run's dataset and it is not found."""
    x = _as_images(run, images)
    say = log or (lambda _msg: None)
    dose = run_scorer(run, data_dir, log=say)
    stats = image_statistics(run, x, log=say)
    scores = dose.score(stats)
    percentiles = percentiles_among(np.sort(dose.reference), scores)
    threshold = dose.threshold()
    batch = check_score_set(dose.reference, scores, alpha=alpha)
    return ImageCheck(scores=scores, percentiles=percentiles, flagged=scores >= threshold, threshold=threshold,
                      batch=batch, score=f"DoSE ({dose.info['density']})", validation_images=len(dose.reference))


__all__ = ["ImageCheck", "SetCheck", "check_images", "run_scorer"]
