"""The DoSE density (without the orientation test of `vaelab evaluate`) against the likelihood and the
complexity-corrected score, and the typicality test for batches.

    python bench/ood_dose.py RUN --mnist-dir ../shared/data/mnist-10k --val-images 2000 --images 1000 --k 100

For a trained run (its best checkpoint) it computes vaelab's per-image statistics
(vaelab.evaluation.statistics) of

- a seeded slice of the run's *validation* split: the only images the DoSE density and the
  typicality test are fitted on (family, size and bandwidth chosen by held-out likelihood on them);
- the test split and each OOD set `vaelab evaluate --on` knows: MNIST, the shifts noise, constant,
  inverted and flipped (of test images), and scikit-learn's digits, prepared exactly as `vaelab evaluate
  --on` prepares them (the same seeded choice of images, binarized once);

fits DoSE (vaelab.evaluation.dose) on the validation statistics, then reports, for each OOD set
against the test split (balanced sizes, OOD positive), AUROC, AUPRC and FPR at 95% TPR with 95%
bootstrap intervals of: DoSE, -log p(x), -ELBO, Serra et al.'s complexity-corrected score (and LLR>j
for a hierarchical VAE); then the typicality test (Nalisnick et al. 2019) for batches of M = 1, 5, 10, 25.
Writes JSON (bench/results/ood_dose.json by default), the statistics (cached: a rerun with the same
protocol reuses them) and the fitted scorer under --cache (default RUN/eval-dose/).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from vaelab import load_run
from vaelab.data import load_dataset
from vaelab.evaluation.dose import fit_dose
from vaelab.evaluation.intervals import detection_intervals, format_intervals_table
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.evaluation.ood import PUBLISHED_AUROC
from vaelab.evaluation.statistics import VALIDATION, cached_statistics, validation_images
from vaelab.evaluation.oodformat import format_typicality
from vaelab.evaluation.typicality import typicality_table
from vaelab.evaluation.unseen import load_eval_sets
from vaelab.runs.load import find_checkpoint
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
SHIFTS = ["noise", "constant", "inverted", "flipped", "digits"]
# published Fashion-MNIST -> MNIST AUROCs of single-model methods (issue 18; Morningstar et al. 2021 for DoSE)
PUBLISHED = {("mnist", "-log p(x)"): PUBLISHED_AUROC["hvae_log_px"], ("mnist", "DoSE density"): 1.00}


def scores_of(stats, scorer) -> dict[str, np.ndarray]:
    """The per-image OOD scores (higher = more OOD) compared in the table."""
    c = stats.columns
    out = {"DoSE density": scorer.score(stats), "-log p(x)": -c["log_px"], "-ELBO": -c["elbo"],
           "complexity-corrected": c["complexity"]}
    out |= {f"LLR>{name.split('_')[1]}": c[name] for name in c if name.startswith("llr_")}
    return out


def compute_all(run, cfg, splits, specs, cache: Path, tag: str, log) -> tuple[dict, dict, dict]:
    """Statistics of the validation slice, the test split and every OOD set (cached), with timings."""
    ec = cfg.eval
    protocol = dict(k=ec.ood_k, seed=ec.seed, batch_size=ec.nll_batch_size, llr_mode=ec.llr_mode, model_tag=tag)
    images = {VALIDATION: validation_images(cfg, splits)}
    sources = {VALIDATION: f"{splits.name} validation split"}
    for s in load_eval_sets(specs, cfg, splits):
        images[s.name], sources[s.name] = s.images, s.source
    stats, seconds, computed = {}, {}, {}
    for name, x in images.items():
        path = cache / f"statistics-{name}.safetensors"
        before = path.stat().st_mtime_ns if path.is_file() else None
        t0 = time.perf_counter()
        stats[name] = cached_statistics(path, run.model, x, split=name, binary=cfg.data.binarize != "none",
                                        **protocol)
        seconds[name] = time.perf_counter() - t0
        computed[name] = path.stat().st_mtime_ns != before
        log(f"{name}: {len(x)} images from {sources[name]}: statistics "
            + (f"in {seconds[name]:.1f} s" if computed[name] else "read from the cache"))
    return stats, {"seconds": seconds, "sources": sources, "computed": computed}, images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist-10k"))
    ap.add_argument("--val-images", type=int, default=2000, help="validation images the density is fitted on")
    ap.add_argument("--images", type=int, default=1000, help="images per test / OOD set")
    ap.add_argument("--k", type=int, default=100, help="importance samples per image")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of each interval")
    ap.add_argument("--cache", default=None, help="where statistics and the scorer go (default RUN/eval-dose)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ood_dose.json"))
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, flush=True)

    run = load_run(args.run, checkpoint=args.checkpoint)
    cfg = run.config.replace(eval={"ood_images": args.images, "ood_k": args.k, "dose_images": args.val_images,
                                   "ood_resamples": args.resamples})
    tag = hashlib.sha256((find_checkpoint(args.run, args.checkpoint) / "model.safetensors").read_bytes()).hexdigest()
    cache = Path(args.cache) if args.cache else Path(args.run) / "eval-dose"
    splits = load_dataset(cfg.data)
    mnist = f"mnist@{args.mnist_dir}" if cfg.data.dataset != "mnist" else "fashion-mnist"
    stats, timing, stats_images = compute_all(run, cfg, splits, [mnist] + SHIFTS, cache, tag[:16], log)

    t0 = time.perf_counter()  # the reference: the one importance-sampled pass `vaelab evaluate --on` makes anyway
    importance_sampled(run.model, stats_images["test"], k=args.k, seed=cfg.eval.seed,
                       batch_size=cfg.eval.nll_batch_size)
    pass_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer = fit_dose(stats[VALIDATION], seed=cfg.eval.seed)
    fit_s = time.perf_counter() - t0
    scorer.save(cache)
    log(f"DoSE density: {scorer.describe()}; fitted and chosen among {len(scorer.selection['candidates'])} "
        f"candidates in {fit_s:.1f} s on {len(stats[VALIDATION])} validation images")

    test_scores = scores_of(stats["test"], scorer)
    others = {name: s for name, s in stats.items() if name not in (VALIDATION, "test")}
    rows = {}
    for name, s in others.items():
        out_scores = scores_of(s, scorer)
        rows[name] = {score: detection_intervals(test_scores[score], out_scores[score], resamples=args.resamples,
                                                 seed=cfg.eval.seed) for score in test_scores}
    trained_on = cfg.data.dataset
    print()
    print(format_intervals_table(rows, title=f"OOD detection, model trained on {trained_on} ({cfg.model.kind}), "
                                             f"against its test split; OOD positive; balanced sizes; 95% "
                                             f"bootstrap intervals ({args.resamples} resamples):",
                                 published=PUBLISHED if trained_on == "fashion-mnist" else None))
    typ = typicality_table(stats[VALIDATION], stats["test"], others, resamples=args.resamples, seed=cfg.eval.seed)
    print()
    print("\n".join(format_typicality({"typicality": typ})))
    fresh = [name for name, done in timing["computed"].items() if done]
    n_scored = sum(len(stats[name]) for name in fresh)
    stat_s = sum(timing["seconds"][name] for name in fresh)
    result = {
        "run": str(args.run), "checkpoint": args.checkpoint, "epoch": run.meta.get("epoch"),
        "trained_on": trained_on, "model": cfg.model.kind, **provenance("bench/ood_dose.py"), "k": args.k,
        "images": {name: len(s) for name, s in stats.items()}, "sources": timing["sources"],
        "protocol": {"fit": "DoSE and the typicality test see the validation slice only; test and OOD sets are "
                            "scored after the fit", "statistics": stats["test"].protocol | {"images_sha256": None},
                     "features": list(scorer.features)},
        "dose": {"density": scorer.describe(), "chosen": scorer.selection["chosen"], "fit_seconds": round(fit_s, 2),
                 "n_fit": scorer.selection["n_fit"], "n_held_out": scorer.selection["n_held_out"]},
        "seconds_per_1000_images": {
            "statistics (one importance-sampled pass + forward draws + PNG), uncached":
                round(1000 * stat_s / n_scored, 1) if n_scored else None,
            "one importance-sampled pass alone (test split)": round(1000 * pass_s / len(stats["test"]), 1),
            "DoSE fit and selection (all candidates), per 1000 validation images":
                round(1000 * fit_s / len(stats[VALIDATION]), 1)},
        "statistics_seconds": {name: round(v, 2) for name, v in timing["seconds"].items()},
        "ood": {name: {score: m.as_dict() for score, m in r.items()} for name, r in rows.items()},
        "typicality": typ,
        "published_auroc_fmnist_to_mnist": {"HVAE log p(x) (Havtorn et al. 2021)": PUBLISHED_AUROC["hvae_log_px"],
                                            "HVAE LLR>1 (Havtorn et al. 2021)": PUBLISHED_AUROC["hvae_llr_gt1"],
                                            "DoSE (Morningstar et al. 2021)": 1.00},
    }
    out = write_result(args.out, result)
    log(f"\nstatistics: {result['seconds_per_1000_images']}")
    log(f"wrote {out}; statistics and the DoSE scorer in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
