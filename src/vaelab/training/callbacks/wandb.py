"""Weights & Biases logging for a training run: `vaelab.train(config, run_dir, callbacks=[WandbCallback()])`.

Needs the `wandb` package (`pip install 'vaelab[wandb]'`, wandb >= 0.19.10); vaelab itself never imports it:
the callback does, when it is built, so `import vaelab` stays cheap and a missing package is one clear line
before training starts.

What is logged, on the process that writes the run (rank 0 under torchrun):

- at the start: the resolved config (`vaelab.config.to_dict`, nested by section) as the W&B run's config;
- per epoch: every number of the epoch's metrics.jsonl record, flattened by `flat_metrics` ("train/loss",
  "val/kl", "monitor/gap", "lr", ...), at W&B step = the epoch (1, 2, ...), so the curves line up with
  metrics.jsonl, TensorBoard and `vaelab compare`;
- at the end: the final evaluation's main numbers (the same `final/...` scalars as TensorBoard) in the run's
  summary, then the W&B run is finished (exit code 0); a run stopped by an error or an interruption is
  finished with exit code 1, so W&B marks it failed.

Resuming: the W&B run id is kept in RUN/wandb.json. A resumed vaelab run (`vaelab.resume(RUN, callbacks=
[WandbCallback()])`) reads it and calls `wandb.init(id=..., resume="allow")`, so its epochs continue the same
W&B run (offline: a second `offline-run-*` folder carrying the same run id).

The default mode is "offline": files under RUN/wandb/ and nothing sent until `wandb sync RUN/wandb/offline-run-*`.
Pass mode="online" to stream to the W&B server (after `wandb login`), "disabled" to turn it off. `run.finish()`
returns before wandb's service process has written all of the offline file: it is complete when the Python
process ends, or after `wandb.teardown()` for a caller that reads or syncs it from the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from vaelab.config import to_dict
from vaelab.errors import ConfigError
from vaelab.training.callbacks.base import Callback, flat_metrics, read_state, write_state
from vaelab.training.callbacks.tensorboard import final_scalars

MODES = ("offline", "online", "disabled")
ID_FILE = "wandb.json"  # in the run directory: the W&B run id a resumed vaelab run continues


def import_wandb() -> Any:
    """The wandb module, or a one-line ConfigError that says how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("WandbCallback needs the wandb package, which is not installed: "
                          "pip install 'vaelab[wandb]'") from None
    return wandb


class WandbCallback(Callback):
    """Log a vaelab run to Weights & Biases (see the module's docstring for what and when)."""

    def __init__(self, project: str = "vaelab", mode: str = "offline", name: str | None = None,
                 dir: str | Path | None = None, tags: Iterable[str] = (), **init_kwargs: Any) -> None:  # noqa: A002
        """`name` defaults to the run directory's name and `dir` (where wandb writes its wandb/ folder) to the
        run directory; `init_kwargs` go to `wandb.init` as they are (entity, group, notes, settings, ...) and
        win over the values this callback picks."""
        if mode not in MODES:
            raise ConfigError(f"WandbCallback mode={mode!r}; use one of {', '.join(MODES)}")
        import_wandb()  # fail here, before any training, when the package is missing
        self.project, self.mode, self.name = project, mode, name
        self.dir = None if dir is None else Path(dir)
        self.tags = list(tags)
        self.init_kwargs = init_kwargs
        self.run: Any = None  # the wandb Run while training; None on other ranks and after the end

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.is_main:  # under torchrun only rank 0 writes the run, and so only it logs
            return
        wandb = import_wandb()
        root = Path(trainer.paths.root)
        run_id = self.init_kwargs.get("id") or read_state(root, ID_FILE).get("id")  # None the first time: wandb picks one
        folder = self.dir or root
        folder.mkdir(parents=True, exist_ok=True)  # wandb.init refuses a dir that does not exist
        kwargs: dict[str, Any] = dict(
            project=self.project, name=self.name or root.name, dir=str(folder), mode=self.mode,
            config=to_dict(trainer.config), tags=self.tags, id=run_id, resume="allow",
            # a W&B run of its own even when the caller has another one open (a notebook, a sweep of
            # vaelab runs in one process): we always log through the Run object, never the global wandb.run
            reinit="create_new",
        )
        kwargs.update(self.init_kwargs)
        self.run = wandb.init(**kwargs)
        if kwargs["mode"] != "disabled" and self.run.id != run_id:  # a disabled run's id is a dummy
            write_state(root, ID_FILE, {"id": self.run.id, "project": kwargs["project"]}, "the W&B run id")

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.run is not None:
            # step = the epoch, not the optimizer step: one point per metrics.jsonl line, and a resumed run
            # knows where to continue from its checkpoint alone
            self.run.log(flat_metrics(record), step=int(record["epoch"]))

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        if self.run is None:
            return
        if evaluation:
            # the summary is what the W&B runs table shows: the best weights' final numbers, not the last epoch's
            self.run.summary.update(final_scalars(evaluation))
        self._finish(0)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self._finish(1)  # a non-zero exit code marks the W&B run failed; RUN/wandb.json lets a resume continue it

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None  # forget it first: a failing finish must not be retried by on_exception
        if run is not None:
            run.finish(exit_code=exit_code)
