"""The explorer over HTTP: `make_server(...)` / `serve(...)`, on the standard library's threading server.

The handler enforces the request limits (body size, Content-Length, Host, connections) and turns every
failure into a JSON `{"error": ...}` answer with its status: never a traceback to the client, and the
server keeps running. Routing and query parsing are in `vaelab.serve.routes`, the logic in
`vaelab.serve.app`.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from vaelab.data import DatasetSplits
from vaelab.errors import VaelabError
from vaelab.runs import Run, json_safe, load_run, load_run_data
from vaelab.serve.app import ExplorerApp
from vaelab.serve.limits import DEFAULT_HOST, DEFAULT_K, DEFAULT_PORT, DEFAULT_REFERENCE, MAX_BODY, RequestError, shown
from vaelab.serve.page import PAGE
from vaelab.serve.routes import PAGE_HEADERS, find_route, parse_query

DRAIN_LIMIT = 16 * 1024 * 1024  # an oversize body up to this is read and dropped, so the client sees the 413
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
BUSY = b'{"error": "the server is busy (too many open connections); retry in a moment"}'


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
        self._open: dict[threading.Thread, socket.socket] = {}  # handler threads alive, with their connections
        self._open_lock = threading.Lock()
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
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BUSY) + BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        # the slot is released exactly once, by whichever side gets there first: a Ctrl-C that lands while the main
        # thread waits in Thread.start() for the handler thread to begin would otherwise release it twice, and the
        # resulting ValueError (an Exception, which socketserver swallows) would replace the KeyboardInterrupt and
        # keep the server running
        release = _ReleaseOnce(self.slots)
        thread = threading.Thread(target=self._handle_in_thread, args=(request, client_address, release),
                                  daemon=self.daemon_threads)
        with self._open_lock:
            self._open[thread] = request
        try:
            thread.start()
        except BaseException:
            release()
            if thread.ident is None:  # it never ran, so it will not take itself off the list
                with self._open_lock:
                    self._open.pop(thread, None)
            raise

    def _handle_in_thread(self, request, client_address, release: "_ReleaseOnce") -> None:
        """What ThreadingMixIn's thread does (handle, report errors, close), then give the slot back."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            release()
            with self._open_lock:
                self._open.pop(threading.current_thread(), None)

    @property
    def open_connections(self) -> int:
        """How many connections a handler thread is serving now."""
        with self._open_lock:
            return len(self._open)

    def close_connections(self, timeout: float = 10.0) -> int:
        """End the open connections and wait (at most `timeout` seconds in all) for their handler threads.

        Returns how many were still running at the deadline. `serve()` calls this before it returns: a handler
        thread still alive when the interpreter exits is stopped by CPython in the middle of what it runs, and
        with PyTorch loaded that aborts the process ("terminate called without an active exception", exit
        status -6) after a clean Ctrl-C. Shutting a connection's reading side wakes a handler waiting for the
        next keep-alive request (it reads end-of-file and closes); a request being answered is answered first."""
        with self._open_lock:
            open_now = dict(self._open)
        for request in open_now.values():
            try:
                request.shutdown(socket.SHUT_RD)
            except OSError:  # already closed by its handler
                pass
        deadline = time.monotonic() + timeout
        for thread in open_now:
            if thread.ident is not None:  # started (a Ctrl-C can land before start() returns)
                thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in open_now)

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        self.log(f"error on a connection from {client_address[0]}:\n{traceback.format_exc()}")


class _ReleaseOnce:
    """Releases a semaphore on the first call only (thread-safe)."""

    def __init__(self, semaphore: threading.BoundedSemaphore) -> None:
        self._semaphore = semaphore
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._semaphore.release()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _too_large(length: int) -> str:
    return f"the upload is {length:,} bytes; send at most {MAX_BODY:,} (the model's images are small)"


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
            raise RequestError(400, f"Content-Length must be a number of bytes, got {shown(length_text)}")
        length = int(length_text)
        self._unread = False
        if length > MAX_BODY:
            if length <= DRAIN_LIMIT:  # read and drop it, so the client is not cut off before it reads the answer
                self._drain(length)
            else:
                self.close_connection = True
            raise RequestError(413, _too_large(length))
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise RequestError(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

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
            self._send_json(exc.status, {"error": str(exc)}, {"Allow": exc.allow} if exc.allow else None)
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
                                    f"(Host {shown(self.headers.get('Host'))})")
        route = find_route(method, path)
        head = method == "HEAD"
        if path in ("/", "/index.html"):  # the page ignores any query
            self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8", PAGE_HEADERS, head)
            return
        q = parse_query(path, route, query)
        body = self._read_body() if method == "POST" else b""
        if self.server.app is None:
            raise RequestError(503, "the server is still starting; retry in a moment")
        self._send_json(200, route.call(self.server.app, q, body), head=head)


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
                                 reference_images=reference_images, log=log)
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
        server.close_connections()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    announce("stopped")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
