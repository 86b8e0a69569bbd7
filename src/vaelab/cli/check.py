"""`vaelab check RUN FOLDER`: are these images from the run's training distribution, one by one and as a set?

The command line face of `vaelab.check_images` (vaelab.evaluation.imagecheck): every image of FOLDER
(PNG, JPEG, BMP, WebP, read and resized as a `folder:` dataset is) gets its DoSE score, its percentile
among the held-out scores of the run's validation images and a flag at their 99th percentile; the folder
as a whole gets the DoSE batch test's verdict and p-value. `--json FILE` keeps every number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaelab.cli.common import _add_run_args, _formatter, _load
from vaelab.data.sources import list_images, load_folder
from vaelab.errors import DataError
from vaelab.evaluation.imagecheck import check_images
from vaelab.fileio import atomic_write
from vaelab.log import say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="judge a folder of images against the training data, one by one and as a set",
                       formatter_class=_formatter,
                       description="Score each image of FOLDER with the run's default OOD score (DoSE, fitted on "
                                   "validation images and kept in RUN/ood/) and judge the folder as one set (the "
                                   "DoSE batch test). For 10 or more images from one source, trust the set's "
                                   "verdict: single images close to the training data often pass.")
    _add_run_args(p)
    p.add_argument("folder", help="a folder of images (PNG, JPEG, BMP, WebP; sub-folders included)")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset lives (needed once, to fit the scorer "
                                                     "when the run has none yet)")
    p.add_argument("--list", type=int, default=20, metavar="N",
                   help="print the N images with the highest scores (default 20; 0: none)")
    p.add_argument("--json", metavar="FILE", help="write every image's numbers and the set's verdict as JSON")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    if args.list < 0:
        raise DataError(f"--list must be 0 or more, got {args.list}")
    run = _load(args)
    c, h, w = run.image_shape
    root = Path(args.folder).expanduser()
    raw = load_folder(str(root), h if h == w else None, c, run.config.data.resize)
    names = [str(p.relative_to(root)) for p in list_images(root)]
    result = check_images(run, raw.train_images, data_dir=args.data_dir, log=say)
    say(f"{len(names)} images from {root}, judged by {result.score}")
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
        record = {"run": str(run.path), "folder": str(root), "score": result.score,
                  "validation_images": result.validation_images, "threshold_99": result.threshold,
                  "set": {"n": b.n, "mean_score": b.mean_score, "threshold": b.threshold, "p_value": b.p_value,
                          "alpha": b.alpha, "flagged": b.flagged},
                  "images": [{"file": n, "score": float(s), "percentile": float(p), "flagged": bool(f)}
                             for n, s, p, f in zip(names, result.scores, result.percentiles, result.flagged)]}
        atomic_write(Path(args.json), (json.dumps(record, indent=1) + "\n").encode(), "the check's JSON")
        say(f"wrote {args.json}")
    return 0


__all__ = ["cmd_check", "register"]
