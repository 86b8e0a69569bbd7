"""`vaelab serve`: a latent explorer in the browser, over the standard library's HTTP server.

Two layers, so the logic is testable without a socket:

- `ExplorerApp(run, splits)`: plain methods that take typed values and return JSON-ready dicts, images
  as PNG data URIs at the model's own size (the page enlarges them). It validates every value
  (`RequestError` carries the HTTP status: 400 out of range, 413 too large, 415 not an image, 422 wrong
  size) and runs all torch work under one lock, since a module is not safe to call from two threads.
- `make_server(...)` / `serve(...)`: a `ThreadingHTTPServer` that parses queries, enforces the request
  limits and turns every failure into a JSON `{"error": ...}` answer: never a traceback to the client,
  and the server keeps running.

What an uploaded image is measured against (computed once at start-up, `reference_images` of each):

- its NLL (importance-sampled, k samples; nats per image) against the NLLs of training images;
- its OOD score S(x) = NLL / ln 2 - PNG code length (Serra et al. 2020, `vaelab.evaluation.ood`; bits per image,
  higher = more out-of-distribution) against the scores of test images, which also gives the verdict:
  the plain likelihood rates simple images (flat, few strokes) as likely whatever the training data,
  the complexity-corrected score does not;
- its reconstruction error (mean squared, pixels in [0, 1]) against training images: the only yardstick
  of an autoencoder, which has no likelihood.

Images are scored as the evaluation protocol scores them: a run trained on binarized pixels scores
uploads binarized once with a fixed seed (the same bytes always give the same numbers), the training and
test references are the fixed evaluation views of their splits (`vaelab.data.eval_view`).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import math
import re
import signal
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from vaelab.data import DatasetSplits, binarize_once, eval_view, spread_index
from vaelab.errors import DataError, VaelabError
from vaelab.models.generate import latent_frame, lerp, slerp
from vaelab.evaluation.unseen import has_likelihood
from vaelab.evaluation.likelihood import NLL_SEED, importance_sampled
from vaelab.models import eval_mode
from vaelab.evaluation.ood import complexity_corrected_score, png_code_length_bits
from vaelab.runs.load import Run, json_safe, load_run, load_run_data

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_K = 100  # importance samples per upload: ~10 ms for one 28x28 image; k=100 is also part 2's eval.ood_k
MAX_K = 1000
DEFAULT_REFERENCE = 200  # training and test images scored at start-up (each): ~7 s for a 28x28 conv VAE, 1 thread
MAX_REFERENCE = 5000
MAX_BODY = 2 * 1024 * 1024  # bytes of one upload
DRAIN_LIMIT = 16 * 1024 * 1024  # an oversize body up to this is read and dropped, so the client sees the 413
MAX_SAMPLES = 64
MAX_STEPS = 64
MAX_THUMBNAILS = 100
MAX_TEMPERATURE = 5.0
TRAVERSE_RANGE = 4.0  # traversal values, in prior standard deviations around the prior's centre
MAX_SEED = 2**63 - 1
UNUSUAL_PERCENTILE = 99.0  # above this percentile of the test images' OOD scores: "unusual"
UPLOAD_SEED_OFFSET = 4242  # uploads are binarized with data.binarize_seed + this (fixed: same bytes, same numbers)
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TYPICAL = "typical of the training data"
UNUSUAL = "unusual"


class RequestError(VaelabError):
    """A bad request: its HTTP status (4xx) and one line saying what is wrong and what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shown(value: Any, most: int = 40) -> str:
    """A client's value, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "...'"


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    if below or value > high or not math.isfinite(value):
        lo, hi, got = (f"{v:g}" if isinstance(v, float) else str(v) for v in (low, high, value))
        span = f"> {lo} and at most {hi}" if low_open else f"from {lo} to {hi}"
        raise RequestError(400, f"{name} must be {span}, got {got}")


# --------------------------------------------------------------------------- images in and out


def png_data_uri(image: torch.Tensor) -> str:
    """One image (C, H, W), float in [0, 1] or uint8, as a `data:image/png;base64,...` URI at its own size."""
    from PIL import Image

    x = image.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = x.numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(data: bytes, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The bytes of an uploaded image as uint8 (1, C, H, W) in the model's channels.

    Strict about the size (422 naming the expected one: resizing is the client's choice) and checks it
    from the header *before* decoding the pixels, so a decompression bomb is refused unread. Grey and
    colour uploads are converted to the model's channels (grey = ITU-R 601 luma), 16-bit grey scaled to
    8 bits; transparency is dropped. Animated images give their first frame.
    """
    from PIL import Image, UnidentifiedImageError

    c, h, w = image_shape
    if not data:
        raise RequestError(400, "the request body is empty; send the image file's bytes as the body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            if img.size != (w, h):
                raise RequestError(422, f"the image is {img.size[0]}x{img.size[1]} pixels, but this model takes "
                                        f"{w}x{h} (width x height); resize it first (the page's 'resize to fit' "
                                        "does it)")
            img.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own check, on opening
        raise RequestError(422, f"the image is far larger than this model's {w}x{h} pixels (width x height); "
                                "resize it first") from None
    except UnidentifiedImageError:
        raise RequestError(415, f"the body is not an image this server reads ({', '.join(UPLOAD_FORMATS)}); "
                                "send a PNG or JPEG file") from None
    except (OSError, ValueError, SyntaxError, EOFError):  # Pillow's word for truncated or corrupt files
        raise RequestError(400, "the image file is truncated or corrupt; send a complete PNG or JPEG file") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        raise RequestError(415, "floating-point images are not supported; send an 8-bit PNG or JPEG")
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).unsqueeze(0)  # a writable copy


def percentile(value: float, reference: np.ndarray) -> float:
    """Where `value` falls among `reference`, in percent: the share below it, ties counted one half."""
    below = int(np.count_nonzero(reference < value))
    ties = int(np.count_nonzero(reference == value))
    return 100.0 * (below + 0.5 * ties) / len(reference)


# --------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class Measures:
    """Per-image numbers of a set of images, float64 (N,); the likelihood ones None without a likelihood."""

    recon_error: np.ndarray  # mean squared error of the reconstruction, pixels in [0, 1]
    nll: np.ndarray | None = None  # -L_k, nats per image
    png_bits: np.ndarray | None = None  # L(x): PNG code length of the scored image, bits
    ood: np.ndarray | None = None  # S(x) = nll / ln 2 - png_bits, bits per image


@dataclass(frozen=True)
class Reference:
    """What uploads are compared with: training images (NLL, reconstruction error), test images (OOD score)."""

    train: Measures
    test: Measures
    seconds: float


def check_limits(k: int, reference_images: int) -> None:
    """VaelabError unless the importance samples per upload and the reference images are within bounds."""
    if not 1 <= k <= MAX_K:
        raise VaelabError(f"--k must lie between 1 and {MAX_K}, got {k}")
    if not 10 <= reference_images <= MAX_REFERENCE:
        raise VaelabError(f"--reference-images must lie between 10 and {MAX_REFERENCE}, got {reference_images}")


class ExplorerApp:
    """The explorer's logic, without HTTP: every method validates its values and returns a JSON-ready dict.

    >>> app = ExplorerApp(load_run("runs/my-vae"), splits)      # doctest: +SKIP
    >>> app.samples(n=8, temperature=0.8, seed=1)["images"][0]   # 'data:image/png;base64,...'
    """

    def __init__(self, run: Run, splits: DatasetSplits, *, k: int = DEFAULT_K,
                 reference_images: int = DEFAULT_REFERENCE, seed: int = 0) -> None:
        check_limits(k, reference_images)
        if splits.image_shape != run.image_shape:
            have, want = ("x".join(map(str, s)) for s in (splits.image_shape, run.image_shape))
            raise DataError(f"the data has images of shape {have} but the run was trained on {want}; "
                            "give the run's own dataset")
        if not len(splits.train) or not len(splits.test):
            raise DataError(f"{splits.name} needs training and test images for the explorer's references")
        self.run = run
        self.splits = splits
        self.k = k
        self.seed = seed
        self.model = run.model
        self.cfg = run.config
        self.kind = self.cfg.model.kind
        self.has_likelihood = bool(self.model.variational and has_likelihood(self.cfg))
        self.binary = self.cfg.data.binarize != "none"
        self.lock = threading.Lock()  # torch modules are not re-entrant across threads
        started = time.perf_counter()
        dc = self.cfg.data
        train_idx = spread_index(len(splits.train), reference_images, seed + 1)
        test_idx = spread_index(len(splits.test), reference_images, seed + 2)
        train_scored = eval_view(splits.train, "train", dc.binarize, dc.binarize_seed).images[train_idx]
        test_scored = eval_view(splits.test, "test", dc.binarize, dc.binarize_seed).images[test_idx]
        with self.lock:
            train, codes, _ = self._measure(splits.train.images[train_idx], train_scored)
            test, _, _ = self._measure(splits.test.images[test_idx], test_scored)
            # the units of traversals and activity, shared with the HTML report (the VampPrior's: the codes')
            self.frame = latent_frame(self.model, codes)
            self.activity = self._activity(codes)
        self.reference = Reference(train, test, time.perf_counter() - started)

    # ------------------------------------------------------------------ helpers (call under self.lock)

    def _floats(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.run.device, torch.float32) / 255.0

    def _measure(self, grey: torch.Tensor, scored: torch.Tensor) -> tuple[Measures, torch.Tensor, torch.Tensor]:
        """Reconstruction error of uint8 images `grey` (N, C, H, W), and the likelihood numbers of `scored`
        (the same images as the evaluation scores them: binarized if the run binarizes); also their codes
        and reconstructions."""
        x = self._floats(grey)
        with eval_mode(self.model):
            codes = self.model.code(x)
            recon = self.model.decode_mean(codes)
        recon_error = ((recon - x) ** 2).flatten(1).mean(1).double().cpu().numpy()
        if not self.has_likelihood:
            return Measures(recon_error), codes, recon
        est = importance_sampled(self.model, scored, k=self.k, batch_size=64, seed=NLL_SEED,
                                 device=self.run.device)
        nll = (-est.log_px).numpy()
        bits = png_code_length_bits(scored, binary=self.binary and scored.shape[1] == 1).astype(np.float64)
        return Measures(recon_error, nll, bits, complexity_corrected_score(nll, bits)), codes, recon

    def _activity(self, codes: torch.Tensor) -> list[float]:
        """Variance of each latent dimension's code over the training reference, in the frame's units:
        near 0 = a dimension the encoder ignores (moving along it changes little)."""
        var = codes.double().var(0).cpu()
        scale = self.frame.scale
        return [float(v) for v in (var / scale.double().cpu() ** 2)]

    def _test_image(self, index: int, name: str) -> torch.Tensor:
        n = len(self.splits.test)
        if not 0 <= index < n:
            raise RequestError(400, f"{name} must be a test image index from 0 to {n - 1}, got {index}")
        return self.splits.test.images[index:index + 1]

    def _label(self, index: int) -> str:
        label = int(self.splits.test.labels[index])
        classes = self.splits.classes
        return classes[label] if 0 <= label < len(classes) else str(label)

    # ------------------------------------------------------------------ endpoints

    def info(self) -> dict[str, Any]:
        """What the page needs to lay itself out: the model, the limits, the references."""
        c, h, w = self.run.image_shape
        ref = self.reference

        def summary(values: np.ndarray | None) -> dict[str, float] | None:
            if values is None:
                return None
            q = np.percentile(values, [5, 50, 95, UNUSUAL_PERCENTILE])
            return {"p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "p_unusual": float(q[3])}

        return {
            "run": self.run.path.name, "kind": self.kind, "arch": self.cfg.model.arch,
            "dataset": self.splits.name, "image_shape": [c, h, w], "latent_dim": self.model.latent_dim,
            "epoch": self.run.meta.get("epoch"), "likelihood": self.has_likelihood,
            "binarized": self.binary, "k": self.k if self.has_likelihood else None,
            "test_images": len(self.splits.test), "activity": self.activity, "traverse_units": self.frame.units,
            "limits": {"max_samples": MAX_SAMPLES, "max_temperature": MAX_TEMPERATURE, "max_steps": MAX_STEPS,
                       "max_thumbnails": MAX_THUMBNAILS, "traverse_range": TRAVERSE_RANGE, "max_body": MAX_BODY},
            "reference": {"train_images": len(ref.train.recon_error), "test_images": len(ref.test.recon_error),
                          "seconds": round(ref.seconds, 3), "train_nll": summary(ref.train.nll),
                          "test_ood": summary(ref.test.ood), "train_recon_error": summary(ref.train.recon_error)},
            "unusual_percentile": UNUSUAL_PERCENTILE,
        }

    def samples(self, n: int = 16, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
        """n images from the prior (every layer's, for a hierarchical VAE), its std scaled by `temperature`."""
        _check_range("n", n, 1, MAX_SAMPLES)
        _check_range("temperature", temperature, 0, MAX_TEMPERATURE, low_open=True)
        _check_range("seed", seed, 0, MAX_SEED)
        with self.lock:
            images = self.run.sample(n, temperature=temperature, seed=seed)
        return {"images": [png_data_uri(x) for x in images], "n": n, "temperature": temperature, "seed": seed}

    def test_images(self, offset: int = 0, n: int = 40) -> dict[str, Any]:
        """Thumbnails of test images to pick from, with their index and label."""
        total = len(self.splits.test)
        _check_range("n", n, 1, MAX_THUMBNAILS)
        _check_range("offset", offset, 0, max(total - 1, 0))
        rows = range(offset, min(offset + n, total))
        return {"total": total, "offset": offset,
                "images": [{"index": i, "label": self._label(i), "image": png_data_uri(self.splits.test.images[i])}
                           for i in rows]}

    def interpolate(self, a: int, b: int, t: float | None = None, steps: int | None = None,
                    method: str = "slerp") -> dict[str, Any]:
        """The decoded point at position t in [0, 1] on the path between the codes of test images a and b
        (posterior means), or the whole path in `steps` images."""
        if method not in ("lerp", "slerp"):
            raise RequestError(400, f"method must be lerp or slerp, got {_shown(method)}")
        if (t is None) == (steps is None):
            raise RequestError(400, "give either t (one point, 0 to 1) or steps (the whole path)")
        if t is not None:
            _check_range("t", t, 0.0, 1.0)
            ts = torch.tensor([t], dtype=torch.float32)
        else:
            _check_range("steps", steps, 2, MAX_STEPS)
            ts = torch.linspace(0, 1, steps)
        pair = torch.cat([self._test_image(a, "a"), self._test_image(b, "b")])
        with self.lock, eval_mode(self.model):
            codes = self.model.code(self._floats(pair))
            path = (lerp if method == "lerp" else slerp)(codes[0], codes[1], ts.to(codes.device))
            images = self.model.decode_mean(path)
        out: dict[str, Any] = {"a": a, "b": b, "method": method}
        if t is not None:
            return out | {"t": t, "image": png_data_uri(images[0])}
        return out | {"t": ts.tolist(), "images": [png_data_uri(x) for x in images]}

    def traverse(self, dim: int, value: float | None = None, steps: int | None = None,
                 base: int | None = None) -> dict[str, Any]:
        """Decode a code whose dimension `dim` is set to `value` prior standard deviations from the prior's
        centre, the other dimensions taken from `base`: the code of that test image, or (None) the centre.
        With `steps`, a row of values evenly spaced over [-TRAVERSE_RANGE, TRAVERSE_RANGE]."""
        d = self.model.latent_dim
        _check_range("dim", dim, 0, d - 1)
        if (value is None) == (steps is None):
            raise RequestError(400, "give either value (one point) or steps (a row of values)")
        if value is not None:
            _check_range("value", value, -TRAVERSE_RANGE, TRAVERSE_RANGE)
            values = torch.tensor([value], dtype=torch.float32)
        else:
            _check_range("steps", steps, 2, MAX_STEPS)
            values = torch.linspace(-TRAVERSE_RANGE, TRAVERSE_RANGE, steps)
        start = None if base is None else self._test_image(base, "base")
        with self.lock, eval_mode(self.model):
            centre, scale = self.frame.loc, self.frame.scale
            z = centre.clone() if start is None else self.model.code(self._floats(start))[0]
            codes = z.repeat(len(values), 1)
            codes[:, dim] = centre[dim] + values.to(codes.device) * scale[dim]
            images = self.model.decode_mean(codes)
        out: dict[str, Any] = {"dim": dim, "base": "zero" if base is None else base}
        if value is not None:
            return out | {"value": value, "image": png_data_uri(images[0])}
        return out | {"values": values.tolist(), "images": [png_data_uri(x) for x in images]}

    def score_upload(self, data: bytes) -> dict[str, Any]:
        """Reconstruction, NLL, bits/dim and where an uploaded image falls against the training data."""
        if len(data) > MAX_BODY:
            raise RequestError(413, f"the upload is {len(data):,} bytes; send at most {MAX_BODY:,}")
        grey = decode_upload(data, self.run.image_shape)
        scored = binarize_once(grey, self.cfg.data.binarize_seed + UPLOAD_SEED_OFFSET) if self.binary else grey
        with self.lock:
            m, _, recon = self._measure(grey, scored)
        ref = self.reference
        err = float(m.recon_error[0])
        out: dict[str, Any] = {
            "input": png_data_uri(grey[0]), "scored": png_data_uri(scored[0]),
            "reconstruction": png_data_uri(recon[0]), "binarized": self.binary,
            "recon_error": err, "recon_error_percentile_train": percentile(err, ref.train.recon_error),
            "likelihood": self.has_likelihood,
        }
        if not self.has_likelihood:
            why = ("NLL is not defined for an autoencoder (it has no likelihood)" if self.kind == "ae" else
                   "NLL is not defined for a Bernoulli decoder trained on grey pixels")
            pct = out["recon_error_percentile_train"]
            return out | {"nll": None, "note": why + "; judged by its reconstruction error instead",
                          **_verdict(pct, f"its reconstruction error is higher than that of {pct:.1f}% of the "
                                          f"{len(ref.train.recon_error)} training images")}
        nll, ood = float(m.nll[0]), float(m.ood[0])
        ood_pct = percentile(ood, ref.test.ood)
        return out | {
            "k": self.k, "nll": nll, "bits_per_dim": nll / (math.prod(self.run.image_shape) * math.log(2)),
            "nll_percentile_train": percentile(nll, ref.train.nll), "png_bits": float(m.png_bits[0]),
            "ood_score": ood, "ood_percentile_test": ood_pct,
            **_verdict(ood_pct, f"its OOD score (NLL in bits minus PNG code length) is higher than that of "
                                f"{ood_pct:.1f}% of the {len(ref.test.ood)} test images"),
        }


def _verdict(pct: float, reason: str) -> dict[str, str]:
    return {"verdict": UNUSUAL if pct >= UNUSUAL_PERCENTILE else TYPICAL, "verdict_reason": reason}


# --------------------------------------------------------------------------- HTTP


def _one(q: dict[str, list[str]], name: str) -> str | None:
    values = q.get(name)
    return None if values is None else values[0]


def _int(q: dict[str, list[str]], name: str, default: int | None) -> int | None:
    text = _one(q, name)
    if text is None:
        return default
    if not re.fullmatch(r"[+-]?\d{1,30}", text.strip()):
        raise RequestError(400, f"{name} must be an integer, got {_shown(text)}")
    return int(text)


def _float(q: dict[str, list[str]], name: str, default: float | None) -> float | None:
    text = _one(q, name)
    if text is None:
        return default
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RequestError(400, f"{name} must be a finite number, got {_shown(text)}")
    return value


def _base(q: dict[str, list[str]]) -> int | None:
    text = _one(q, "base")
    return None if text in (None, "zero") else _int(q, "base", None)


@dataclass(frozen=True)
class Route:
    method: str
    params: tuple[str, ...]
    call: Callable[[ExplorerApp, dict[str, list[str]], bytes], Any]


ROUTES: dict[str, Route] = {
    "/": Route("GET", (), lambda app, q, body: None),
    "/api/info": Route("GET", (), lambda app, q, body: app.info()),
    "/api/samples": Route("GET", ("n", "temperature", "seed"), lambda app, q, body: app.samples(
        _int(q, "n", 16), _float(q, "temperature", 1.0), _int(q, "seed", 0))),
    "/api/test-images": Route("GET", ("offset", "n"), lambda app, q, body: app.test_images(
        _int(q, "offset", 0), _int(q, "n", 40))),
    "/api/interpolate": Route("GET", ("a", "b", "t", "steps", "method"), lambda app, q, body: app.interpolate(
        _int(q, "a", 0), _int(q, "b", 1), _float(q, "t", None), _int(q, "steps", None), _one(q, "method") or "slerp")),
    "/api/traverse": Route("GET", ("dim", "value", "steps", "base"), lambda app, q, body: app.traverse(
        _int(q, "dim", 0), _float(q, "value", None), _int(q, "steps", None), _base(q))),
    "/api/upload": Route("POST", (), lambda app, q, body: app.score_upload(body)),
}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
}


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection (at most `max_connections`; more get 503), the app's
    lock around inference. `url` is where it answers; `log` receives one line per request and errors."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: ExplorerApp | None, *,
                 log: Callable[[str], None] | None = None, max_connections: int = 64) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.log = log or (lambda line: None)
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)
        host = address[0]
        self.loopback = _is_loopback(host)
        self.allowed_hosts = set(LOOPBACK_NAMES) | {host.lower()}

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        if not self.slots.acquire(blocking=False):
            body = b'{"error": "the server is busy (too many open connections); retry in a moment"}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        self.log(f"error on a connection from {client_address[0]}:\n{traceback.format_exc()}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"
    server_version = "vaelab-serve"
    sys_version = ""
    timeout = 15  # seconds a connection may stay silent (idle keep-alive, a stalled upload)
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall on keep-alive

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    # ------------------------------------------------------------------ plumbing

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _dispatch, with its time

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, header too long, unknown method) as JSON too,
        with a status line even when the request line was too broken to name its HTTP version."""
        self.close_connection = True
        self.request_version = self.protocol_version
        self._send_json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def handle_expect_100(self) -> bool:
        """Refuse an oversize upload before its body is sent (curl asks first for large files)."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            self.close_connection = True
            self._send_json(413, {"error": _too_large(int(length))})
            return False
        return super().handle_expect_100()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None,
              head: bool = False) -> None:
        if getattr(self, "_unread", False):  # a body left in the stream would be read as the next request
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, status: int, data: Any, extra: dict[str, str] | None = None, head: bool = False) -> None:
        body = json.dumps(json_safe(data), allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json", extra, head)

    def _host_ok(self) -> bool:
        """A server on a loopback address answers only requests addressed to it by a loopback name: another
        site's page in the user's browser cannot reach it by rebinding its own name to 127.0.0.1."""
        host = self.headers.get("Host")
        if not self.server.loopback or host is None:
            return True
        name = host.strip().lower()
        name = name[1:name.index("]")] if name.startswith("[") and "]" in name else name.rsplit(":", 1)[0]
        return name in self.server.allowed_hosts

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(411, "send the upload with a Content-Length header (no chunked encoding)")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise RequestError(411, "send the upload with a Content-Length header")
        if not length_text.strip().isdigit():
            self.close_connection = True
            raise RequestError(400, f"Content-Length must be a number of bytes, got {_shown(length_text)}")
        length = int(length_text)
        self._unread = False
        if length > MAX_BODY:
            if length <= DRAIN_LIMIT:  # read and drop it, so the client is not cut off before it reads the answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            raise RequestError(413, _too_large(length))
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise RequestError(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        self._status = 0
        self._unread = self.headers.get("Content-Length", "0").strip() not in ("", "0") \
            or self.headers.get("Transfer-Encoding") is not None
        url = urlsplit(self.path)
        try:
            self._answer(method, url.path, url.query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except RequestError as exc:
            self._send_json(exc.status, {"error": str(exc)}, _allow(exc))
        except VaelabError as exc:
            self._send_json(400, {"error": str(exc)})
        except Exception as exc:  # a bug: logged with its traceback, answered without it
            self.server.log(f"error answering {method} {self.path}:\n{traceback.format_exc()}")
            self.close_connection = True
            self._send_json(500, {"error": f"the server failed on this request ({type(exc).__name__}); "
                                           "the details are in its log"})
        ms = (time.perf_counter() - started) * 1000
        self.server.log(f"{self.address_string()} {method} {url.path[:80]} {self._status} {ms:.1f} ms")

    def _answer(self, method: str, path: str, query: str) -> None:
        if not self._host_ok():
            raise RequestError(403, f"this server answers requests for {self.server.url} only "
                                    f"(Host {_shown(self.headers.get('Host'))})")
        route = ROUTES.get("/" if path == "/index.html" else path)
        if route is None:
            raise RequestError(404, f"no such page or endpoint: {_shown(path)}; the API is under /api/ "
                                    f"({', '.join(p for p in ROUTES if p != '/')})")
        allowed = route.method if route.method != "GET" else "GET, HEAD"
        if method not in allowed.split(", "):
            exc = RequestError(405, f"{path} takes {route.method} requests, not {method}")
            exc.allow = allowed  # type: ignore[attr-defined]
            raise exc
        head = method == "HEAD"
        if path in ("/", "/index.html"):  # the page ignores any query
            from vaelab.serve.page import PAGE

            self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8", PAGE_HEADERS, head)
            return
        try:
            q = parse_qs(query, keep_blank_values=True, max_num_fields=16)
        except ValueError:
            raise RequestError(400, "too many query parameters") from None
        unknown = sorted(set(q) - set(route.params))
        if unknown:
            known = ", ".join(route.params) or "none"
            raise RequestError(400, f"unknown parameter {_shown(unknown[0])} for {path} (it takes: {known})")
        repeated = [name for name, values in q.items() if len(values) > 1]
        if repeated:
            raise RequestError(400, f"parameter {repeated[0]} is given {len(q[repeated[0]])} times; give it once")
        body = self._read_body() if method == "POST" else b""
        if self.server.app is None:
            raise RequestError(503, "the server is still starting; retry in a moment")
        self._send_json(200, route.call(self.server.app, q, body), head=head)


def _too_large(length: int) -> str:
    return f"the upload is {length:,} bytes; send at most {MAX_BODY:,} (the model's images are small)"


def _allow(exc: RequestError) -> dict[str, str] | None:
    allow = getattr(exc, "allow", None)
    return {"Allow": allow} if allow else None


# --------------------------------------------------------------------------- starting and stopping


def make_server(run_or_path: Run | str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                splits: DatasetSplits | None = None, checkpoint: str = "best", device: str = "cpu",
                k: int = DEFAULT_K, reference_images: int = DEFAULT_REFERENCE,
                log: Callable[[str], None] | None = None, max_connections: int = 64) -> ExplorerServer:
    """A bound, not yet serving explorer server for a run (its directory or a loaded `Run`).

    The port is taken first (port 0: a free one, see `.url`), so a busy port fails before the start-up
    work: loading the data (the run's own dataset as its config names it, unless `splits` is given)
    and scoring the references. Call `serve(server)` (or `.serve_forever()`) to answer.
    """
    if not 0 <= port <= 65535:
        raise VaelabError(f"port must lie between 0 and 65535, got {port}")
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path, checkpoint, device)
    try:
        server = ExplorerServer((host, port), None, log=log, max_connections=max_connections)
    except OSError as exc:
        raise VaelabError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          "(0 picks a free one) or --host") from None
    try:
        server.app = ExplorerApp(run, splits if splits is not None else load_run_data(run), k=k,
                                 reference_images=reference_images)
    except BaseException:
        server.server_close()
        raise
    return server


def serve(server: ExplorerServer, announce: Callable[[str], None] = print) -> None:
    """Answer requests until Ctrl-C (or SIGTERM), then close the socket and return."""
    host = server.server_address[0]
    if not server.loopback:
        announce(f"warning: listening on {host}, reachable from other machines; the explorer has no "
                 "authentication, use --host 127.0.0.1 unless that is what you want")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    announce("stopped")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
