"""`vaelab sweep`: hyperparameter search with Optuna over a run config (see vaelab.sweep)."""

from __future__ import annotations

import argparse
import json

from vaelab.cli.common import _formatter
from vaelab.sweep import OBJECTIVES, run_sweep

SWEEP_KEYS = """\
a sweep file is a run config ([data] [model] [train] [eval]: the base of every trial) plus:
  [sweep]
  sampler = "tpe"              tpe | random | grid (every point of the grid once)
  trials = 20                  trials to finish in all, earlier runs of the sweep included
                               (default 20; a grid: all its points)
  jobs = 1                     worker processes; each trial gets max(1, cores // jobs) threads
                               (unless train.threads is set)
  seed = 0                     seed of the sampler; trial N trains with train.seed + N
  objective = "val_nll"        what is optimized, on the validation split (below; val_fd: how well
                               the model generates, the Frechet distance of samples to them)
  direction = "auto"           minimize | maximize | auto: the objective's own (maximize for
                               val_active_units, minimize for the others)
  pruner = "auto"              median | none | auto (median when minimizing): median stops a trial
                               whose validation -ELBO after an epoch is worse than the median of
                               the complete trials at that epoch
  pruner_startup_trials = 5    complete trials before any pruning
  pruner_warmup_epochs = 1     the first epoch after which a trial may be pruned
  [sweep.space]                "section.key" = a distribution:
  "train.lr" = { low = 1e-4, high = 1e-2, log = true }    float key: a float range (log, or step)
  "model.latent_dim" = { low = 8, high = 64, step = 8 }   int key: an int range (step, or log)
  "model.prior" = ["standard", "vamp"]                    any key: a list of choices

objectives (computed from each trial's best checkpoint; the test split is never read):
{objectives}

DIR holds study.db (the Optuna study), trials/NNNN/ (a run directory per trial: vaelab report,
evaluate and sample work on it), trials.csv, trials.md, plots/ and best.toml (the best trial's
full config: vaelab train --config DIR/best.toml). Running the same command again resumes the
sweep; it refuses when the space, the objective or the base config changed."""


def _objectives_help() -> str:
    return "\n".join(f"  {o.name:<20} {o.help}" for o in OBJECTIVES.values())


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sweep` command to the parser."""
    p = sub.add_parser("sweep", help="search hyperparameters with Optuna (resumable, parallel, pruned)",
                       formatter_class=_formatter,
                       description="Train one run per trial with parameters drawn from the sweep file's "
                                   "[sweep.space], choose on the validation split, and write the table of trials, "
                                   "plots of the objective against each parameter and the best config as a "
                                   "preset. Run the same command again to resume an interrupted sweep or, with "
                                   "a larger --trials, to extend it.",
                       epilog=SWEEP_KEYS.replace("{objectives}", _objectives_help()))
    p.add_argument("--config", metavar="FILE", required=True,
                   help="sweep file: a run config plus [sweep] and [sweep.space] tables")
    p.add_argument("--out", metavar="DIR", required=True, help="sweep directory (created, or resumed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base run config, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files (= data.data_dir)")
    p.add_argument("--trials", type=int, metavar="N", help="trials to finish in all (= sweep.trials)")
    p.add_argument("--jobs", type=int, metavar="J", help="worker processes (= sweep.jobs)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    result = run_sweep(args.config, args.out, overrides=overrides, trials=args.trials, jobs=args.jobs)
    return 0 if result.best_number is not None else 1
