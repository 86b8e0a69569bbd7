"""`vaelab sample`, `reconstruct` and `interpolate`: what a trained run generates, as PNG grids.

Each picture is drawn as the run's own images/ are (`vaelab.report.images.label_grid`): the grid enlarged
DISPLAY_SCALE times under a title naming the run, its weights and the choices behind the images (temperature,
seed, split, pairs), with column and row labels where they help. `--raw` writes the bare grid instead, one
pixel per pixel and no labels (what these commands wrote before), for a program that reads the tiles back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vaelab.cli.common import MAX_IMAGES, _add_run_args, _formatter, _load, _positive, _run_data, _seed
from vaelab.errors import VaelabError
from vaelab.report.figures import sample_source
from vaelab.report.images import grid_shape, label_grid, labelled_pairs, labelled_square, make_grid, pairs_grid, \
    save_png, square_grid
from vaelab.runs import Run

_DATA_DIR_HELP = "where the run's dataset lives on this machine (for a folder: run, the directory holding it)"
_RAW_HELP = "write the bare grid: one pixel per pixel, no title or labels"


def _add_picture_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", metavar="PNG", help=f"output file (default: {default_out})")
    p.add_argument("--raw", action="store_true", help=_RAW_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sample`, `reconstruct` and `interpolate` commands to the parser."""
    p = sub.add_parser("sample", help="draw images from the prior into a PNG grid", formatter_class=_formatter,
                       description="Decode n latent codes drawn from the prior (std scaled by the temperature).")
    _add_run_args(p)
    p.add_argument("-n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier (default 1.0)")
    _add_picture_args(p, "RUN/images/samples_seedS_tT.png")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="inputs beside their reconstructions, as a PNG grid",
                       formatter_class=_formatter,
                       description="Encode images (posterior mean) and decode them; originals and "
                                   "reconstructions alternate in the grid.")
    _add_run_args(p)
    p.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--seed", type=int, default=0, help="which images: a random choice with this seed")
    p.add_argument("--data-dir", metavar="DIR", help=_DATA_DIR_HELP)
    _add_picture_args(p, "RUN/images/reconstructions_SPLIT.png")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("interpolate", help="walk the latent space between pairs of images",
                       formatter_class=_formatter,
                       description="For each pair of images, decode codes along the linear and the "
                                   "spherical (slerp) path between their posterior means.")
    _add_run_args(p)
    p.add_argument("--pairs", type=int, default=4, help="number of random image pairs (default 4)")
    p.add_argument("--index", type=int, nargs=2, metavar=("I", "J"), help="interpolate between these two images")
    p.add_argument("--steps", type=int, default=10, help="images per path, end points included (default 10)")
    p.add_argument("--method", default="both", choices=["both", "lerp", "slerp"], help="path (default both)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pairs")
    p.add_argument("--data-dir", metavar="DIR", help=_DATA_DIR_HELP)
    _add_picture_args(p, "RUN/images/interpolations_SPLIT.png")
    p.set_defaults(func=cmd_interpolate)


def _pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def _run_name(args: argparse.Namespace, run: Run) -> str:
    """The run as the user named it: "pretrained:NAME" (or another such name) as given, a directory by its name."""
    given = str(args.run)
    if ":" in given and not Path(given).exists():
        return given
    return run.path.resolve().name or str(run.path)


def _weights(args: argparse.Namespace, run: Run) -> str:
    """Which weights drew the picture: the checkpoint, its epoch, and whether they are the moving average."""
    epoch = run.meta.get("epoch")
    ema = run.config.train.ema
    return (f"checkpoint {args.checkpoint}" + (f" (epoch {epoch})" if epoch is not None else "")
            + (f", EMA weights (decay {ema:g})" if ema else ""))


def cmd_sample(args: argparse.Namespace) -> int:
    _positive(args.n, "-n", MAX_IMAGES)
    _seed(args.seed)
    if not 0 < args.temperature < float("inf"):
        raise VaelabError(f"--temperature must be > 0, got {args.temperature}")
    run = _load(args)
    images = run.sample(args.n, temperature=args.temperature, seed=args.seed)
    out = Path(args.out) if args.out else run.path / "images" / f"samples_seed{args.seed}_t{args.temperature:g}.png"
    grid = square_grid(images)
    if not args.raw:
        grid = labelled_square(grid, args.n, title=[
            f"{_run_name(args, run)}: {args.n} samples, temperature {args.temperature:g}, seed {args.seed}",
            f"{sample_source(run.model)} (std x {args.temperature:g}), decoded means", _weights(args, run)])
    save_png(grid, out)
    print(f"wrote {args.n} samples (seed {args.seed}, temperature {args.temperature:g}) to {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    _positive(args.n, "-n", MAX_IMAGES)
    _seed(args.seed)
    run = _load(args)
    split = _run_data(run, args.data_dir).split(args.split)
    if not len(split):
        raise VaelabError(f"the {args.split} split of this run's dataset is empty; choose another --split")
    idx = _pick(len(split), min(args.n, len(split)), args.seed)
    x = split.images[idx].float() / 255
    out = Path(args.out) if args.out else run.path / "images" / f"reconstructions_{args.split}.png"
    grid = pairs_grid(x, run.reconstruct(x))
    if not args.raw:
        grid = labelled_pairs(grid, len(idx), "image", "recon", title=[
            f"{_run_name(args, run)}: {len(idx)} {args.split} images beside their reconstructions",
            f"picked with seed {args.seed}; {_weights(args, run)}"])
    save_png(grid, out)
    print(f"wrote {len(idx)} {args.split} images beside their reconstructions to {out}")
    return 0


def _check_interpolate_sizes(args: argparse.Namespace) -> None:
    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2 (the two end points), got {args.steps}")
    _positive(args.pairs, "--pairs", MAX_IMAGES)
    _positive(args.steps, "--steps", MAX_IMAGES)
    n_rows = (1 if args.index else args.pairs) * (2 if args.method == "both" else 1)
    if n_rows * args.steps > MAX_IMAGES:
        raise VaelabError(f"--pairs x --steps asks for {n_rows * args.steps:,} images in one grid; "
                          f"keep it at most {MAX_IMAGES:,}")
    _seed(args.seed)


def _pairs(args: argparse.Namespace, n_images: int) -> list[tuple[int, int]]:
    """The image pairs to interpolate between: --index, or --pairs random ones."""
    if args.index:
        for i in args.index:
            if not 0 <= i < n_images:
                raise VaelabError(f"--index {i} is out of range: the {args.split} split has {n_images} images")
        return [tuple(args.index)]
    idx = _pick(n_images, 2 * args.pairs, args.seed).tolist()
    return list(zip(idx[0::2], idx[1::2]))


def cmd_interpolate(args: argparse.Namespace) -> int:
    _check_interpolate_sizes(args)
    run = _load(args)
    split = _run_data(run, args.data_dir).split(args.split)
    if len(split) < 2:
        raise VaelabError(f"the {args.split} split has {len(split)} image(s); interpolation needs two, "
                          "choose another --split")
    pairs = _pairs(args, len(split))
    methods = ["lerp", "slerp"] if args.method == "both" else [args.method]
    rows = []
    for i, j in pairs:
        x0, x1 = split.images[i].float() / 255, split.images[j].float() / 255
        for m in methods:
            rows.append(run.interpolate(x0, x1, steps=args.steps, method=m).cpu())
    out = Path(args.out) if args.out else run.path / "images" / f"interpolations_{args.split}.png"
    grid = make_grid(torch.cat(rows), nrow=args.steps)
    if not args.raw:
        grid = _label_interpolations(grid, args, run, pairs, methods)
    save_png(grid, out)
    print(f"wrote {len(pairs)} interpolation(s) ({', '.join(methods)}; one row each) to {out}")
    return 0


def _label_interpolations(grid: np.ndarray, args: argparse.Namespace, run: Run, pairs: list[tuple[int, int]],
                          methods: list[str]) -> np.ndarray:
    """The interpolation grid enlarged: a row label per path (method and the two image indices), the end
    columns marked A and B, under a title saying what the rows are."""
    labels = [f"{m} {i}-{j}" for i, j in pairs for m in methods]
    rows, cols = grid_shape(len(labels) * args.steps, args.steps)
    what = ("lerp (linear) and slerp (spherical) paths, alternating" if len(methods) == 2 else
            f"{methods[0]} ({'linear' if methods[0] == 'lerp' else 'spherical'}) paths")
    picked = "the images of --index" if args.index else f"random pairs (seed {args.seed})"
    return label_grid(grid, rows, cols, column_labels=["A"] + [""] * (cols - 2) + ["B"], row_labels=labels,
                      title=[f"{_run_name(args, run)}: paths between the codes of two {args.split} images",
                             f"rows: {what}, {args.steps} steps; {picked}",
                             "A, B: the two images' reconstructions", _weights(args, run)])
