"""A model-free yardstick for the OOD tables: distance to the nearest training images, in pixels.

    python bench/ood_knn.py RUN --on mnist@../shared/data/mnist-10k digits flipped --images 1000 --neighbours 5

For a trained run it takes the same images `vaelab evaluate RUN --on ...` scores (the same seeded choice
of the test split and of each set, prepared alike but not binarized: 8-bit pixels in [0, 1]) and scores
each by its mean Euclidean distance to its `--neighbours` nearest images of the run's whole training split
(scikit-learn's NearestNeighbors, brute force). Then AUROC, AUPRC and FPR at 95% TPR of each set against
the test split, as vaelab's tables compute them.

It memorizes the training set, so it is no detector to ship (tens of MB of images, a search per query);
it says how far apart the sets are in pixel space. Where it is near chance, a density of pixels cannot
separate the sets either: "same pixels, wrong meaning". Writes JSON (bench/results/ood_knn.json by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from vaelab.evaluation.ood import detection_values
from vaelab.evaluation.unseen import load_eval_set
from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def flat(images: torch.Tensor) -> np.ndarray:
    return images.reshape(len(images), -1).float().numpy() / 255.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory or pretrained:NAME")
    ap.add_argument("--on", nargs="+", required=True, help="datasets, as for `vaelab evaluate --on`")
    ap.add_argument("--images", type=int, default=1000, help="images per set (the test split's too)")
    ap.add_argument("--neighbours", type=int, default=5)
    ap.add_argument("--out", default="bench/results/ood_knn.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = load_run(args.run)
    splits = load_run_data(run)
    cfg = run.config.replace(data={"binarize": "none"}, eval={"ood_images": args.images})
    t0 = time.perf_counter()
    index = NearestNeighbors(n_neighbors=args.neighbours, algorithm="brute").fit(flat(splits.train.images))

    def score(spec: str, place: int) -> np.ndarray:  # the seed `vaelab evaluate --on` gives the set's place
        images = load_eval_set(spec, cfg, splits, args.images, cfg.eval.seed + 10 + place).images
        return index.kneighbors(flat(images))[0].mean(1)

    s_in = score("test", 0)
    rows = []
    print(f"{'set':<34} {'AUROC':>7} {'AUPRC':>7} {'FPR@95':>7}")
    for i, spec in enumerate(args.on):
        auroc, auprc, fpr = detection_values(s_in, score(spec, i + 1))
        rows.append({"set": spec, "auroc": auroc, "auprc": auprc, "fpr_at_95_tpr": fpr})
        print(f"{spec:<34} {auroc:7.3f} {auprc:7.3f} {fpr:7.3f}")
    result = {**provenance("bench/ood_knn.py", argv), "run": args.run,
              "score": f"mean distance to the {args.neighbours} nearest of {len(splits.train)} training images, "
                       "8-bit pixels in [0, 1]",
              "images": args.images, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
