"""`vaelab report RUN`: one self-contained HTML page of a run (see `vaelab.report.html`)."""

from __future__ import annotations

import argparse

from vaelab.cli.common import _add_run_args, _formatter, _seed
from vaelab.report.html import write_html_report


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` command to the parser."""
    p = sub.add_parser(
        "report", help="one self-contained HTML page of a run: curves, samples, latent map, evaluation",
        formatter_class=_formatter,
        description="Write one HTML file (images inline, no external resources: it opens offline and can be "
                    "sent as it is) with the run's summary and config, training curves with the generalization "
                    "gap, the final evaluation, samples, reconstructions, interpolations, latent traversals, a "
                    "2-D map of the latent space coloured by label (the latent itself when it is 2-D, PCA "
                    "otherwise), and the tables and plots of `vaelab evaluate` when it has run. Sections that "
                    "need the dataset are left out, with a note, when it is not found here (see --data-dir).")
    _add_run_args(p)
    p.add_argument("--out", metavar="FILE.html", help="output file (default: RUN/report.html)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the run's dataset lives on this machine (for a folder: run, the directory holding it)")
    p.add_argument("--seed", type=int, default=0,
                   help="which samples and test images are shown: 0 (the default), those of the run's images/ "
                        "folder; another value, other prior draws and test images")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    _seed(args.seed)
    write_html_report(args.run, args.out, checkpoint=args.checkpoint, data_dir=args.data_dir, seed=args.seed,
                      device=args.device)
    return 0
