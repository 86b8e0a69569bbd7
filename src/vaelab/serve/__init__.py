"""`vaelab serve`: a latent explorer in the browser, over the standard library's HTTP server.

    server = make_server("runs/my-vae", port=0)     # loads the run and its data, scores the references
    print(server.url); serve(server)                # answers until Ctrl-C

Modules, each importing only those above it:

- `limits`:    defaults, limits, `RequestError` (a bad request's HTTP status and message), `check_limits`
- `images`:    uploads decoded strictly (`decode_upload`), answers as PNG data URIs (`png_data_uri`)
- `reference`: what an upload is measured against (training, validation and test images scored at start-up,
               the run's DoSE scorer), the verdict: the worst of its numbers
- `app`:       `ExplorerApp`, the logic of every endpoint without HTTP (testable without a socket)
- `routes`:    the URLs, their methods and query parameters, each mapped to an app call
- `page`:      the single web page (HTML, CSS, JavaScript) as a string
- `http`:      the request handler and `ExplorerServer` (limits, JSON errors), `make_server`, `serve`
"""

from vaelab.serve.limits import (DEFAULT_HOST, DEFAULT_K, DEFAULT_PORT, DEFAULT_REFERENCE, MAX_BODY, MAX_K,
                                 MAX_REFERENCE, MAX_SAMPLES, MAX_SET, MAX_STEPS, MAX_TEMPERATURE, MAX_THUMBNAILS,
                                 TRAVERSE_RANGE, RequestError, check_limits)
from vaelab.serve.images import decode_upload, png_data_uri
from vaelab.serve.reference import TYPICAL, UNUSUAL, UNUSUAL_PERCENTILE, Measures, Reference, percentile
from vaelab.serve.app import ExplorerApp
from vaelab.serve.routes import ROUTES
from vaelab.serve.page import PAGE
from vaelab.serve.http import ExplorerServer, make_server, serve

__all__ = [
    "DEFAULT_HOST", "DEFAULT_K", "DEFAULT_PORT", "DEFAULT_REFERENCE", "MAX_BODY", "MAX_K", "MAX_REFERENCE",
    "MAX_SAMPLES", "MAX_SET", "MAX_STEPS", "MAX_TEMPERATURE", "MAX_THUMBNAILS", "PAGE", "ROUTES", "TRAVERSE_RANGE",
    "TYPICAL", "UNUSUAL", "UNUSUAL_PERCENTILE", "ExplorerApp", "ExplorerServer", "Measures", "Reference",
    "RequestError", "check_limits", "decode_upload", "make_server", "percentile", "png_data_uri", "serve",
]
