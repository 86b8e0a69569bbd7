"""`vaelab datasets`: which datasets vaelab can see, where they were found, and their sizes."""

from __future__ import annotations

import argparse

from vaelab.cli.common import _formatter
from vaelab.data import BUILTIN, describe


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `datasets` command to the parser."""
    p = sub.add_parser("datasets", help="which datasets vaelab can see, where from, their sizes",
                       formatter_class=_formatter,
                       description="List the built-in datasets (and any given as arguments, e.g. folder:PATH) "
                                   "with where they were found and their sizes; for a missing one, where it "
                                   "is downloaded from on first use (offline: the URL and where to put the "
                                   "files). Presets for the standard datasets: configs/datasets/NAME.toml.")
    p.add_argument("specs", nargs="*", metavar="DATASET", help="datasets to describe (default: the built-in ones)")
    p.add_argument("--data-dir", metavar="DIR", help="also search this directory first")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
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
