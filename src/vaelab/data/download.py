"""Download files into the cache, verified by SHA-256 and written atomically.

A file is streamed into a temporary file beside its destination, hashed on the
way, and renamed into place only when its SHA-256 matches. A wrong hash, a
dropped connection or a stalled server leaves nothing behind in the cache.
Only https:// URLs are accepted, redirects included, except plain http:// to
the loopback interface (used by the tests' local server). Network errors and
5xx answers are retried a bounded number of times; 4xx answers are not.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DownloadError

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
_CHUNK = 1 << 16


class ChecksumError(DownloadError):
    """The server delivered bytes whose SHA-256 is not the expected one (not retried)."""


class _Refused(DownloadError):
    """A URL (or a redirect to one) that vaelab will not fetch (not retried)."""


def offline() -> bool:
    """True when the user forbade network access with VAELAB_OFFLINE=1."""
    return os.environ.get("VAELAB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise _Refused(f"refusing to download {url}: only https:// URLs are allowed")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL that `_check_url` accepts (no https -> http downgrade)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 (urllib's signature)
        _check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, timeout: float):
    return urllib.request.build_opener(_CheckedRedirects()).open(url, timeout=timeout)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | Path,
    sha256: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch `url` into `dest` if its SHA-256 equals `sha256`; return `dest`.

    Network errors are retried `retries` times with a short backoff; a hash
    mismatch is not retried (the server sends the wrong file).
    """
    _check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt, 10.0) * 0.25)
        try:
            if log:
                log(f"downloading {url}")
            digest = hashlib.sha256()
            with _open(url, timeout) as response, open(tmp, "wb") as out:
                expected_len = response.headers.get("Content-Length")
                received = 0
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                if expected_len is not None and received != int(expected_len):
                    raise DownloadError(f"connection to {url} closed after {received} of {expected_len} bytes")
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != sha256:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(
                    f"{url} has SHA-256 {got}, expected {sha256}; the file was discarded. "
                    "The mirror may be serving a damaged or different file: try again later or place the "
                    f"file in {dest.parent} yourself"
                )
            os.replace(tmp, dest)
            return dest
        except ChecksumError:
            tmp.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            if exc.code < 500 and exc.code not in (408, 429):  # the file is not there: asking again won't help
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
            last_error = exc
        except _Refused:
            tmp.unlink(missing_ok=True)
            raise
        except (DownloadError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            last_error = exc
    reason = getattr(last_error, "reason", last_error)
    raise DownloadError(
        f"could not download {url} after {retries + 1} attempts ({reason}); "
        "check the network, or put the file in the dataset directory by hand"
    )
