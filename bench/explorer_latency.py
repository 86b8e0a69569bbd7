"""How fast `vaelab serve` answers, over HTTP on 127.0.0.1, and how fast exported decoders run.

    python bench/explorer_latency.py RUN [--threads 1] [--requests 30] [--clients 6]
        [--out bench/results/explorer_latency.json]

1. Start-up: `make_server` on RUN (loads the model and the data, scores the reference images).
2. Each endpoint alone, one keep-alive client: median, p90 and max latency over --requests calls
   (the first two are warm-up and not counted).
3. A load test: --clients threads at once, each sending a mix of every endpoint plus bad requests
   (a non-image upload, a temperature out of range, an unknown path); counts answers by status and
   gives the latency percentiles of all of them.
4. `vaelab export` of RUN into a temporary folder, then the decoder's speed (images/s) in PyTorch
   (`Run.decode`), TorchScript and onnxruntime, on the same codes, best of N, in one run.
Prints tables and writes JSON. Timings are on one machine in one run: compare them with each other.
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def endpoint_calls(png: bytes) -> dict[str, tuple[str, str, bytes | None]]:
    return {
        "samples n=16": ("GET", "/api/samples?n=16&temperature=0.8&seed={i}", None),
        "samples n=64": ("GET", "/api/samples?n=64&seed={i}", None),
        "test images n=60": ("GET", "/api/test-images?n=60&offset={i}", None),
        "interpolate, one t": ("GET", "/api/interpolate?a=1&b=2&t=0.{i}", None),
        "interpolate, 9 steps": ("GET", "/api/interpolate?a=1&b={i2}&steps=9", None),
        "traverse, one value": ("GET", "/api/traverse?dim=0&value=1.{i}&base=4", None),
        "traverse, 9 steps": ("GET", "/api/traverse?dim=0&steps=9&base={i}", None),
        "upload (PNG, scored)": ("POST", "/api/upload", png),
    }


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> tuple[int, float]:
    t = time.perf_counter()
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--reference-images", type=int, default=200)
    parser.add_argument("--out", default="bench/results/explorer_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vaelab.serve import make_server

    t0 = time.perf_counter()
    server = make_server(args.run, "127.0.0.1", 0, reference_images=args.reference_images, log=lambda m: None)
    startup = time.perf_counter() - t0
    app = server.app
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image = app.splits.test.images[5]
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()).save(buffer, "PNG")
    calls = endpoint_calls(buffer.getvalue())
    print(f"vaelab serve on {args.run}: {app.kind}, threads {torch.get_num_threads()}, k={app.k}; "
          f"start-up {startup:.2f} s ({args.reference_images} training + {args.reference_images} test references)")

    alone: dict[str, dict[str, float]] = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    print(f"{'endpoint':24s}{'median ms':>11s}{'p90 ms':>9s}{'max ms':>9s}")
    for name, (method, path, body) in calls.items():
        times = []
        for i in range(args.requests + 2):
            status, seconds = request(conn, method, path.format(i=i % 10, i2=2 + i % 10), body)
            if status != 200:
                raise SystemExit(f"{name}: status {status}")
            times.append(seconds)
        times = times[2:]
        alone[name] = {"median_ms": 1000 * statistics.median(times), "p90_ms": 1000 * percentile(times, 90),
                       "max_ms": 1000 * max(times)}
        print(f"{name:24s}{alone[name]['median_ms']:11.1f}{alone[name]['p90_ms']:9.1f}{alone[name]['max_ms']:9.1f}")
    conn.close()

    bad = [("POST", "/api/upload", b"not an image"), ("GET", "/api/samples?temperature=-1", None),
           ("GET", "/no/such/page", None)]
    mix = list(calls.values()) + bad
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for i in range(args.requests):
            method, path, body = mix[rng.integers(len(mix))]
            status, seconds = request(c, method, path.format(i=i % 10, i2=2 + i % 10), body)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(seconds)
        c.close()

    t = time.perf_counter()
    workers = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    load_s = time.perf_counter() - t
    alive = request(http.client.HTTPConnection("127.0.0.1", server.port, timeout=30), "GET", "/api/info", None)[0]
    load = {"clients": args.clients, "requests": len(latencies), "seconds": load_s, "statuses": statuses,
            "p50_ms": 1000 * percentile(latencies, 50), "p90_ms": 1000 * percentile(latencies, 90),
            "p99_ms": 1000 * percentile(latencies, 99), "max_ms": 1000 * max(latencies), "alive_after": alive}
    print(f"load: {args.clients} clients x {args.requests} mixed requests in {load_s:.1f} s; statuses {statuses}; "
          f"p50 {load['p50_ms']:.1f} ms, p90 {load['p90_ms']:.1f}, p99 {load['p99_ms']:.1f}, max {load['max_ms']:.1f}; "
          f"/api/info afterwards: {alive}")
    server.shutdown()
    server.server_close()

    from vaelab import load_run
    from vaelab.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = export_run(args.run, out=tmp, log=lambda m: None)
        export_s = time.perf_counter() - t
        sizes = {f.path.name: f.bytes for f in result.files}
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = args.threads
        session = ort.InferenceSession(str(Path(tmp) / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(Path(tmp) / "decoder.pt"))
        run = load_run(args.run)
        speed: dict[str, dict[str, float]] = {}
        for n, reps in ((1, 200), (64, 20), (512, 6)):
            z = torch.randn(n, run.config.model.latent_dim, generator=torch.Generator().manual_seed(n))
            zn = z.numpy()
            fns = {"pytorch": lambda: run.decode(z), "torchscript": lambda: scripted(z),
                   "onnxruntime": lambda: session.run(None, {"z": zn})}
            best = {k: float("inf") for k in fns}
            for _ in range(reps):  # interleaved, so drifts of the machine hit all three alike
                for k, fn in fns.items():
                    t = time.perf_counter()
                    with torch.no_grad():
                        fn()
                    best[k] = min(best[k], time.perf_counter() - t)
            speed[f"batch {n}"] = {k: n / v for k, v in best.items()}
            print(f"decoder, batch {n:4d}: " + ", ".join(f"{k} {v:,.0f} images/s" for k, v in speed[f"batch {n}"].items())
                  + f"; onnxruntime / pytorch {speed[f'batch {n}']['onnxruntime'] / speed[f'batch {n}']['pytorch']:.2f}")
    print(f"export (decoder + encoder, ONNX + TorchScript, each verified): {export_s:.1f} s; sizes {sizes}")

    out = {"run": args.run, **provenance("bench/explorer_latency.py"), "startup_s": startup,
           "reference_images": args.reference_images, "endpoints_alone": alone, "load": load,
           "export_s": export_s, "export_bytes": sizes, "decoder_images_per_s": speed}
    write_result(args.out, out, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
