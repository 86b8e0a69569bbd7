"""Faults injected for real: full disks, file-size limits, lying checkpoints, hostile paths.

Every test here checks a guarantee of issue 6 ("never lose a run, never trust an
input") end to end, through the `vaelab` command line or the real Trainer:

- a checkpoint write that fails (EFBIG from RLIMIT_FSIZE, ENOSPC from a small
  tmpfs or from a write that stops half way) is one clear error, exit code 2,
  with the previous checkpoint intact and loadable and no temporary file left;
- a damaged or forged checkpoint loaded by `vaelab evaluate` / `vaelab sample`
  is exit code 2 and one line, never a traceback;
- no command writes outside the run directory (or the --out / --json target)
  the user named, whatever the dataset, folder or checkpoint names.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.runs.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from vaelab.cli import main
from vaelab.cli.train import _default_run_name
from vaelab.errors import CheckpointError
from vaelab.runs import find_checkpoint, load_run

TINY = ["--set", "data.dataset=digits", "--set", "data.image_size=16", "--set", "train.grid_every=0",
        "--set", "train.grid_size=4", "--set", "eval.nll_images=0", "--set", "train.threads=1"]
REPO = Path(__file__).resolve().parents[1]


def _train(out: Path, epochs: int, capsys=None) -> None:
    assert main(["train", *TINY, "--set", f"train.epochs={epochs}", "--out", str(out)]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run (2 epochs), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("trained")
    _train(root / "run", epochs=2)
    return root / "run"


def _copy_run(trained: Path, where: Path) -> Path:
    dst = where / "run"
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _leftovers(root: Path) -> list[str]:
    """Temporary files or directories of an atomic write (dot-names with tmp/part), anywhere below root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp-" in p.name or ".part-" in p.name)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("vaelab") and ": error: " in lines[0], err
    return lines[0]


# --------------------------------------------------------------------------- disk full while checkpointing

_FSIZE_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead of killing us
    import vaelab.runs.checkpoint, vaelab.training.loop
    train_module = sys.modules["vaelab.training.loop"]  # the package's `train` attribute is the function
    real = vaelab.runs.checkpoint.save_checkpoint
    calls = 0
    def limited(*args, **kwargs):
        global calls
        calls += 1
        if calls == __FAIL_AT__:  # from this checkpoint on, no file may grow past __LIMIT__ bytes (the kernel enforces it)
            resource.setrlimit(resource.RLIMIT_FSIZE, (__LIMIT__, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return real(*args, **kwargs)
    vaelab.runs.checkpoint.save_checkpoint = limited
    if hasattr(train_module, "save_checkpoint"):
        train_module.save_checkpoint = limited
    from vaelab.cli import main
    code = main(sys.argv[1:])
    print("SAVE_CALLS", calls)
    sys.exit(code)
""")


def test_file_size_limit_during_training_keeps_the_last_good_checkpoint(tmp_path):
    """RLIMIT_FSIZE set before the third checkpoint write (epoch 2), SIGXFSZ ignored: the kernel refuses
    the write with EFBIG. The run stops with one line naming the problem, exit code 2; epoch 1's
    checkpoint is intact and loadable, nothing temporary is left, and the run resumes to the end."""
    run = tmp_path / "run"
    script = _FSIZE_SCRIPT.replace("__FAIL_AT__", "3").replace("__LIMIT__", str(64 * 1024))  # weights are ~500 KB
    proc = subprocess.run([sys.executable, "-c", script, "train", *TINY, "--set", "train.epochs=2",
                           "--out", str(run)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2, proc.stderr
    line = _one_line_error(proc.stderr)
    assert "could not write checkpoint" in line and "File too large" in line
    assert "SAVE_CALLS 3" in proc.stdout
    last = load_checkpoint(run / "checkpoints" / "last")
    assert last.meta["epoch"] == 1 and last.path == run / "checkpoints" / "last"
    assert load_run(run, "best").meta["epoch"] == 1
    assert _leftovers(run) == []
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    # nothing was lost: the run continues from epoch 1 to the end
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "last").meta["epoch"] == 2


def test_write_that_stops_half_way_with_enospc_through_the_trainer(tmp_path, monkeypatch):
    """The second `last` checkpoint's weights file gets half its bytes written, then ENOSPC."""
    import builtins

    import vaelab.runs.checkpoint as ck
    from vaelab.config import load_config
    from vaelab.training import train

    real_open = builtins.open
    seen = {"weights": 0, "injected": 0}

    class HalfFull:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            seen["injected"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.fh.name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith("optimizer.safetensors"):
            seen["weights"] += 1
            if seen["weights"] == 2:
                return HalfFull(fh)
        return fh

    monkeypatch.setattr(ck, "open", fake_open, raising=False)
    cfg = load_config(None, [a for a in TINY if a != "--set"] + ["train.epochs=3"])
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        train(cfg, run, log=lambda _: None)
    assert seen["injected"] == 1
    monkeypatch.undo()
    last = load_checkpoint(run / "checkpoints" / "last")
    assert last.meta["epoch"] == 1 and "optimizer" in last.tensors
    assert _leftovers(run) == []


def _mount_tmpfs(size: int) -> Path | None:
    """A fresh tmpfs of `size` bytes (None where mounting is refused). Mounted under a directory of its
    own, not under pytest's tmp_path: pytest may rename old tmp_path trees while a test runs."""
    import tempfile

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    where = Path(tempfile.mkdtemp(prefix="vaelab-tmpfs-"))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, timeout=20)
    if proc.returncode != 0:
        where.rmdir()
        return None
    return where


def _umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=20).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)
    shutil.rmtree(where, ignore_errors=True)


def test_full_tmpfs_keeps_the_previous_checkpoint(tmp_path):
    """A real full file system (a 1 MiB tmpfs, where mount is allowed): the second save of a 600 KB
    checkpoint cannot fit beside the first. ENOSPC -> CheckpointWriteError; the first stays whole."""
    mnt = _mount_tmpfs(1 << 20)
    if mnt is None:
        pytest.skip("cannot mount a tmpfs here (not root, or refused in this container)")
    try:
        w = {"model": {"w": torch.arange(150_000, dtype=torch.float32)}}
        save_checkpoint(mnt, "last", w, {"step": 1})
        with pytest.raises(CheckpointWriteError, match="No space left on device"):
            save_checkpoint(mnt, "last", {"model": {"w": torch.zeros(150_000)}}, {"step": 2})
        loaded = load_checkpoint(mnt / "last")
        assert loaded.meta["step"] == 1 and torch.equal(loaded.tensors["model"]["w"], w["model"]["w"])
        assert sorted(p.name for p in mnt.iterdir()) == ["last"]
        # the space is back once the user frees some: the next save works
        save_checkpoint(mnt, "last", {"model": {"w": torch.ones(1000)}}, {"step": 3})
        assert load_checkpoint(mnt / "last").meta["step"] == 3
    finally:
        _umount(mnt)


def test_full_tmpfs_during_training_through_the_cli(tmp_path, trained):
    """`vaelab train` with its run directory on a tmpfs that holds epoch 1's files but not the second
    copy of the checkpoint that the atomic swap of epoch 2 needs: exit 2, one line, epoch 1 kept."""
    # the first epoch needs about best (0.5 MB) + last (1.5 MB) + small files; the swap needs 1.5 MB more
    mnt = _mount_tmpfs(2_600_000)
    if mnt is None:
        pytest.skip("cannot mount a tmpfs here (not root, or refused in this container)")
    try:
        run = mnt / "run"
        proc = subprocess.run([sys.executable, "-m", "vaelab", "train", *TINY, "--set", "train.epochs=3",
                               "--out", str(run)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert proc.returncode == 2, proc.stderr
        line = _one_line_error(proc.stderr)
        assert "could not write checkpoint" in line and "No space left on device" in line  # the cause, not a side effect
        last = load_checkpoint(run / "checkpoints" / "last")
        assert last.meta["epoch"] == 1
        assert _leftovers(run) == []
    finally:
        _umount(mnt)


# --------------------------------------------------------------------------- forged checkpoints via the CLI


def _forge_weights(run: Path, blob: bytes, name: str = "best") -> None:
    """Replace a checkpoint's model.safetensors by `blob` and re-sign meta.json as a forger would."""
    import hashlib

    from vaelab.runs.checkpoint import _meta_digest

    d = run / "checkpoints" / name
    (d / "model.safetensors").write_bytes(blob)
    meta = json.loads((d / "meta.json").read_text())
    meta["files"]["model.safetensors"] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    meta["meta_sha256"] = _meta_digest({k: v for k, v in meta.items() if k != "meta_sha256"})
    (d / "meta.json").write_text(json.dumps(meta))


def _safetensors(header: dict | bytes, data: bytes, header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


class _Marker:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('unpickled')",))


def _forgeries(tmp_path: Path) -> dict[str, bytes]:
    import pickle

    marker = tmp_path / "UNPICKLED"
    torch.save({"w": _Marker(marker)}, tmp_path / "t.pt")
    return {
        "offsets beyond the file": _safetensors({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}},
                                                bytes(8)),
        "overlapping offsets": _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
        "huge header length": _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                                           header_len=2**63),
        "header not JSON": _safetensors(b"{not json", bytes(8)),
        "unknown dtype": _safetensors({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
        "shape product != bytes": _safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "shape overflow": _safetensors({"w": {"dtype": "F32", "shape": [2**32, 2**32, 16], "data_offsets": [0, 8]}},
                                       bytes(8)),
        "valid file, foreign tensors": _safetensors({"w": {"dtype": "F8_E8M0", "shape": [0, 10**12],
                                                           "data_offsets": [0, 0]}}, b""),
        "pickle": pickle.dumps({"w": _Marker(marker)}),
        "torch.save zip": (tmp_path / "t.pt").read_bytes(),
    }


def test_forged_checkpoints_give_one_line_and_exit_2_through_the_cli(tmp_path, trained, capsys):
    run = _copy_run(trained, tmp_path)
    backup = tmp_path / "best-backup"
    shutil.copytree(run / "checkpoints" / "best", backup)
    forgeries = _forgeries(tmp_path)
    for what, blob in forgeries.items():
        shutil.rmtree(run / "checkpoints" / "best")
        shutil.copytree(backup, run / "checkpoints" / "best")
        _forge_weights(run, blob)
        for argv in (["evaluate", str(run), "--nll-images", "0", "--set", "eval.gap_images=0"],
                     ["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]):
            capsys.readouterr()
            assert main(argv) == 2, what
            line = _one_line_error(capsys.readouterr().err)
            assert str(run / "checkpoints" / "best") in line, (what, line)
    assert not (tmp_path / "UNPICKLED").exists()
    assert not (tmp_path / "s.png").exists()
    # the payload is live: unpickling it would have left the marker
    import pickle

    pickle.loads(forgeries["pickle"])
    assert (tmp_path / "UNPICKLED").exists()


def test_forged_checkpoint_in_a_subprocess_has_no_traceback(tmp_path, trained):
    run = _copy_run(trained, tmp_path)
    _forge_weights(run, _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 10**15]}}, bytes(16)))
    proc = subprocess.run([sys.executable, "-m", "vaelab", "sample", str(run), "-n", "4"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2
    assert "not a valid safetensors file" in _one_line_error(proc.stderr)


# --------------------------------------------------------------------------- paths stay inside the run


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _write_folder(folder: Path, n: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_commands_write_only_inside_the_run_or_the_named_targets(tmp_path, monkeypatch, capsys, trained):
    """Every file the commands create lies under the run directory, or is the --out / --json the user named.
    The names thrown at them: a folder called `..@x` inside a folder called `-- ;rm` (as a training set,
    with the default run name derived from it, and as an --on dataset), a run directory with a space."""
    top = tmp_path / "top"
    cwd = top / "cwd"
    cwd.mkdir(parents=True)
    hostile = top / "data" / "-- ;rm" / "..@x"
    _write_folder(hostile)
    monkeypatch.chdir(cwd)
    before = _snapshot(top)

    # 1. train with the default run name (from a hostile folder name): lands in ./runs/<one component>
    assert main(["train", *TINY, "--set", "train.epochs=1", "--set", f"data.dataset={json.dumps('folder:' + str(hostile))}",
                 "--set", "data.test_fraction=0.25"]) == 0
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1 and runs[0].parent == cwd / "runs"
    folder_run = runs[0]
    # 2. a digits run in a directory the user names (trained by the fixture, copied before the snapshot)
    run = cwd / "my run"
    before |= _snapshot(_copy_run(trained, tmp_path / "copy").parent)
    shutil.move(str(tmp_path / "copy" / "run"), str(run))
    before |= _snapshot(run)
    # 3. evaluate on its splits, shifts and the hostile folder
    assert main(["evaluate", str(run), "--nll-images", "0", "--set", "eval.gap_images=0",
                 "--set", "eval.ood_images=16", "--set", "eval.ood_k=2",
                 "--on", "test", "noise", "flipped", f"folder:{hostile}"]) == 0
    # ... and a run on the hostile folder, to targets the user named outside it (allowed, and only they)
    named_json = top / "named.json"
    assert main(["evaluate", str(folder_run), "--checkpoint", "last", "--nll-images", "0",
                 "--set", "eval.gap_images=0", "--set", "eval.ood_images=8", "--set", "eval.ood_k=2",
                 "--on", "noise", "--out", str(top / "named-eval"), "--json", str(named_json)]) == 0
    # 4. generate
    for argv in (["sample", str(run), "-n", "4", "--temperature", "0.5"],
                 ["reconstruct", str(run), "-n", "4"],
                 ["interpolate", str(run), "--pairs", "1", "--steps", "3"]):
        assert main(argv) == 0, argv
    capsys.readouterr()

    new = _snapshot(top) - before
    allowed = (run, folder_run, top / "named-eval")
    outside = sorted(str(p) for p in new if p != named_json and not any(p.is_relative_to(a) for a in allowed))
    assert outside == []
    assert named_json in new and any(p.is_relative_to(run / "eval-best") for p in new)
    assert _leftovers(top) == []


def test_hostile_checkpoint_names_are_refused(tmp_path, trained, capsys):
    # the CLI offers best and last only
    assert main_exit(["sample", str(trained), "--checkpoint", "../../x"]) == 2
    _one_line_error(capsys.readouterr().err)
    # the Python API refuses a path as a checkpoint name: nothing read or written outside the run
    for name in ("../../x", "a/b", "..", "", ".hidden", "best/../../../etc"):
        with pytest.raises(CheckpointError, match="not a checkpoint name"):
            find_checkpoint(trained, name)
        with pytest.raises(CheckpointError, match="not a checkpoint name"):
            save_checkpoint(tmp_path / "ckpts", name, {"model": {"w": torch.zeros(2)}}, {})
        with pytest.raises(CheckpointError, match="not a checkpoint name"):
            save_checkpoint(tmp_path / "ckpts", "ok", {name: {"w": torch.zeros(2)}}, {})
    assert not (tmp_path / "ckpts").exists() and not (tmp_path / "x").exists()


def main_exit(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses before main's handler
        return exc.code


@pytest.mark.parametrize("dataset", ["digits@../../../x", "../../../x", "folder:/a/../..", "a/b\\c:d", "..", "@"])
def test_default_run_name_is_one_plain_component(dataset):
    name = _default_run_name(dataset, "vae", "conv")
    assert "/" not in name and "\\" not in name and not name.startswith(".") and ".." not in name
    assert (Path("runs") / name).resolve().parent == Path("runs").resolve()
