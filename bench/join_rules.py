"""How DoSE joins its two tests: Tippett's rule (vaelab's) against Fisher's method, on an evaluated run.

    vaelab evaluate RUN --on mnist@../shared/data/mnist-10k digits noise constant inverted flipped \
        --nll-images 0 --set eval.gap_images=0
    python bench/join_rules.py RUN

DoSE is two tests of one image: its density's upper-tail p-value among held-out validation scores, and
the orientation test's lower-tail p-value (vaelab.evaluation.oodrun). vaelab joins them by Tippett's rule,
-log min(p1, p2). Fisher's method, -(log p1 + log p2), adds the evidence instead: it gains where both tests
lean the same way and loses where one test alone sees the outlier. This reads the per-image statistics that
`vaelab evaluate --on` kept (RUN/eval-best/statistics/) and the run's stored scorer, and prints AUROC and
FPR at 95% TPR of each rule against the test split, and the share of test images each flags at the 99th
percentile of its validation scores. Tippett's column is the evaluation's DoSE to the last digit. Pass the
evaluate's --set overrides that change the scorer (eval.dose_images). Writes JSON
(bench/results/join_rules.json by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vaelab.config import apply_overrides
from vaelab.evaluation.ood import detection_values
from vaelab.evaluation.oodrun import FLAG_PERCENTILE, run_dose
from vaelab.evaluation.statistics import ImageStatistics
from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

RULES = {"Tippett": lambda a, b: -np.minimum(a, b), "Fisher": lambda a, b: -(a + b)}  # of log p-values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory that `vaelab evaluate RUN --on ...` has scored")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the evaluate's --set overrides")
    ap.add_argument("--out", default="bench/results/join_rules.json")
    args = ap.parse_args(argv)
    run = load_run(args.run)
    cfg = apply_overrides(run.config, args.set)
    dose = run_dose(run.model, cfg, load_run_data(run), args.run, log=lambda _: None)
    if not dose.transforms:
        sys.exit("this model resists no flip or rotation: DoSE is its density alone, there is nothing to join")
    folder = Path(args.run, "eval-best", "statistics")
    model = dose.validation.protocol.get("model")
    stats = {}
    for path in sorted(folder.glob("*.safetensors")):
        st = ImageStatistics.load(path)
        if st.protocol.get("model") != model:  # kept by an evaluation of another checkpoint: not this scorer's
            print(f"skipped {path.name}: statistics of another model than the scorer's", file=sys.stderr)
            continue
        stats[st.split] = st
    if "test" not in stats:
        sys.exit(f"no statistics of the test split in {folder}: run `vaelab evaluate RUN --on ...` first")
    parts = {name: dose.tests_log_p(st) for name, st in stats.items()}
    reference = dose.reference_log_p
    rows = {}
    for rule, join in RULES.items():
        test = join(*parts["test"])
        row = {"test_flagged": float(np.mean(test >= np.percentile(join(*reference), FLAG_PERCENTILE))), "sets": {}}
        for name in sorted(parts):
            if name != "test":
                auroc, _, fpr = detection_values(test, join(*parts[name]))
                row["sets"][name] = {"auroc": round(float(auroc), 4), "fpr_at_95": round(float(fpr), 4)}
        rows[rule] = row
        print(f"{rule:8s} test flagged {row['test_flagged']:.3f} | " + " | ".join(
            f"{n} {e['auroc']:.4f} ({e['fpr_at_95']:.3f})" for n, e in row["sets"].items()), flush=True)
    write_result(args.out, {**provenance("bench/join_rules.py", argv), "run": str(args.run),
                            "transforms": list(dose.transforms), "rules": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
