"""`vaelab compare RUN...`: how well runs generate, scored in the features of a classifier of their dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli.common import _formatter, _positive, _run_data, _seed
from vaelab.errors import VaelabError
from vaelab.evaluation.classifier import find_classifier
from vaelab.evaluation.generators import compare_generators
from vaelab.log import say
from vaelab.runs import load_run, write_json

CLASSIFIER_FILE = "classifier.safetensors"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `compare` command to the parser."""
    p = sub.add_parser("compare", help="how well runs generate: FD, precision, recall in a classifier's features",
                       formatter_class=_formatter,
                       description="Score samples of one or more runs (a VAE from its prior; an autoencoder from "
                                   "N(0, I) and from the Gaussian fitted to its codes) and real training images "
                                   "against the test images, in the feature space of a small CNN classifier "
                                   "trained on the runs' dataset (not Inception's): Frechet distance, precision "
                                   "and recall (Kynkaeaenniemi et al. 2019), density and coverage (Naeem et al. "
                                   "2020). The runs must share a dataset.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `vaelab train`")
    p.add_argument("--checkpoint", default="best", metavar="NAME",
                   help="which weights: best, last, or a snapshot such as epoch-0010 (default: best)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("-n", type=int, default=10_000, help="samples and test images per set (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifier, the samples and the image subsets")
    p.add_argument("--classifier", metavar="FILE", help="reuse this classifier, saved by an earlier compare or "
                                                          "demo (default: a saved one that fits, see below)")
    p.add_argument("--new-classifier", action="store_true",
                   help="train a new classifier even when a saved one fits (by default compare reuses the one in "
                        "OUT/, RUN/compare/ or, for the runs of a demo, DEMO/fidelity/ when it was trained on the "
                        "same dataset with the same --seed)")
    p.add_argument("--data-dir", metavar="DIR", help="where the runs' dataset lives on this machine")
    p.add_argument("--out", metavar="DIR", help="output folder (default: FIRST_RUN/compare)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    _positive(args.n, "-n", 100_000)
    _seed(args.seed)
    runs = [load_run(path, checkpoint=args.checkpoint, device=args.device) for path in args.runs]
    first = runs[0]
    for r in runs[1:]:
        if r.config.data.dataset != first.config.data.dataset or r.image_shape != first.image_shape:
            raise VaelabError(f"{r.path} was trained on {r.config.data.dataset} {r.image_shape}, {first.path} on "
                              f"{first.config.data.dataset} {first.image_shape}; compare runs of one dataset")
    splits = _run_data(first, args.data_dir)
    names: dict[str, object] = {}
    for r in runs:
        name = f"{r.path.name} ({r.config.model.kind})"
        names[name if name not in names else f"{name} #{len(names) + 1}"] = r.model
    out = Path(args.out) if args.out else first.path / "compare"
    classifier = args.classifier
    if classifier is None and not args.new_classifier:
        classifier = _saved_classifier(runs, splits, out, args.seed)
    result = compare_generators(names, splits, out, n=args.n, seed=args.seed, classifier=classifier)
    print(result["table"])
    write_json(out / "compare.json", {"runs": [str(r.path) for r in runs], "checkpoint": args.checkpoint,
                                      "dataset": splits.name, **result})
    print(f"wrote {out / 'compare.json'}")
    return 0


def _saved_classifier(runs: list, splits, out: Path, seed: int) -> Path | None:
    """A classifier saved earlier that fits these runs' data and `seed` (a demo's DEMO/fidelity/, an earlier
    compare's OUT/ or RUN/compare/), with a note saying it is reused; None (train one) when there is none."""
    candidates = [out / CLASSIFIER_FILE]
    for r in runs:
        candidates += [r.path / "compare" / CLASSIFIER_FILE, r.path.parent / "fidelity" / CLASSIFIER_FILE]
    labels = splits.train.labels
    clf, path, notes = find_classifier(candidates, dataset=splits.name, image_shape=tuple(splits.image_shape),
                                       n_classes=int(labels.max()) + 1 if len(labels) else 0,
                                       train_images=len(splits.train), seed=seed)
    for line in notes:
        say(f"note: {line}")
    if clf is not None:
        accuracy = clf.info.get("test_accuracy")
        said = f", test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
        say(f"note: reusing the feature classifier {path} (trained on {splits.name}, seed {seed}{said}) instead of "
            "training one; --new-classifier trains a new one")
    return path
