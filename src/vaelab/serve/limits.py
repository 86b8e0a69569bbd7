"""The explorer's defaults and limits, and how a value outside them is refused.

`RequestError` carries the HTTP status of a bad request (400 out of range, 413 too large, 415 not an
image, 422 wrong size, ...) and one line saying what is wrong and what to send instead; the HTTP layer
turns it into a JSON `{"error": ...}` answer. `check_limits` is the one check of the start-up options,
shared by `ExplorerApp` and the CLI (which calls it before loading the model and the data).
"""

from __future__ import annotations

import math
from typing import Any

from vaelab.errors import VaelabError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_K = 100  # importance samples per upload: ~10 ms for one 28x28 image; k=100 is also part 2's eval.ood_k
MAX_K = 1000
DEFAULT_REFERENCE = 200  # training and test images scored at start-up (each): ~7 s for a 28x28 conv VAE, 1 thread
MAX_REFERENCE = 5000
MAX_BODY = 2 * 1024 * 1024  # bytes of one upload
MAX_SAMPLES = 64
MAX_STEPS = 64
MAX_THUMBNAILS = 100
MAX_SET = 1000  # DoSE scores judged as one set (/api/set): the page uploads that many files at most
MAX_TEMPERATURE = 5.0
TRAVERSE_RANGE = 4.0  # traversal values, in prior standard deviations around the prior's centre
MAX_SEED = 2**63 - 1


class RequestError(VaelabError):
    """A bad request: its HTTP status (4xx) and one line saying what is wrong and what to send instead;
    for 405, `allow` names the methods the path takes (the answer's Allow header)."""

    def __init__(self, status: int, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


def shown(value: Any, most: int = 40) -> str:
    """A client's value, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "...'"


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """RequestError 400 unless low <= value <= high (low < value with `low_open`) and finite."""
    below = value <= low if low_open else value < low
    if below or value > high or not math.isfinite(value):
        lo, hi, got = (f"{v:g}" if isinstance(v, float) else str(v) for v in (low, high, value))
        span = f"> {lo} and at most {hi}" if low_open else f"from {lo} to {hi}"
        raise RequestError(400, f"{name} must be {span}, got {got}")


def check_limits(k: int, reference_images: int) -> None:
    """VaelabError unless the importance samples per upload and the reference images are within bounds."""
    if not 1 <= k <= MAX_K:
        raise VaelabError(f"--k must lie between 1 and {MAX_K}, got {k}")
    if not 10 <= reference_images <= MAX_REFERENCE:
        raise VaelabError(f"--reference-images must lie between 10 and {MAX_REFERENCE}, got {reference_images}")
