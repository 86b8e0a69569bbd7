"""The figures a run shows, in one version: the run's images/ folder and the HTML page draw the same ones.

What is drawn, and from which fixed choices (`seed` is train.seed; the HTML report adds its --seed to it,
so `vaelab report --seed 0` shows exactly the images of the run's images/ folder):

- samples: train.grid_size images decoded from fixed prior draws (a generator seeded with seed + 2), at
  temperature 1 (images/samples.png, labelled, and the plain per-epoch grids) and, on the page, 0.7 (the same
  draws, shrunk);
- the shown test images: max(2, train.grid_size // 2) of them, `spread_index(..., seed + 4)` (test files
  may be grouped by class, so "the first k" would show one class);
- reconstructions of the shown images, beside them;
- lerp and slerp interpolations between the shown images taken two by two (the first 4 pairs);
- latent traversals of the first shown image, along the dimensions whose codes vary most across the
  map's images;
- the latent map: the codes of up to MAP_IMAGES test images (`spread_index(..., seed + 3)`), in 2-D.

Everything here returns tensors or uint8 arrays; PNG files are written by `write_run_images` (the run's
images/) and by `vaelab.report.html` (inline). No matplotlib here: training imports this module and the
plots (traversals, the map) are drawn by the page only.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from vaelab.config import RunConfig
from vaelab.data import DatasetSplits, ImageSet, spread_index, to_float
from vaelab.models import Model, eval_mode
from vaelab.models.generate import interpolate, latent_frame, reconstruct, sample
from vaelab.report.images import (grid_shape, label_grid, labelled_pairs, labelled_square, make_grid, pairs_grid,
                                  save_png, square_grid)

# offsets from the base seed; +2 and +4 are what training has always used for its final images
SAMPLE_SEED, MAP_SEED, SHOWN_SEED = 2, 3, 4
INTERPOLATION_PAIRS = 4
INTERPOLATION_STEPS = 10  # images per interpolation path (and per row of its grid)
INTERPOLATION_METHODS = ("lerp", "slerp")
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = tuple(float(v) for v in np.linspace(-3.0, 3.0, 9))  # in units of the latent frame's scale
MAP_IMAGES = 2000  # test images on the latent map (and behind the traversals' ordering and frame)
SEED_MODULUS = 2**63  # the base seed plus its offsets must stay a valid torch seed (< 2**64)


def base_seed(config: RunConfig, offset: int = 0) -> int:
    """The seed every choice below derives from: train.seed, plus `offset` (the report's --seed)."""
    return (int(config.train.seed) + int(offset)) % SEED_MODULUS


def model_device(model: Model) -> torch.device:
    """Where the model's weights live (the images it is given must be there too); CPU for a weightless one."""
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- samples


def samples(model: Model, config: RunConfig, temperature: float = 1.0, seed: int | None = None) -> torch.Tensor:
    """train.grid_size images (N, C, H, W) in [0, 1] decoded from the fixed prior draws, their std scaled by
    `temperature`: the same draws at every epoch and in every figure (the generator is seeded, not shared)."""
    seed = base_seed(config) if seed is None else seed
    return sample(model, config.train.grid_size, temperature, torch.Generator().manual_seed(seed + SAMPLE_SEED))


def sample_grid(model: Model, config: RunConfig, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
    """The plain sample grid as a uint8 array: the per-epoch grids (samples_epoch_NNN.png, TensorBoard)."""
    return square_grid(samples(model, config, temperature, seed))


def sample_source(model: Model) -> str:
    """Where a model's samples come from, in a few words (the titles of sample pictures)."""
    if not model.variational:
        return "codes drawn from the Gaussian fitted to the training codes"
    if model.n_layers > 1:
        return "every latent layer drawn from its prior"
    return "codes drawn from the prior"


def sample_figure(model: Model, config: RunConfig, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
    """`sample_grid` as a picture: enlarged, under a title saying what it shows (images/samples.png and the
    page's sample grids)."""
    seed = base_seed(config) if seed is None else seed
    n = config.train.grid_size
    return labelled_square(sample_grid(model, config, temperature, seed), n,
                           title=[f"{n} samples: {sample_source(model)}, decoded means",
                                  f"temperature {temperature:g} (std x {temperature:g}), seed {seed + SAMPLE_SEED}"])


# --------------------------------------------------------------------------- the shown test images


def shown_index(n_test: int, config: RunConfig, seed: int | None = None) -> torch.Tensor:
    """Which test images the reconstructions, interpolations and traversals show (sorted indices)."""
    seed = base_seed(config) if seed is None else seed
    return spread_index(n_test, max(2, config.train.grid_size // 2), seed + SHOWN_SEED)


def shown_images(test: ImageSet, config: RunConfig, device: torch.device | str, seed: int | None = None
                 ) -> torch.Tensor:
    """The shown test images as floats in [0, 1] on `device`, in index order."""
    return to_float(test.images[shown_index(len(test), config, seed)], device)


def reconstruction_grid(model: Model, x: torch.Tensor) -> np.ndarray:
    """Images x (N, C, H, W) in [0, 1] beside their reconstructions (the decoded deterministic codes)."""
    return pairs_grid(x, reconstruct(model, x))


def reconstruction_figure(model: Model, x: torch.Tensor) -> np.ndarray:
    """`reconstruction_grid` as a picture: enlarged, each column headed "image" or "recon"
    (images/reconstructions.png and the page's)."""
    return labelled_pairs(reconstruction_grid(model, x), len(x), "image", "recon",
                          title="test images (image) beside their reconstructions (recon)")


@dataclass(frozen=True)
class Interpolations:
    """Paths between the codes of images taken two by two: one (steps, C, H, W) tensor per pair and method."""

    lerp: tuple[torch.Tensor, ...]
    slerp: tuple[torch.Tensor, ...]

    @property
    def pairs(self) -> int:
        return len(self.lerp)

    def grid(self, method: str | None = None) -> np.ndarray:
        """One method's paths, a row each; with no method, rows alternate lerp and slerp pair by pair
        (images/interpolations.png)."""
        if method is None:
            rows = [row for pair in zip(self.lerp, self.slerp) for row in pair]
        elif method in INTERPOLATION_METHODS:
            rows = list(getattr(self, method))
        else:
            raise ValueError(f"interpolation method must be one of {', '.join(INTERPOLATION_METHODS)}, got {method!r}")
        return make_grid(torch.cat(rows), nrow=INTERPOLATION_STEPS)

    def figure(self, method: str | None = None) -> np.ndarray:
        """`grid(method)` as a picture: enlarged, each row labelled with its method and pair, the end columns
        marked (the two images' reconstructions), under a title saying what the rows are."""
        grid = self.grid(method)
        methods = INTERPOLATION_METHODS if method is None else (method,)
        labels = [f"{m} {i + 1}" if method is None else f"pair {i + 1}" for i in range(self.pairs) for m in methods]
        rows, cols = grid_shape(len(labels) * INTERPOLATION_STEPS, INTERPOLATION_STEPS)
        what = ("rows alternate lerp (linear) and slerp (spherical) paths" if method is None else
                f"{method} ({'linear' if method == 'lerp' else 'spherical'}) paths, one pair per row")
        ends = ["A"] + [""] * (cols - 2) + ["B"]
        return label_grid(grid, rows, cols, title=[f"{what} between the codes of two test images",
                                                   "A, B: the two images' reconstructions"],
                          column_labels=ends, row_labels=labels)


def interpolations(model: Model, x: torch.Tensor, pairs: int = INTERPOLATION_PAIRS) -> Interpolations:
    """lerp and slerp paths between x[0] and x[1], x[2] and x[3], ...: at most `pairs` of them.

    Each path is computed from its own pair, as training always did (batching the codes of all pairs
    could change the last bits of the images on some backends)."""
    n = min(pairs, len(x) // 2)
    paths = {method: tuple(interpolate(model, x[2 * i], x[2 * i + 1], steps=INTERPOLATION_STEPS, method=method)
                           for i in range(n)) for method in INTERPOLATION_METHODS}
    return Interpolations(**paths)


def write_run_images(model: Model, splits: DatasetSplits, config: RunConfig, images_dir: str | Path) -> list[Path]:
    """The run's final images (samples.png, reconstructions.png, interpolations.png) in `images_dir`; returns
    the paths written. Each is labelled and enlarged (`sample_figure`, `reconstruction_figure`,
    `Interpolations.figure`); the per-epoch samples_epoch_NNN.png stay plain grids (`sample_grid`).
    interpolations.png is left out when the test split has fewer than 2 images."""
    images_dir = Path(images_dir)
    written = [save_png(sample_figure(model, config), images_dir / "samples.png")]
    x = shown_images(splits.test, config, model_device(model))
    written.append(save_png(reconstruction_figure(model, x), images_dir / "reconstructions.png"))
    paths = interpolations(model, x)
    if paths.pairs:
        written.append(save_png(paths.figure(), images_dir / "interpolations.png"))
    return written


# --------------------------------------------------------------------------- codes, traversals, the map


def map_index(n_test: int, seed: int) -> torch.Tensor:
    """Which test images go on the latent map: up to MAP_IMAGES, a seeded random choice, in split order."""
    return spread_index(n_test, MAP_IMAGES, seed + MAP_SEED)


def latent_codes(model: Model, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The deterministic codes (`model.code`: a VAE's posterior means, an autoencoder's codes, a hierarchical
    VAE's top-layer posterior means) of uint8 or float images, as float32 on the CPU."""
    device = model_device(model)
    with eval_mode(model):
        return torch.cat([model.code(to_float(chunk, device)).float().cpu() for chunk in images.split(batch)])


@dataclass(frozen=True)
class Traversal:
    """One code decoded with each of its most varying dimensions moved along its range, the others kept."""

    images: torch.Tensor  # (dims, len(values), C, H, W) in [0, 1]
    dims: tuple[int, ...]  # the dimensions moved, by decreasing variance
    variance: torch.Tensor  # (latent_dim,): the variance of each dimension across the reference codes
    values: tuple[float, ...]  # k: each row sets its dimension to centre + k * scale
    units: str  # what the scale is, in words (`latent_frame`)
    n_codes: int  # how many reference codes the variance and the frame come from


def traversal(model: Model, code: torch.Tensor, reference: torch.Tensor, dims: int = TRAVERSAL_DIMS,
              values: tuple[float, ...] = TRAVERSAL_VALUES) -> Traversal:
    """Decode `code` (latent_dim,) with one dimension at a time set to centre + k * scale for k in `values`.

    The rows are the `dims` dimensions that vary most across the `reference` codes (N, latent_dim) (the
    activity statistic of Burda et al. 2015); centre and scale come from `latent_frame`, shared with the
    explorer: the prior's, the autoencoder's fitted Gaussian, or the reference codes' own for a VampPrior."""
    reference = reference.float().cpu()
    variance = reference.var(0) if len(reference) > 1 else torch.zeros(reference.shape[1])
    order = torch.argsort(variance, descending=True, stable=True)[:min(dims, reference.shape[1])].tolist()
    frame = latent_frame(model, reference)
    loc, scale = frame.loc.cpu(), frame.scale.cpu()
    steps = torch.tensor(values)
    rows = []
    with eval_mode(model):
        for d in order:
            z = code.float().cpu().repeat(len(steps), 1)
            z[:, d] = loc[d] + steps * scale[d]
            rows.append(model.decode_mean(z.to(model_device(model))).float().cpu())
    return Traversal(torch.stack(rows), tuple(order), variance, tuple(values), frame.units, len(reference))


@dataclass(frozen=True)
class LatentMap:
    """2-D coordinates of latent codes: the codes themselves when they are 2-D, else their top two principal
    components."""

    xy: np.ndarray  # (N, 2) float64
    method: str  # "latent", "pca" or "latent-1d"
    explained: tuple[float, float] | None  # PCA: the fraction of the codes' variance along each axis
    axis_labels: tuple[str, str]


def latent_map(codes: torch.Tensor | np.ndarray) -> LatentMap:
    """Where each code (N, D) goes on the map.

    D == 2: the codes as they are (the plot is the latent space itself); D == 1: the code against 0;
    D > 2: the projection onto the top two principal components of the centred codes (exact SVD,
    float64), each component's sign fixed so that its largest entry is positive: the same codes always
    give the same picture.
    """
    z = np.asarray(codes.detach().cpu().numpy() if hasattr(codes, "detach") else codes, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"latent_map needs codes of shape (N, D), got {z.shape}")
    d = z.shape[1]
    if d == 2:
        return LatentMap(z.copy(), "latent", None, ("z[0]", "z[1]"))
    if d == 1:
        return LatentMap(np.stack([z[:, 0], np.zeros(len(z))], 1), "latent-1d", None, ("z[0]", "(none: 1-D latent)"))
    if len(z) < 2:
        raise ValueError("a principal-component map needs the codes of at least 2 images")
    centred = z - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(N, D), D), rows by decreasing variance
    components = vt[:2]
    flip = np.sign(components[np.arange(2), np.abs(components).argmax(1)])
    components = components * np.where(flip == 0, 1.0, flip)[:, None]
    total = float((s ** 2).sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in s[:2] ** 2]
    return LatentMap(centred @ components.T, "pca", (explained[0], explained[1]),
                     (f"PC 1 ({100 * explained[0]:.0f}% of the variance)",
                      f"PC 2 ({100 * explained[1]:.0f}% of the variance)"))


__all__ = [
    "INTERPOLATION_PAIRS", "INTERPOLATION_STEPS", "Interpolations", "LatentMap", "MAP_IMAGES", "TRAVERSAL_DIMS",
    "TRAVERSAL_VALUES", "Traversal", "base_seed", "interpolations", "latent_codes", "latent_map", "map_index",
    "model_device", "reconstruction_figure", "reconstruction_grid", "sample_figure", "sample_grid", "sample_source",
    "samples", "shown_images", "shown_index",
    "traversal", "write_run_images",
]
