"""What each training option buys: the default VAE with one option changed at a time, on Fashion-MNIST.

Every variant trains with the same seed and data for --epochs and is scored with part 2's protocol
(dynamically binarized training, evaluation sets binarized once with a fixed seed, importance-sampled
NLL with k samples on one fixed random subset of the test split, the same images and the same importance
samples for every variant). The table gives the test NLL with its standard error, its difference to the
baseline PAIRED image by image (so its standard error is small), the generalization gap of the -ELBO on
the whole train and test splits with its standard error, and the training time and its ratio to the
baseline's. JSON goes to --out.

    python bench/ablation.py                       # all variants, 10 epochs (about 1 hour on 2 cores)
    python bench/ablation.py --variants baseline,ema --epochs 2 --nll-images 100 --k 100   # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vaelab import load_config, load_run, train
from vaelab.data import eval_view, load_dataset, spread_index
from vaelab.evaluation.likelihood import importance_sampled
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "warmup": ["train.warmup=5"],
    "free_bits": ["train.free_bits=0.1"],
    "ema": ["train.ema=0.999"],
    "weight_decay": ["train.weight_decay=1e-4"],
    "cosine": ["train.lr_schedule=cosine", "train.lr_warmup_steps=200"],
    "vamp": ["model.prior=vamp", "model.pseudo_inputs=500"],
    "iwae": ["train.objective=iwae", "train.iwae_k=5"],
    "dropout": ["model.dropout=0.1"],
    "augment": ["data.augment_shift=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of: " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nll-images", type=int, default=300, help="images per split for the NLL")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    parser.add_argument("--out", default="bench/results/ablation.json")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    common = [f"train.epochs={args.epochs}", "eval.nll_images=0", "eval.gap_images=0", "train.grid_every=0",
              *args.set]
    splits = load_dataset(load_config(overrides=common).data, log=lambda m: None)
    work = Path(tempfile.mkdtemp(prefix="vaelab-ablation-"))
    rows = []
    for name in names:
        cfg = load_config(overrides=[*common, *VARIANTS[name]])
        t0 = time.perf_counter()
        result = train(cfg, work / name, splits=splits, log=lambda m: None, progress=False)
        wall = time.perf_counter() - t0
        run = load_run(work / name)
        dc = run.config.data
        test = eval_view(splits.test, "test", dc.binarize, dc.binarize_seed).images
        x = test[spread_index(len(test), args.nll_images, 31)]
        log_px = importance_sampled(run.model, x, k=args.k, seed=7).log_px
        ev = result.evaluation
        train_time = sum(r["epoch_time_s"] for r in result.history)
        row = {
            "variant": name, "overrides": VARIANTS[name], "epochs": args.epochs, "best_epoch": result.best_epoch,
            "test_nll": float(-log_px.mean()), "test_stderr": float(log_px.std() / len(log_px) ** 0.5),
            "test_log_px": [round(float(v), 4) for v in log_px],
            "test_nelbo_all": ev["splits"]["test"]["nelbo"], "train_nelbo_all": ev["splits"]["train"]["nelbo"],
            "gap": ev["splits"]["test"]["nelbo"] - ev["splits"]["train"]["nelbo"],
            "gap_stderr": (ev["splits"]["test"]["stderr"] ** 2 + ev["splits"]["train"]["stderr"] ** 2) ** 0.5,
            "train_time_s": round(train_time, 1), "wall_s": round(wall, 1),
            "curve": [{"epoch": r["epoch"], "train_time_s": r["train_time_s"],
                       "val_nelbo": (r["val"] or {}).get("nelbo")} for r in result.history],
        }
        rows.append(row)
        print(f"{name:<14} test NLL {row['test_nll']:7.2f} ± {row['test_stderr']:.2f}   gap {row['gap']:+6.2f} ± "
              f"{row['gap_stderr']:.2f}   train {train_time:6.0f} s", flush=True)
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    print(f"\n{'variant':<14}{'test NLL':>10}{'±se':>7}{'d NLL':>8}{'±se':>7}{'-ELBO gap':>11}{'±se':>7}{'time x':>8}")
    for r in rows:
        if base is not None:
            diff = torch.tensor(r["test_log_px"], dtype=torch.float64) - torch.tensor(base["test_log_px"],
                                                                                     dtype=torch.float64)
            r["d_nll_vs_baseline"] = float(-diff.mean())
            r["d_nll_stderr_paired"] = float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else 0.0
        d, dse = r.get("d_nll_vs_baseline", float("nan")), r.get("d_nll_stderr_paired", float("nan"))
        t = r["train_time_s"] / base["train_time_s"] if base else float("nan")
        print(f"{r['variant']:<14}{r['test_nll']:10.2f}{r['test_stderr']:7.2f}{d:8.2f}{dse:7.2f}"
              f"{r['gap']:11.2f}{r['gap_stderr']:7.2f}{t:8.2f}")
    out = {
        **provenance("bench/ablation.py"),
        "protocol": {"dataset": splits.name, "nll_test_images": args.nll_images, "k": args.k,
                     "note": "test NLL on one fixed random test subset (same images and importance samples for "
                             "every variant; d NLL paired); the gap is the -ELBO of the whole test split minus "
                             "that of the whole training split"},
        "rows": rows,
    }
    write_result(args.out, out, indent=2)


if __name__ == "__main__":
    main()
