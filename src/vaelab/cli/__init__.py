"""The `vaelab` command line: a thin layer over the Python API.

One module per command group, each adding its parser with `register(sub)`: train, generate (sample,
reconstruct, interpolate), compare, datasets, pretrained, hub, demo, evaluate, check, report, sweep, serve, export. What
several of them share (the parser class, common options, loading a run) is in `common`.

Every user mistake (bad config key, missing data, corrupt checkpoint) is a
`VaelabError`: printed as one line `vaelab: error: ...`, exit code 2, no
traceback. Usage errors from argparse are printed the same way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from vaelab._version import __version__
from vaelab.cli import (check, compare, datasets, demo, evaluate, export, generate, hub, pretrained, report, serve,
                        sweep, train)
from vaelab.cli.common import CONVENTIONS, _formatter, _Parser
from vaelab.errors import VaelabError

# in --help's order
COMMANDS = (train, generate, compare, datasets, pretrained, hub, demo, evaluate, check, report, sweep, serve, export)


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
    for module in COMMANDS:
        module.register(sub)
    return parser


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


__all__ = ["build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
