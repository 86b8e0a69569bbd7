"""The `vaelab` command line: a thin layer over the Python API.

The commands of the core (train, sample, reconstruct, ...) live here; the larger ones have a module
each in this package (report, sweep, serve, export), which registers its parser with `register(sub)`.

Every user mistake (bad config key, missing data, corrupt checkpoint) is a
`VaelabError`: printed as one line `vaelab: error: ...`, exit code 2, no
traceback. Usage errors from argparse are printed the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from vaelab._version import __version__
from vaelab.config import describe_keys, load_config
from vaelab.errors import VaelabError

CONVENTIONS = """\
loss conventions (the same everywhere in vaelab):
  every number is per image, in nats, summed over all pixels (and channels)
  and over all latent dimensions; a batch or split reports its mean.
    loss  = recon + beta * KL     what Adam minimises (beta: train.beta, default 1)
    recon = -log p(x|z)           Bernoulli: binary cross-entropy summed over pixels;
                                  Gaussian: SSE/(2 sigma^2) + D log(sigma sqrt(2 pi)),
                                  sigma fixed (model.gaussian_std, default 0.1)
    KL    = KL(q(z|x) || N(0,I))  closed form, summed over latent dimensions
    -ELBO = recon + KL            independent of beta; 0 KL for the plain autoencoder
  gap = test -ELBO minus train -ELBO (positive: worse on unseen images)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file ([data], [model], [train], [eval] tables)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files (= data.data_dir)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `vaelab train`")
    p.add_argument("--checkpoint", default="best", metavar="NAME",
                   help="which weights: best, last, or a snapshot such as epoch-0010 (default: best)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vaelab", formatter_class=_formatter,
        description="Train variational autoencoders on images, generate with them, and measure how they "
                    "generalize to data they never saw.",
        epilog=CONVENTIONS,
    )
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a VAE or autoencoder, writing a run directory",
                       formatter_class=_formatter,
                       description="Train a model and write a run directory: config.toml, metrics.jsonl, "
                                   "checkpoints (best and last), image grids, evaluation.json.",
                       epilog=CONVENTIONS + "\n\nconfig keys (TOML [section] key = value, or --set section.key=value):\n"
                       + describe_keys())
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory to create (default: runs/<dataset>-<model>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint, exactly where it stopped "
                                                   "(only --set train.epochs=N may change)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw images from the prior into a PNG grid", formatter_class=_formatter,
                       description="Decode n latent codes drawn from the prior (std scaled by the temperature).")
    _add_run_args(p)
    p.add_argument("-n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier (default 1.0)")
    p.add_argument("--out", metavar="PNG", help="output file (default: RUN/images/samples_seedS_tT.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="inputs beside their reconstructions, as a PNG grid",
                       formatter_class=_formatter,
                       description="Encode images (posterior mean) and decode them; originals and "
                                   "reconstructions alternate in the grid.")
    _add_run_args(p)
    p.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--seed", type=int, default=0, help="which images: a random choice with this seed")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the run's dataset lives on this machine (for a folder: run, the directory holding it)")
    p.add_argument("--out", metavar="PNG", help="output file (default: RUN/images/reconstructions_SPLIT.png)")
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
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the run's dataset lives on this machine (for a folder: run, the directory holding it)")
    p.add_argument("--out", metavar="PNG", help="output file (default: RUN/images/interpolations_SPLIT.png)")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("compare", help="how well runs generate: FD, precision, recall in a classifier's features",
                       formatter_class=_formatter,
                       description="Score samples of one or more runs (a VAE from its prior; an autoencoder from "
                                   "N(0, I) and from the Gaussian fitted to its codes) and real training images "
                                   "against the test images, in the feature space of a small CNN classifier "
                                   "trained on the runs' dataset (not Inception's): Frechet distance, precision "
                                   "and recall (Kynkaeaenniemi et al. 2019), density and coverage (Naeem et al. "
                                   "2020). The runs must share a dataset.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `vaelab train`")
    p.add_argument("--checkpoint", default="best", metavar="NAME",
                   help="which weights: best, last, or a snapshot such as epoch-0010 (default: best)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("-n", type=int, default=10_000, help="samples and test images per set (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifier, the samples and the image subsets")
    p.add_argument("--classifier", metavar="FILE", help="reuse a classifier saved by an earlier compare")
    p.add_argument("--data-dir", metavar="DIR", help="where the runs' dataset lives on this machine")
    p.add_argument("--out", metavar="DIR", help="output folder (default: FIRST_RUN/compare)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("datasets", help="which datasets vaelab can see, where from, their sizes",
                       formatter_class=_formatter,
                       description="List the built-in datasets (and any given as arguments, e.g. folder:PATH) "
                                   "with where they were found and their sizes.")
    p.add_argument("specs", nargs="*", metavar="DATASET", help="datasets to describe (default: the built-in ones)")
    p.add_argument("--data-dir", metavar="DIR", help="also search this directory first")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("demo", help="train the VAE and the AE baseline on Fashion-MNIST and compare them",
                       formatter_class=_formatter,
                       description="The main job: train the default VAE and the plain autoencoder with the same "
                                   "encoder/decoder, write samples, reconstructions and interpolations, and "
                                   "print train / validation / test loss, the gap, and VAE against AE. Falls "
                                   "back to scikit-learn's digits when Fashion-MNIST is not available.",
                       epilog=CONVENTIONS)
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="demo directory (default: runs/demo-<time>)")
    p.set_defaults(func=cmd_demo)

    from vaelab.cli import evaluate, export, report, serve, sweep

    for module in (evaluate, report, sweep, serve, export):
        module.register(sub)
    return parser


# --------------------------------------------------------------------------- commands


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _default_run_name(dataset: str, kind: str, arch: str) -> str:
    """One plain path component under runs/: a dataset spec's '/', '..' or '@DIR' never leads elsewhere."""
    import re

    name = dataset if not dataset.startswith("folder:") else "folder-" + Path(dataset[7:]).name
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{name}-{kind}-{arch}").strip("_") or "run"
    return f"{name}-{_stamp()}"


def _config_from_args(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from vaelab.training import resume, train

    if args.resume:
        from vaelab.config import parse_override

        if args.config or args.out or args.data_dir:
            raise VaelabError("--resume continues a run with its own config and directory; leave out --config, "
                              "--out and --data-dir")
        epochs = None
        for text in args.overrides:
            section, key, value = parse_override(text)
            if (section, key) != ("train", "epochs") or not isinstance(value, int) or isinstance(value, bool):
                raise VaelabError(f"--resume takes only --set train.epochs=N (more epochs), got {text!r}")
            epochs = value
        resume(args.resume, epochs=epochs)
        return 0

    cfg = _config_from_args(args)
    out = args.out or str(Path("runs") / _default_run_name(cfg.data.dataset, cfg.model.kind, cfg.model.arch))
    train(cfg, out)
    return 0


def _load(args: argparse.Namespace):
    from vaelab.runs import load_run

    return load_run(args.run, checkpoint=args.checkpoint, device=args.device)


MAX_IMAGES = 10_000  # images in one grid
MAX_SEED = 2**63 - 1


def _positive(value: int, flag: str, most: int | None = None) -> None:
    if value <= 0:
        raise VaelabError(f"{flag} must be a positive integer, got {value}")
    if most is not None and value > most:
        raise VaelabError(f"{flag} must be at most {most:,} (one PNG grid), got {value:,}")


def _seed(value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise VaelabError(f"--seed must lie between 0 and 2**63-1, got {value}")


def cmd_sample(args: argparse.Namespace) -> int:
    from vaelab.report.images import save_png, square_grid

    _positive(args.n, "-n", MAX_IMAGES)
    _seed(args.seed)
    if not 0 < args.temperature < float("inf"):
        raise VaelabError(f"--temperature must be > 0, got {args.temperature}")
    run = _load(args)
    images = run.sample(args.n, temperature=args.temperature, seed=args.seed)
    out = Path(args.out) if args.out else run.path / "images" / f"samples_seed{args.seed}_t{args.temperature:g}.png"
    save_png(square_grid(images), out)
    print(f"wrote {args.n} samples (seed {args.seed}, temperature {args.temperature:g}) to {out}")
    return 0


def _run_data(run, data_dir: str | None):
    """The run's own dataset and splits, loaded as in training (grey values)."""
    from vaelab.runs import load_run_data

    return load_run_data(run, data_dir)


def _pick(n_total: int, n: int, seed: int):
    import torch

    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from vaelab.report.images import pairs_grid, save_png

    _positive(args.n, "-n", MAX_IMAGES)
    _seed(args.seed)
    run = _load(args)
    split = _run_data(run, args.data_dir).split(args.split)
    if not len(split):
        raise VaelabError(f"the {args.split} split of this run's dataset is empty; choose another --split")
    idx = _pick(len(split), min(args.n, len(split)), args.seed)
    x = split.images[idx].float() / 255
    out = Path(args.out) if args.out else run.path / "images" / f"reconstructions_{args.split}.png"
    save_png(pairs_grid(x, run.reconstruct(x)), out)
    print(f"wrote {len(idx)} {args.split} images beside their reconstructions to {out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    import torch

    from vaelab.report.images import make_grid, save_png

    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2 (the two end points), got {args.steps}")
    _positive(args.pairs, "--pairs", MAX_IMAGES)
    _positive(args.steps, "--steps", MAX_IMAGES)
    n_rows = (1 if args.index else args.pairs) * (2 if args.method == "both" else 1)
    if n_rows * args.steps > MAX_IMAGES:
        raise VaelabError(f"--pairs x --steps asks for {n_rows * args.steps:,} images in one grid; "
                          f"keep it at most {MAX_IMAGES:,}")
    _seed(args.seed)
    run = _load(args)
    split = _run_data(run, args.data_dir).split(args.split)
    if len(split) < 2:
        raise VaelabError(f"the {args.split} split has {len(split)} image(s); interpolation needs two, "
                          "choose another --split")
    if args.index:
        for i in args.index:
            if not 0 <= i < len(split):
                raise VaelabError(f"--index {i} is out of range: the {args.split} split has {len(split)} images")
        pairs = [tuple(args.index)]
    else:
        idx = _pick(len(split), 2 * args.pairs, args.seed).tolist()
        pairs = list(zip(idx[0::2], idx[1::2]))
    methods = ["lerp", "slerp"] if args.method == "both" else [args.method]
    rows = []
    for i, j in pairs:
        x0, x1 = split.images[i].float() / 255, split.images[j].float() / 255
        for m in methods:
            rows.append(run.interpolate(x0, x1, steps=args.steps, method=m).cpu())
    out = Path(args.out) if args.out else run.path / "images" / f"interpolations_{args.split}.png"
    save_png(make_grid(torch.cat(rows), nrow=args.steps), out)
    print(f"wrote {len(pairs)} interpolation(s) ({', '.join(methods)}; one row each) to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vaelab.evaluation.generators import compare_generators
    from vaelab.runs import load_run, write_json

    _positive(args.n, "-n", 100_000)
    _seed(args.seed)
    runs = [load_run(path, checkpoint=args.checkpoint, device=args.device) for path in args.runs]
    first = runs[0]
    for r in runs[1:]:
        if r.config.data.dataset != first.config.data.dataset or r.image_shape != first.image_shape:
            raise VaelabError(f"{r.path} was trained on {r.config.data.dataset} {r.image_shape}, {first.path} on "
                              f"{first.config.data.dataset} {first.image_shape}; compare runs of one dataset")
    splits = _run_data(first, args.data_dir)
    names: dict[str, object] = {}
    for r in runs:
        name = f"{r.path.name} ({r.config.model.kind})"
        names[name if name not in names else f"{name} #{len(names) + 1}"] = r.model
    out = Path(args.out) if args.out else first.path / "compare"
    result = compare_generators(names, splits, out, n=args.n, seed=args.seed, classifier=args.classifier)
    print(result["table"])
    write_json(out / "compare.json", {"runs": [str(r.path) for r in runs], "checkpoint": args.checkpoint,
                                      "dataset": splits.name, **result})
    print(f"wrote {out / 'compare.json'}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from vaelab.data import BUILTIN, describe

    specs = args.specs or list(BUILTIN)
    descriptions = [describe(spec, args.data_dir) for spec in specs]
    w = max(16, *(len(d.name) + 2 for d in descriptions))
    head = f"{'dataset':<{w}}{'status':<10}{'train':>8}{'test':>8}  {'shape':<10}  where"
    print(head)
    print("-" * len(head))
    for d in descriptions:
        shape = "x".join(map(str, d.image_shape)) if d.image_shape else "-"
        train = str(d.train) if d.train is not None else "-"
        test = str(d.test) if d.test is not None else "-"
        print(f"{d.name:<{w}}{'found' if d.available else 'missing':<10}{train:>8}{test:>8}  {shape:<10}  {d.where}")
        if d.note:
            print(f"{'':<{w}}{d.note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vaelab.demo import run_demo

    cfg = _config_from_args(args)
    explicit_dataset = (any(o.startswith("data.dataset=") for o in args.overrides) or args.config is not None
                        or args.data_dir is not None)
    run_demo(cfg, Path(args.out or f"runs/demo-{_stamp()}"), allow_fallback=not explicit_dataset)
    return 0


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VaelabError as exc:
        print(f"vaelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vaelab: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("vaelab: error: out of memory; use smaller data.image_size, train.batch_size, "
              "train.eval_batch_size or model sizes (or data.max_train)", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch reports allocation failures as RuntimeError (OutOfMemoryError on GPU)
        text = str(exc)
        if "out of memory" not in text.lower() and "can't allocate memory" not in text.lower():
            raise
        print(f"vaelab: error: out of memory ({text.splitlines()[0][:160]}); use smaller data.image_size, "
              "train.batch_size, train.eval_batch_size or model sizes (or data.max_train)", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no: a full disk, a read-only or missing place
        where = f": {exc.filename}" if exc.filename else ""
        print(f"vaelab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
