"""Fashion-MNIST (in) vs MNIST (out) with a hierarchical VAE: AUROC of -log p(x) and of LLR>j variants.

    python bench/ood_llr.py runs/hvae --mnist-dir ../shared/data/mnist-10k --images 1000 --k 100

For the run's best checkpoint, on the same seeded random choice of test images and MNIST images that
`vaelab evaluate --on mnist` uses (eval.seed), it computes the ordinary importance-sampled bound L once,
then L>j for each j in --layers and each way of taking the j lowest layers from the conditional prior
(drawn: the paper's text; set to the mean: the paper's published code), all with the same k and seed,
and reports AUROC, AUPRC and FPR at 80% TPR of each score beside the published anchors (Havtorn et al.
2021: log p(x) 0.268, LLR>1 0.984). Writes JSON (bench/results/ood_llr.json by default).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from vaelab import load_run
from vaelab.data import load_dataset
from vaelab.evaluation.unseen import load_eval_sets
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.evaluation.ood import PUBLISHED_AUROC, balanced_index, detection_metrics
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--mnist-dir", default=None, help="directory holding MNIST's IDX files")
    ap.add_argument("--images", type=int, default=1000, help="images per dataset")
    ap.add_argument("--k", type=int, default=100, help="importance samples per bound")
    ap.add_argument("--layers", default="1,2", help="the j of LLR>j to compute (below the number of layers)")
    ap.add_argument("--modes", default="sample,mode")
    ap.add_argument("--out", default="bench/results/ood_llr.json")
    args = ap.parse_args()

    run = load_run(args.run, checkpoint=args.checkpoint)
    cfg = run.config.replace(eval={"ood_images": args.images, "ood_k": args.k})
    if run.config.model.kind != "hvae":
        print("LLR>j needs a hierarchical VAE (model.kind = 'hvae')", file=sys.stderr)
        return 2
    splits = load_dataset(cfg.data)
    spec = f"mnist@{args.mnist_dir}" if args.mnist_dir else "mnist"
    test, mnist = load_eval_sets([spec], cfg, splits)
    layers = [int(j) for j in args.layers.split(",") if j]
    modes = [m for m in args.modes.split(",") if m]
    seed = cfg.eval.seed
    result = {"run": str(run.path), "checkpoint": args.checkpoint, "epoch": run.meta.get("epoch"),
              **provenance("bench/ood_llr.py"), "k": args.k,
              "images": {"test": len(test.images), "mnist": len(mnist.images)},
              "published": {"log p(x)": PUBLISHED_AUROC["hvae_log_px"], "LLR>1": PUBLISHED_AUROC["hvae_llr_gt1"]},
              "bounds": {}, "ood": {}}
    bounds: dict[str, dict[str, np.ndarray]] = {"test": {}, "mnist": {}}
    for s, key in ((test, "test"), (mnist, "mnist")):
        t0 = time.perf_counter()
        bounds[key]["L"] = importance_sampled(run.model, s.images, k=args.k, seed=seed).log_px.numpy()
        print(f"{key}: L, {len(s.images)} images, k={args.k}: mean {bounds[key]['L'].mean():.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for j in layers:
            for mode in modes:
                t0 = time.perf_counter()
                gt = importance_sampled(run.model, s.images, k=args.k, seed=seed, prior_layers=j,
                                        prior_mode=mode == "mode").log_px.numpy()
                bounds[key][f"L>{j} {mode}"] = gt
                print(f"{key}: L>{j} ({mode}): mean {gt.mean():.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    i_in, i_out = balanced_index(len(test.images), len(mnist.images), seed)
    scores = {"-log p(x)": lambda d: -d["L"]}
    for j in layers:
        for mode in modes:
            scores[f"LLR>{j} ({mode})"] = lambda d, name=f"L>{j} {mode}": d["L"] - d[name]
    print(f"\nFashion-MNIST test (in) vs MNIST (out), {len(i_in)} + {len(i_out)} images, k={args.k}:")
    print(f"  {'score':<22}{'AUROC':>8}{'AUPRC':>8}{'FPR80':>8}")
    for name, fn in scores.items():
        m = detection_metrics(fn(bounds["test"])[i_in], fn(bounds["mnist"])[i_out])
        result["ood"][name] = m.as_dict()
        print(f"  {name:<22}{m.auroc:8.3f}{m.auprc:8.3f}{m.fpr_at_80_tpr:8.3f}")
    print(f"  published (Havtorn et al. 2021): log p(x) {PUBLISHED_AUROC['hvae_log_px']}, "
          f"LLR>1 {PUBLISHED_AUROC['hvae_llr_gt1']}")
    result["bounds"] = {key: {name: float(v.mean()) for name, v in d.items()} for key, d in bounds.items()}
    out = write_result(args.out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
