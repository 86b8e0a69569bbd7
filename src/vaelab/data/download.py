"""Download files into the cache, verified by SHA-256 and written atomically.

A file is streamed into a temporary file beside its destination, hashed on the
way, and renamed into place only when its SHA-256 matches (for a file whose
publisher gives no SHA-256: its git blob id and/or its size, see `verify`). A wrong hash, a
dropped connection or a stalled server leaves nothing behind in the cache,
and a file already in the cache is only ever replaced by a verified one.
Only https:// URLs are accepted, redirects included, except plain http:// to
the loopback interface (used by the tests' local server). Network errors and
5xx answers are retried a bounded number of times; 4xx answers are not.

A stalled server is detected two ways: no byte for `timeout` seconds (the
socket's read timeout), or fewer than `min_rate` bytes per second over any
`timeout`-second window (a server that trickles a few bytes forever).
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

from vaelab.errors import DownloadError

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.25  # first retry after 0.5 s, then 1 s, 2 s, ... (at most 10 s)
DEFAULT_MIN_RATE = 1024  # bytes per second, averaged over a `timeout` window
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


def git_blob_id(path: str | Path) -> str:
    """The id git gives the file's bytes as a blob: SHA-1 of b"blob <size>\\0" followed by the bytes."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | Path, sha256: str | None, *, size: int | None = None, git_blob: str | None = None,
           got_sha256: str | None = None) -> str | None:
    """What is wrong with the file at `path` (None: nothing): its SHA-256, size or git blob id differs.

    Each check runs only when its expected value is given; `got_sha256` saves hashing the file again."""
    if sha256 is not None:
        got = got_sha256 or sha256_file(path)
        if got != sha256:
            return f"has SHA-256 {got}, expected {sha256}"
    if size is not None and os.path.getsize(path) != size:
        return f"has {os.path.getsize(path)} bytes, expected {size}"
    if git_blob is not None and git_blob_id(path) != git_blob:
        return f"has git blob id {git_blob_id(path)}, expected {git_blob}"
    return None


def _stream(url: str, tmp: Path, timeout: float, min_rate: float) -> str:
    """One request: stream `url` into `tmp` (flushed and fsynced), hashing on the way; the SHA-256 hex digest.

    DownloadError when the server stalls (fewer than `min_rate` bytes/s over a `timeout` window) or closes
    the connection before its Content-Length; urllib's and the socket's errors propagate as they are."""
    digest = hashlib.sha256()
    with _open(url, timeout) as response, open(tmp, "wb") as out:
        expected_len = response.headers.get("Content-Length")
        received = 0
        window_start, window_bytes = time.monotonic(), 0
        # read1: return what one socket read brings, so a trickling server is noticed between reads
        for chunk in iter(lambda: response.read1(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
            received += len(chunk)
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= timeout:
                if window_bytes < min_rate * elapsed:
                    raise DownloadError(f"the server stalled: {window_bytes} bytes in {elapsed:.1f} s "
                                        f"after {received} bytes")
                window_start, window_bytes = time.monotonic(), 0
        if expected_len is not None and received != int(expected_len):
            raise DownloadError(f"connection to {url} closed after {received} of {expected_len} bytes")
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _failure_reason(last_error: Exception | None, timeout: float) -> object:
    """What the last failed attempt says, for the final error message."""
    reason = getattr(last_error, "reason", last_error)
    if isinstance(last_error, urllib.error.HTTPError):
        reason = f"HTTP {last_error.code} {last_error.reason}"
    elif isinstance(last_error, TimeoutError) or isinstance(reason, TimeoutError):
        reason = f"no data for {timeout:g} s: the server stalled"
    return reason


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF_S,
    min_rate: float = DEFAULT_MIN_RATE,
    log: Callable[[str], None] | None = None,
    size: int | None = None,
    git_blob: str | None = None,
) -> Path:
    """Fetch `url` into `dest` if its SHA-256 equals `sha256`; return `dest`.

    `sha256=None` is for files whose publisher gives no SHA-256: then `git_blob` (a file kept in a git
    repository) and/or `size` are checked instead, as far as they are given.

    Network errors (a refused or dropped connection, a read timeout after
    `timeout` seconds of silence, a server slower than `min_rate` bytes/s over
    `timeout` seconds, a 5xx answer) are retried `retries` times, after
    `backoff * 2**attempt` seconds (at most 10); a hash mismatch is not
    retried (the server sends the wrong file). At most `retries + 1` requests.
    """
    _check_url(url)
    if not (timeout > 0 and retries >= 0 and backoff >= 0 and min_rate >= 0):
        raise ValueError("download_file needs timeout > 0, retries >= 0, backoff >= 0 and min_rate >= 0")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt * backoff, 10.0))
        try:
            if log:
                log(f"downloading {url}")
            got = _stream(url, tmp, timeout, min_rate)
            wrong = verify(tmp, sha256, size=size, git_blob=git_blob, got_sha256=got)
            if wrong:
                tmp.unlink(missing_ok=True)
                raise ChecksumError(
                    f"{url} {wrong}; the file was discarded. "
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
    raise DownloadError(
        f"could not download {url} after {retries + 1} attempts ({_failure_reason(last_error, timeout)}); "
        "check the network, or put the file in the dataset directory by hand"
    )


def download_first(urls, dest: str | Path, sha256: str | None, *, log: Callable[[str], None] | None = None,
                   size: int | None = None, git_blob: str | None = None) -> Path:
    """`download_file` from the first of `urls` (mirrors) that delivers the verified file; the last mirror's
    error when none does."""
    errors = []
    for url in urls:
        try:
            return download_file(url, dest, sha256, log=log, size=size, git_blob=git_blob)
        except DownloadError as exc:
            errors.append(str(exc))
    raise DownloadError(errors[-1] if errors else f"no URL to download {Path(dest).name} from")
