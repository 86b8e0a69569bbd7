"""What the weight average (train.ema) buys: the test NLL of a run's final weights with and without it, paired.

    python bench/ema_gain.py runs/vae-long --images 500

The `last` checkpoint of a run trained with train.ema holds both the trained weights ("model") and their
exponential moving average ("ema"). Both are scored on the same test images with the same importance
samples (same k, same seed), so the per-image differences carry little Monte-Carlo noise and their mean
has a small standard error: an ablation of the EMA that costs no training. Writes JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


from vaelab.runs.checkpoint import load_checkpoint
from vaelab.data import eval_view, load_dataset, spread_index
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.runs import find_checkpoint, model_from_checkpoint
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--out", default=None, help="JSON file (default: bench/results/ema_gain-RUNNAME.json)")
    args = ap.parse_args()

    path = find_checkpoint(args.run, "last")
    ckpt = load_checkpoint(path)
    if "ema" not in ckpt.tensors:
        print(f"{args.run} was trained without train.ema: nothing to compare", file=sys.stderr)
        return 2
    models = {}
    for name in ("model", "ema"):
        models[name], cfg = model_from_checkpoint(ckpt.meta, ckpt.tensors[name], str(path))
    splits = load_dataset(cfg.data)
    test = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images
    x = test[spread_index(len(test), args.images, 21)]
    log_px = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        log_px[name] = importance_sampled(model, x, k=args.k, seed=7).log_px
        print(f"{name}: test NLL {-log_px[name].mean():.2f} on {len(x)} images, k={args.k} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    diff = log_px["ema"] - log_px["model"]  # > 0: the average explains the test images better
    se = float(diff.std(unbiased=True) / math.sqrt(len(diff)))
    result = {"run": str(args.run), "epoch": ckpt.meta.get("epoch"), "ema_decay": cfg.train.ema, "k": args.k,
              "images": len(x), **provenance("bench/ema_gain.py"),
              "nll": {name: float(-v.mean()) for name, v in log_px.items()},
              "nll_gain_of_ema": float(diff.mean()), "nll_gain_stderr_paired": se}
    print(f"EMA ({cfg.train.ema}) lowers the test NLL by {diff.mean():.2f} ± {se:.2f} nats (paired, "
          f"{len(x)} images) at epoch {ckpt.meta.get('epoch')}")
    out = Path(args.out or f"bench/results/ema_gain-{Path(args.run).name}.json")
    write_result(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
