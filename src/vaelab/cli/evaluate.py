"""`vaelab evaluate RUN`: the whole evaluation of a run, printed and written to RUN/eval-CKPT/."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab.cli.common import CONVENTIONS, _add_run_args, _formatter, _load, _run_data
from vaelab.config import apply_mapping, describe_keys, parse_override
from vaelab.data import BUILTIN
from vaelab.data.shifts import SHIFTS
from vaelab.errors import VaelabError
from vaelab.evaluation import unseen
from vaelab.evaluation.oodsuite import OodOptions
from vaelab.evaluation.suite import (RunEvaluation, check_unseen, evaluate_run, format_nll, format_samples,
                                     format_splits)
from vaelab.evaluation.unseen import OWN_SPLITS, split_spec
from vaelab.fileio import output_file
from vaelab.log import say
from vaelab.models import use_channels_last
from vaelab.report.evaluation import write_evaluation


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command to the parser."""
    p = sub.add_parser("evaluate", help="likelihoods, the generalization gap, unseen datasets and OOD detection",
                       formatter_class=_formatter,
                       description="Evaluate a run: -ELBO on train / validation / test (each binarized once with "
                                   "a fixed seed when training binarizes), the importance-sampled NLL (k samples "
                                   "per image) and both generalization gaps, inference gaps and active units, "
                                   "sample fidelity; with --on, the NLL of other datasets and out-of-distribution "
                                   "detection against the test split: every score (-log p(x), -ELBO, "
                                   "complexity-corrected, LLR>k of an HVAE, DoSE, and with --regret Likelihood "
                                   "Regret) with AUROC, AUPRC and FPR at 95% TPR and their bootstrap 95% "
                                   "intervals, and the typicality test for batches of 1, 5, 10 and 25 images. "
                                   "DoSE, the default score, is fitted on validation images only and kept in "
                                   "RUN/ood/ (fitted on first use). Writes RUN/eval-CKPT/ (evaluation.json, "
                                   "report.md, plots, per-image scores and statistics).",
                       epilog=CONVENTIONS + "\n\ndatasets for --on: test train val (the run's splits), fashion-mnist, "
                              "mnist (NAME@DIR: its files are in DIR), digits, folder:PATH, and the shifts noise, "
                              "constant, inverted, flipped (of the test split).\n\neval keys (--set eval.KEY=VALUE):\n"
                              + describe_keys("eval"))
    _add_run_args(p)
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the run's dataset lives on this machine (for a folder: run, the directory holding it)")
    p.add_argument("--on", nargs="+", metavar="DATASET", default=[],
                   help="also score these datasets and detect them as out-of-distribution, e.g. --on mnist noise")
    p.add_argument("--regret", action="store_true",
                   help="also score the --on datasets by Likelihood Regret (Xiao et al. 2020): slow, a copy of the "
                        "encoder fine-tuned on each image (eval.regret_images per dataset, eval.regret_steps steps)")
    p.add_argument("-k", "--k", type=int, metavar="K", help="importance samples per image for the NLL (= eval.nll_k)")
    p.add_argument("--nll-images", metavar="N|all",
                   help="images per split for the NLL (= eval.nll_images; all: whole splits; 0: skip)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="override an eval key, e.g. --set eval.ood_images=2000 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/eval-CKPT)")
    p.add_argument("--json", metavar="FILE", help="also write the results here (default: RUN/evaluation_CKPT.json; "
                                                  "with --out, only OUT/evaluation.json: the run's files stay as "
                                                  "they are)")
    p.set_defaults(func=cmd_evaluate)


def _eval_config(run, args: argparse.Namespace):
    """The run's config with the evaluate command's eval.* overrides (other sections are the run's own)."""
    cfg = run.config
    overrides = list(args.overrides)
    if args.k is not None:
        overrides.append(f"eval.nll_k={args.k}")
    if args.nll_images is not None:
        value = args.nll_images.strip().lower()
        if value == "all":
            value = str(2**31 - 1)
        elif not value.isdigit():
            raise VaelabError(f"--nll-images must be a number or all, got {args.nll_images!r}")
        overrides.append(f"eval.nll_images={value}")
    for text in overrides:
        section, key, value = parse_override(text)
        if section != "eval":
            raise VaelabError(f"evaluate takes eval.* overrides only (the model was trained with its own "
                              f"{section} settings), got {text!r}")
        cfg = apply_mapping(cfg, {section: {key: value}}, origin=f"--set {text}")
    return cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = _load(args)
    cfg = _eval_config(run, args)
    for spec in args.on:  # fail on a typo before any long computation
        _check_spec(spec)
    splits = _run_data(run, args.data_dir)
    out_dir = Path(args.out) if args.out else run.path / f"eval-{args.checkpoint}"
    # written elsewhere (--out), an evaluation leaves the run's own results alone: its JSON goes into --out only
    json_path = Path(args.json) if args.json else (None if args.out else
                                                   run.path / f"evaluation_{args.checkpoint}.json")
    if json_path is not None:
        output_file(json_path, "--json")  # refuse a bad target now, not after minutes of computing
    if out_dir.exists() and not out_dir.is_dir():
        raise VaelabError(f"{out_dir} exists and is not a directory; choose another --out")
    run_evaluation(run, cfg, splits, out_dir, json_path, on=args.on, checkpoint=args.checkpoint,
                   regret=args.regret)
    return 0


def _check_spec(spec: str) -> None:
    name, _ = split_spec(spec)
    if name in OWN_SPLITS or name in SHIFTS or name in BUILTIN or name.startswith("folder:"):
        return
    raise VaelabError(f"unknown dataset {spec!r} for --on; choose from {', '.join(OWN_SPLITS + BUILTIN)}, "
                      f"folder:PATH, {', '.join(SHIFTS)} (NAME@DIR says where a dataset's files are)")


def run_evaluation(run, cfg, splits, out_dir: Path, json_path: Path | None, *, on: list[str] = (),
                   checkpoint: str = "best", log=say, regret: bool = False) -> dict[str, Any]:
    """Everything `vaelab evaluate` computes (`evaluate_run`), printed as each part is done, and written to
    out_dir (JSON, report.md, plots, per-image CSV, per-image statistics); the run's DoSE scorer is kept in
    RUN/ood/."""
    model, device = run.model, run.device
    out_dir = Path(out_dir)
    check_unseen(model, cfg, on, regret)
    # every dataset is loaded before the long computations start: a typo costs seconds, not minutes
    eval_sets = unseen.load_eval_sets(list(on), cfg, splits) if on else None
    use_channels_last(model)  # faster convolutions on CPU; the numbers are the same
    title = (f"{run.path} ({cfg.model.kind}, {checkpoint} checkpoint, epoch {run.meta.get('epoch')}) "
             f"on {splits.name}")

    def show(stage: str, r: RunEvaluation) -> None:
        lines = {"splits": lambda: format_splits(r, f"{title}, nats per image:"), "nll": lambda: format_nll(r),
                 "samples": lambda: format_samples(r), "inside:start": lambda: ["inside the model:"],
                 "inside": lambda: [unseen.format_inside(r.inside)],
                 "datasets:start": lambda: [f"unseen datasets ({', '.join(on)}):"],
                 "datasets": lambda: [unseen.format_dataset_tables(r.datasets, splits.name)]}[stage]()
        for line in lines:
            log(line)

    ood = OodOptions(run_dir=run.path, stats_dir=out_dir / "statistics", regret=regret)
    r = evaluate_run(model, cfg, splits, device, inside=True, eval_sets=eval_sets, log=log, on_stage=show, ood=ood)
    result: dict[str, Any] = {
        "run": str(run.path), "checkpoint": checkpoint, "epoch": run.meta.get("epoch"), "model": cfg.model.kind,
        "dataset": splits.name, "protocol": r.protocol, "splits": r.splits_dict(), "gap_test_minus_train": r.gap,
        "gap_stderr": r.gap_stderr, "eval_config": {k: getattr(cfg.eval, k) for k in cfg.eval.__dataclass_fields__},
    }
    if r.nll:
        result["nll"] = r.nll
    result["samples"] = r.samples
    if r.inside is not None:
        result["inside"] = r.inside
    if r.datasets is not None:
        result["datasets_eval"] = r.datasets
        result["anchors"] = unseen.anchors(r.datasets) if splits.name == "fashion-mnist" else None
    curves = run.path / "images" / "curves.png"
    if curves.is_file():
        result["curves"] = str(Path("..") / "images" / "curves.png") if out_dir.parent == run.path else str(curves)
    report = write_evaluation(result, out_dir, json_path, r.per_image)
    log(f"wrote {out_dir / 'evaluation.json'}, {report}" + (f" and {json_path}" if json_path else ""))
    return result
