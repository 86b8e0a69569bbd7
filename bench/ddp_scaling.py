"""Training throughput of one process against torchrun data-parallel processes, on this machine.

Each configuration runs the real CLI (`vaelab train`, or `torchrun --nproc_per_node=P -m vaelab train`)
on the first --images Fashion-MNIST training images for --epochs epochs, with the same global batch;
its throughput is the median over epochs 2.. of the epoch's images / wall-clock seconds that rank 0
records in metrics.jsonl (epoch 1 carries the start-up). Configurations alternate over --rounds rounds.

    python bench/ddp_scaling.py                          # 1 process x 2 threads vs 2 processes x 1 thread
    python bench/ddp_scaling.py --configs 1x1,1x2,2x1    # PROCESSESxTHREADS each
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, threads: int, images: int, epochs: int, batch: int, out: Path) -> list[float]:
    args = ["train", "--out", str(out), "--set", f"data.max_train={images}", "--set", f"train.epochs={epochs}",
            "--set", f"train.batch_size={batch}", "--set", "train.grid_every=0", "--set", "eval.nll_images=0",
            "--set", "eval.gap_images=0", "--set", f"train.threads={threads}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CI": "true"}
    if procs == 1:
        cmd = [sys.executable, "-m", "vaelab", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "vaelab", *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_s"] for r in records[1:]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="1x2,2x1", help="comma-separated PROCESSESxTHREADS")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/ddp_scaling.json")
    args = parser.parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    rates: dict[str, list[float]] = {f"{p}x{t}": [] for p, t in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for p, t in configs:
                rates[f"{p}x{t}"] += run(p, t, args.images, args.epochs, args.batch_size, Path(tmp) / f"{p}x{t}-{r}")
                print(f"round {r + 1}: {p} process(es) x {t} thread(s): {rates[f'{p}x{t}'][-1]:.0f} images/s",
                      flush=True)
    base = next(iter(rates))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{'processes x threads':<22}{'images/s':>10}{'ratio':>8}")
    for k, v in med.items():
        print(f"{k:<22}{v:>10.0f}{v / med[base]:>8.2f}")
    out = {"benchmark": "ddp_scaling", **provenance("bench/ddp_scaling.py", argv),
           "images": args.images, "global_batch": args.batch_size, "images_per_s": rates,
           "median_images_per_s": med, "ratio_to_first": {k: v / med[base] for k, v in med.items()}}
    write_result(args.out, out, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
