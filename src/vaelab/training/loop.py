"""The training loop: `Trainer` owns the run directory, the state and the order of things; the step is
in `step`, what is saved in `state`, the extras (metrics file, grids, progress bar, TensorBoard, W&B,
MLflow, yours) are callbacks (`callbacks`).

Per epoch: optimizer steps on shuffled batches (from where a mid-epoch checkpoint left off), validation on
the validation split binarized once and on the fixed monitor subsets, the record (callbacks'
`on_validation_end`), the `best` and `last` checkpoints, then `on_epoch_end` (metrics.jsonl, the grid,
your callbacks; any may ask to stop). At the end, with the best weights: the run's images and the final
evaluation (`vaelab.evaluation.suite.evaluate_run`) in evaluation.json.

A step whose loss or gradient is NaN or infinite is skipped and counted (never applied); train.nan_patience
of them in a row restore the last good checkpoint with a lower learning rate (train.on_nan = "restore") or
stop the run with an error naming the step. Inside an epoch, `last` is also written every
train.checkpoint_minutes / train.checkpoint_steps (and on SIGTERM / Ctrl-C after the step in flight), with
the epoch's data order and position, so a resumed run continues from that very step.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from vaelab.config import RunConfig, to_toml
from vaelab.data import DatasetSplits, load_dataset
from vaelab.errors import ConfigError
from vaelab.fileio import atomic_write
from vaelab.log import say
from vaelab.models import Model
from vaelab.report.figures import sample_grid, write_run_images
from vaelab.runs import RunPaths, resolve_device, write_json
from vaelab.runs.checkpoint import LoadedCheckpoint, optimizer_state_to_tensors, save_checkpoint
from vaelab.runs.lifecycle import RunLog, absolute_paths, check_new_run_dir, create_run_dir, run_info, snapshot_name
from vaelab.training import distributed
from vaelab.training.announce import announce
from vaelab.training.callbacks.base import Callback, CallbackList
from vaelab.training.callbacks.clock import CheckpointClock
from vaelab.training.callbacks.grids import SampleGrids
from vaelab.training.callbacks.metrics import MetricsFile
from vaelab.training.callbacks.progress import ProgressBar, ProgressLines
from vaelab.training.device import device_path, wants_device_data
from vaelab.training.ema import EMA
from vaelab.training.epoch import EpochRunner
from vaelab.training.final import final_evaluation, report_failure
from vaelab.training.guard import BadSteps, StopSignals, TrainingDiverged
from vaelab.training.schedules import step_kl_weight
from vaelab.training.setup import data_views, fit_codes, make_model, make_optimizer
from vaelab.training.state import GoodState, TrainState, checkpoint_tensors, restore_from, rng_state
from vaelab.training.validation import epoch_line, epoch_record, validate
from vaelab.training.step import (Outcome, StepStats, apply_update, backward, backward_distributed,
                                  learning_rate)


@dataclass
class TrainResult:
    run_dir: Path
    model: Model
    splits: DatasetSplits
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)


def _is_interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def default_callbacks(config: RunConfig, progress: bool | None) -> list[Callback]:
    """vaelab's own: the metrics file, the per-epoch grids, progress (True: a bar; None: lines; False: none),
    TensorBoard when asked."""
    out: list[Callback] = [MetricsFile(), SampleGrids(config.train.grid_every)]
    if progress is not False:  # True: a bar on the terminal; None: lines in the log, every minute
        out.append(ProgressBar() if progress else ProgressLines())
    if config.train.tensorboard:
        from vaelab.training.callbacks.tensorboard import TensorBoardCallback  # its package is an extra

        out.append(TensorBoardCallback())
    return out


class _EpochFunction(Callback):
    """`run(on_epoch=f)`: f(trainer, record) after every epoch; True stops training there."""

    def __init__(self, fn: Callable[[Any, dict[str, Any]], bool | None]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> bool:
        return bool(self.fn(trainer, record))


class Trainer:
    """Owns the optimizer, the RNGs, the run directory and the loop; the model only computes.

    `model`: a model of your own (an nn.Module implementing vaelab.models.Model) in place of config.model's.
    `callbacks`: yours, called after vaelab's own (see vaelab.training.callbacks.base for what they may read).
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, splits: DatasetSplits | None = None,
                 log: Callable[[str], None] = say, progress: bool | None = None,
                 resume_from: LoadedCheckpoint | None = None, _restart: bool = False,
                 model: torch.nn.Module | None = None, callbacks: Iterable[Callback] = ()) -> None:
        self.cfg = self.config = config = absolute_paths(config)
        self._lock = self._scratch = None
        tc = config.train
        progress = (True if _is_interactive() else None) if progress is None else progress
        own = default_callbacks(config, progress)  # a missing extra is a start-up error, never one after training
        if resume_from is None and not _restart:
            check_new_run_dir(Path(run_dir))
        self.resumed = resume_from is not None
        self.resumed_processes: int | None = None
        # several processes (torchrun): each takes its share of every batch; only rank 0 writes the run,
        # the others write their copies into a temporary directory, deleted at the end
        self.group, self.device = distributed.setup(resolve_device(tc.device))
        if not self.group.main:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"vaelab-rank{self.group.rank}-"))
            run_dir, log = self._scratch / "run", (lambda message: None)
            own = [cb for cb in own if not isinstance(cb, ProgressBar)]
        self.paths = RunPaths(Path(run_dir))
        self.log = RunLog(log)  # nothing is written until the data and the model are ready
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.splits = splits if splits is not None else load_dataset(config.data, log=self.log)
        for note in self.splits.notes:
            self.log(f"note: {note}")
        torch.manual_seed(tc.seed)
        self.model, self.memory_format = make_model(config, self.splits.image_shape, self.device, model)
        self.own_model = model is not None
        self.on_device = wants_device_data(tc, self.device, self.group.active)  # train.device_data
        self.optimizer = make_optimizer(self.model, tc, fused=self.on_device and self.device.type == "cuda")
        self.ema = EMA(self.model, tc.ema) if tc.ema else None
        self.data_gen = torch.Generator().manual_seed(tc.seed + 1)
        views = data_views(self.splits, config)
        self.order_gen, self.train_data, self.device_steps = device_path(self, views.train.images)
        self.train_images, self.dynamic, self.val_images, self.monitor = (views.train, views.dynamic, views.val,
                                                                          views.monitor)
        self.state = TrainState(beta=tc.beta)
        self.bad = BadSteps(tc.nan_patience, tc.on_nan, tc.max_restores)
        self.saved_at = "the start of training"
        self.batch_index = 0  # 1-based, inside the current epoch (EpochRunner keeps it; messages name it)
        self.signals = StopSignals()
        self.clock = CheckpointClock(tc.checkpoint_steps, tc.checkpoint_minutes)
        self.callbacks = CallbackList([*own, self.clock, *callbacks])
        self._samples: tuple[int, np.ndarray] | None = None
        self._lock = create_run_dir(self.paths.root)
        if resume_from is not None:
            self._restore(resume_from)
        if self.group.active:
            self.group.broadcast_parameters(self.model)  # the same start everywhere, whatever the hardware
            if not self.group.main and self.state.position is not None:  # rank 0 carries the epoch's sums
                self.state.position = {**self.state.position, "images": 0, "recon_sum": 0.0, "kl_sum": 0.0}
        self._good = GoodState.take(self.model, self.optimizer, self.ema, self.saved_at)
        try:
            self.log.open(self.paths.log)
        except ConfigError:
            self._unlock()
            raise

    # ------------------------------------------------------------------ what callbacks read

    epoch = property(lambda self: self.state.epoch)
    step = property(lambda self: self.state.step)
    history = property(lambda self: self.state.history)
    best_epoch = property(lambda self: self.state.best_epoch)
    stopped_early = property(lambda self: self.state.stopped_early)
    is_main = property(lambda self: self.group.main)

    def eval_weights(self):
        """The weights that validation, `best` and evaluation use: the average with train.ema, else the model's."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext(self.model)

    def epoch_samples(self) -> np.ndarray:
        """This epoch's grid of samples (the same prior draws every epoch), computed once with the eval weights."""
        if self._samples is None or self._samples[0] != self.epoch:
            with self.eval_weights():
                self._samples = (self.epoch, sample_grid(self.model, self.cfg))
        return self._samples[1]

    # ------------------------------------------------------------------ files

    def close(self) -> None:
        self.log.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _restore(self, ckpt: LoadedCheckpoint) -> None:
        """Continue from a `last` checkpoint: weights, Adam, the RNGs, counters and the metrics so far."""
        self.state = restore_from(ckpt, self.paths, self.model, self.optimizer, self.ema, self.bad, self.data_gen,
                                  self.device, self.cfg.train.beta, self.order_gen)
        self.resumed_processes = ckpt.meta.get("processes", 1)
        self.saved_at = self.state.describe_save()

    @property
    def model_class(self) -> dict[str, str]:
        """{"model_class": "module.Class"} for a model of the user's (run.json and checkpoints record it), else {}."""
        kind = type(self.model)
        return {"model_class": f"{kind.__module__}.{kind.__qualname__}"} if self.own_model else {}

    def info(self, status: str, **extra: Any) -> dict[str, Any]:
        extra = {**self.model_class, **extra}
        return run_info(self.cfg, self.splits, self.model, self.device, self.group.world, status, **extra)

    def save(self, name: str, with_optimizer: bool) -> None:
        """Write checkpoint `name`: `best` the weights evaluation uses, `last` everything a resume needs."""
        meta = self.state.meta(self.cfg, self.splits.image_shape, self.bad, self.ema, self.group.world,
                               rng_state(self.device, self.data_gen, self.order_gen)) | self.model_class
        tensors = checkpoint_tensors(name, self.model, self.ema)
        if with_optimizer:
            opt_tensors, opt_info = optimizer_state_to_tensors(self.optimizer.state_dict())
            tensors["optimizer"] = opt_tensors
            meta["optimizer"] = {"type": type(self.optimizer).__name__, **opt_info}
        save_checkpoint(self.paths.checkpoints, name, tensors, meta)
        if name == "last":
            self.state.saved_epoch = self.epoch
            self.saved_at = self.state.describe_save()
            self._good = GoodState.take(self.model, self.optimizer, self.ema, self.saved_at)
        self.callbacks.on_checkpoint(self, name)

    # ------------------------------------------------------------------ one step

    def n_batches(self) -> int:
        return math.ceil(len(self.train_images) / self.cfg.train.batch_size)

    def _lr(self) -> float:
        tc = self.cfg.train
        return learning_rate(tc, self.step, tc.epochs * self.n_batches(), self.bad.restores)

    def _step(self, x: torch.Tensor, checkpoint_due: bool = False) -> StepStats | None:
        """One optimizer step on batch x; None when it was skipped (loss or gradient not finite, or exploding).

        With several processes, x is the whole batch: this process computes the loss of its rows and the
        gradients are summed over processes before anything is decided; `checkpoint_due` (rank 0's say
        counts) and a stop request travel with them into `self._flags`."""
        tc = self.cfg.train
        self.state.beta = step_kl_weight(tc, self.step, self.n_batches())
        self.optimizer.zero_grad(set_to_none=True)
        if self.group.active:
            flags = [float(checkpoint_due and self.group.main), float(bool(self.signals.requested))]
            result = backward_distributed(self.model, x, tc, self.state.beta, self.group, flags)
            self._flags = (result.flags[0] > 0, result.flags[1] > 0)
        else:
            result = backward(self.model, x, tc, self.state.beta)
        outcome, norm, clipped = apply_update(self.model, self.optimizer, tc, self._lr(), result.finite)
        if outcome is Outcome.NOT_FINITE:  # never applied
            self._bad_step()
            return None
        self.bad.record_good()
        if outcome is Outcome.TOO_LARGE:
            self.state.skipped_large += 1
            return None
        self.state.clipped += clipped
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        terms = result.terms
        if terms is None:  # this process had no rows of the batch
            return StepStats(torch.zeros(()), torch.zeros(0), torch.zeros(0), norm, clipped)
        return StepStats(terms.loss.detach(), terms.recon.detach(), terms.kl.detach(), norm, clipped)

    def _bad_step(self, action: str | None = None) -> None:
        """A step whose loss or gradient was not finite: skipped; the policy may restore or stop (`action`:
        what the device-resident path's counters decided)."""
        tc = self.cfg.train
        action = action or self.bad.record_bad()
        if action is None:
            return
        where = f"batch {self.batch_index} of epoch {self.epoch + 1}, after {self.step} applied steps"
        if action == "stop":
            after = f" after {self.bad.restores} restore(s) with a lower learning rate" if self.bad.restores else ""
            raise TrainingDiverged(
                f"the loss or gradient was NaN or infinite for {tc.nan_patience} steps in a row (last at {where})"
                f"{after}; lower train.lr, set train.grad_clip, or check the data"
            )
        self._good.put_back(self.model, self.optimizer, self.ema)
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.log(f"{tc.nan_patience} bad steps in a row (NaN or infinite loss or gradient), last at {where}: "
                 f"restored the weights and optimizer of {self._good.at} and lowered the learning rate to "
                 f"{lr:.3g} (restore {self.bad.restores} of at most {tc.max_restores})")

    # ------------------------------------------------------------------ epochs

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split, from where a mid-epoch checkpoint left off if it did."""
        return EpochRunner(self).run()

    def end_epoch(self, train_terms: dict[str, float], epoch_time: float) -> dict[str, Any]:
        """Validate, checkpoint and log; returns the metrics record (the callbacks have seen it)."""
        tc, st = self.cfg.train, self.state
        st.train_time += epoch_time
        st.epoch += 1
        fit_codes(self.model, self.train_images, self.dynamic, self.cfg, self.device)
        with self.eval_weights():
            val, monitor = validate(self.model, self.val_images, self.monitor, tc, self.device, self.epoch)
        # without a validation split, the latest epoch counts as the best
        val_score = val.loss if val is not None else -float(self.epoch)
        improved = val_score < st.best_val - (tc.min_delta if val is not None else 0.0)
        if improved:
            st.best_val, st.best_epoch = val_score, self.epoch
        record = epoch_record(self, train_terms, epoch_time, val, monitor, improved)
        st.history.append(record)
        self.callbacks.on_validation_end(self, record)  # before the checkpoints: a killed epoch is redone
        if improved:  # `best` first: a kill between the two writes leaves `last` one epoch behind, never
            self.save("best", with_optimizer=False)  # pointing at a best epoch that was not saved
        self.save("last", with_optimizer=True)
        if tc.snapshot_every and self.epoch % tc.snapshot_every == 0:
            self.save(snapshot_name(self.epoch), with_optimizer=False)
        self.log(epoch_line(record, tc.epochs))
        return record

    # ------------------------------------------------------------------ the end

    def write_images(self) -> None:
        write_run_images(self.model, self.splits, self.cfg, self.paths.images)

    def finish(self) -> TrainResult:
        """Reload the best weights, write the final images and the evaluation."""
        return self._end(final_evaluation(self))

    def _end(self, evaluation: dict[str, Any] | None) -> TrainResult:
        """The callbacks' end, run.json's final status, the last line; `evaluation` None: not evaluated."""
        self.callbacks.on_train_end(self, evaluation)
        st = self.state
        write_json(self.paths.info, self.info(status="finished", train_time_s=round(st.train_time, 2),
                                              epochs=self.epoch, steps=self.step, best_epoch=self.best_epoch,
                                              stopped_early=self.stopped_early,
                                              **({} if evaluation is not None else {"evaluated": False})))
        self.log(f"run written to {self.paths.root}" + (" (no final evaluation)" if evaluation is None else ""))
        self.close()
        return TrainResult(self.paths.root, self.model, self.splits, self.best_epoch, self.history,
                           evaluation if evaluation is not None else {})

    def run(self, on_epoch: Callable[["Trainer", dict[str, Any]], bool | None] | None = None,
            evaluate: bool = True) -> TrainResult:
        """Train for the configured epochs, then (with `evaluate`) write the final images and evaluation.

        `on_epoch(trainer, record)` is called after every epoch, once its metrics record is written and
        its checkpoints saved (on every process under torchrun: it must decide the same everywhere).
        Returning True stops training there, as early stopping does: the run ends normally. A hyperparameter
        sweep prunes a trial this way. With `evaluate=False` the run ends after its last epoch without
        the final evaluation, images and curves (the best and last checkpoints are written all the same).
        """
        if on_epoch is not None:
            self.callbacks.callbacks.append(_EpochFunction(on_epoch))
        atomic_write(self.paths.config, to_toml(self.cfg).encode("utf-8"), "the run config")
        write_json(self.paths.info, self.info(status="running", **({"resumed_at_epoch": self.epoch}
                                                                   if self.resumed else {})))
        announce(self)
        try:
            self.callbacks.on_train_start(self)
            with self.signals:
                self._epochs()
            if not self.group.main:  # rank 0 evaluates and writes the results
                self.callbacks.on_train_end(self, None)
                return TrainResult(self.paths.root, self.model, self.splits, self.best_epoch, self.history)
            return self.finish() if evaluate else self._end(None)
        except BaseException as exc:
            report_failure(self, exc)
            raise
        finally:
            self.close()

    def _epochs(self) -> None:
        tc = self.cfg.train
        for _ in range(tc.epochs - self.epoch if not self.stopped_early else 0):
            train_terms = self.train_epoch()
            record = self.end_epoch(train_terms, train_terms.pop("time_s"))
            stop = self.callbacks.on_epoch_end(self, record)
            if self.signals.requested:  # came during the epoch's last step: the epoch is saved
                raise KeyboardInterrupt(self.signals.requested)
            if stop:
                self.state.stopped_early = True
                self.log(f"stopped after epoch {self.epoch} at the caller's request "
                         f"(the best epoch is {self.best_epoch})")
                return
            if tc.patience and self.val_images is not None and self.epoch - self.best_epoch >= tc.patience:
                self.state.stopped_early = True
                self.log(f"early stopping after epoch {self.epoch}: no better validation loss for "
                         f"{tc.patience} epoch(s) (train.patience); the best epoch is {self.best_epoch}")
                return


__all__ = ["Trainer", "TrainResult", "default_callbacks"]
