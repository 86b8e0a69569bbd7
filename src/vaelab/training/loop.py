"""Training: Adam on recon + beta * KL, with validation, checkpoints, grids and metrics.

`train(config, run_dir)` is the whole job behind `vaelab train`:

1. load and split the data (or take `splits` already loaded),
2. build the model, seed everything, write config.toml and run.json,
3. per epoch: Adam steps on shuffled batches (dynamically binarized if asked),
   the validation loss on the validation split binarized once, a line in
   metrics.jsonl, the `last` checkpoint, the `best` one when validation
   improved, and a grid of samples from a fixed set of latent draws (with
   `train.tensorboard`, the same numbers and grids as TensorBoard events, see
   vaelab.training.callbacks.tensorboard),
4. at the end, with the best weights: samples, reconstructions and
   interpolations, the loss terms on train / val / test and a sample-fidelity
   score (Frechet distance to the test images in PCA space) in evaluation.json.

A step whose loss or gradient is NaN or infinite is skipped and counted (never
applied); `train.nan_patience` of them in a row restore the last good checkpoint
with a lower learning rate (`train.on_nan = "restore"`) or stop the run with an
error naming the step. Inside an epoch, `last` is also written every
`train.checkpoint_minutes` (and on SIGTERM / Ctrl-C after the step in flight),
with the epoch's data order and position, so a resumed run continues from that
very step.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vaelab import noise
from vaelab._version import __version__
from vaelab.training import distributed
from vaelab.runs.checkpoint import (LoadedCheckpoint, decode_rng, encode_rng, load_checkpoint, optimizer_state_from_tensors,
                         optimizer_state_to_tensors, save_checkpoint)
from vaelab.config import RunConfig, from_dict, to_dict, to_toml
from vaelab.data import DatasetSplits, batches, binarize_once, eval_view, load_dataset, spread_index, train_view
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluation.elbo import (evaluate_images, evaluate_splits, evaluation_protocol, format_table,
                       gap_stderr, generalization_gap, nll_on_splits, sample_fidelity)
from vaelab.fileio import atomic_write
from vaelab.training.guard import BadSteps, StopSignals, TrainingDiverged, grad_norm, lock_run_dir
from vaelab.evaluation.likelihood import format_nll_table
from vaelab.models.generate import interpolate, reconstruct, sample
from vaelab.report.images import make_grid, pairs_grid, save_png, square_grid
from vaelab.models import Model, build_model, eval_mode
from vaelab.training.ema import EMA
from vaelab.training.loss import training_loss
from vaelab.training.schedules import kl_weight, lr_factor
from vaelab.runs.load import RunPaths, json_safe, resolve_device, write_json

CODE_FIT_IMAGES = 10_000
__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "resume", "train", "lock_run_dir"]


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


def _absolute_paths(config: RunConfig) -> RunConfig:
    """The config with its data paths made absolute, so the run can be evaluated from any directory.

    `data.data_dir` becomes absolute; a folder: dataset's path too, unless it is relative to
    data_dir (then it stays relative, so `--data-dir` can point a later command at a moved copy).
    """
    dc = config.data
    changes: dict[str, str] = {}
    if dc.data_dir:
        changes["data_dir"] = str(Path(dc.data_dir).expanduser().resolve())
    if dc.dataset.startswith("folder:"):
        from vaelab.data.sources import folder_root

        path = dc.dataset[len("folder:"):]
        if not (dc.data_dir and not Path(path).expanduser().is_absolute()):
            changes["dataset"] = f"folder:{folder_root(path, None).resolve()}"
    return config.replace(data=changes) if changes else config


def _check_run_dir(root: Path) -> None:
    paths = RunPaths(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a directory; choose another --out for the run")
    if paths.config.exists() or paths.checkpoints.exists():
        raise ConfigError(
            f"run directory {root} already holds a run; choose another --out (or delete it to start over)"
        )


class Trainer:
    """Owns the optimizer, the RNGs, the run directory and the loop; the model only computes."""

    def __init__(self, config: RunConfig, run_dir: str | Path, splits: DatasetSplits | None = None,
                 log: Callable[[str], None] = print, progress: bool | None = None,
                 resume_from: LoadedCheckpoint | None = None, _restart: bool = False) -> None:
        self.cfg = config = _absolute_paths(config)
        self._lock = None
        self.tb = None  # the TensorBoard writer (train.tensorboard), opened by run() on rank 0
        if config.train.tensorboard:  # a missing package is a start-up error, never one after training
            from vaelab.training.callbacks.tensorboard import require_tensorboard

            require_tensorboard()
        if resume_from is None and not _restart:
            _check_run_dir(Path(run_dir))
        self.resumed = resume_from is not None
        self._resumed_processes: int | None = None
        self._flags = (False, False)  # (write a checkpoint now, stop): decided with every process at each step
        tc = config.train
        # several processes (torchrun): each takes its share of every batch; only rank 0 writes the run,
        # the others write their copies into a temporary directory, deleted at the end
        self.group, self.device = distributed.setup(resolve_device(tc.device))
        self._scratch = None
        if not self.group.main:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"vaelab-rank{self.group.rank}-"))
            run_dir, log, progress = self._scratch / "run", (lambda message: None), False
        self.paths = RunPaths(Path(run_dir))
        # nothing is written until the data and the model are ready: a mistake leaves no half-made run
        self._log_file = None
        self._pending_log: list[str] = []
        self._print = log
        self.progress = _is_interactive() if progress is None else progress
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.splits = splits if splits is not None else load_dataset(config.data, log=self.log)
        for note in self.splits.notes:
            self.log(f"note: {note}")
        torch.manual_seed(tc.seed)
        self.memory_format = (torch.channels_last if tc.channels_last and (config.model.arch == "conv"
                                                                           or config.model.kind == "hvae")
                              else torch.contiguous_format)
        self.model = build_model(config.model, self.splits.image_shape).to(self.device,
                                                                           memory_format=self.memory_format)
        self.optimizer = (torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
                          if tc.weight_decay else torch.optim.Adam(self.model.parameters(), lr=tc.lr))
        self.ema = EMA(self.model, tc.ema) if tc.ema else None
        self.data_gen = torch.Generator().manual_seed(tc.seed + 1)
        dc = config.data
        self.train_images, self.dynamic = train_view(self.splits.train, dc.binarize, dc.binarize_seed)
        self.val_images = eval_view(self.splits.val, "val", dc.binarize, dc.binarize_seed) if len(self.splits.val) else None
        self.monitor = self._monitor_sets()
        self.stopped_early = False
        self.epoch = 0
        self.saved_epoch = 0  # the epoch the `last` checkpoint holds
        self.step = 0
        self.bad = BadSteps(tc.nan_patience, tc.on_nan, tc.max_restores)
        self.clipped = 0
        self.skipped_large = 0
        self.beta = tc.beta  # the KL weight of the latest step (below train.beta while warming up)
        self.batch_index = 0  # 1-based, inside the current epoch
        self.position: dict[str, Any] | None = None  # where inside an epoch `last` was written (None: at its end)
        self.saved_at = "the start of training"
        self._last_save = time.monotonic()
        self.signals = StopSignals()
        self.best_val = math.inf
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {self.paths.root}: {exc.strerror}; "
                              "choose another --out") from None
        self._lock = lock_run_dir(self.paths.root)
        if resume_from is not None:
            self._restore(resume_from)
        if self.group.active:
            self.group.broadcast_parameters(self.model)  # the same start everywhere, whatever the hardware
            if not self.group.main and self.position is not None:  # rank 0 carries the epoch's sums so far
                self.position = {**self.position, "images": 0, "recon_sum": 0.0, "kl_sum": 0.0}
        self._good = self._snapshot()  # what a restore after bad steps goes back to
        try:
            self._log_file = open(self.paths.log, "a", encoding="utf-8")
        except OSError as exc:
            self._unlock()
            raise ConfigError(f"cannot write in the run directory {self.paths.root}: {exc.strerror}; "
                              "choose another --out") from None
        for line in self._pending_log:
            self._log_file.write(line + "\n")
        self._pending_log.clear()

    def _monitor_sets(self) -> dict[str, Any] | None:
        """Fixed, equal-size subsets of train and validation, binarized once, scored after every epoch.

        The running training average mixes weights from the whole epoch (and dynamic binarization);
        these two subsets are scored by the same weights in the same way, so their difference is the
        generalization gap and nothing else.
        """
        tc, dc = self.cfg.train, self.cfg.data
        if self.val_images is None or tc.monitor_images == 0:
            return None
        n = min(tc.monitor_images or len(self.val_images), len(self.val_images), len(self.splits.train))
        # binarize the whole split once, then pick: the same bits as every other evaluation of these images
        # (and, with static binarization, the very bits the model trains on)
        train = eval_view(self.splits.train, "train", dc.binarize, dc.binarize_seed).subset(
            spread_index(len(self.splits.train), n, tc.seed + 5))
        val = self.val_images if n == len(self.val_images) else self.val_images.subset(
            spread_index(len(self.val_images), n, tc.seed + 6))
        return {"images": n, "train": train, "val": val}

    # ------------------------------------------------------------------ logging and files

    def log(self, message: str) -> None:
        self._print(message)
        if self._log_file is None:
            self._pending_log.append(message)
            return
        self._log_file.write(message + "\n")
        self._log_file.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self._log_file is not None and not self._log_file.closed:
            try:
                self._log_file.close()
            except OSError:  # a full disk: what the log could not take was printed already
                pass
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _restore(self, ckpt: LoadedCheckpoint) -> None:
        """Continue from a `last` checkpoint: weights, Adam, both RNGs, counters and the metrics so far."""
        meta = ckpt.meta
        if "optimizer" not in ckpt.tensors or "optimizer" not in meta or "history" not in meta:
            raise ConfigError(f"the last checkpoint of {self.paths.root} has no optimizer state or history "
                              "(written by an older vaelab?); it cannot be resumed exactly")
        self.model.load_state_dict(ckpt.tensors["model"])
        self.optimizer.load_state_dict(optimizer_state_from_tensors(ckpt.tensors["optimizer"],
                                                                    meta["optimizer"]))
        torch.set_rng_state(decode_rng(meta["rng"]["torch"]))
        self.data_gen.set_state(decode_rng(meta["rng"]["data"]))
        if self.device.type == "cuda" and "cuda" in meta["rng"]:
            torch.cuda.set_rng_state(decode_rng(meta["rng"]["cuda"]), self.device)
        self.epoch = self.saved_epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.bad.total = int(meta.get("skipped_steps", 0))
        self.bad.in_a_row = int(meta.get("bad_in_a_row", 0))
        self.bad.restores = int(meta.get("restores", 0))
        self.clipped = int(meta.get("clipped_steps", 0))
        self.skipped_large = int(meta.get("skipped_large", 0))
        if self.ema is not None:
            if "ema" not in ckpt.tensors:
                raise ConfigError(f"the last checkpoint of {self.paths.root} holds no weight average (train.ema) "
                                  "to continue")
            self.ema.load(ckpt.tensors["ema"], int(meta.get("ema_updates", 0)))
        self.position = meta.get("in_epoch")
        self._resumed_processes = meta.get("processes", 1)
        self.saved_at = self._describe_save()
        self.best_val = math.inf if meta.get("best_val") is None else float(meta["best_val"])
        self.best_epoch = int(meta.get("best_epoch", 0))
        self.history = list(meta["history"])
        self.train_time = float(meta.get("train_time_s", 0.0))
        self.stopped_early = bool(meta.get("stopped_early", False))
        # the metrics of the epochs the checkpoint holds, and no others (a kill may have come in between)
        lines = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in self.history)
        atomic_write(self.paths.metrics, lines.encode("utf-8"), "the metrics")

    def _write_start_files(self) -> None:
        atomic_write(self.paths.config, to_toml(self.cfg).encode("utf-8"), "the run config")
        write_json(self.paths.info, self._info(status="running", **({"resumed_at_epoch": self.epoch}
                                                                   if self.resumed else {})))

    def _info(self, status: str, **extra: Any) -> dict[str, Any]:
        s = self.splits
        return {
            "status": status,
            "vaelab_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "processes": self.group.world,
            "dataset": {
                "name": s.name, "source": s.source, "image_shape": list(s.image_shape),
                "sizes": {"train": len(s.train), "val": len(s.val), "test": len(s.test)},
                "notes": list(s.notes),
            },
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "config": to_dict(self.cfg),
            **extra,
        }

    def _meta(self) -> dict[str, Any]:
        meta = {
            "vaelab_version": __version__,
            "config": to_dict(self.cfg),
            "image_shape": list(self.splits.image_shape),
            "epoch": self.epoch,
            "step": self.step,
            "best_val": None if math.isinf(self.best_val) else self.best_val,
            "best_epoch": self.best_epoch,
            "skipped_steps": self.bad.total,
            "bad_in_a_row": self.bad.in_a_row,
            "restores": self.bad.restores,
            "clipped_steps": self.clipped,
            "skipped_large": self.skipped_large,
            "ema_updates": self.ema.updates if self.ema is not None else None,
            "in_epoch": self.position,
            "history": self.history,
            "train_time_s": self.train_time,
            "stopped_early": self.stopped_early,
            "processes": self.group.world,
            "rng": {"torch": encode_rng(torch.get_rng_state()), "data": encode_rng(self.data_gen.get_state())},
        }
        if self.device.type == "cuda":
            meta["rng"]["cuda"] = encode_rng(torch.cuda.get_rng_state(self.device))
        return meta

    def save(self, name: str, with_optimizer: bool) -> None:
        """`best` holds the weights evaluation uses (the average with train.ema); `last` the trained ones,
        the average and the optimizer, everything a resumed run needs."""
        meta = self._meta()
        if name == "last":
            tensors = {"model": self.model.state_dict()}
            if self.ema is not None:
                tensors["ema"] = self.ema.state()
        else:
            tensors = {"model": self.ema.state() if self.ema is not None else self.model.state_dict()}
        if with_optimizer:
            opt_tensors, opt_info = optimizer_state_to_tensors(self.optimizer.state_dict())
            tensors["optimizer"] = opt_tensors
            meta["optimizer"] = {"type": type(self.optimizer).__name__, **opt_info}
        save_checkpoint(self.paths.checkpoints, name, tensors, meta)
        if name == "last":
            self.saved_epoch = self.epoch
            self.saved_at = self._describe_save()
            self._last_save = time.monotonic()
            self._good = self._snapshot()

    def _describe_save(self) -> str:
        if self.position is None:
            return f"the end of epoch {self.epoch} (step {self.step})"
        p = self.position
        return f"step {self.step}, batch {p['batches']} of {p['of']} in epoch {self.epoch + 1}"

    # ------------------------------------------------------------------ bad steps

    def _snapshot(self) -> dict[str, Any]:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "at": self.saved_at,
                "ema": None if self.ema is None else ({k: v.clone() for k, v in self.ema.state().items()},
                                                       self.ema.updates)}

    def eval_weights(self):
        """The weights that validation, `best` and evaluation use: the average with train.ema, else the model's."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext(self.model)

    def _n_batches(self) -> int:
        return math.ceil(len(self.train_images) / self.cfg.train.batch_size)

    def _set_lr(self) -> None:
        """Base rate x schedule at this step x nan_lr_factor per restore after bad steps."""
        tc = self.cfg.train
        factor = lr_factor(self.step, tc.epochs * self._n_batches(), tc.lr_schedule, tc.lr_warmup_steps)
        lr = tc.lr * factor * tc.nan_lr_factor ** self.bad.restores
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _bad_step(self) -> None:
        """A step whose loss or gradient was not finite: skipped; the policy may restore or stop."""
        tc = self.cfg.train
        action = self.bad.record_bad()
        if action is None:
            return
        where = f"batch {self.batch_index} of epoch {self.epoch + 1}, after {self.step} applied steps"
        if action == "stop":
            after = f" after {self.bad.restores} restore(s) with a lower learning rate" if self.bad.restores else ""
            raise TrainingDiverged(
                f"the loss or gradient was NaN or infinite for {tc.nan_patience} steps in a row (last at {where})"
                f"{after}; lower train.lr, set train.grad_clip, or check the data"
            )
        self.model.load_state_dict(self._good["model"])
        self.optimizer.load_state_dict(copy.deepcopy(self._good["optimizer"]))
        if self.ema is not None:
            self.ema.load(*self._good["ema"])
        self._set_lr()
        self.log(f"{tc.nan_patience} bad steps in a row (NaN or infinite loss or gradient), last at {where}: "
                 f"restored the weights and optimizer of {self._good['at']} and lowered the learning rate to "
                 f"{self.optimizer.param_groups[0]['lr']:.3g} (restore {self.bad.restores} of at most "
                 f"{tc.max_restores})")

    # ------------------------------------------------------------------ the loop

    def _step(self, x: torch.Tensor, checkpoint_due: bool = False):
        """One Adam step on batch x; None when it was skipped (loss or gradient not finite).

        With several processes, x is the whole batch: this process computes the loss of its rows (and
        their share of the noise) and the gradients are summed over processes before anything is decided;
        `checkpoint_due` (rank 0's say counts) and a stop request travel with them into `self._flags`."""
        tc = self.cfg.train
        warmup = tc.warmup * (self._n_batches() if tc.warmup_unit == "epochs" else 1)
        self.beta = kl_weight(self.step, warmup, tc.beta)
        self.optimizer.zero_grad(set_to_none=True)
        if self.group.active:
            terms, finite = self._distributed_backward(x, checkpoint_due)
        else:
            terms = training_loss(self.model, x, tc, self.beta)
            finite = bool(torch.isfinite(terms.loss))
            if finite:
                terms.loss.backward()
        if finite:
            norm = grad_norm(self.model.parameters())
            finite = bool(torch.isfinite(norm))
        if not finite:  # never applied
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_step()
            return None
        self.bad.record_good()
        if tc.skip_grad_norm and norm > tc.skip_grad_norm:  # an exploding update: skipped, counted
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_large += 1
            return None
        if tc.grad_clip and norm > tc.grad_clip:
            self.clipped += 1
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self._set_lr()
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return terms

    def _distributed_backward(self, x: torch.Tensor, checkpoint_due: bool):
        """This process's rows of batch x: loss, backward, and the gradient sum over processes, each weighted
        by its share of the rows. Returns (the terms of its rows, or None without rows; whether the loss
        was finite on every process)."""
        start, stop = self.group.rows(len(x))
        terms, finite = None, True
        if stop > start:  # a last batch smaller than the number of processes leaves some without rows
            with noise.shard(start, stop, len(x)):
                terms = training_loss(self.model, x[start:stop], self.cfg.train, self.beta)
            finite = bool(torch.isfinite(terms.loss))
            if finite:
                terms.loss.backward()
        flags = [0.0 if finite else 1.0, float(checkpoint_due and self.group.main),
                 float(bool(self.signals.requested))]
        bad, due, stop_requested = self.group.sync_gradients(list(self.model.parameters()),
                                                             (stop - start) / len(x), flags)
        self._flags = (due > 0, stop_requested > 0)
        return terms, bad == 0

    def _checkpoint_due(self, batches_done: int) -> bool:
        tc = self.cfg.train
        if tc.checkpoint_steps and batches_done % tc.checkpoint_steps == 0:
            return True
        return bool(tc.checkpoint_minutes) and time.monotonic() - self._last_save >= 60 * tc.checkpoint_minutes

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split, from where a mid-epoch checkpoint left off if it did."""
        tc = self.cfg.train
        self.model.train()
        n = len(self.train_images)
        n_batches = math.ceil(n / tc.batch_size)
        t0 = time.perf_counter()
        large_before = self.skipped_large
        if self.position is None:  # a fresh epoch: its order comes first from the data generator
            order_rng = self.data_gen.get_state()
            order = torch.randperm(n, generator=self.data_gen)
            done, recon_sum, kl_sum, n_images, time_before = 0, 0.0, 0.0, 0, 0.0
        else:  # resumed inside the epoch: the same order, and the generator where the checkpoint left it
            p = self.position
            order_rng = decode_rng(p["order_rng"])
            order = torch.randperm(n, generator=torch.Generator().set_state(order_rng))
            done, n_images, time_before = int(p["batches"]), int(p["images"]), float(p["time_s"])
            recon_sum, kl_sum = float(p["recon_sum"]), float(p["kl_sum"])
        recon_t = torch.tensor(recon_sum, dtype=torch.float64)
        kl_t = torch.tensor(kl_sum, dtype=torch.float64)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=n_batches, initial=done, desc=f"epoch {self.epoch + 1}/{tc.epochs}", leave=False,
                       file=sys.stderr)
        self.signals.stepping = True
        try:
            for x in batches(self.train_images.images, tc.batch_size, order=order[done * tc.batch_size:],
                             generator=self.data_gen, dynamic=self.dynamic, device=self.device,
                             memory_format=self.memory_format, shift=self.cfg.data.augment_shift,
                             hflip=self.cfg.data.augment_hflip):
                self.batch_index = done + 1
                if self.group.active:  # rank 0's clock decides for everyone, with the step's gradients
                    terms = self._step(x, checkpoint_due=self._checkpoint_due(done + 1))
                else:
                    terms = self._step(x)
                done += 1
                if terms is not None:
                    recon_t = recon_t + terms.recon.detach().sum().double().cpu()
                    kl_t = kl_t + terms.kl.detach().sum().double().cpu()
                    n_images += len(terms.recon)
                if bar is not None:
                    bar.update(1)
                    if terms is not None and self.step % 20 == 0:
                        bar.set_postfix(loss=f"{terms.loss.item():.1f}")
                if self.group.active:
                    due, stop = self._flags  # decided with every process at this step
                else:
                    stop = self.signals.requested
                    due = bool(stop) or self._checkpoint_due(done)
                if done < n_batches and (stop or due):
                    sums = [n_images, recon_t.item(), kl_t.item()]
                    if self.group.active:  # the epoch's sums over all processes, for the checkpoint
                        sums = self.group.sum(sums, self.device)
                    self.position = {"order_rng": encode_rng(order_rng), "batches": done, "of": n_batches,
                                     "images": int(sums[0]), "recon_sum": sums[1], "kl_sum": sums[2],
                                     "time_s": time_before + time.perf_counter() - t0}
                    self.save("last", with_optimizer=True)  # rank 0 into the run, the others into scratch
                if stop and done < n_batches:  # on the last batch the epoch ends first, and saves
                    raise KeyboardInterrupt(self.signals.requested or "a stop request on another process")
        finally:
            self.signals.stepping = False
            if bar is not None:
                bar.close()
        self.position = None
        if self.group.active:  # the epoch's sums over all processes
            n_images, recon_sum, kl_sum = self.group.sum([n_images, recon_t.item(), kl_t.item()], self.device)
            n_images, recon_t, kl_t = int(n_images), torch.tensor(recon_sum), torch.tensor(kl_sum)
        if n_images == 0:
            why = ("had a gradient norm above train.skip_grad_norm" if self.skipped_large - large_before == done
                   else "had a NaN or infinite loss or gradient")
            raise TrainingDiverged(f"every step of epoch {self.epoch + 1} {why} and was skipped; "
                                   "lower train.lr, raise train.skip_grad_norm or check the data")
        recon, kl = recon_t.item() / n_images, kl_t.item() / n_images
        return {"loss": recon + tc.beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl, "images": n_images,
                "time_s": time_before + time.perf_counter() - t0}

    def _fit_codes(self) -> None:
        """For the autoencoder: fit its sampling Gaussian to codes of training images."""
        if self.model.variational:  # only the autoencoder samples through a Gaussian fitted to its codes
            return
        tc, dc = self.cfg.train, self.cfg.data
        images = self.train_images.images
        if len(images) < 2:
            return
        # a fixed random subset (training files may be grouped by class), seen the way training
        # sees images: binarized once when training binarizes dynamically
        images = images[spread_index(len(images), CODE_FIT_IMAGES, tc.seed + 3)]
        if self.dynamic:
            images = binarize_once(images, dc.binarize_seed + 7)
        with eval_mode(self.model):
            codes = torch.cat([self.model.code(x) for x in batches(images, tc.eval_batch_size,
                                                                   device=self.device)])
        self.model.fit_codes(codes)

    def _samples(self) -> np.ndarray:
        """A grid of images decoded from the same prior draws every time (seed train.seed + 2)."""
        tc = self.cfg.train
        return square_grid(sample(self.model, tc.grid_size, 1.0, torch.Generator().manual_seed(tc.seed + 2)))

    def _sample_grid(self, path: Path) -> None:
        save_png(self._samples(), path)

    # ------------------------------------------------------------------ TensorBoard (train.tensorboard)

    def _open_tensorboard(self) -> None:
        """On rank 0, the run's TensorBoard writer, with the config; events continue after the saved epoch."""
        if not (self.cfg.train.tensorboard and self.group.main):
            return
        from vaelab.training.callbacks.tensorboard import TensorBoardLog

        self.tb = TensorBoardLog(self.paths.root, first_step=self.epoch + 1, note=self.log)
        self.tb.start(self.epoch, to_toml(self.cfg), to_dict(self.cfg))
        if self.tb.active:
            self.log(f"TensorBoard events in {self.tb.dir} (step = epoch): tensorboard --logdir "
                     f"{self.paths.root.parent}")

    def _log_epoch_to_tensorboard(self, record: dict[str, Any], samples: np.ndarray) -> None:
        """The epoch's scalars, its sample grid and the reconstructions of fixed validation images."""
        from vaelab.training.callbacks.tensorboard import epoch_scalars

        images = {"samples": samples}
        if len(self.splits.val):
            val = self.splits.val.images
            pick = spread_index(len(val), max(2, self.cfg.train.grid_size // 2), self.cfg.train.seed + 4)
            x = val[pick].float().div(255).to(self.device)
            images["reconstructions/val"] = pairs_grid(x, reconstruct(self.model, x))
        self.tb.epoch(self.epoch, epoch_scalars(record), images)

    def run(self, on_epoch: Callable[["Trainer", dict[str, Any]], bool | None] | None = None,
            evaluate: bool = True) -> TrainResult:
        """Train for the configured epochs, then (with `evaluate`) write the final images and evaluation.

        `on_epoch(trainer, record)` is called after every epoch, once its metrics record is written and
        its checkpoints saved (on every process under torchrun: it must decide the same everywhere).
        Returning True stops training there, as early stopping does: the run ends normally. A hyperparameter
        sweep prunes a trial this way. With `evaluate=False` the run ends after its last epoch without
        the final evaluation, images and curves (the best and last checkpoints are written all the same).
        """
        tc = self.cfg.train
        self._write_start_files()
        s = self.splits
        self.log(
            f"training {_article(describe_model(self.model, self.cfg.model))} on {s.name} {s.image_shape} "
            f"from {s.source}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)}; device {self.device}"
        )
        self.log("losses are per image in nats, summed over pixels and latent dims: loss = recon + beta*KL")
        if tc.patience and self.val_images is None:
            self.log("note: train.patience is set but there is no validation split: early stopping is off")
        if self.group.active:
            self.log(f"data-parallel on {self.group.world} processes (torch.distributed, "
                     f"{torch.distributed.get_backend()}): each takes its share of every batch of {tc.batch_size}")
        if self.resumed:
            self.log(f"resuming from {self.saved_at}, written to {self.paths.checkpoint('last')}")
            if self._resumed_processes not in (None, self.group.world):
                self.log(f"note: the checkpoint was written by {self._resumed_processes} process(es) and this run "
                         f"has {self.group.world}; the batches and the steps stay the same")
        try:
            self._open_tensorboard()
            with self.signals, open(self.paths.metrics, "a", encoding="utf-8") as metrics_file:
                for _ in range(tc.epochs - self.epoch if not self.stopped_early else 0):
                    train_terms = self.train_epoch()
                    record = self.end_epoch(train_terms, train_terms.pop("time_s"))
                    metrics_file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
                    metrics_file.flush()
                    if self.signals.requested:  # came during the epoch's last step: the epoch is saved
                        raise KeyboardInterrupt(self.signals.requested)
                    if on_epoch is not None and on_epoch(self, record):
                        self.stopped_early = True
                        self.log(f"stopped after epoch {self.epoch} at the caller's request "
                                 f"(the best epoch is {self.best_epoch})")
                        break
                    if tc.patience and self.val_images is not None and self.epoch - self.best_epoch >= tc.patience:
                        self.stopped_early = True
                        self.log(f"early stopping after epoch {self.epoch}: no better validation loss for "
                                 f"{tc.patience} epoch(s) (train.patience); the best epoch is {self.best_epoch}")
                        break
            if not self.group.main:  # rank 0 evaluates and writes the results
                return TrainResult(self.paths.root, self.model, self.splits, self.best_epoch, self.history)
            if not evaluate:
                write_json(self.paths.info, self._info(status="finished", train_time_s=round(self.train_time, 2),
                                                       epochs=self.epoch, steps=self.step, best_epoch=self.best_epoch,
                                                       stopped_early=self.stopped_early, evaluated=False))
                self.log(f"run written to {self.paths.root} (no final evaluation)")
                self.close()
                return TrainResult(self.paths.root, self.model, self.splits, self.best_epoch, self.history)
            return self.finish()
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            where = (f"during epoch {self.saved_epoch + 1}" if self.saved_epoch < tc.epochs and not self.stopped_early
                     else "after the last epoch")
            if self.paths.checkpoint("last").exists():
                message = (f"{status} {where}; {self.saved_at} is saved in {self.paths.checkpoint('last')}; "
                           f"continue with: vaelab train --resume {self.paths.root}")
            else:
                message = f"{status} {where}; no checkpoint was written yet, nothing was saved"
            # on a full disk these writes may fail too: the error that stopped the run is the one to report
            try:
                write_json(self.paths.info, self._info(status=status, epochs=self.saved_epoch,
                                                       error=str(exc) or type(exc).__name__))
            except (OSError, VaelabError):
                pass
            try:
                self.log(message)
            except OSError:
                pass
            raise
        finally:
            self.close()

    def end_epoch(self, train_terms: dict[str, float], epoch_time: float) -> dict[str, Any]:
        """Validate, checkpoint, draw the epoch's grid and log; returns the metrics record."""
        tc = self.cfg.train
        self.train_time += epoch_time
        self.epoch += 1
        self._fit_codes()
        val = None
        with self.eval_weights():
            if self.val_images is not None:
                val = evaluate_images(self.model, self.val_images, beta=tc.beta, batch_size=tc.eval_batch_size,
                                      device=self.device)
            monitor = self._monitor_record(val)
        if val is not None and not math.isfinite(val.loss):
            raise TrainingDiverged(
                f"the validation loss after epoch {self.epoch} is {val.loss} (NaN or infinite): the weights "
                "diverged; lower train.lr or check the data"
            )
        # without a validation split, the latest epoch counts as the best
        val_score = val.loss if val is not None else -float(self.epoch)
        improved = val_score < self.best_val - (tc.min_delta if val is not None else 0.0)
        if improved:
            self.best_val, self.best_epoch = val_score, self.epoch
        record = {
            "epoch": self.epoch, "step": self.step, "epoch_time_s": round(epoch_time, 3),
            "train_time_s": round(self.train_time, 3),
            "images_per_s": round(train_terms["images"] / max(epoch_time, 1e-9), 1),
            "lr": self.optimizer.param_groups[0]["lr"], "beta": self.beta, "skipped_steps": self.bad.total,
            "restores": self.bad.restores, "clipped_steps": self.clipped, "skipped_large": self.skipped_large,
            "train": {k: v for k, v in train_terms.items() if k != "images"},
            "val": val.as_dict() if val is not None else None, "best": improved,
            "monitor": monitor,
        }
        self.history.append(record)
        grid_due = bool(tc.grid_every) and self.epoch % tc.grid_every == 0
        samples = None
        if grid_due or self.tb is not None:
            with self.eval_weights():
                samples = self._samples()
                if self.tb is not None:  # before the checkpoints: an epoch logged and then killed is redone
                    self._log_epoch_to_tensorboard(record, samples)
        if improved:  # `best` first: a kill between the two writes leaves `last` one epoch behind, never
            self.save("best", with_optimizer=False)  # pointing at a best epoch that was not saved
        self.save("last", with_optimizer=True)
        if tc.snapshot_every and self.epoch % tc.snapshot_every == 0:
            self.save(snapshot_name(self.epoch), with_optimizer=False)
        if grid_due:
            save_png(samples, self.paths.images / f"samples_epoch_{self.epoch:03d}.png")
        val_text = (f"val loss {val.loss:.2f} (recon {val.recon:.2f}, KL {val.kl:.2f})"
                    if val is not None else "no validation split")
        if record["monitor"] is not None:
            val_text += f"  gap {record['monitor']['gap']:+.2f}"
        self.log(
            f"epoch {self.epoch}/{tc.epochs}  train loss {train_terms['loss']:.2f} "
            f"(recon {train_terms['recon']:.2f}, KL {train_terms['kl']:.2f})  {val_text}"
            f"{'  *best' if improved else ''}  {record['images_per_s']:.0f} img/s"
        )
        return record

    def _monitor_record(self, val) -> dict[str, Any] | None:
        """-ELBO (reconstruction loss for the AE) of the fixed train and validation subsets, and their gap."""
        if self.monitor is None:
            return None
        tc = self.cfg.train
        scores = {}
        for name in ("train", "val"):
            images = self.monitor[name]
            if name == "val" and val is not None and images is self.val_images:
                scores[name] = val  # the same images, weights and seed: the same numbers
            else:
                scores[name] = evaluate_images(self.model, images, beta=tc.beta, batch_size=tc.eval_batch_size,
                                               device=self.device)
        return {"images": self.monitor["images"], "train": scores["train"].as_dict(),
                "val": scores["val"].as_dict(), "gap": generalization_gap(scores["train"], scores["val"]),
                "gap_stderr": gap_stderr(scores["train"], scores["val"])}

    def finish(self) -> TrainResult:
        """Reload the best weights, write the final images and the evaluation."""
        best = load_checkpoint(self.paths.checkpoint("best"))
        self.model.load_state_dict(best.tensors["model"])
        self.write_images()
        summaries = evaluate_splits(self.model, self.splits, self.cfg, self.device)
        evaluation = {
            "checkpoint": "best", "epoch": self.best_epoch,
            "protocol": evaluation_protocol(self.cfg),
            "splits": {k: v.as_dict() for k, v in summaries.items()},
            "gap_test_minus_train": generalization_gap(summaries["train"], summaries["test"]),
            "gap_stderr": gap_stderr(summaries["train"], summaries["test"]),
            "samples": sample_fidelity(self.model, self.splits, batch_size=self.cfg.train.eval_batch_size),
            "stopped_early": self.stopped_early, "epochs_trained": self.epoch,
        }
        nll = nll_on_splits(self.model, self.cfg, self.splits, self.device, self.log)
        if nll:
            evaluation["nll"] = nll
        write_json(self.paths.evaluation, evaluation)
        self._plot_curves()
        self.log(format_table(list(summaries.items()),
                              title=f"evaluation of the best epoch ({self.best_epoch}), nats per image:"))
        measure = "-ELBO" if self.model.variational else "reconstruction loss"
        self.log(f"generalization gap (test - train {measure}): {evaluation['gap_test_minus_train']:.2f} ± "
                 f"{evaluation['gap_stderr']:.2f} nats per image")
        if nll:
            self.log(format_nll_table(nll["splits"], title=f"importance-sampled NLL (k={nll['k']}, "
                                                           f"{nll['images']} images per split, nats per image):"))
            if nll["gap_test_minus_train"] is not None:
                self.log(f"generalization gap of the NLL (test - train): {nll['gap_test_minus_train']:.2f} ± "
                         f"{nll['gap_stderr']:.2f} nats per image")
        fid = evaluation["samples"]
        if fid:
            self.log(f"samples: Frechet distance to {fid['images']} test images in PCA-{fid['pca_dims']} pixel space "
                     f"{fid['fd_samples_test']:.2f} (real training images: {fid['fd_train_test']:.2f}; lower is better)")
        if self.tb is not None:
            from vaelab.training.callbacks.tensorboard import final_scalars

            self.tb.final(self.epoch, final_scalars(evaluation))
        write_json(self.paths.info, self._info(status="finished", train_time_s=round(self.train_time, 2),
                                               epochs=self.epoch, steps=self.step, best_epoch=self.best_epoch,
                                               stopped_early=self.stopped_early))
        self.log(f"run written to {self.paths.root}")
        self.close()
        return TrainResult(self.paths.root, self.model, self.splits, self.best_epoch, self.history, evaluation)

    def _plot_curves(self) -> None:
        from vaelab.report.plots import plot_training_curves

        if not self.history:
            return
        try:
            plot_training_curves(self.history, self.paths.images / "curves.png", best_epoch=self.best_epoch,
                                 stopped_epoch=self.epoch if self.stopped_early else None,
                                 title=f"{self.cfg.model.kind.upper()} on {self.splits.name}")
        except ValueError as exc:  # nothing plottable: say so, never lose the run over a picture
            self.log(f"note: no training-curve plot ({exc})")

    def write_images(self) -> None:
        self._sample_grid(self.paths.images / "samples.png")
        # the test images shown: a fixed random choice (test files may be grouped by class)
        pick = spread_index(len(self.splits.test), max(2, self.cfg.train.grid_size // 2), self.cfg.train.seed + 4)
        test = self.splits.test.images[pick].float().div(255).to(self.device)
        save_png(pairs_grid(test, reconstruct(self.model, test)), self.paths.images / "reconstructions.png")
        rows = []
        for i in range(min(4, len(test) // 2)):
            for method in ("lerp", "slerp"):
                rows.append(interpolate(self.model, test[2 * i], test[2 * i + 1], steps=10, method=method))
        if rows:
            save_png(make_grid(torch.cat(rows), nrow=10), self.paths.images / "interpolations.png")


# --------------------------------------------------------------------------- locks, signals, resuming


def _article(phrase: str) -> str:
    """'a VAE ...', 'an AE ...', 'an HVAE ...' (the letters as they are spoken)."""
    return ("an " if phrase[:1] in "AEFHILMNORSX" or phrase[:1].lower() in "aeiou" else "a ") + phrase


def snapshot_name(epoch: int) -> str:
    """The checkpoint that train.snapshot_every keeps after `epoch`: epoch-0010."""
    return f"epoch-{epoch:04d}"


def describe_model(model: Model, mc) -> str:
    """One line: the kind, the networks, the latent size, the prior and likelihood when not the defaults."""
    text = model.describe()
    extras = [f"prior {mc.prior}"] if mc.kind == "vae" and mc.prior != "standard" else []
    if mc.likelihood != "bernoulli":
        extras.append(f"likelihood {mc.likelihood}")
    return text + (f" [{', '.join(extras)}]" if extras else "")


def _finished(paths: RunPaths) -> bool:
    """True when the run's final evaluation was written (the last thing `Trainer.finish` does)."""
    try:
        info = json.loads(paths.info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return paths.evaluation.is_file() and isinstance(info, dict) and info.get("status") == "finished"


def resume(run_dir: str | Path, *, epochs: int | None = None, splits: DatasetSplits | None = None,
           log: Callable[[str], None] = print, progress: bool | None = None) -> TrainResult:
    """Continue a run from its `last` checkpoint, exactly where it stopped (epoch granularity).

    On CPU the weights at the end equal those of an uninterrupted run with the same config. `epochs`
    raises train.epochs to train further than the run first asked for.
    """
    from vaelab.config import load_config

    main = distributed.from_env().main
    if not main:  # only rank 0 speaks and writes (see vaelab.training.distributed)
        log = lambda message: None  # noqa: E731
    root = Path(run_dir)
    paths = RunPaths(root)
    ckpt_dir = paths.checkpoint("last")
    if not (ckpt_dir.exists() or ckpt_dir.with_name("last.old").exists()):
        if not paths.config.is_file():
            raise ConfigError(f"{root} holds no vaelab run to resume (no config.toml, no checkpoints/last)")
        # stopped before its first epoch ended: start it again, in place, with its own config
        config = load_config(paths.config)
        if epochs is not None:
            config = config.replace(train={"epochs": epochs})
        log(f"{root} stopped before its first epoch ended: starting it again from the beginning")
        if main:
            paths.metrics.unlink(missing_ok=True)
        return Trainer(config, root, splits=splits, log=log, progress=progress, resume_from=None,
                       _restart=True).run()
    ckpt = load_checkpoint(ckpt_dir)
    config = from_dict(ckpt.meta["config"], origin=f"{ckpt_dir} meta.json")
    if epochs is not None:
        if epochs < int(ckpt.meta["epoch"]):
            raise ConfigError(f"train.epochs={epochs} is below the {ckpt.meta['epoch']} epochs already trained")
        if epochs != config.train.epochs and config.train.lr_schedule == "cosine":
            longer = epochs > config.train.epochs
            log(f"note: the cosine learning-rate schedule now ends at epoch {epochs} instead of "
                f"{config.train.epochs}, so the rate at step {ckpt.meta.get('step')} is recomputed on the "
                + ("longer schedule and rises where the old one had decayed" if longer
                   else "shorter schedule and drops to reach 0 at the new end"))
        config = config.replace(train={"epochs": epochs})
    done, best = int(ckpt.meta["epoch"]), int(ckpt.meta.get("best_epoch", 0))
    patience = config.train.patience
    stopped = bool(patience) and ckpt.meta.get("best_val") is not None and done - best >= patience
    if (done >= config.train.epochs or stopped) and _finished(paths):
        why = "stopped early (train.patience)" if stopped else f"trained all {config.train.epochs} epochs"
        raise ConfigError(f"run {root} {why}; nothing to resume (raise train.epochs with --set train.epochs=N "
                          "to train further)")
    if done >= config.train.epochs or stopped:
        log(f"{root} trained all its epochs but stopped before its final evaluation was written: writing it now")
    return Trainer(config, root, splits=splits, log=log, progress=progress, resume_from=ckpt).run()


def train(config: RunConfig, run_dir: str | Path, *, splits: DatasetSplits | None = None,
          log: Callable[[str], None] = print, progress: bool | None = None) -> TrainResult:
    """Train a model as `config` says, writing everything into `run_dir` (which must be new)."""
    return Trainer(config, run_dir, splits=splits, log=log, progress=progress).run()
