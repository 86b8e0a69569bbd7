"""The explorer's URLs: each path's method, its query parameters and the `ExplorerApp` call that answers it.

`find_route` answers 404 and 405, `parse_query` refuses unknown and repeated parameters; query values
are parsed strictly (an integer is digits, a float is finite), their ranges are checked by the app. The
page itself (`/`) is answered by the handler, with the headers in `PAGE_HEADERS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from vaelab.serve.app import ExplorerApp
from vaelab.serve.limits import RequestError, shown

Query = dict[str, list[str]]  # as urllib.parse.parse_qs gives it


@dataclass(frozen=True)
class Route:
    method: str
    params: tuple[str, ...]
    call: Callable[[ExplorerApp, Query, bytes], Any]


def _one(q: Query, name: str) -> str | None:
    values = q.get(name)
    return None if values is None else values[0]


def _int(q: Query, name: str, default: int | None) -> int | None:
    text = _one(q, name)
    if text is None:
        return default
    if not re.fullmatch(r"[+-]?\d{1,30}", text.strip()):
        raise RequestError(400, f"{name} must be an integer, got {shown(text)}")
    return int(text)


def _float(q: Query, name: str, default: float | None) -> float | None:
    text = _one(q, name)
    if text is None:
        return default
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RequestError(400, f"{name} must be a finite number, got {shown(text)}")
    return value


def _base(q: Query) -> int | None:
    text = _one(q, "base")
    return None if text in (None, "zero") else _int(q, "base", None)


# the app's methods are looked up on each call (not bound here), so a replaced method is the one called
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
    "/api/set": Route("POST", (), lambda app, q, body: app.check_set(body)),
}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
}


def find_route(method: str, path: str) -> Route:
    """The route of a path (/index.html is /): RequestError 404 for an unknown path, 405 for another method."""
    route = ROUTES.get("/" if path == "/index.html" else path)
    if route is None:
        raise RequestError(404, f"no such page or endpoint: {shown(path)}; the API is under /api/ "
                                f"({', '.join(p for p in ROUTES if p != '/')})")
    allowed = route.method if route.method != "GET" else "GET, HEAD"
    if method not in allowed.split(", "):
        raise RequestError(405, f"{path} takes {route.method} requests, not {method}", allow=allowed)
    return route


def parse_query(path: str, route: Route, query: str) -> Query:
    """The query string's parameters: RequestError 400 for too many, an unknown one or one given twice."""
    try:
        q = parse_qs(query, keep_blank_values=True, max_num_fields=16)
    except ValueError:
        raise RequestError(400, "too many query parameters") from None
    unknown = sorted(set(q) - set(route.params))
    if unknown:
        known = ", ".join(route.params) or "none"
        raise RequestError(400, f"unknown parameter {shown(unknown[0])} for {path} (it takes: {known})")
    repeated = [name for name, values in q.items() if len(values) > 1]
    if repeated:
        raise RequestError(400, f"parameter {repeated[0]} is given {len(q[repeated[0]])} times; give it once")
    return q
