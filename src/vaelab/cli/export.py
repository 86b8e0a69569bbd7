"""`vaelab export`: a trained run's decoder and encoder as ONNX and TorchScript files (see vaelab.export)."""

from __future__ import annotations

import argparse
import textwrap

from vaelab.cli.common import _formatter
from vaelab.export import FORMATS, PARTS, export_run


def _list_of(known: tuple[str, ...], what: str):
    """An argparse type: comma-separated names from `known`, each once (a bad one: exit 2, one line)."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",")]
        for i, value in enumerate(values):
            if value not in known:
                raise argparse.ArgumentTypeError(f"unknown {what} {value!r} in {text!r}; choose from "
                                                 f"{','.join(known)}")
            if value in values[:i]:
                raise argparse.ArgumentTypeError(f"{what} {value!r} is given twice in {text!r}")
        return values

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` command to the parser."""
    p = sub.add_parser(
        "export", help="write the decoder and encoder as ONNX and TorchScript files, usable without vaelab",
        formatter_class=_formatter,
        description=textwrap.fill(
            "Export a trained run's decoder (z -> the mean image of p(x|z), in [0, 1]) and encoder (image in "
            "[0, 1] -> mean and logvar of q(z|x), or the autoencoder's code) as ONNX files for onnxruntime and "
            "TorchScript files for torch.jit.load, with a dynamic batch dimension. Each file is run on random "
            "inputs and compared with PyTorch before it is written. export.json describes the inputs, outputs "
            "and files and shows how to use them. A hierarchical VAE exports its top layer: the decoder sets "
            "the lower layers to their conditional prior means, as reconstructions and interpolations do "
            "(the ancestral sampling of `vaelab sample` is not exported).", 100),
        epilog="example:\n  vaelab export runs/my-vae --format onnx --parts decoder\n"
               "ONNX needs pip install 'vaelab[export]'; TorchScript needs only torch.")
    p.add_argument("run", help="run directory written by `vaelab train`")
    p.add_argument("--checkpoint", default="best", metavar="NAME",
                   help="which weights: best, last, or a snapshot such as epoch-0010 (default: best)")
    p.add_argument("--format", dest="format", default="both", choices=["onnx", "torchscript", "both"],
                   help="file format (default: both)")
    p.add_argument("--parts", type=_list_of(PARTS, "part"), default=list(PARTS), metavar="LIST",
                   help="comma-separated parts to export (default: decoder,encoder)")
    p.add_argument("--opset", type=int, metavar="N",
                   help="ONNX operator set version, 18 or newer (default: the exporter's; export.json "
                        "records it)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN/export)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    formats = list(FORMATS) if args.format == "both" else [args.format]
    export_run(args.run, checkpoint=args.checkpoint, out=args.out, formats=formats, parts=args.parts,
               opset=args.opset)
    return 0
