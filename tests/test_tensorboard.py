"""TensorBoard logging (train.tensorboard): event files read back with TensorBoard's own reader hold one value per
epoch equal to metrics.jsonl, real image grids, the final evaluation and the config; resuming never duplicates
an epoch; a missing package is a start-up error; a failing disk never ends the run."""

from __future__ import annotations

import errno
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginEventAccumulator

from vaelab import load_config, load_run, resume, train
from vaelab.cli import main
from vaelab.data import load_dataset
from vaelab.errors import ConfigError
from vaelab.models.generate import sample
from vaelab.report.images import square_grid
from vaelab.training.callbacks.tensorboard import EVENT_PREFIX, _wait_for_a_later_name, epoch_scalars, final_scalars
from vaelab.training.loop import Trainer

DIGITS = ["data.dataset=digits", "data.val_size=200", "data.max_train=600", "train.grid_every=0",
          "train.grid_size=8", "eval.nll_k=5", "eval.nll_images=20", "eval.gap_images=0"]
QUIET = dict(log=lambda m: None)


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0, IMAGES: 0, TENSORS: 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _png(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


@pytest.fixture(scope="module")
def splits():
    return load_dataset(load_config(overrides=DIGITS).data)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, splits):
    run = tmp_path_factory.mktemp("tb") / "run"
    cfg = load_config(overrides=[*DIGITS, "train.epochs=3", "train.tensorboard=true"])
    train(cfg, run, splits=splits, **QUIET)
    return run


def test_scalars_equal_metrics_jsonl_once_per_epoch(logged):
    acc, records = _events(logged), _metrics(logged)
    expected = {"loss/train": lambda r: r["train"]["loss"], "loss/val": lambda r: r["val"]["loss"],
                "recon/train": lambda r: r["train"]["recon"], "kl/val": lambda r: r["val"]["kl"],
                "gap/val_minus_train": lambda r: r["monitor"]["gap"],
                "gap/stderr": lambda r: r["monitor"]["gap_stderr"], "schedule/lr": lambda r: r["lr"],
                "schedule/beta": lambda r: r["beta"], "speed/images_per_s": lambda r: r["images_per_s"]}
    for tag, of in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag  # step = epoch, each once
        assert [e.value for e in events] == pytest.approx([of(r) for r in records], rel=1e-6), tag
    assert records[-1]["train"]["loss"] < records[0]["train"]["loss"]  # the curve moved: real numbers


def test_image_grids_per_epoch_are_real_pngs_of_the_right_size(logged):
    acc = _events(logged)
    for tag in ("samples", "reconstructions/val"):
        events = acc.Images(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
        for e in events:
            pixels = _png(e)
            assert pixels.shape[:2] == (e.height, e.width)
            # 8 images of 8x8 digits enlarged to 24 px cells: a 3x3 grid of samples, 2 pairs of 4 per row
            assert (e.width, e.height) == ((3 * 26 + 2, 3 * 26 + 2) if tag == "samples" else (4 * 26 + 2, 2 * 26 + 2))
            assert pixels.std() > 5, tag  # not blank
    # the same prior draws every epoch: samples change only as the weights do, and they do change
    first, last = (_png(e) for e in (acc.Images("samples")[0], acc.Images("samples")[-1]))
    assert not np.array_equal(first, last)
    # the last epoch's grid is what its weights decode from the fixed draws (seed train.seed + 2)
    run = load_run(logged, checkpoint="last")
    drawn = square_grid(sample(run.model, 8, 1.0, torch.Generator().manual_seed(run.config.train.seed + 2)))
    assert last.shape == (*drawn.shape, 3)  # TensorBoard stores grey grids as RGB
    assert np.abs(drawn[..., None].astype(int) - last.astype(int)).max() <= 1


def test_final_evaluation_config_and_hparams_are_logged(logged):
    acc = _events(logged)
    evaluation = json.loads((logged / "evaluation.json").read_text())
    final = final_scalars(evaluation)
    assert {"final/test_loss", "final/test_nelbo", "final/gap_test_minus_train", "final/test_nll",
            "final/fd_samples_test"} <= set(final)
    for tag, value in final.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [3] and events[0].value == pytest.approx(value, rel=1e-6), tag
    assert final["final/test_loss"] == pytest.approx(evaluation["splits"]["test"]["loss"])
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.replace("\n    ", "\n").strip() == (logged / "config.toml").read_text().strip()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))


def test_off_by_default_and_logging_does_not_change_training(tmp_path, splits, logged):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=3"])
    assert cfg.train.tensorboard is False
    train(cfg, tmp_path / "plain", splits=splits, **QUIET)
    assert not (tmp_path / "plain" / "tensorboard").exists()
    a, b = (load_run(r, checkpoint="last").model.state_dict() for r in (tmp_path / "plain", logged))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the grids draw from their own generators


@pytest.mark.parametrize("kind", ["ae", "hvae"])
def test_autoencoder_and_hierarchical_vae_log_too(tmp_path, splits, kind):
    extra = ["model.hvae_channels=8", "model.hvae_latents=[2, 2]"] if kind == "hvae" else []
    cfg = load_config(overrides=[*DIGITS, "train.epochs=1", "eval.nll_images=0", "train.tensorboard=true",
                                 f"model.kind={kind}", *extra])
    train(cfg, tmp_path / kind, splits=splits, **QUIET)
    acc = _events(tmp_path / kind)
    record = _metrics(tmp_path / kind)[0]
    assert acc.Scalars("loss/val")[0].value == pytest.approx(record["val"]["loss"], rel=1e-6)
    for tag in ("samples", "reconstructions/val"):
        assert _png(acc.Images(tag)[0]).std() > 5
    assert ("final/test_nelbo" in acc.Tags()["scalars"]) == (kind == "hvae")  # the AE has no ELBO


def test_resumed_run_logs_every_epoch_once(tmp_path, splits, monkeypatch):
    """Killed after epoch 2 was logged but before its checkpoint: the resumed run trains epoch 2 again, and the
    reader drops the first copy (purge_step), so each epoch appears once, with the resumed run's numbers."""
    cfg = load_config(overrides=[*DIGITS, "train.epochs=3", "eval.nll_images=0", "train.tensorboard=true"])
    original = Trainer.save

    def killed(self, name, with_optimizer):
        if name == "last" and self.epoch == 2:
            raise KeyboardInterrupt
        return original(self, name, with_optimizer)

    monkeypatch.setattr(Trainer, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", splits=splits, **QUIET)
    assert _steps(_events(tmp_path / "run"), "loss/train") == [1, 2]  # epoch 2 logged, not checkpointed
    monkeypatch.setattr(Trainer, "save", original)
    resume(tmp_path / "run", splits=splits, **QUIET)
    assert len(list((tmp_path / "run" / "tensorboard").glob(EVENT_PREFIX + "*"))) == 2
    acc, records = _events(tmp_path / "run"), _metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for tag in ("loss/train", "loss/val", "gap/val_minus_train", "schedule/lr"):
        assert _steps(acc, tag) == [1, 2, 3], tag
    assert [e.value for e in acc.Scalars("loss/val")] == pytest.approx([r["val"]["loss"] for r in records],
                                                                        rel=1e-6)
    assert [e.step for e in acc.Images("samples")] == [1, 2, 3]
    # the reader of the TensorBoard server: it takes the first session start as the run's beginning
    served = PluginEventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={TENSORS: 0})
    served.Reload()
    for tag in ("loss/train", "samples", "reconstructions/val"):
        assert [e.step for e in served.Tensors(tag)] == [1, 2, 3], tag


def test_missing_tensorboard_is_a_one_line_start_up_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = load_config(overrides=[*DIGITS, "train.tensorboard=true"])
    with pytest.raises(ConfigError, match=r"pip install 'vaelab\[tensorboard\]'"):
        train(cfg, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()  # nothing was written, nothing trained
    args = [a for kv in DIGITS for a in ("--set", kv)]
    assert main(["train", *args, "--set", "train.tensorboard=true", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'vaelab[tensorboard]'" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's thread
def test_a_failing_disk_stops_logging_not_the_run(tmp_path, splits, monkeypatch):
    """The event writer's thread hits ENOSPC in epoch 2: one note, the run finishes, epoch 1's events stay."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    full = {"disk": False}
    from vaelab.training.callbacks.tensorboard import TensorBoardCallback

    write, log_epoch = RecordWriter.write, TensorBoardCallback.log_epoch

    def write_or_fail(self, data):
        if full["disk"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    def epoch_hook(self, trainer, record):
        full["disk"] = trainer.epoch >= 2
        return log_epoch(self, trainer, record)

    monkeypatch.setattr(RecordWriter, "write", write_or_fail)
    monkeypatch.setattr(TensorBoardCallback, "log_epoch", epoch_hook)
    messages: list[str] = []
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "eval.nll_images=0", "train.tensorboard=true"])
    train(cfg, tmp_path / "run", splits=splits, log=messages.append)
    notes = [m for m in messages if "TensorBoard logging stopped" in m]
    assert len(notes) == 1 and "No space left on device" in notes[0] and "epoch 2" in notes[0]
    assert (tmp_path / "run" / "evaluation.json").is_file() and len(_metrics(tmp_path / "run")) == 2
    monkeypatch.setattr(RecordWriter, "write", write)
    acc = _events(tmp_path / "run")
    assert _steps(acc, "loss/train") == [1] and "final/test_loss" not in acc.Tags()["scalars"]


def test_only_rank_0_opens_a_writer(tmp_path, splits, monkeypatch):
    """Under torchrun the other ranks train into a scratch directory: they never open an event writer."""
    from vaelab.training import distributed
    from vaelab.training.callbacks import tensorboard as tblog

    opened = []
    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Group(rank=1, world=1), device))
    monkeypatch.setattr(tblog.TensorBoardLog, "__init__", lambda self, *a, **k: opened.append(a))
    cfg = load_config(overrides=[*DIGITS, "train.epochs=1", "train.tensorboard=true"])
    result = train(cfg, tmp_path / "rank1", splits=splits, **QUIET)
    assert result.history and opened == [] and not (tmp_path / "rank1").exists()


def test_scalars_of_a_run_without_validation_or_monitor():
    record = {"epoch": 1, "train": {"loss": 3.0, "recon": 2.0, "kl": 1.0}, "val": None, "monitor": None,
              "lr": 1e-3, "beta": 0.5, "images_per_s": 10}
    assert epoch_scalars(record) == {"loss/train": 3.0, "recon/train": 2.0, "kl/train": 1.0, "schedule/lr": 1e-3,
                                     "schedule/beta": 0.5, "speed/images_per_s": 10.0}
    ae = {"splits": {"test": {"loss": 5.0, "nelbo": None}}, "gap_test_minus_train": 1.0, "gap_stderr": 0.1,
          "samples": {}}
    assert final_scalars(ae) == {"final/test_loss": 5.0, "final/gap_test_minus_train": 1.0, "final/gap_stderr": 0.1}


def test_a_new_event_file_is_named_after_the_newest(tmp_path):
    """Readers take files in name order: a resumed writer waits for the next second rather than share one."""
    now = int(time.time())
    old = tmp_path / f"{EVENT_PREFIX}{now:010d}.host.99999.7"
    old.touch()
    _wait_for_a_later_name([old])
    assert int(time.time()) > now
