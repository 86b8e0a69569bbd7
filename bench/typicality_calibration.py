"""How often the typicality test and the DoSE batch test flag in-distribution batches: their false-alarm
rates against alpha.

    python bench/typicality_calibration.py RUN [--images 0] [--shuffles 20]

The typicality test (vaelab.evaluation.typicality; Nalisnick et al. 2019) is fitted on the run's
validation slice only (eval.dose_images images, as `vaelab evaluate` fits it) and should flag about
alpha = 1% of in-distribution batches. A table over 1,000 test images has only 200 batches of M = 5,
too few to tell 1% from 4%. This benchmark judges

- the **whole test split** (or --images of it), cut into disjoint batches of M = 1, 5, 10, 25 in
  --shuffles seeded ways: the first cut's count of flagged batches with its exact (Clopper-Pearson)
  95% interval, the mean over the cuts, and how many alarms were on the low-NLL side;
- a **control**: the test fitted on one seeded half of the validation slice and judged on the other
  half, where nothing but the method can be off;

the same for the DoSE batch test (M images' DoSE scores pooled two ways among the validation images'
held-out scores, `RunDose.reference`, and judged against their bootstrapped null; its control fits on half
of those and judges the other half), and prints the mean and spread of -log p(x) on the validation slice and
the test split, since a difference between those two samples, not the method, is what moves the false-alarm
rate.
Statistics are cached under --cache (default RUN/eval-typicality/). Writes JSON
(bench/results/typicality_calibration.json by default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vaelab import load_run
from vaelab.data import load_dataset
from vaelab.evaluation.oodrun import model_tag, run_dose, statistics_kwargs
from vaelab.evaluation.statistics import VALIDATION, ImageStatistics, cached_statistics
from vaelab.evaluation.typicality import (ALPHA, BATCH_SIZES, disjoint_batches, false_alarm_interval,
                                          STATISTIC, fit_score_batch_test, fit_typicality)
from vaelab.evaluation.unseen import load_eval_set
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def false_alarms(val: ImageStatistics, judged: ImageStatistics, m: int, shuffles: int) -> dict:
    """The test for batches of m fitted on `val`, judged on disjoint batches of `judged` cut `shuffles` ways."""
    t = fit_typicality(val, m)
    nll = -judged.matrix([t.column])[:, 0]
    out = _cuts(nll, m, shuffles, lambda means: np.abs(means - t.entropy) > t.threshold,
                lambda means: means < t.entropy)
    return {**out, "entropy": t.entropy, "threshold": t.threshold}


def dose_false_alarms(reference: np.ndarray, judged: np.ndarray, m: int, shuffles: int) -> dict:
    """The DoSE batch test for batches of m fitted on held-out validation scores `reference`, judged on
    disjoint batches of the DoSE scores `judged` cut `shuffles` ways (one-sided: no low side)."""
    t = fit_score_batch_test(reference, m)
    return {**_cuts(judged, m, shuffles, lambda means: means > t.threshold, pool=t.statistic),
            "threshold": t.threshold, "statistic": STATISTIC}


def _cuts(values: np.ndarray, m: int, shuffles: int, flag, low=None, pool=lambda v: v.mean(axis=1)) -> dict:
    """The share of disjoint batches of m whose pooled values (`pool`: the mean by default) `flag(means)` flags,
    in `shuffles` seeded cuts; the first cut's count with its exact interval, and how many of those were on
    the low side (`low(means)`; 0 without)."""
    rates = []
    for s in range(shuffles):
        means = pool(values[disjoint_batches(len(values), m, 1000 + s)])
        flagged = flag(means)
        rates.append(float(flagged.mean()))
        if s == 0:
            first, batches = int(flagged.sum()), len(means)
            low_side = int((flagged & low(means)).sum()) if low is not None else 0
    return {"m": m, "batches": batches, "flagged": first, "rate": first / batches,
            "ci95": list(false_alarm_interval(first, batches)), "low_side": low_side,
            "mean_rate_over_shuffles": float(np.mean(rates)), "shuffles": shuffles}


def nll_summary(stats: ImageStatistics) -> dict:
    v = -stats.columns["log_px"]
    sd = float(v.std(ddof=1))
    return {"n": len(v), "mean": float(v.mean()), "sd": sd, "se": sd / len(v) ** .5,
            "q99": float(np.quantile(v, 0.99)), "q999": float(np.quantile(v, 0.999))}


def table(title: str, rows: list[dict]) -> str:
    head = (f"{'M':>3}{'batches':>9}{'flagged':>9}{'rate':>8}  {'exact 95% interval':<18}{'low side':>9}"
            f"{'mean of cuts':>14}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['m']:>3}{r['batches']:>9}{r['flagged']:>9}{r['rate']:8.4f}  "
                     f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]  {r['low_side']:>7}{r['mean_rate_over_shuffles']:14.4f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--images", type=int, default=0, help="test images judged (0: the whole test split)")
    ap.add_argument("--shuffles", type=int, default=20, help="seeded cuts of the judged images into batches")
    ap.add_argument("--cache", default=None, help="where the statistics go (default RUN/eval-typicality)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "typicality_calibration.json"))
    args = ap.parse_args()

    run = load_run(args.run, checkpoint=args.checkpoint)
    cfg, ec = run.config, run.config.eval
    splits = load_dataset(cfg.data)
    cache = Path(args.cache) if args.cache else Path(run.path) / "eval-typicality"
    protocol = statistics_kwargs(cfg, model_tag(run.model))  # the protocol of the run's DoSE scorer
    n_test = args.images or len(splits.test)
    t0 = time.perf_counter()
    dose = run_dose(run.model, cfg, splits, run.path, log=lambda msg: print(msg, flush=True))  # kept in RUN/ood
    print(f"{VALIDATION}: {len(dose.validation)} images, statistics and DoSE scorer in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    x = load_eval_set("test", cfg, splits, n_test, ec.seed + 10).images
    stats = {VALIDATION: dose.validation,
             "test": cached_statistics(cache / "statistics-test.safetensors", run.model, x, split="test", **protocol)}
    print(f"test: {len(x)} images, statistics in {time.perf_counter() - t0:.1f} s (0: cached)", flush=True)
    val, test = stats[VALIDATION], stats["test"]
    halves = np.random.default_rng(ec.seed).permutation(len(val))
    fit_half, judged_half = val.subset(halves[: len(val) // 2]), val.subset(halves[len(val) // 2:])
    judged_half = ImageStatistics("val-half", judged_half.columns, judged_half.protocol)
    rows = {"test": [false_alarms(val, test, m, args.shuffles) for m in BATCH_SIZES],
            "control": [false_alarms(fit_half, judged_half, m, args.shuffles) for m in BATCH_SIZES]}
    reference = dose.reference
    half = np.random.default_rng(ec.seed).permutation(len(reference))
    ref_fit, ref_judged = reference[half[: len(reference) // 2]], reference[half[len(reference) // 2:]]
    test_scores = dose.score(test)
    rows |= {"dose_test": [dose_false_alarms(reference, test_scores, m, args.shuffles) for m in BATCH_SIZES],
             "dose_control": [dose_false_alarms(ref_fit, ref_judged, m, args.shuffles) for m in BATCH_SIZES]}
    nll = {"validation": nll_summary(val), "test": nll_summary(test)}
    print()
    print(table(f"typicality test (alpha {ALPHA}) fitted on {len(val)} validation images, judged on {len(test)} "
                f"test images:", rows["test"]))
    print()
    print(table(f"control: fitted on {len(fit_half)} validation images, judged on the other {len(judged_half)}:",
                rows["control"]))
    print()
    print(table(f"DoSE batch test (alpha {ALPHA}) on the held-out DoSE scores of {len(reference)} validation images, "
                f"judged on {len(test)} test images:", rows["dose_test"]))
    print()
    print(table(f"control: fitted on {len(ref_fit)} of those scores, judged on the other {len(ref_judged)}:",
                rows["dose_control"]))
    print()
    for name, s in nll.items():
        print(f"-log p(x) on the {name} images: mean {s['mean']:.2f} ± {s['se']:.2f} (se), sd {s['sd']:.2f}, "
              f"99% quantile {s['q99']:.1f}, 99.9% {s['q999']:.1f} (n {s['n']})")
    result = {"run": str(args.run), "checkpoint": args.checkpoint, **provenance("bench/typicality_calibration.py"),
              "alpha": ALPHA, "k": ec.ood_k, "images": {"validation": len(val), "test": len(test)},
              "false_alarms": rows, "nll": nll}
    out = write_result(args.out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
