"""DoSE of a binarizing run with each image's statistics averaged over several binarizations of it.

    python bench/binarization_draws.py RUN --on SET [SET ...] [--draws 4] [--budget matched|full] [--out FILE]

A run that binarizes (data.binarize = "dynamic") scores a grey image through one Bernoulli binarization of it,
drawn once with a fixed seed: an upscaled grey digit and a grey garment both become speckled blobs, and their
statistics carry that draw's noise. This benchmark asks whether averaging each statistic over B
binarizations of the same grey image (an estimate of its expectation under the binarization) separates
unseen sets better. Everything else is vaelab's DoSE as `vaelab evaluate --on` computes it
(vaelab.evaluation.oodrun): the same statistics, density family and size chosen on validation images alone,
the same orientation test joined by Tippett's rule.

`--budget matched` gives each binarization k/D importance samples and samples/D forward draws, D =
`--draws`, so B = D costs what today's protocol costs (and B = 1 a D-th of it). `--budget full` gives every
binarization the whole protocol (B times the cost). Draw 0 is the binarization `vaelab evaluate` uses, so
B = 1 with `--budget full` is today's score (on `--val-images` validation images). For each B in 1, 2,
..., `--draws` (powers of 2) it prints every set's AUROC against the test split, FPR at 95% TPR and the
density's AUROC alone, and writes JSON (bench/results/binarization_draws-RUN-BUDGET.json by default).
Only the run's validation split is fitted on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vaelab.evaluation.ood import detection_values
from vaelab.evaluation.oodrun import fit_run_dose, model_tag, statistics_kwargs
from vaelab.evaluation.statistics import VALIDATION, ImageStatistics, compute_statistics
from vaelab.evaluation.unseen import load_eval_set, split_spec
from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

OWN = ("val", "test")  # the run's own splits: the test split is what every set is scored against
DRAW_STRIDE = 7919  # draw b is binarized as `vaelab evaluate` binarizes with data.binarize_seed + b * this


def set_draws(cfg, splits, specs: list[str], val_images: int, images: int, draws: int) -> dict[str, list[torch.Tensor]]:
    """Each set's images as `vaelab evaluate --on` prepares them (the same seeded picks, sizes and channels),
    binarized `draws` times: draw b by the run's own preparation with data.binarize_seed moved by b * DRAW_STRIDE,
    so draw 0 is the very image it scores (and a constant set, thresholded, is the same in every draw)."""
    seed = cfg.eval.seed
    picks = [("val", val_images, seed + 30), ("test", images, seed)] + [(spec, images, seed) for spec in specs]
    return {split_spec(spec)[0]: [load_eval_set(spec, cfg.replace(data={"binarize_seed": cfg.data.binarize_seed
                                                                       + b * DRAW_STRIDE}), splits, n, s).images
                                  for b in range(draws)]
            for spec, n, s in picks}


def mean_statistics(draws: list[ImageStatistics]) -> ImageStatistics:
    """Each column averaged over the draws (one image per row in every draw)."""
    columns = {key: np.mean([d.columns[key] for d in draws], axis=0) for key in draws[0].columns}
    return ImageStatistics(draws[0].split, columns, draws[0].protocol | {"binarizations": len(draws)})


def score_sets(stats: dict[str, list[ImageStatistics]], n: int, seed: int) -> dict:
    """DoSE fitted on the validation statistics averaged over the first n draws; each set against the test split."""
    dose = fit_run_dose(mean_statistics(stats["val"][:n]), seed)
    test = mean_statistics(stats["test"][:n])
    t, t_density = dose.score(test), dose.density_score(test)
    rows = {}
    for name, draws in stats.items():
        if name in OWN:
            continue
        s = mean_statistics(draws[:n])
        auroc, _, fpr = detection_values(t, dose.score(s), 0.95)
        rows[name] = {"auroc": auroc, "fpr_at_95": fpr,
                      "density_auroc": detection_values(t_density, dose.density_score(s), 0.95)[0]}
    flagged = float(np.mean(t >= dose.threshold()))
    return {"density": dose.scorer.describe(), "test_flagged": flagged, "sets": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory that binarizes")
    ap.add_argument("--on", nargs="+", required=True, help="the sets, as `vaelab evaluate --on` names them")
    ap.add_argument("--draws", type=int, default=4, help="the most binarizations per image (a power of 2)")
    ap.add_argument("--budget", choices=("matched", "full"), default="matched")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--images", type=int, default=1000, help="images per set and of the test split")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    run = load_run(args.run)
    cfg = run.config
    if cfg.data.binarize != "dynamic":
        raise SystemExit(f"bench/binarization_draws.py: {args.run} does not binarize its images dynamically")
    kwargs = statistics_kwargs(cfg, model_tag(run.model))
    k, samples = kwargs.pop("k"), 8
    if args.budget == "matched":
        k, samples = max(1, k // args.draws), max(1, samples // args.draws)
    t0 = time.perf_counter()
    stats: dict[str, list[ImageStatistics]] = {}
    for name, images in set_draws(cfg, load_run_data(run), args.on, args.val_images, args.images, args.draws).items():
        stats[name] = [compute_statistics(run.model, x, k=k, samples=samples,
                                          split=VALIDATION if name == "val" else name, **kwargs) for x in images]
        print(f"  {name}: {len(images[0])} images x {args.draws} binarizations ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    counts = [n for n in (1, 2, 4, 8, 16) if n <= args.draws]
    results = {n: score_sets(stats, n, cfg.eval.seed) for n in counts}
    names = list(results[counts[0]]["sets"])
    print(f"\nDoSE AUROC (FPR@95) [density alone], {args.budget} budget: k={k}, {samples} forward draws per "
          f"binarization; {args.val_images} validation images, {args.images} per set")
    print(f"{'set':<13}" + "".join(f"{f'B = {n}':<28}" for n in counts))
    for name in names:
        cells = [results[n]["sets"][name] for n in counts]
        print(f"{name:<13}" + "".join(f"{c['auroc']:.4f} ({c['fpr_at_95']:.3f}) [{c['density_auroc']:.4f}]    "
                                      for c in cells))
    print(f"{'test flagged':<13}" + "".join(f"{results[n]['test_flagged']:<28.4f}" for n in counts))
    out = args.out or f"bench/results/binarization_draws-{Path(args.run).name}-{args.budget}.json"
    write_result(out, {**provenance("bench/binarization_draws.py", argv), "budget": args.budget, "k": k,
                       "samples": samples, "seconds": round(time.perf_counter() - t0, 1),
                       "results": {str(n): r for n, r in results.items()}})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
