"""Sample fidelity in the feature space of a classifier vaelab trains itself.

Does a VAE generate better than a plain autoencoder? Both decode latent codes
into images; the question is how close those images come to real ones. This
module answers it the way Heusel et al. (2017) do with the FID, and
Kynkaeaenniemi et al. (2019) with improved precision and recall, but in the
feature space of a small CNN classifier trained on the same dataset (the
Inception network of published FIDs was trained on ImageNet photographs and
knows nothing of 28x28 clothes or digits). The numbers therefore compare only
within vaelab, on one dataset, with one classifier: see `FEATURE_SPACE_NOTE`.

- Frechet distance (Heusel et al. 2017): between Gaussians fitted to the
  features of generated and real images; lower is better. Real training
  images against the test images give the floor a perfect generator reaches
  with as many images.
- Precision and recall (Kynkaeaenniemi et al. 2019): the real manifold is the
  union of balls around each real feature vector, of radius the distance to
  its k-th nearest real neighbour; precision is the share of samples inside
  it (are samples realistic?), recall the share of real images inside the
  samples' manifold, built the same way (do samples cover the data?).
- Density and coverage (Naeem et al. 2020), from the same real balls: how
  many balls hold a sample on average (over k), and the share of balls that
  hold a sample. In this feature space a few atypical real images have large
  balls that swallow junk: on Fashion-MNIST (10,000 images each) uniform
  noise scored precision 0.88 and an untrained decoder's flat grey images
  1.0, as high as real training images (0.88), while FD, recall, coverage and
  density (0.46, 0.51; real 0.99) all told them apart. Read precision beside
  density, never alone.

The classifier, its training, saving and loading are in
`vaelab.evaluation.classifier`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vaelab.log import say
from vaelab.data import spread_index
from vaelab.errors import DataError
from vaelab.evaluation.classifier import (FeatureClassifier, classifier_accuracy, image_features, load_classifier,
                                          save_classifier, train_classifier)
from vaelab.evaluation.frechet import frechet_distance, gaussian_stats
from vaelab.models import Model, eval_mode

FEATURE_SPACE_NOTE = (
    "Frechet distance, precision, recall, density and coverage are computed in the 128-d penultimate "
    "feature space of a small CNN classifier that vaelab trains on the same dataset, NOT in the Inception "
    "network of published FID numbers: the values compare only within vaelab, on the same dataset and "
    "with the same classifier."
)


# --------------------------------------------------------------------------- precision and recall

_CHUNK_ELEMENTS = 1 << 24  # distances held at once: 64 MiB of float32


def _rows_per_chunk(n_columns: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_columns))


def _knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance (N,) from each row to its k-th nearest other row."""
    step = _rows_per_chunk(len(features))
    radii = [torch.cdist(chunk, features).topk(k + 1, dim=1, largest=False).values[:, k]
             for chunk in features.split(step)]  # +1: each row is its own nearest neighbour, at distance 0
    return torch.cat(radii)


def _ball_counts(queries: torch.Tensor, centres: torch.Tensor,
                 radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many balls (centre, radius) hold each query (Q,), and whether each ball holds a query (C,)."""
    step = _rows_per_chunk(len(centres))
    counts, used = [], torch.zeros(len(centres), dtype=torch.bool)
    for chunk in queries.split(step):
        hits = torch.cdist(chunk, centres) <= radii
        counts.append(hits.sum(1))
        used |= hits.any(0)
    return torch.cat(counts), used


def _check(real: torch.Tensor, fake: torch.Tensor, k: int) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake feature vectors, "
                         f"got {len(real)} and {len(fake)}")


def _centred(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Features moved by -centre, in float32: distances do not change, and the rounding error of cdist's
    matrix-product form, which grows with the norms, shrinks."""
    return (features.double() - centre).float()


def _manifold_scores(real: torch.Tensor, real_radii: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """Precision, recall (Kynkaeaenniemi et al. 2019), density and coverage (Naeem et al. 2020)."""
    counts, covered = _ball_counts(fake, real, real_radii)
    in_fake, _ = _ball_counts(real, fake, _knn_radii(fake, k))
    return {"precision": float((counts > 0).double().mean()), "recall": float((in_fake > 0).double().mean()),
            "density": float(counts.double().sum() / (k * len(fake))), "coverage": float(covered.double().mean())}


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaeaenniemi et al. 2019) of fake against real feature vectors.

    precision: share of fake vectors within the k-NN radius of at least one real vector;
    recall: share of real vectors within the k-NN radius of at least one fake vector. Float32 distances,
    computed in chunks (10,000 x 10,000 takes ~64 MiB at a time).
    """
    _check(real_features, fake_features, k)
    centre = real_features.double().mean(0)
    real = _centred(real_features, centre)
    scores = _manifold_scores(real, _knn_radii(real, k), _centred(fake_features, centre), k)
    return scores["precision"], scores["recall"]


# --------------------------------------------------------------------------- scoring generators


@dataclass(frozen=True)
class GeneratorScore:
    """How close one set of images comes to the real images, in the classifier's feature space."""

    name: str
    fd: float  # Frechet distance (Heusel et al. 2017); lower is better
    precision: float  # share of samples on the real manifold (Kynkaeaenniemi et al. 2019); higher is better
    recall: float  # share of real images on the samples' manifold; higher is better
    n: int  # images scored
    # Naeem et al. (2020), with the same k-NN balls around the real images: density, the mean number of
    # balls holding a sample over k (~1 for real images; not fooled by a few outlying real images with huge
    # balls, which can lift the precision of junk); coverage, the share of balls holding a sample
    density: float = float("nan")
    coverage: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def score_samples(clf: FeatureClassifier, real: torch.Tensor, samples: dict[str, torch.Tensor], k: int = 3,
                  batch_size: int = 1000) -> dict[str, GeneratorScore]:
    """FD, precision, recall, density and coverage of each set of images in `samples` against `real`.

    Images: (N, C, H, W), uint8 or float in [0, 1]. To get the floor, pass real training images as one of
    the `samples` (e.g. "real train images") with `real` the test images. Compare sets of equal size: the
    Frechet distance is biased upwards for small sets, and precision and recall depend on it through k.
    """
    real_features = image_features(clf, real, batch_size)
    real_stats = gaussian_stats(real_features)
    centre = real_stats[0]
    fakes = {name: image_features(clf, images, batch_size) for name, images in samples.items()}
    for fake in fakes.values():
        _check(real_features, fake, k)
    real_centred = _centred(real_features, centre)
    real_radii = _knn_radii(real_centred, k)
    scores = {}
    for name, fake in fakes.items():
        fd = frechet_distance(*gaussian_stats(fake), *real_stats)
        manifold = _manifold_scores(real_centred, real_radii, _centred(fake, centre), k)
        scores[name] = GeneratorScore(name=name, fd=fd, n=len(fake), **manifold)
    return scores


def format_scores(scores: dict[str, GeneratorScore], title: str = "") -> str:
    """A fixed-width table of scores, followed by `FEATURE_SPACE_NOTE`."""
    width = max([len(name) for name in scores] + [12]) + 2
    head = f"{'':<{width}}{'n':>7}{'FD':>10}{'precision':>11}{'recall':>8}{'density':>9}{'coverage':>10}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    lines += [f"{s.name:<{width}}{s.n:>7}{s.fd:10.3f}{s.precision:11.3f}{s.recall:8.3f}"
              f"{s.density:9.3f}{s.coverage:10.3f}" for s in scores.values()]
    return "\n".join(lines + [FEATURE_SPACE_NOTE])


def generator_samples(model: Model, n: int, seed: int, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """n decoded means (N, C, H, W) in [0, 1], on the CPU, for each way the model can generate.

    VAE: {"prior N(0,I)"}. Autoencoder: {"N(0,I)": codes from the VAE's prior, which nothing in its
    training asks the codes to follow; "fitted Gaussian": codes from N(code_mean, code_std^2), the
    diagonal Gaussian fitted to its training codes}. Every entry decodes the same standard normal draws
    (a generator seeded with `seed`), rescaled, so the entries differ only in the code distribution.
    """
    if model.variational:
        ways = {"prior N(0,I)": (0.0, 1.0)}
    else:
        ways = {"N(0,I)": (0.0, 1.0), "fitted Gaussian": (model.code_mean, model.code_std)}
    device, out = next(model.parameters()).device, {}
    with eval_mode(model):
        for name, (loc, scale) in ways.items():
            gen, images = torch.Generator().manual_seed(seed), []
            for start in range(0, n, batch_size):
                eps = torch.randn((min(batch_size, n - start), model.latent_dim), generator=gen).to(device)
                images.append(model.decode_mean(loc + scale * eps).float().cpu())
            out[name] = torch.cat(images) if images else torch.zeros(0, *model.image_shape)
    return out


# --------------------------------------------------------------------------- comparing trained models

COMPARE_IMAGES = 10_000


def compare_generators(models: dict[str, Model], splits, out_dir: str | Path, *, n: int = COMPARE_IMAGES,
                       seed: int = 0, classifier: str | Path | None = None,
                       log: Callable[[str], None] = say) -> dict[str, Any]:
    """Score the samples of each model (and real training images, the floor) against the test images.

    A classifier is trained on the training split (or loaded from `classifier`) and saved in `out_dir`,
    so later comparisons can reuse it with the same feature space. Returns a JSON-ready dict.
    """
    out_dir = Path(out_dir)
    labels = splits.train.labels
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    if len(torch.unique(labels)) < 2:
        raise DataError(f"{splits.name} has fewer than 2 classes: no classifier, no feature space to compare "
                        "samples in (image folders need one sub-folder per class)")
    if classifier is not None:
        clf = load_classifier(classifier)
        if tuple(clf.architecture()["image_shape"]) != tuple(splits.image_shape):
            raise DataError(f"classifier {classifier} was trained on images of shape "
                            f"{clf.architecture()['image_shape']}, these are {list(splits.image_shape)}")
        trained_on = clf.info.get("dataset")
        if trained_on != splits.name:
            raise DataError(f"classifier {classifier} was trained on {trained_on}, these runs on {splits.name}: "
                            "a feature space of another dataset; leave out --classifier to train one")
        accuracy = clf.info.get("test_accuracy")
        source = str(classifier)
    else:
        t0 = time.perf_counter()
        log(f"training the feature classifier on {len(splits.train)} {splits.name} training images ...")
        clf = train_classifier(splits.train, n_classes, seed=seed, log=lambda m: None)
        accuracy = classifier_accuracy(clf, splits.test) if len(splits.test) else None
        path = save_classifier(clf, out_dir / "classifier.safetensors",
                               {"dataset": splits.name, "test_accuracy": accuracy, "seed": seed,
                                "train_images": len(splits.train)})
        source = str(path)
        log(f"  test accuracy {accuracy:.4f} ({time.perf_counter() - t0:.0f} s); saved to {path}")
    n = min(n, len(splits.test), len(splits.train))
    if n < 10:
        raise DataError(f"comparing samples needs at least 10 test and 10 training images; {splits.name} gives {n} "
                        "(use a larger -n or a dataset with more images)")
    real = splits.test.images[spread_index(len(splits.test), n, seed + 1)]
    samples = {"real training images (floor)": splits.train.images[spread_index(len(splits.train), n, seed + 2)]}
    for name, model in models.items():
        for how, images in generator_samples(model, n, seed + 3).items():
            samples[f"{name} {how}"] = images
    scores = score_samples(clf, real, samples)
    return {"images": n, "classifier": source, "classifier_test_accuracy": accuracy,
            "feature_space": FEATURE_SPACE_NOTE, "scores": {k: v.as_dict() for k, v in scores.items()},
            "table": format_scores(scores, title=f"samples against {n} {splits.name} test images "
                                                 "(FD lower, precision / recall / density / coverage higher "
                                                 "are better):")}
