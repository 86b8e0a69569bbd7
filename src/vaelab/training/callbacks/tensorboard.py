"""TensorBoard event files for a training run (`train.tensorboard = true`): `TensorBoardCallback`.

A `TensorBoardLog` owns one `torch.utils.tensorboard.SummaryWriter` writing into RUN/tensorboard/, so
`tensorboard --logdir runs/` lists every run under its directory name. Only the process that writes the run
(rank 0 under torchrun) opens one.

The global step is the epoch (1, 2, ...), never the optimizer step: every per-epoch number of metrics.jsonl is
logged at the epoch it belongs to, so the curves line up with metrics.jsonl and `vaelab compare`, and a resumed
run knows from its checkpoint alone where its events continue. What is logged:

- per epoch: the scalars of `epoch_scalars` (tags grouped by quantity: `loss/train` next to `loss/val`) and two
  image grids, `samples` (decoded from the same prior draws every epoch, so epochs are comparable) and
  `reconstructions/val` (fixed validation images beside their reconstructions);
- at the start: the resolved config as text (tag `config`) and as hparams, at the step training starts from;
- at the end: the final evaluation of the best weights (`final_scalars`), at the last epoch trained.

Resuming: every process opens its event file with a session start at the first epoch it will write
(`purge_step`). A resumed run's file comes after the interrupted one's, and its start tells TensorBoard's readers
to drop what was written at that step or later (an epoch logged just before a kill that came ahead of its
checkpoint), so every epoch appears once. The first run writes one too: the server's reader
(plugin_event_accumulator) takes the first start of a run as its beginning and only later ones as restarts.

Failures: logging never ends a run. The first error writing the events (a full disk, a removed folder) is
reported once through `note`, the writer stops, and training goes on; metrics.jsonl still holds every number.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vaelab.errors import ConfigError
from vaelab.log import say
from vaelab.config import to_dict, to_toml
from vaelab.report.figures import reconstruction_grid, shown_images
from vaelab.runs import RunPaths
from vaelab.training.callbacks.base import Callback

EVENT_PREFIX = "events.out.tfevents."
# scalars of a metrics.jsonl record: tag -> path into the record
EPOCH_TAGS: dict[str, tuple[str, ...]] = {
    "loss/train": ("train", "loss"), "loss/val": ("val", "loss"),
    "recon/train": ("train", "recon"), "recon/val": ("val", "recon"),
    "kl/train": ("train", "kl"), "kl/val": ("val", "kl"),
    "gap/val_minus_train": ("monitor", "gap"), "gap/stderr": ("monitor", "gap_stderr"),
    "schedule/lr": ("lr",), "schedule/beta": ("beta",),
    "speed/images_per_s": ("images_per_s",),
}
HPARAM_METRICS = ("loss/train", "loss/val", "gap/val_minus_train", "final/test_loss", "final/test_nll")


def log_dir(run_dir: str | Path) -> Path:
    """Where a run's event files go: RUN/tensorboard/."""
    return RunPaths(Path(run_dir)).tensorboard


def require_tensorboard() -> None:
    """Raise a one-line ConfigError when torch's TensorBoard writer cannot be imported (checked before training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard = true needs the tensorboard package, which is not installed: "
                          "pip install 'vaelab[tensorboard]' (or set train.tensorboard = false)") from None


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics.jsonl record; tags whose value the run has not (no validation
    split, no monitor subsets) are left out."""
    out = {}
    for tag, path in EPOCH_TAGS.items():
        value = _lookup(record, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


def final_scalars(evaluation: dict[str, Any]) -> dict[str, float]:
    """The scalars of evaluation.json: per split the loss and -ELBO, the test - train gap and its standard error,
    the importance-sampled NLL per split when it was computed, and the samples' Frechet distance."""
    out: dict[str, Any] = {}
    for split, terms in evaluation.get("splits", {}).items():
        out[f"final/{split}_loss"] = terms.get("loss")
        out[f"final/{split}_nelbo"] = terms.get("nelbo")
    out["final/gap_test_minus_train"] = evaluation.get("gap_test_minus_train")
    out["final/gap_stderr"] = evaluation.get("gap_stderr")
    nll = evaluation.get("nll") or {}
    for split, summary in nll.get("splits", {}).items():
        out[f"final/{split}_nll"] = summary.get("nll")
    out["final/nll_gap_test_minus_train"] = nll.get("gap_test_minus_train")
    out["final/fd_samples_test"] = (evaluation.get("samples") or {}).get("fd_samples_test")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def config_markdown(toml_text: str) -> str:
    """The config as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in toml_text.splitlines())


def hparam_values(config: dict[str, dict[str, Any]]) -> dict[str, bool | int | float | str]:
    """The config flattened to `section.key` -> a value the hparams plugin takes (none and lists as text)."""
    out: dict[str, bool | int | float | str] = {}
    for section, values in config.items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else (
                "none" if value is None else str(value))
    return out


def _stamp(path: Path) -> int | None:
    """The whole second an event file was opened in, from its name (events.out.tfevents.SECONDS.host...)."""
    try:
        return int(path.name[len(EVENT_PREFIX):].split(".", 1)[0])
    except ValueError:
        return None


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(EVENT_PREFIX + "*")) if folder.is_dir() else []


def _wait_for_a_later_name(files: list[Path]) -> None:
    """Readers take event files in name order, and names start with the second a file was opened in (then host,
    process id and a counter, which need not sort): a new file opened in the same second as the newest one could
    be read before it, and its purge would come too early. Wait for the next second (at most one)."""
    stamps = [s for s in map(_stamp, files) if s is not None]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if 0 < wait <= 1:
            time.sleep(wait)


class TensorBoardLog:
    """The run's SummaryWriter, with the tags above; every write is flushed at once and never raises OSError."""

    def __init__(self, run_dir: str | Path, *, first_step: int, note: Callable[[str], None] = say) -> None:
        """Open a writer in RUN/tensorboard/. `first_step` is the first epoch this process will log: events
        that earlier files of the folder hold at that step or later (a resumed run) are purged on reading."""
        from torch.utils.tensorboard import SummaryWriter

        self.dir = log_dir(run_dir)
        self._note = note
        self._writer = None
        _wait_for_a_later_name(_event_files(self.dir))
        self.purge_step = first_step
        self._guard("open", lambda: SummaryWriter(str(self.dir), purge_step=self.purge_step, flush_secs=60))

    @property
    def active(self) -> bool:
        return self._writer is not None

    def _guard(self, what: str, action: Callable[[], Any]) -> None:
        """Run one write; on an OSError report it once and stop logging (the run goes on)."""
        try:
            result = action()
        except OSError as exc:
            self._note(f"note: TensorBoard logging stopped ({what} in {self.dir} failed: "
                       f"{exc.strerror or exc}); training goes on and metrics.jsonl keeps every number")
            self._abandon()
            return
        if what == "open":
            self._writer = result

    def _abandon(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:  # the same failure again: reported already
                pass

    def start(self, step: int, config_toml: str, config: dict[str, dict[str, Any]],
              metrics: tuple[str, ...] = HPARAM_METRICS) -> None:
        """The config as text and as hparams (the HParams dashboard lists the runs of a sweep side by side)."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer

        def write() -> None:
            writer.add_text("config", config_markdown(config_toml), step)
            experiment, session_start, _ = hparams(hparam_values(config), dict.fromkeys(metrics, 0.0))
            for summary in (experiment, session_start):  # no session end: how the run ends is not known yet
                writer.file_writer.add_summary(summary, step)
            writer.flush()

        self._guard("writing the config", write)

    def epoch(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """One epoch's scalars and image grids (uint8 arrays, (H, W) grey or (H, W, 3) colour), then a flush."""
        if self._writer is None:
            return
        writer = self._writer

        def write() -> None:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            for tag, array in images.items():
                writer.add_image(tag, array, step, dataformats="HW" if array.ndim == 2 else "HWC")
            writer.flush()

        self._guard(f"writing epoch {step}", write)

    def final(self, step: int, scalars: dict[str, float]) -> None:
        """The final evaluation's scalars, at the last epoch trained."""
        self.epoch(step, scalars, {})

    def close(self) -> None:
        """Flush and close the event file (at the end of the run, and when it is interrupted or fails)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._guard("closing", writer.close)


class TensorBoardCallback(Callback):
    """Writes the run's TensorBoard events (on the main process): the config at the start, each epoch's
    scalars, sample grid and validation reconstructions once its record is complete (before its
    checkpoints, so an epoch logged and then killed is logged again, and purged once, on resume), and
    the final evaluation at the end."""

    def __init__(self) -> None:
        require_tensorboard()  # a missing package is a start-up error, never one after training
        self.log: TensorBoardLog | None = None

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        self.log = TensorBoardLog(trainer.paths.root, first_step=trainer.epoch + 1, note=trainer.log)
        self.log.start(trainer.epoch, to_toml(trainer.config), to_dict(trainer.config))
        if self.log.active:
            trainer.log(f"TensorBoard events in {self.log.dir} (step = epoch): tensorboard --logdir "
                        f"{trainer.paths.root.parent}")

    def on_validation_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log_epoch(trainer, record)

    def log_epoch(self, trainer: Any, record: dict[str, Any]) -> None:
        """The epoch's scalars, its sample grid and the reconstructions of fixed validation images."""
        images = {"samples": trainer.epoch_samples()}
        if len(trainer.splits.val):
            with trainer.eval_weights():
                x = shown_images(trainer.splits.val, trainer.config, trainer.device)  # the test images' pick
                images["reconstructions/val"] = reconstruction_grid(trainer.model, x)
        self.log.epoch(trainer.epoch, epoch_scalars(record), images)

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        if self.log is not None and evaluation is not None:
            self.log.final(trainer.epoch, final_scalars(evaluation))
        self.close()

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
