"""DoSE joined with a nearest-neighbour test on the encoder's features (Sun et al. 2022's deep kNN, on a VAE).

    vaelab evaluate RUN --on mnist@../shared/data/mnist-10k digits noise constant inverted flipped \
        --nll-images 0 --set eval.gap_images=0
    python bench/feature_knn.py RUN --on mnist@../shared/data/mnist-10k digits noise constant inverted flipped

A question asked of development sets (the issue's six), not a detector vaelab ships. Each image gets the
distance from its encoder features to the k-th nearest of the features of the run's whole training split
(binarized once, as every evaluation sees it). `--layer hidden` takes the encoder's last hidden layer (the
input of the layer that outputs the posterior's mean and log-variance), `--layer conv` the flattened output of
its convolutions; each is scored raw and scaled to unit length (Sun et al. scale them). The distance becomes
a test by its upper-tail p-value among the same distances of the validation images DoSE is fitted on
(vaelab.evaluation.tails), and joins `vaelab evaluate`'s DoSE score by Tippett's rule, as DoSE joins its
density and orientation test: the union's score is max(DoSE, -log p_kNN).

It reads the DoSE score of each image from RUN/eval-best/per_image_scores.csv, which the evaluate command
above writes, and rebuilds the same images with the same seeded choice (so run it with the same --on list
and --set overrides). Prints the AUROC of DoSE, of the kNN test and of the union against the test split, and
the union's FPR at 95% TPR; the JSON (bench/results/feature_knn.json by default) has AUROC and FPR@95 of all
three, and the share of test images the kNN test alone flags at the 99th percentile of validation images.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from vaelab.config import apply_overrides
from vaelab.data.splits import eval_view
from vaelab.evaluation.ood import detection_values
from vaelab.evaluation.statistics import validation_images
from vaelab.evaluation.tails import held_out_tail_log_p, tail_log_p
from vaelab.evaluation.unseen import load_eval_sets
from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

LAYERS = ("hidden", "conv")


def feature_net(encoder: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The part of a conv encoder (`encoder.net`, a Sequential) whose output is the named layer's features."""
    net = encoder.net
    if layer == "hidden":
        return net[:-1]
    cut = next(i for i, m in enumerate(net) if isinstance(m, torch.nn.Flatten))
    return net[:cut + 1]


def features(net: torch.nn.Module, images: torch.Tensor, batch: int = 2000) -> np.ndarray:
    """Features of uint8 images, scaled to [0, 1] as the model sees them."""
    with torch.no_grad():
        return torch.cat([net(chunk.float() / 255.0).flatten(1) for chunk in images.split(batch)]).numpy()


def unit_length(f: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (Sun et al.'s normalization), as torch.nn.functional.normalize does."""
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_distances(reference: np.ndarray, queries: dict[str, np.ndarray],
                  ks: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """For each k, each query row's distance to its k-th nearest reference row (scikit-learn, exact): one
    index, one search per query set at the largest k."""
    index = NearestNeighbors(n_neighbors=max(ks)).fit(reference)
    found = {name: index.kneighbors(q)[0] for name, q in queries.items()}
    return {k: {name: d[:, k - 1] for name, d in found.items()} for k in ks}


def union(dose: np.ndarray, knn_log_p: np.ndarray) -> np.ndarray:
    """Tippett's rule over DoSE (already -log of its smallest p-value) and the kNN test (its log p-values)."""
    return np.maximum(dose, -knn_log_p)


def dose_scores(path: Path) -> dict[str, np.ndarray]:
    scores: dict[str, list[float]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scores[row["dataset"]].append(float(row["DoSE"]))
    return {name: np.asarray(v) for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory that `vaelab evaluate RUN --on ...` has scored")
    ap.add_argument("--on", nargs="+", required=True, help="the same sets, in the same order, as that evaluate")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the evaluate's --set overrides")
    ap.add_argument("--layer", choices=sorted(LAYERS), default="hidden")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--out", default="bench/results/feature_knn.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    run = load_run(args.run)
    cfg = apply_overrides(run.config, args.set)
    splits = load_run_data(run)
    dose = dose_scores(Path(args.run) / "eval-best" / "per_image_scores.csv")
    sets = load_eval_sets(args.on, cfg, splits)
    if [s.name for s in sets] != list(dose):  # each set's seeded choice depends on its place in --on
        sys.exit(f"the CSV holds {', '.join(dose)}; --on gives {', '.join(s.name for s in sets)}: "
                 "run with the evaluate's --on list, in its order")
    for s in sets:
        if len(s.images) != len(dose.get(s.name, ())):
            sys.exit(f"{s.name}: {len(s.images)} images here, {len(dose.get(s.name, ()))} in the CSV; "
                     "run with the evaluate's --on list and --set overrides")
    net = feature_net(run.model.encoder, args.layer).eval()
    train = eval_view(splits.split("train"), "train", cfg.data.binarize, cfg.data.binarize_seed).images
    val = validation_images(cfg, splits)
    rows, t0 = [], time.perf_counter()
    raw = {"train": features(net, train), "val": features(net, val)} | {s.name: features(net, s.images) for s in sets}
    for unit in (False, True):
        f = {name: unit_length(v) for name, v in raw.items()} if unit else raw
        found = knn_distances(f["train"], {name: v for name, v in f.items() if name != "train"}, args.k)
        for k in args.k:
            val_d = found[k]["val"]
            log_p = {s.name: tail_log_p(val_d, found[k][s.name]) for s in sets}
            flag = float(np.percentile(-held_out_tail_log_p(val_d), 99))
            row = {"layer": args.layer, "unit_length": unit, "k": k, "reference_images": len(train),
                   "test_flagged_by_knn": float(np.mean(-log_p["test"] >= flag)), "sets": {}}
            for s in sets[1:]:
                entry = {}
                for label, a, b in [("DoSE", dose["test"], dose[s.name]), ("kNN", -log_p["test"], -log_p[s.name]),
                                    ("union", union(dose["test"], log_p["test"]), union(dose[s.name], log_p[s.name]))]:
                    auroc, _, fpr = detection_values(a, b)
                    entry[label] = {"auroc": round(float(auroc), 4), "fpr_at_95": round(float(fpr), 4)}
                row["sets"][s.name] = entry
            rows.append(row)
            print(f"{args.layer} {'unit' if unit else 'raw '} k={k}: " + " | ".join(
                f"{n} {e['DoSE']['auroc']:.3f}/{e['kNN']['auroc']:.3f}/{e['union']['auroc']:.3f} "
                f"({e['union']['fpr_at_95']:.3f})" for n, e in row["sets"].items()), flush=True)
    print("each set: DoSE / kNN / union AUROC (union FPR@95)")
    write_result(args.out, {**provenance("bench/feature_knn.py", argv), "run": str(args.run),
                            "seconds": round(time.perf_counter() - t0, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
