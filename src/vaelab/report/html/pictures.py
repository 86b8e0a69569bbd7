"""The sections of the page drawn by the model: samples, reconstructions, interpolations, latent traversals
and the latent map.

The figures themselves come from `vaelab.report.figures`, the one version the run's images/ folder is
drawn from too: with the report's seed 0 the page shows the same prior draws and the same test images as
images/samples.png, reconstructions.png and interpolations.png. Captions name what the model's code is
through the `Model` protocol (`variational`, `n_layers`, `prior_description`), never through its kind.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vaelab.data import DatasetSplits, ImageSet
from vaelab.report.figures import (Interpolations, LatentMap, Traversal, base_seed, interpolations, latent_codes,
                                   latent_map, map_index, reconstruction_figure, sample_figure, shown_images,
                                   traversal)
from vaelab.report.html.page import Picture, Section, figure, grid_png, plot_png
from vaelab.report import plots
from vaelab.runs import Run

SAMPLE_TEMPERATURES = (1.0, 0.7)  # the same prior draws at both: the second grid shows them shrunk
TITLES = (("samples", "Samples"), ("reconstructions", "Reconstructions"), ("interpolations", "Interpolations"),
          ("traversals", "Latent traversals"), ("latent-map", "Latent map"))


def _what_code(run: Run, plural: bool = False) -> str:
    """What the model's deterministic code of an image (`model.code`) is called, for captions."""
    if not run.model.variational:
        name = "code"
    elif run.model.n_layers > 1:
        name = "top-layer posterior mean"
    else:
        name = "posterior mean"
    return name + ("s" if plural else "")


def _decoding(run: Run) -> str:
    """How a code becomes an image, where it is not plain (a hierarchical model decodes its top layer alone)."""
    if run.model.n_layers > 1:
        return (f" (the top layer z_L has {run.model.latent_dim} values; the layers below are set to their "
                "conditional prior means)")
    return ""


def _sample_source(run: Run) -> str:
    """Where the samples' codes come from, for the caption."""
    if not run.model.variational:
        return "codes drawn from the Gaussian fitted to the training codes (an autoencoder has no prior)"
    if run.model.n_layers > 1:
        return f"every layer drawn from its (conditional) prior ({run.model.prior_description()})"
    return f"z drawn from the prior ({run.model.prior_description()})"


def _same_as_run(seed: int, name: str) -> str:
    """A clause saying that the picture is the run's own images/<name> (only with the report's seed 0)."""
    return f" (the run's images/{name})" if seed == 0 else ""


def sample_pictures(run: Run, seed: int) -> list[Picture]:
    """train.grid_size samples at each of SAMPLE_TEMPERATURES, from the same prior draws (`seed`: the report's)."""
    base = base_seed(run.config, seed)
    pictures = []
    for t in SAMPLE_TEMPERATURES:
        grid = sample_figure(run.model, run.config, temperature=t, seed=base)
        same = _same_as_run(seed, "samples.png") if t == 1.0 else ""
        pictures.append(Picture(grid_png(grid), f"{run.config.train.grid_size} samples at temperature {t:g}{same}: "
                                f"{_sample_source(run)}, its standard deviation scaled by {t:g}; decoded means",
                                f"samples at temperature {t:g}", grid=True))
    return pictures


def reconstruction_picture(run: Run, x: torch.Tensor, seed: int) -> Picture:
    """The shown test images x (floats on the run's device) beside their reconstructions."""
    return Picture(grid_png(reconstruction_figure(run.model, x)),
                   f"{len(x)} test images (left of each pair) and their reconstructions (right)"
                   f"{_same_as_run(seed, 'reconstructions.png')}: the decoded {_what_code(run)}{_decoding(run)}",
                   "test images beside their reconstructions", grid=True)


def interpolation_pictures(run: Run, paths: Interpolations, seed: int) -> list[Picture]:
    """One grid per method (images/interpolations.png has both, its rows alternating)."""
    names = {"lerp": "linear (lerp)", "slerp": "spherical (slerp)"}
    return [Picture(grid_png(paths.figure(method)),
                    f"{name} paths between the {_what_code(run, True)} of {paths.pairs} pairs of the test images "
                    f"above, one pair per row, {len(paths.lerp[0])} steps; the end points are the two images' "
                    f"reconstructions{_decoding(run)}" + (" (the run's images/interpolations.png alternates the "
                                                          "two kinds, row by row)" if seed == 0 else ""),
                    f"{method} interpolations", grid=True) for method, name in names.items()]


def traversal_picture(run: Run, t: Traversal) -> Picture:
    """The traversal of the first shown test image, drawn with labelled rows and columns."""
    labels = [f"z[{d}] (var {t.variance[d]:.2g})" for d in t.dims]
    n_dims = len(t.variance)
    png = plot_png(plots.plot_traversals, t.images, row_labels=labels, values=t.values,
                   xlabel="k: the dimension set to centre + k × scale",
                   title=f"latent traversals of one test image ({len(t.dims)} of {n_dims} dimensions)")
    return Picture(png, f"The {_what_code(run)} of one test image (the first of the reconstructions), decoded "
                   f"with one dimension at a time moved across {t.values[0]:g}..{t.values[-1]:g}, the others "
                   f"kept{_decoding(run)}. Rows: the {len(t.dims)} dimensions whose codes vary most across "
                   f"{t.n_codes} test images (var: that variance, the activity statistic of Burda et al. 2015), "
                   f"largest first. Centre and scale: the centre ± k {t.units}.", "latent traversals")


def latent_map_picture(run: Run, m: LatentMap, labels: torch.Tensor, classes: Sequence[str]) -> Picture:
    """The test images' codes placed by `latent_map`, coloured by label."""
    n = len(m.xy)
    how = {"latent": f"the latent space itself: the {_what_code(run)} of each image (latent_dim = 2)",
           "latent-1d": f"the one latent dimension's {_what_code(run)} of each image along x (latent_dim = 1)",
           "pca": f"the top two principal components of the {_what_code(run, True)} ({n} codes of "
                  f"{run.model.latent_dim} dimensions; together {100 * sum(m.explained or (0, 0)):.0f}% of their "
                  "variance): a linear projection, distances are shrunk"}[m.method]
    png = plot_png(plots.plot_latent_map, m.xy, labels.numpy(), class_names=tuple(classes), xlabel=m.axis_labels[0],
                   ylabel=m.axis_labels[1],
                   title=f"{n} test images in the latent space" + (" (PCA)" if m.method == "pca" else ""))
    return Picture(png, f"{n} test images, coloured by label; coordinates: {how}.", "latent map")


def map_images(test: ImageSet, seed: int) -> torch.Tensor:
    """Which test images go on the latent map (`seed`: the figures' base seed, train.seed + the report's)."""
    return map_index(len(test), seed)


def run_latent_map(run: Run, images: torch.Tensor) -> LatentMap:
    """The map of uint8 images (N, C, H, W): their deterministic codes (the posterior means of a VAE, the
    codes of an AE, the top layer's posterior means of an HVAE) placed by `latent_map`."""
    return latent_map(latent_codes(run.model, images))


def _row(pictures: list[Picture]) -> str:
    return '<div class="row">' + "".join(figure(p) for p in pictures) + "</div>"


def model_sections(run: Run | None, problem: str | None, splits: DatasetSplits | None, data_problem: str | None,
                   seed: int) -> list[Section]:
    """Samples (the checkpoint alone), then reconstructions, interpolations, traversals and the latent map
    (the checkpoint and the test split). `problem` / `data_problem`: why the model / the data is missing."""
    if run is None:
        return [Section(i, t, missing=problem) for i, t in TITLES]
    out = [Section("samples", "Samples", _row(sample_pictures(run, seed)))]
    test = splits.test if splits is not None else None
    if test is not None and len(test) < 2:
        data_problem = f"the test split has {len(test)} image(s); these sections need at least 2"
    if data_problem is not None:
        return out + [Section(i, t, missing=data_problem) for i, t in TITLES[1:]]
    base = base_seed(run.config, seed)
    x = shown_images(test, run.config, run.device, base)  # the images/ folder's test images (seed 0)
    index = map_images(test, base)
    reference = latent_codes(run.model, test.images[index])  # computed once: the map and the traversals' frame
    out.append(Section("reconstructions", "Reconstructions", figure(reconstruction_picture(run, x, seed))))
    out.append(Section("interpolations", "Interpolations",
                       _row(interpolation_pictures(run, interpolations(run.model, x), seed))))
    moved = traversal(run.model, latent_codes(run.model, x[:1])[0], reference)
    out.append(Section("traversals", "Latent traversals", figure(traversal_picture(run, moved))))
    out.append(Section("latent-map", "Latent map", figure(latent_map_picture(
        run, latent_map(reference), test.labels[index], splits.classes))))
    return out
