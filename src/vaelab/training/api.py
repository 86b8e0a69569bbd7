"""`train` and `resume`: the Python API (and `vaelab train`) of the training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from vaelab.config import RunConfig, from_dict, load_config
from vaelab.data import DatasetSplits, splits_from_images
from vaelab.errors import ConfigError
from vaelab.log import say
from vaelab.runs import RunPaths
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.runs.lifecycle import finished
from vaelab.training import distributed
from vaelab.training.callbacks.base import Callback
from vaelab.training.loop import Trainer, TrainResult


def train(config: RunConfig, run_dir: str | Path, *, splits: DatasetSplits | None = None,
          log: Callable[[str], None] = say, progress: bool | None = None, model: torch.nn.Module | None = None,
          callbacks: Iterable[Callback] = (), data: Any = None) -> TrainResult:
    """Train a model as `config` says, writing everything into `run_dir` (which must be new).

    `data`: images of your own in place of config.data.dataset (a uint8 array or tensor (N, H, W),
    (N, H, W, C) or (N, C, H, W), or a torch Dataset of images or (image, label) pairs), split into train /
    validation / test by config.data's rules. `splits`: data already split (`vaelab.data.load_dataset`,
    `vaelab.data.splits_from_images`). `model`: a model of your own implementing `vaelab.models.Model`
    (config.model is then not used to build one). `callbacks`: yours (`vaelab.training.callbacks.Callback`).
    """
    if data is not None:
        if splits is not None:
            raise ConfigError("pass either data= (images to split) or splits= (already split), not both")
        splits = splits_from_images(data, config.data)
    return Trainer(config, run_dir, splits=splits, log=log, progress=progress, model=model,
                   callbacks=callbacks).run()


def _more_epochs(config: RunConfig, meta: dict, epochs: int, log: Callable[[str], None]) -> RunConfig:
    if epochs < int(meta["epoch"]):
        raise ConfigError(f"train.epochs={epochs} is below the {meta['epoch']} epochs already trained")
    if epochs != config.train.epochs and config.train.lr_schedule == "cosine":
        longer = epochs > config.train.epochs
        log(f"note: the cosine learning-rate schedule now ends at epoch {epochs} instead of "
            f"{config.train.epochs}, so the rate at step {meta.get('step')} is recomputed on the "
            + ("longer schedule and rises where the old one had decayed" if longer
               else "shorter schedule and drops to reach 0 at the new end"))
    return config.replace(train={"epochs": epochs})


def resume(run_dir: str | Path, *, epochs: int | None = None, splits: DatasetSplits | None = None,
           log: Callable[[str], None] = say, progress: bool | None = None, model: torch.nn.Module | None = None,
           callbacks: Iterable[Callback] = (), device: str | None = None) -> TrainResult:
    """Continue a run from its `last` checkpoint, exactly where it stopped.

    On CPU the weights at the end equal those of an uninterrupted run with the same config. `epochs`
    raises train.epochs to train further than the run first asked for. `device` replaces train.device (a GPU
    run continued on a CPU: the same weights and optimizer; the device-resident path's data stream then
    continues from the CPU data generator). A run of a model of your own needs
    that model again (`model=`, freshly built: its weights come from the checkpoint).
    """
    main = distributed.from_env().main
    if not main:  # only rank 0 speaks and writes (see vaelab.training.distributed)
        log = lambda message: None  # noqa: E731
    root = Path(run_dir)
    paths = RunPaths(root)
    ckpt_dir = paths.checkpoint("last")
    kwargs = dict(splits=splits, log=log, progress=progress, model=model, callbacks=callbacks)
    if not (ckpt_dir.exists() or ckpt_dir.with_name("last.old").exists()):
        if not paths.config.is_file():
            raise ConfigError(f"{root} holds no vaelab run to resume (no config.toml, no checkpoints/last)")
        # stopped before its first epoch ended: start it again, in place, with its own config
        config = load_config(paths.config)
        if device is not None:
            config = config.replace(train={"device": device})
        if epochs is not None:
            config = config.replace(train={"epochs": epochs})
        log(f"{root} stopped before its first epoch ended: starting it again from the beginning")
        if main:
            paths.metrics.unlink(missing_ok=True)
        return Trainer(config, root, resume_from=None, _restart=True, **kwargs).run()
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("model_class") and model is None:
        raise ConfigError(f"{root} trained a model of your own ({ckpt.meta['model_class']}); pass it again: "
                          "resume(run_dir, model=YourModel(...))")
    config = from_dict(ckpt.meta["config"], origin=f"{ckpt_dir} meta.json")
    if device is not None:
        config = config.replace(train={"device": device})
    if epochs is not None:
        config = _more_epochs(config, ckpt.meta, epochs, log)
    done, best = int(ckpt.meta["epoch"]), int(ckpt.meta.get("best_epoch", 0))
    patience = config.train.patience
    stopped = bool(patience) and ckpt.meta.get("best_val") is not None and done - best >= patience
    if (done >= config.train.epochs or stopped) and finished(paths):
        why = "stopped early (train.patience)" if stopped else f"trained all {config.train.epochs} epochs"
        raise ConfigError(f"run {root} {why}; nothing to resume (raise train.epochs with --set train.epochs=N "
                          "to train further)")
    if done >= config.train.epochs or stopped:
        log(f"{root} trained all its epochs but stopped before its final evaluation was written: writing it now")
    return Trainer(config, root, resume_from=ckpt, **kwargs).run()


__all__ = ["resume", "train"]
