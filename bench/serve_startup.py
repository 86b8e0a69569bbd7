"""How long `vaelab serve` takes to start, cold and warm, as a user meets it: a subprocess, timed from launch
until the page answers, then its first upload.

    python bench/serve_startup.py [RUN ...] [--repeats 5] [--threads N] [--no-pretrained]
        [--out bench/results/serve_startup.json]

For the shipped model (`pretrained:fashion-mnist-vae`) and each RUN directory given, each repeat:

1. cold: `vaelab serve RUN --port P --quiet` in a fresh environment: for the shipped model an empty
   $XDG_CACHE_HOME (so `pretrained:NAME` is copied into the cache, as on first use), for a run directory a
   copy of it without `ood/`. Either way the server finds no stored DoSE scorer and computes it (the
   statistics of the validation images, the fit) before it answers: the first start of a run.
2. warm: the same command again in that same environment: the scorer is read from `RUN/ood/`. The
   reference images (training, validation, test) are scored at every start; nothing else is cached.

Times, from the launch of the process (Python's start and vaelab's imports included):
- ready: until GET / answers 200 (the port is polled every 50 ms; the server takes it before its start-up
  work and answers once that is done);
- server's own count: the "(ready in X s)" it prints (loading the run and the data, scoring the references);
- first upload: POST /api/upload of one test image (PNG, as the page sends it; taken from
  /api/test-images), scored: reconstruction, NLL, OOD score, DoSE; then a second one, for comparison.

Cold and warm repeats alternate, so a drift of the machine hits both alike. Prints a table of medians (and
min-max) and writes every time to JSON, with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

PRETRAINED = "pretrained:fashion-mnist-vae"
READY = re.compile(r"ready in ([0-9.]+) s")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, started: float, limit: float) -> float:
    """Seconds from `started` until GET / answers 200; polls every 50 ms while the port is closed."""
    while time.perf_counter() - started < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it answered")
        try:
            status, _ = request(port, "GET", "/", timeout=limit)
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            time.sleep(0.05)
            continue
        if status == 200:
            return time.perf_counter() - started
        raise RuntimeError(f"GET / answered {status}")
    raise RuntimeError(f"no answer within {limit:.0f} s")


def upload_png(port: int) -> bytes:
    """One test image as the page uploads it: a PNG at the model's size (the first thumbnail)."""
    status, body = request(port, "GET", "/api/test-images?n=1&offset=0")
    if status != 200:
        raise RuntimeError(f"/api/test-images answered {status}")
    uri = json.loads(body)["images"][0]
    uri = uri["image"] if isinstance(uri, dict) else uri
    return base64.b64decode(uri.split(",", 1)[1])


def timed_upload(port: int, png: bytes) -> float:
    t = time.perf_counter()
    status, body = request(port, "POST", "/api/upload", png)
    if status != 200:
        raise RuntimeError(f"/api/upload answered {status}: {body[:200]!r}")
    return time.perf_counter() - t


def start_once(target: str, env: dict[str, str], limit: float) -> dict[str, float | bool | None]:
    """One start of `vaelab serve target`: its times; the server is stopped (SIGTERM) afterwards."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "vaelab", "serve", target, "--port", str(port), "--quiet"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            ready = wait_ready(proc, port, started, limit)
            png = upload_png(port)
            first, second = timed_upload(port, png), timed_upload(port, png)
        except Exception:
            out.seek(0)
            sys.stderr.write(out.read()[-3000:])
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.seek(0)
        found = READY.search(out.read())
    return {"ready_s": ready, "server_ready_s": float(found.group(1)) if found else None,
            "first_upload_ms": 1000 * first, "second_upload_ms": 1000 * second}


def environment(target: str, workdir: Path, threads: int | None) -> tuple[str, dict[str, str], Path]:
    """A fresh cold environment for `target`: (what to pass to `vaelab serve`, the process's environment, where
    the run's ood/ will be)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if target.startswith("pretrained:"):
        cache = workdir / "cache"
        cache.mkdir()
        env["XDG_CACHE_HOME"] = str(cache)
        return target, env, cache / "vaelab" / "pretrained" / target.split(":", 1)[1] / "ood"
    copy = workdir / Path(target).name
    shutil.copytree(target, copy, ignore=lambda d, names: ["ood"] if Path(d) == Path(target) else [])
    return str(copy), env, copy / "ood"


def median_row(values: list[float]) -> str:
    return f"{statistics.median(values):9.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories to measure besides the shipped model")
    parser.add_argument("--repeats", type=int, default=5, help="cold and warm starts of each (default 5)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server (default: as inherited)")
    parser.add_argument("--no-pretrained", action="store_true", help=f"leave out {PRETRAINED}")
    parser.add_argument("--limit", type=float, default=600, help="seconds one start may take (default 600)")
    parser.add_argument("--out", default="bench/results/serve_startup.json")
    args = parser.parse_args()
    targets = ([] if args.no_pretrained else [PRETRAINED]) + args.runs
    if not targets:
        parser.error("nothing to measure: give a run directory or leave out --no-pretrained")
    for run in args.runs:
        if not (Path(run) / "checkpoints").is_dir():
            parser.error(f"{run} is not a run directory (no checkpoints/ inside)")

    results: dict[str, dict[str, list[dict]]] = {}
    for target in targets:
        results[target] = {"cold": [], "warm": []}
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="vaelab-serve-bench-") as tmp:
                served, env, ood = environment(target, Path(tmp), args.threads)
                for phase in ("cold", "warm"):
                    had_cache = ood.is_dir()
                    row = start_once(served, env, args.limit) | {"scorer_cached": had_cache}
                    results[target][phase].append(row)
                    print(f"{target} {phase} {i + 1}/{args.repeats}: ready {row['ready_s']:.2f} s (server's own "
                          f"count {row['server_ready_s']} s), first upload {row['first_upload_ms']:.0f} ms, "
                          f"second {row['second_upload_ms']:.0f} ms; stored scorer found: {had_cache}", flush=True)

    threads = args.threads if args.threads is not None else os.environ.get("OMP_NUM_THREADS", "torch's default")
    print(f"\nmedians (min-max) of {args.repeats} starts, OMP_NUM_THREADS={threads}")
    print(f"{'model':32s}{'start':6s}{'ready s':>22s}{'server count s':>24s}{'1st upload ms':>24s}"
          f"{'2nd upload ms':>24s}")
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for target, phases in results.items():
        summary[target] = {}
        for phase, rows in phases.items():
            cols = {key: [r[key] for r in rows if r[key] is not None]
                    for key in ("ready_s", "server_ready_s", "first_upload_ms", "second_upload_ms")}
            summary[target][phase] = {f"median_{k}": statistics.median(v) for k, v in cols.items() if v}
            print(f"{target:32s}{phase:6s}" + "".join(f"{median_row(v) if v else '-':>24s}" for v in cols.values()))

    out = {"benchmark": "serve_startup", **provenance("bench/serve_startup.py"),
           "omp_num_threads": threads, "repeats": args.repeats,
           "summary": summary, "starts": results}
    write_result(args.out, out, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
