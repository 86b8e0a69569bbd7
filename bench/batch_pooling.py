"""Ways to pool a set's per-image DoSE scores into one batch test, on the same batches and draws.

    python bench/batch_pooling.py RUN --batch B --sets DIR [--set eval.KEY=VALUE ...] [--out FILE]

The DoSE batch test (vaelab.evaluation.typicality) judges a batch of M images by one number pooled from
their DoSE scores, against the (1 - alpha) quantile of the same number over M held-out validation scores
drawn with replacement. This benchmark compares three single poolings, the mean score (vaelab's first
version), the mean percentile among the held-out scores (a rank test) and the mean tail evidence -log p
(Fisher; the second version), with the default: the union of the last two, calibrated on their joint
bootstrap null (`fit_score_batch_test`). It scores nothing: it reads the per-image scores of the
evaluation `bench/ood_blind.py` made of batch B in DIR (from its cached statistics, checked against the
printed ones; the same --set as that run). For each M it prints the worst set's AUROC over disjoint
batches (test batches negative), the share of that set's batches flagged, and the mean AUROC over the
sets. Writes JSON (bench/results/batch_pooling.json by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from vaelab.evaluation.typicality import (ALPHA, BATCH_SIZES, BOOTSTRAP, bootstrap_means, disjoint_batches,
                                          fit_score_batch_test, percentiles_among, reference_evidence, tail_evidence)
from _results import provenance, write_result  # bench/ is on sys.path when run as a script
import ood_blind


def poolings(reference: np.ndarray, m: int, seed: int) -> dict:
    """Each pooling for batches of m: (statistic of each batch of scores (B, m), its threshold at level ALPHA).
    The three single poolings use the same bootstrap draws as the default's union of two of them."""
    ordered = np.sort(reference)
    single = {"mean score": (lambda v: v, ordered),
              "percentiles": (lambda v: percentiles_among(ordered, v), percentiles_among(ordered, ordered)),
              "tail evidence": (lambda v: tail_evidence(ordered, v), reference_evidence(ordered))}
    out = {}
    for name, (transform, null_values) in single.items():
        threshold = float(np.quantile(bootstrap_means(null_values, m, BOOTSTRAP, seed), 1 - ALPHA))
        out[name] = ((lambda t: lambda v: t(v).mean(axis=1))(transform), threshold)
    union = fit_score_batch_test(reference, m, seed=seed)
    out["either pooling (default)"] = (union.statistic, union.threshold)
    return out


def compare(reference: np.ndarray, scores: dict[str, np.ndarray], seed: int,
            sizes=tuple(m for m in BATCH_SIZES if m > 1)) -> dict:
    """For each M and pooling: every set's AUROC over disjoint batches and share flagged at level ALPHA."""
    test = scores["test"]
    out: dict = {}
    for m in sizes:
        for name, (statistic, threshold) in poolings(reference, m, seed).items():
            inside = statistic(test[disjoint_batches(len(test), m, seed + 1)])
            sets = {}
            for set_name, values in scores.items():
                if set_name == "test" or len(values) < m:
                    continue
                outside = statistic(values[disjoint_batches(len(values), m, seed + 1)])
                labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
                sets[set_name.rsplit("/", 1)[-1]] = {
                    "auroc": float(roc_auc_score(labels, np.r_[inside, outside])),
                    "flagged": float((outside > threshold).mean())}
            out.setdefault(str(m), {})[name] = {"threshold": threshold, "sets": sets,
                                                "test_flagged": float((inside > threshold).mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory or pretrained:NAME")
    ap.add_argument("--batch", type=int, required=True, help="the blind batch bench/ood_blind.py scored")
    ap.add_argument("--sets", required=True, help="where bench/ood_blind.py wrote the batch's folders")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="the eval.* settings of that evaluation (e.g. eval.dose_images=2000)")
    ap.add_argument("--out", default="bench/results/batch_pooling.json")
    args = ap.parse_args(argv)
    eval_out = ood_blind.default_eval_out(args.run, Path(args.sets).resolve())
    cfg, dose, scores = ood_blind.evaluation_scores(args.run, args.set, eval_out)
    table = compare(dose.reference, scores, cfg.eval.seed)
    print(f"{args.run}, batch {args.batch}: worst set's AUROC over batches (its share flagged) / mean AUROC")
    names = list(next(iter(table.values())))
    print(f"{'M':>3}  " + "".join(f"{n:>34}" for n in names))
    for m, row in table.items():
        cells = []
        for n in names:
            sets = row[n]["sets"]
            worst = min(sets, key=lambda k: sets[k]["auroc"])
            mean = np.mean([v["auroc"] for v in sets.values()])
            cells.append(f"{sets[worst]['auroc']:.3f} {worst} ({sets[worst]['flagged']:.2f}) / {mean:.3f}")
        print(f"{m:>3}  " + "".join(f"{c:>34}" for c in cells))
    write_result(args.out, {**provenance("bench/batch_pooling.py", argv), "run": args.run, "batch": args.batch,
                            "evaluation": str(eval_out), "alpha": ALPHA, "bootstrap": BOOTSTRAP, "rows": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
