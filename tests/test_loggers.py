"""Weights & Biases and MLflow callbacks, with the real packages in their offline modes (no mocks): what each
logged, read back from what it wrote, equals metrics.jsonl for every epoch.

- W&B: `mode="offline"` writes RUN/wandb/offline-run-*/run-ID.wandb. wandb 0.31 has no Python reader for it any
  more (the Python datastore went with the old internal process; wandb-core is Go) and offline runs write no
  wandb-history.jsonl / wandb-summary.json, so `_wandb_records` undoes the file's LevelDB-log framing (checking
  every record's CRC) and parses each record with wandb's own protobuf schema (`wandb_internal_pb2.Record`).
- MLflow: a local `file:` tracking store under tmp_path, read back with `MlflowClient` (get_metric_history,
  get_run). MLflow 3.17 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true, which `sandbox` sets.

The callbacks are driven two ways: by replaying one finished tiny run through their hooks with a stand-in
trainer (works today), and end to end through `vaelab.train(..., callbacks=[...])`, skipped until the training
loop takes callbacks.
"""

from __future__ import annotations

import inspect
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import vaelab
from vaelab.config import load_config, to_dict
from vaelab.errors import ConfigError
from vaelab.runs import RunPaths
from vaelab.training.callbacks.base import flat_metrics
from vaelab.training.callbacks.tensorboard import final_scalars, hparam_values

TINY = ["data.dataset=digits", "data.image_size=8", "model.arch=mlp", "train.epochs=2", "train.grid_every=0",
        "eval.nll_images=0"]


def _accepts_callbacks() -> bool:
    return all("callbacks" in inspect.signature(f).parameters for f in (vaelab.train, vaelab.resume))


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _evaluation(run: Path) -> dict[str, Any]:
    return json.loads((run / "evaluation.json").read_text())


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Nothing of wandb or MLflow leaves tmp_path or reaches the network: their home, config, cache and data
    folders, the working directory (relative defaults such as ./mlflow.db) and every variable that could
    point them elsewhere."""
    home = tmp_path / "home"
    folders = {"HOME": home, "XDG_CONFIG_HOME": home / ".config", "XDG_CACHE_HOME": home / ".cache",
               "XDG_DATA_HOME": home / ".local/share", "WANDB_DIR": tmp_path / "wandb-dir",
               "WANDB_CONFIG_DIR": home / ".config/wandb", "WANDB_CACHE_DIR": home / ".cache/wandb",
               "WANDB_DATA_DIR": home / ".local/share/wandb", "WANDB_ARTIFACT_DIR": home / "artifacts"}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(folder))
    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME",
                 "WANDB_TAGS", "WANDB_RUN_GROUP", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
                 "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")        # a second guard behind the callbacks' mode="offline"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # if anything did try the server: refused here
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")          # no wrapping of sys.stdout under pytest's capture
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")  # no system-metrics sampler process: faster, quieter
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield tmp_path
    if "wandb" in sys.modules:  # the wandb-core service outlives runs: stop it, the next test starts its own
        _end_wandb_process()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One tiny real training run (2 epochs of an MLP VAE on 8x8 digits), replayed by the stand-in tests."""
    root = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as mp:  # the autouse isolation is per test; this fixture is per module
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("VAELAB_OFFLINE", "1")
        vaelab.train(load_config(overrides=TINY), root / "run", log=lambda _: None, progress=False)
    return root / "run"


@dataclass
class StandIn:
    """What a callback may read of the trainer, built from a finished run (until the loop passes its own)."""

    config: Any
    paths: RunPaths
    is_main: bool = True
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        self.lines.append(text)


def _copy_of(run: Path, to: Path) -> StandIn:
    """A stand-in trainer on a fresh directory holding the finished run's files: each test writes its logger's
    files (RUN/wandb.json, RUN/mlflow.json, RUN/wandb/) into a directory of its own."""
    to.mkdir()
    for name in ("config.toml", "metrics.jsonl", "evaluation.json"):
        (to / name).write_bytes((run / name).read_bytes())
    return StandIn(load_config(to / "config.toml"), RunPaths(to))


def _replay(callback, trainer: StandIn, records, evaluation=None, stop: BaseException | None = None) -> None:
    """The hooks in the order the loop calls them: start, one on_epoch_end per record, then the end (or the
    exception that stops the run)."""
    callback.on_train_start(trainer)
    for record in records:
        trainer.epoch, trainer.step = record["epoch"], record["step"]
        trainer.history.append(record)
        assert not callback.on_epoch_end(trainer, record)  # a logger never asks to stop
    if stop is None:
        callback.on_train_end(trainer, evaluation)
    else:
        callback.on_exception(trainer, stop)


# ---------------------------------------------------------------- reading back what wandb wrote offline

def _wandb_records(path: Path):
    """The protobuf Records of a .wandb file. The file is a ":W&B" header (magic 0xBEE1, version 0) followed by
    LevelDB log records: 32 KiB blocks, each chunk a 7-byte header (CRC-32 of type byte + data, length, type
    FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a block's tail shorter than a header is zero padding."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:header]) == (b":W&B", 0xBEE1, 0)
    pos, parts = header, []
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunk = data[pos + header:pos + header + length]
        assert kind in (1, 2, 3, 4) and zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad chunk at {pos}"
        pos += header + length
        parts.append(chunk)
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record
    assert pos == len(data), "trailing bytes after the last record"


def _key(item) -> str:
    # a flat key ("train/loss") arrives as nested_key ["train/loss"]: wandb does not split it at "/"
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbFile:
    run_id: str
    project: str
    name: str
    config: dict[str, Any]
    history: dict[int, dict[str, Any]]  # step -> logged values (wandb's own "_step", "_runtime"... left out)
    summary: dict[str, Any]
    exit_code: int | None


def _read_wandb(path: Path) -> WandbFile:
    out = WandbFile("", "", "", {}, {}, {}, None)
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run_id, out.project, out.name = record.run.run_id, record.run.project, record.run.display_name
            out.config = {_key(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            values = {_key(i): json.loads(i.value_json) for i in record.history.item}
            assert record.history.step.num not in out.history, "a step logged twice"
            out.history[record.history.step.num] = {k: v for k, v in values.items() if not k.startswith("_")}
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


def _end_wandb_process() -> None:
    """What the end of a process does to wandb: `run.finish()` only asks wandb-core to close the run's stream, and
    the .wandb file is complete once the service has written it; `wandb.teardown()` waits for that (the atexit
    hook of a real process calls it). The next wandb.init starts a new service, as a new process would."""
    import wandb

    wandb.teardown()


def _wandb_files(run: Path) -> list[WandbFile]:
    """Every offline W&B run folder of a vaelab run, oldest first (a resume adds one with the same id, named
    offline-run-TIME-ID, or offline-run-TIME-ID-1 when it starts within the same second)."""
    _end_wandb_process()
    paths = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [_read_wandb(p) for p in paths]


def _check_wandb(run: Path, records, evaluation, files: list[WandbFile]) -> None:
    """The central check: one W&B history row per metrics.jsonl line, at step = epoch, equal to its numbers."""
    logged = {step: row for f in files for step, row in f.history.items()}
    assert sorted(logged) == [r["epoch"] for r in records]
    for record in records:
        assert logged[record["epoch"]] == flat_metrics(record), f"epoch {record['epoch']}"
    stored = json.loads((run / "wandb.json").read_text())["id"]
    assert {f.run_id for f in files} == {stored}
    assert {f.name for f in files} == {run.name}
    config = load_config(run / "config.toml")
    assert {k: v for k, v in files[-1].config.items() if not k.startswith("_")} == to_dict(config)
    if evaluation is not None:
        final = final_scalars(evaluation)
        assert final and {k: files[-1].summary[k] for k in final} == final


# ---------------------------------------------------------------- reading back what MLflow stored

def _check_mlflow(uri: str, run: Path, records, evaluation, status: str = "FINISHED"):
    from mlflow.tracking import MlflowClient

    state = json.loads((run / "mlflow.json").read_text())
    assert state["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(state["run_id"])
    assert logged.info.status == status and logged.info.run_name == run.name
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in flat_metrics(record).items():
            expected.setdefault(key, {})[record["epoch"]] = value
    final = final_scalars(evaluation) if evaluation is not None else {}
    assert set(logged.data.metrics) == set(expected) | set(final)
    for key, by_epoch in expected.items():  # the central check: every metric at every epoch, once, equal
        history = client.get_metric_history(state["run_id"], key)
        assert sorted((m.step, m.value) for m in history) == sorted(by_epoch.items()), key
    last = records[-1]["epoch"]
    for key, value in final.items():  # at the last epoch (a run resumed after its end has earlier ones too)
        history = client.get_metric_history(state["run_id"], key)
        assert [(m.step, m.value) for m in history if m.step == last] == [(last, value)], key
    return logged


def _file_store(tmp_path: Path) -> str:
    return (tmp_path / "mlruns").as_uri()  # file:///...


# ---------------------------------------------------------------- the tests

def test_wandb_offline_logs_metrics_jsonl(finished, sandbox):
    from vaelab.training.callbacks.wandb import WandbCallback

    trainer = _copy_of(finished, sandbox / "run")
    records, evaluation = _records(finished), _evaluation(finished)
    assert [r["epoch"] for r in records] == [1, 2]
    callback = WandbCallback(project="vaelab-test", tags=("test",))
    _replay(callback, trainer, records, evaluation)
    files = _wandb_files(trainer.paths.root)
    assert len(files) == 1 and files[0].project == "vaelab-test" and files[0].exit_code == 0
    _check_wandb(trainer.paths.root, records, evaluation, files)
    assert callback.run is None  # finished and forgotten


def test_wandb_resume_continues_the_same_run(finished, sandbox):
    """Interrupted after epoch 1 (finished with a non-zero exit code), resumed by a new process: the second
    offline run carries the same W&B id and holds epoch 2 alone."""
    from vaelab.training.callbacks.wandb import WandbCallback

    trainer = _copy_of(finished, sandbox / "run")
    records, evaluation = _records(finished), _evaluation(finished)
    _replay(WandbCallback(), trainer, records[:1], stop=KeyboardInterrupt())
    _end_wandb_process()
    resumed = StandIn(trainer.config, trainer.paths)
    _replay(WandbCallback(), resumed, records[1:], evaluation)
    files = _wandb_files(trainer.paths.root)
    assert [sorted(f.history) for f in files] == [[1], [2]]
    assert [f.exit_code for f in files] == [1, 0]
    _check_wandb(trainer.paths.root, records, evaluation, files)


def test_mlflow_file_store_logs_metrics_jsonl(finished, sandbox):
    from vaelab.training.callbacks.mlflow import MlflowCallback

    trainer = _copy_of(finished, sandbox / "run")
    records, evaluation = _records(finished), _evaluation(finished)
    uri = _file_store(sandbox)
    _replay(MlflowCallback(tracking_uri=uri, experiment="vaelab-test"), trainer, records, evaluation)
    logged = _check_mlflow(uri, trainer.paths.root, records, evaluation)
    expected = {key: str(value) for key, value in hparam_values(to_dict(trainer.config)).items()}
    assert logged.data.params == expected and expected["model.arch"] == "mlp"
    assert logged.data.tags["vaelab.run_dir"] == str(trainer.paths.root.resolve())
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_experiment(logged.info.experiment_id).name == "vaelab-test"
    assert "train/loss" in logged.data.metrics  # "/" kept: MLflow takes it as it is


def test_mlflow_resume_continues_the_same_run(finished, sandbox, monkeypatch):
    """Failed after epoch 1, resumed and interrupted after epoch 2, resumed again to the end: one MLflow run,
    each epoch once, FAILED -> KILLED -> FINISHED. The resumes name no URI and $MLFLOW_TRACKING_URI points
    elsewhere: the URI kept in RUN/mlflow.json wins, so the run continues where it began."""
    from mlflow.tracking import MlflowClient

    from vaelab.training.callbacks.mlflow import MlflowCallback

    trainer = _copy_of(finished, sandbox / "run")
    records, evaluation = _records(finished), _evaluation(finished)
    uri = _file_store(sandbox)
    _replay(MlflowCallback(tracking_uri=uri), trainer, records[:1], stop=RuntimeError("disk full"))
    run_id = json.loads((trainer.paths.root / "mlflow.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"

    elsewhere = sandbox / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere.as_uri())
    # resumed with train.epochs raised: MLflow cannot change a param, the run keeps the first and says so
    longer = StandIn(trainer.config.replace(train={"epochs": 3}), trainer.paths)
    _replay(MlflowCallback(), longer, records[1:], stop=KeyboardInterrupt())
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    assert any("train.epochs=2 (now 3)" in line for line in longer.lines)

    # resumed after the last epoch, before the final evaluation was written: only the end is left to log
    _replay(MlflowCallback(), StandIn(trainer.config, trainer.paths, epoch=records[-1]["epoch"]), [], evaluation)
    logged = _check_mlflow(uri, trainer.paths.root, records, evaluation)
    assert logged.info.run_id == run_id and logged.data.params["train.epochs"] == "2"
    assert not elsewhere.exists()


def test_mlflow_failure_never_ends_the_run(finished, sandbox):
    """The store vanishes after the start (a tracking server gone away): one note, no more MLflow calls, and no
    exception reaches the training loop, up to and including the end."""
    import shutil

    from vaelab.training.callbacks.mlflow import MlflowCallback

    trainer = _copy_of(finished, sandbox / "run")
    callback = MlflowCallback(tracking_uri=_file_store(sandbox))
    callback.on_train_start(trainer)
    shutil.rmtree(sandbox / "mlruns")
    for record in _records(finished):
        assert not callback.on_epoch_end(trainer, record)
    callback.on_train_end(trainer, _evaluation(finished))
    notes = [line for line in trainer.lines if "MLflow logging stopped" in line]
    assert len(notes) == 1 and "logging epoch 1" in notes[0] and "metrics.jsonl keeps every number" in notes[0]
    assert not (sandbox / "mlruns").exists()  # nothing written after the failure


def test_other_ranks_log_nothing(finished, sandbox):
    """Under torchrun every process calls its callbacks; only rank 0 may write."""
    from vaelab.training.callbacks.mlflow import MlflowCallback
    from vaelab.training.callbacks.wandb import WandbCallback

    trainer = _copy_of(finished, sandbox / "run")
    trainer.is_main = False
    records, evaluation = _records(finished), _evaluation(finished)
    _replay(WandbCallback(), trainer, records, evaluation)
    _replay(MlflowCallback(tracking_uri=_file_store(sandbox)), trainer, records, evaluation)
    assert sorted(p.name for p in trainer.paths.root.iterdir()) == ["config.toml", "evaluation.json",
                                                                     "metrics.jsonl"]
    assert not (sandbox / "mlruns").exists()


@pytest.mark.parametrize("module, name, extra", [("wandb", "WandbCallback", "wandb"),
                                                 ("mlflow", "MlflowCallback", "mlflow")])
def test_missing_package_is_one_line_at_construction(monkeypatch, module, name, extra):
    import importlib

    callback = getattr(importlib.import_module(f"vaelab.training.callbacks.{module}"), name)
    monkeypatch.setitem(sys.modules, extra, None)  # what `import` sees when the package is not installed
    with pytest.raises(ConfigError) as err:
        callback()
    assert f"pip install 'vaelab[{extra}]'" in str(err.value) and "\n" not in str(err.value)


def test_wandb_mode_is_checked():
    from vaelab.training.callbacks.wandb import WandbCallback

    with pytest.raises(ConfigError, match="offline, online, disabled"):
        WandbCallback(mode="offlin")


def test_importing_vaelab_imports_neither_package():
    """The extras stay out of `import vaelab` (and of the callback modules until a callback is built)."""
    import subprocess

    code = ("import sys, vaelab, vaelab.training.callbacks.wandb, vaelab.training.callbacks.mlflow; "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not _accepts_callbacks(), reason="vaelab.train does not take callbacks yet (issue 16: the "
                                                     "training loop is being rebuilt around them)")
def test_train_with_both_loggers(sandbox, monkeypatch):
    """End to end: vaelab.train calls the callbacks itself. MlflowCallback() names no URI and takes MLflow's own
    setting, here $MLFLOW_TRACKING_URI."""
    from vaelab.training.callbacks.mlflow import MlflowCallback
    from vaelab.training.callbacks.wandb import WandbCallback

    uri = _file_store(sandbox)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    run = sandbox / "run"
    vaelab.train(load_config(overrides=TINY), run, log=lambda _: None, progress=False,
                 callbacks=[WandbCallback(project="vaelab-test"), MlflowCallback(experiment="vaelab-test")])
    records, evaluation = _records(run), _evaluation(run)
    assert [r["epoch"] for r in records] == [1, 2]
    files = _wandb_files(run)
    assert len(files) == 1 and files[0].exit_code == 0
    _check_wandb(run, records, evaluation, files)
    _check_mlflow(uri, run, records, evaluation)


@pytest.mark.skipif(not _accepts_callbacks(), reason="vaelab.train / resume do not take callbacks yet (issue 16: "
                                                     "the training loop is being rebuilt around them)")
def test_resume_continues_both_runs(sandbox, monkeypatch):
    """End to end: a finished 1-epoch run resumed to 2 epochs by new callback objects (as a new process would
    build them) continues the same W&B run and the same MLflow run, each epoch logged once."""
    from vaelab.training.callbacks.mlflow import MlflowCallback
    from vaelab.training.callbacks.wandb import WandbCallback

    uri = _file_store(sandbox)
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    run, lines = sandbox / "run", []
    vaelab.train(load_config(overrides=[*TINY, "train.epochs=1"]), run, log=lines.append, progress=False,
                 callbacks=[WandbCallback(), MlflowCallback(tracking_uri=uri)])
    _end_wandb_process()
    vaelab.resume(run, epochs=2, log=lines.append, progress=False,
                  callbacks=[WandbCallback(), MlflowCallback()])  # the MLflow store comes from RUN/mlflow.json
    records, evaluation = _records(run), _evaluation(run)
    assert [r["epoch"] for r in records] == [1, 2]
    files = _wandb_files(run)
    assert [sorted(f.history) for f in files] == [[1], [2]] and [f.exit_code for f in files] == [0, 0]
    _check_wandb(run, records, evaluation, files)
    logged = _check_mlflow(uri, run, records, evaluation)
    assert logged.data.params["train.epochs"] == "1"
    assert any("train.epochs=1 (now 2)" in line for line in lines)
