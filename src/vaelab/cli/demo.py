"""`vaelab demo`: the VAE and the autoencoder baseline trained side by side, and compared (`vaelab.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli.common import CONVENTIONS, _add_config_args, _config_from_args, _formatter, _stamp
from vaelab.demo import run_demo


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` command to the parser."""
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


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    explicit_dataset = (any(o.startswith("data.dataset=") for o in args.overrides) or args.config is not None
                        or args.data_dir is not None)
    run_demo(cfg, Path(args.out or f"runs/demo-{_stamp()}"), allow_fallback=not explicit_dataset)
    return 0
