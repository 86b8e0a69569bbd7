"""The presets' test NLL on the published protocol, their generalization gap, and time to quality.

    python bench/presets.py vae-long=runs/vae-long hvae=runs/hvae
    python bench/presets.py vae-long=runs/vae-long --test-images all --curve-images 500

For each run (trained with `train.snapshot_every`, e.g. from configs/*.toml), in one process:

1. time to quality: the test NLL (k importance samples) of every epoch snapshot on the SAME random
   subset of the test split (`--curve-images`), against the training time that snapshot had taken
   (metrics.jsonl `train_time_s`: the optimisation steps, without the per-epoch validation); the
   points of one run share their images, so the curve's shape is paired and exact up to Monte-Carlo
   noise, while its level carries the subset's standard error (printed);
2. the best checkpoint's test NLL on `--test-images` test images (all: the whole split, binarized
   once with the run's seed: the published protocol) and the NLL of as many random training
   images, for the generalization gap (train minus test, with its standard error).

It prints a table and writes JSON (with each run's per-image test log-likelihoods, so two presets can
be compared image by image) and the time-to-quality plot to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


from vaelab import load_run
from vaelab.data import eval_view, load_dataset, spread_index
from vaelab.evaluation.likelihood import estimate_nll
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

PUBLISHED = {  # test NLL, dynamically binarized Fashion-MNIST, nats per image (the table)
    "VAE": 228.70, "VampPrior": 227.35, "Exemplar VAE": 226.75, "HVAE": 227.37, "conv HVAE": 225.38,
    "LARS": 225.92, "PixelSNAIL (autoregressive)": 223.68,
}


def _snapshots(run_dir: Path) -> list[str]:
    names = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("epoch-") and p.is_dir()]
    return sorted(names)


def _train_times(run_dir: Path) -> dict[int, float]:
    times = {}
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            times[int(rec["epoch"])] = float(rec["train_time_s"])
    return times


def _nll(model, images, cfg, k, label):
    last = [time.perf_counter()]

    def progress(done, total):
        if time.perf_counter() - last[0] > 120:
            last[0] = time.perf_counter()
            print(f"    {label}: {done}/{total}", flush=True)

    summary, est = estimate_nll(model, images, likelihood=cfg.model.likelihood, binarize=cfg.data.binarize,
                                binarize_seed=cfg.data.binarize_seed, k=k, progress=progress)
    return summary, est


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", metavar="NAME=RUN")
    ap.add_argument("--plot", nargs="+", metavar="JSON", help="only draw one time-to-quality plot from earlier "
                                                                "results (written to --out with .png)")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--curve-images", type=int, default=500, help="test images per snapshot (0: no curve)")
    ap.add_argument("--test-images", default="2000", help="test images for the best checkpoint (a number or all)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="training images for the gap (default: as many as test images)")
    ap.add_argument("--out", default="bench/results/presets.json")
    args = ap.parse_args()

    out = Path(args.out)
    if args.plot:
        merged = None
        for path in args.plot:
            part = json.loads(Path(path).read_text())
            merged = part if merged is None else {**merged, "runs": {**merged["runs"], **part["runs"]}}
        _plot(merged, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
        return 0
    if not args.runs:
        ap.error("name at least one NAME=RUN (or --plot JSON...)")
    result = {**provenance("bench/presets.py"), "k": args.k, "published": PUBLISHED,
              "runs": {}}
    splits_cache = {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        run_dir = Path(path)
        run = load_run(run_dir)
        cfg = run.config
        key = json.dumps(cfg.data.__dict__, sort_keys=True, default=str)
        if key not in splits_cache:
            splits_cache[key] = load_dataset(cfg.data)
        splits = splits_cache[key]
        test = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images
        train = eval_view(splits.train, "train", cfg.data.binarize, cfg.data.binarize_seed).images
        info = json.loads((run_dir / "run.json").read_text())
        times = _train_times(run_dir)
        entry = {"run": str(run_dir), "best_epoch": run.meta.get("epoch"), "epochs": max(times),
                 "train_time_s": times[max(times)], "config": info.get("config"), "curve": []}
        print(f"{name}: {run_dir}, best epoch {entry['best_epoch']} of {entry['epochs']}, "
              f"{entry['train_time_s'] / 60:.1f} min of training", flush=True)

        if args.curve_images:
            idx = spread_index(len(test), args.curve_images, 11)
            for snap in _snapshots(run_dir):
                snap_run = load_run(run_dir, checkpoint=snap)
                epoch = int(snap_run.meta["epoch"])
                summary, _ = _nll(snap_run.model, test[idx], cfg, args.k, snap)
                entry["curve"].append({"checkpoint": snap, "epoch": epoch, "train_time_s": times.get(epoch),
                                       "nll": summary.nll, "stderr": summary.stderr, "n": summary.n})
                print(f"  {snap}: {times.get(epoch, float('nan')) / 60:6.1f} min  test NLL {summary.nll:.2f} "
                      f"± {summary.stderr:.2f} ({summary.n} images, k={args.k})", flush=True)

        n_test = len(test) if args.test_images == "all" else min(int(args.test_images), len(test))
        test_x = test if n_test == len(test) else test[spread_index(len(test), n_test, 12)]
        n_train = min(args.train_images or n_test, len(train))
        train_x = train[spread_index(len(train), n_train, 13)]
        t_sum, t_est = _nll(run.model, test_x, cfg, args.k, "test")
        r_sum, _ = _nll(run.model, train_x, cfg, args.k, "train")
        gap = t_sum.nll - r_sum.nll
        gap_se = math.hypot(t_sum.stderr, r_sum.stderr)
        entry.update(test=t_sum.as_dict(), train=r_sum.as_dict(), gap_test_minus_train=gap, gap_stderr=gap_se,
                     test_log_px=[round(float(v), 4) for v in t_est.log_px])
        print(f"  best (epoch {entry['best_epoch']}): test NLL {t_sum.nll:.2f} ± {t_sum.stderr:.2f} "
              f"({t_sum.n} images), train NLL {r_sum.nll:.2f} ± {r_sum.stderr:.2f} ({r_sum.n} images), "
              f"gap {gap:+.2f} ± {gap_se:.2f}; {t_sum.bits_per_dim:.4f} bits/dim, ESS {t_sum.ess:.1f}", flush=True)
        result["runs"][name] = entry
        write_result(out, result)  # after each run: a long benchmark keeps what it measured

    print(f"\ntest NLL, k={args.k}, nats per image (lower is better):")
    for name, e in result["runs"].items():
        t = e["test"]
        data = "8-bit" if e["config"]["data"]["binarize"] == "none" else f"{e['config']['data']['binarize']} binarized"
        print(f"  vaelab {name:<16} {t['nll']:8.2f} ± {t['stderr']:.2f}  {t['bits_per_dim']:.4f} bits/dim ({data}; "
              f"{t['n']} test images; {e['train_time_s'] / 60:.0f} min of training; "
              f"gap test-train {e['gap_test_minus_train']:+.2f} ± {e['gap_stderr']:.2f})")
    print("published, dynamically binarized Fashion-MNIST:")
    for name, v in PUBLISHED.items():
        print(f"  {name:<35} {v:8.2f}")
    if args.curve_images:
        _plot(result, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    else:
        print(f"wrote {out}")
    return 0


def _plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, e in result["runs"].items():
        pts = [p for p in e["curve"] if p["train_time_s"] is not None]
        if not pts:
            continue
        x = [p["train_time_s"] / 60 for p in pts]
        y = [p["nll"] for p in pts]
        line, = ax.plot(x, y, marker="o", label=f"{name} ({pts[0]['n']} test images)")
        ax.errorbar(x[-1:], y[-1:], yerr=[pts[-1]["stderr"]], color=line.get_color(), capsize=3)
    # no published reference lines: a subset's level differs from the whole test split's by its standard
    # error (several nats for a few hundred images); the curve's shape, paired on the same images, is the message
    ax.set_xlabel("training time on this machine (minutes; steps only, no validation)")
    ax.set_ylabel(f"test NLL, k={result['k']} (nats per image)")
    ax.set_title("Time to quality: dynamically binarized Fashion-MNIST\n(one fixed test subset per run: compare "
                 "the shape, not the level)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
