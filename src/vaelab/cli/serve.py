"""`vaelab serve RUN`: the latent explorer in the browser (`vaelab.serve`)."""

from __future__ import annotations

import argparse
import sys
import time

from vaelab.cli.common import _add_run_args, _formatter, _load, _run_data
from vaelab.serve import (DEFAULT_HOST, DEFAULT_K, DEFAULT_PORT, DEFAULT_REFERENCE, MAX_K, MAX_REFERENCE,
                          check_limits, make_server, serve)

DESCRIPTION = """\
Start a local web app to explore a trained run: samples from the prior with a temperature slider,
the path between two test images, each latent dimension, and an uploaded image's reconstruction,
likelihood and out-of-distribution verdict against the training data. Open the printed URL.

At start-up it scores --reference-images training and test images (importance sampling with --k
samples each) to place uploads among them, and reads the run's DoSE scorer from RUN/ood/ (on a run's
first start it is fitted on the validation images' statistics and kept there: about 100 s on 2 CPU cores
for the default VAE, about 10 s on later starts). Ctrl-C stops it."""

EPILOG = """\
JSON API (GET unless noted; images are PNG data URIs at the model's size):
  /api/info                                  the model, the limits, the references
  /api/samples?n=16&temperature=1&seed=0     n <= 64, 0 < temperature <= 5
  /api/test-images?offset=0&n=40             thumbnails with index and label
  /api/interpolate?a=0&b=1&t=0.5&method=slerp   or steps=N for the whole path
  /api/traverse?dim=0&value=1.5&base=zero    base: zero or a test image index; or steps=N
  POST /api/upload                           the image file as the body (at most 2 MB, the model's size)
Bad requests get a 4xx answer with {"error": "..."}."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` command to the parser."""
    p = sub.add_parser("serve", help="a latent explorer in the browser (local web app)", formatter_class=_formatter,
                       description=DESCRIPTION, epilog=EPILOG)
    _add_run_args(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; other addresses "
                        "are reachable from the network, with no authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one and prints it)")
    p.add_argument("--k", type=int, default=DEFAULT_K,
                   help=f"importance samples per image for the uploads' NLL and the references "
                        f"(default {DEFAULT_K}, at most {MAX_K})")
    p.add_argument("--reference-images", type=int, default=DEFAULT_REFERENCE, metavar="N",
                   help=f"training and test images scored at start-up as the uploads' yardstick "
                        f"(default {DEFAULT_REFERENCE}, 10 to {MAX_REFERENCE})")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the run's dataset files are, if not where training found them")
    p.add_argument("--quiet", action="store_true", help="log errors only, not one line per request")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    check_limits(args.k, args.reference_images)  # before the model and the data are loaded
    started = time.perf_counter()
    run = _load(args)
    splits = _run_data(run, args.data_dir)

    def log(line: str) -> None:
        if not args.quiet or " 500 " in line or line.startswith("error"):
            print(line, file=sys.stderr, flush=True)

    server = make_server(run, args.host, args.port, splits=splits, k=args.k,
                         reference_images=args.reference_images, log=log)
    app = server.app
    c, h, w = run.image_shape
    scoring = f"uploads scored with k={app.k}" if app.has_likelihood else "no likelihood (reconstruction only)"
    print(f"vaelab serve: {run.path.name} ({app.kind}, {splits.name} {c}x{h}x{w}); {scoring}; references: "
          f"{len(app.reference.train.recon_error)} training and {len(app.reference.test.recon_error)} test images "
          f"(ready in {time.perf_counter() - started:.1f} s)", flush=True)
    print(f"open {server.url}  (Ctrl-C stops)", flush=True)
    serve(server, announce=lambda line: print(line, flush=True))
    return 0
