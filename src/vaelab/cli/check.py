"""`vaelab check RUN PATH...`: are these images from the run's training distribution, one by one and as a set?

The command line face of `vaelab.check_images` (vaelab.evaluation.imagecheck): every image of the PATHs
(image files, and folders searched as a `folder:` dataset is: PNG, JPEG, BMP, WebP, read and resized to
the run's size) gets its DoSE score (measured on its own: the same whatever it is checked with), its percentile
among the held-out scores of the run's validation images and a flag at their 99th percentile; the images
together get the DoSE batch test's verdict and p-value. `--json FILE` keeps every number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaelab.cli.common import _add_run_args, _formatter, _load
from vaelab.data.sources import IMAGE_EXTENSIONS, list_images, read_images
from vaelab.errors import DataError
from vaelab.evaluation.imagecheck import check_images
from vaelab.fileio import atomic_write
from vaelab.log import say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="judge images against the training data, one by one and as a set",
                       formatter_class=_formatter,
                       description="Score each image (files, and the images in folders) with the run's default "
                                   "OOD score (DoSE, fitted on validation images and kept in RUN/ood/) and judge "
                                   "them as one set (the "
                                   "DoSE batch test). For 10 or more images from one source, trust the set's "
                                   "verdict: single images close to the training data often pass.")
    _add_run_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files or folders of images (PNG, JPEG, BMP, WebP; sub-folders included)")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset lives (needed once, to fit the scorer "
                                                     "when the run has none yet)")
    p.add_argument("--list", type=int, default=20, metavar="N",
                   help="print the N images with the highest scores (default 20; 0: none)")
    p.add_argument("--json", metavar="FILE", help="write every image's numbers and the set's verdict as JSON")
    p.set_defaults(func=cmd_check)


def image_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The image files the PATHs name (a folder: every image below it, sorted) and how each is shown: a
    file as given, a folder's image by its path inside the folder (prefixed with the folder when several
    PATHs are given)."""
    files, names = [], []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DataError(f"{path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
            files += found
            names += [str(p.relative_to(path)) if len(paths) == 1 else str(Path(given) / p.relative_to(path))
                      for p in found]
        elif path.is_file():
            files.append(path)
            names.append(given)
        else:
            raise DataError(f"{path} does not exist; give image files or folders of images")
    return files, names


def cmd_check(args: argparse.Namespace) -> int:
    if args.list < 0:
        raise DataError(f"--list must be 0 or more, got {args.list}")
    run = _load(args)
    c, h, w = run.image_shape
    if h != w:
        raise DataError(f"vaelab check reads images resized to a square; this run's are {h}x{w}: use "
                        "vaelab.check_images from Python with images of that size")
    files, names = image_files(args.paths)
    images = read_images(files, h, c, run.config.data.resize)
    result = check_images(run, images, data_dir=args.data_dir, log=say)
    say(f"{len(names)} images from {', '.join(args.paths)}, judged by {result.score}")
    order = sorted(range(len(names)), key=lambda i: -result.scores[i])[: args.list]
    if order:
        width = max(len(names[i]) for i in order) + 2
        say(f"{'image':<{width}}{'DoSE score':>11}{'percentile':>12}  flagged")
        for i in order:
            say(f"{names[i]:<{width}}{result.scores[i]:>11.2f}{result.percentiles[i]:>11.1f}%  "
                f"{'yes' if result.flagged[i] else 'no'}")
    say(result.summary())
    if args.json:
        b = result.batch
        record = {"run": str(run.path), "paths": args.paths, "score": result.score,
                  "validation_images": result.validation_images, "threshold_99": result.threshold,
                  "set": b.as_dict(),
                  "images": [{"file": n, "score": float(s), "percentile": float(p), "flagged": bool(f)}
                             for n, s, p, f in zip(names, result.scores, result.percentiles, result.flagged)]}
        atomic_write(Path(args.json), (json.dumps(record, indent=1) + "\n").encode(), "the check's JSON")
        say(f"wrote {args.json}")
    return 0


__all__ = ["cmd_check", "register"]
