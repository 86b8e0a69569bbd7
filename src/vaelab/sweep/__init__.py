"""Hyperparameter sweeps with Optuna: `vaelab sweep` and `run_sweep`.

A sweep file is a run config (the base of every trial) plus a `[sweep]` table: the sampler
(tpe, random or grid), the number of trials, worker processes, the objective (validation NLL by
default; never anything of the test split) and the search space. Trials are normal run
directories under DIR/trials/; the Optuna study lives in DIR/study.db, so running the same
command again resumes the sweep. The modules, in the order data flows:

- `space`: reading and checking the sweep file;
- `validation`: the validation metrics a sweep can optimize, and the sealed test split;
- `study`: the Optuna study (storage, samplers, pruner, resuming);
- `trial`: one trial, from its config to its objective;
- `runner`: `run_sweep`, the worker processes;
- `outputs`: trials.csv / trials.md, the plots and best.toml.
"""

from __future__ import annotations

from vaelab.sweep.validation import OBJECTIVES, SealedSplit, SealedTestSplitError, seal_test, validation_metrics
from vaelab.sweep.runner import SweepResult, run_sweep
from vaelab.sweep.space import SweepConfig, SweepSettings, load_sweep

__all__ = ["OBJECTIVES", "SealedSplit", "SweepConfig", "SweepResult", "SweepSettings", "SealedTestSplitError",
           "load_sweep", "run_sweep", "seal_test", "validation_metrics"]
