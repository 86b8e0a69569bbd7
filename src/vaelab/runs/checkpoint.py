"""Checkpoints: safetensors for tensors, JSON for everything else. Nothing is unpickled.

A checkpoint is a directory `<run>/checkpoints/<name>/` (name: `last`, `best`)
holding `model.safetensors`, optionally `optimizer.safetensors`, and
`meta.json` (format version, config, image shape, epoch, step, RNG states, and
the size and SHA-256 of every tensor file, and a SHA-256 of meta.json itself).

Writes are atomic: the new checkpoint is written into a temporary directory
and fsynced; the previous one is renamed to `<name>.old`, the new one renamed
into place, and only then is `<name>.old` removed. At every instant a complete
checkpoint exists under `<name>` or `<name>.old`, and loading falls back to
`<name>.old` (with a warning) when `<name>` is missing, truncated or altered.
A write that fails (a full disk, a file-size limit) raises `CheckpointWriteError`
naming the problem, removes its temporary directory and leaves the previous
checkpoint where it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from vaelab.errors import CheckpointError

FORMAT = "vaelab-checkpoint"
FORMAT_VERSION = 2  # 2: meta.json carries its own SHA-256 (meta_sha256); 1 had none
META = "meta.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a checkpoint name is one plain path component


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, file too large, read-only); the previous one is intact."""


def check_name(name: str) -> str:
    """`name` if it is a plain checkpoint name (letters, digits, - and _), else CheckpointError."""
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise CheckpointError(f"{name!r} is not a checkpoint name; use letters, digits, - and _ "
                              "(e.g. best or last), no path")
    return name


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem ("model", "optimizer") -> tensors


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `meta` without its own digest (detects an edited meta.json)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(root: str | Path, name: str, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict[str, Any]) -> Path:
    """Atomically write checkpoint `name` under `root`; returns its directory.

    On an OSError (ENOSPC, EFBIG, EROFS, ...) raises CheckpointWriteError; the
    previous checkpoint `name` is left in place and no temporary file remains.
    """
    check_name(name)
    for stem in tensors:
        check_name(stem)
    root = Path(root)
    final, old = root / name, root / f"{name}.old"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    moved_away = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{name}.tmp-*"):  # left by a process killed while writing (the run is locked)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        files = {}
        for stem, group in tensors.items():
            path = tmp / f"{stem}.safetensors"
            # serialized here and written by Python, so a failing write is an OSError naming its errno
            # (safetensors' own save_file reports it as an opaque SafetensorError)
            data = safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in group.items()})
            _write_file(path, data)
            files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            del data
        full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "files": files}
        full_meta["meta_sha256"] = _meta_digest(full_meta)
        _write_file(tmp / META, json.dumps(full_meta, indent=1, sort_keys=True, allow_nan=False).encode())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            moved_away = True
        os.replace(tmp, final)
        moved_away = False
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_away:  # the new one never arrived: put the previous one back under its name
            try:
                os.replace(old, final)
            except OSError:
                pass  # load_checkpoint still finds it as <name>.old
        if isinstance(exc, OSError):
            raise CheckpointWriteError(
                f"could not write checkpoint {final}: {exc.strerror or exc} (errno {exc.errno}"
                f"{', ' + os.path.basename(str(exc.filename)) if exc.filename else ''}); free disk space or "
                "raise the file-size limit; the previous checkpoint, if any, is unchanged"
            ) from exc
        raise
    return final


def read_format_json(path: Path, fmt: str, what: str, not_ours: str) -> dict[str, Any]:
    """A JSON object whose "format" is `fmt`; anything else raises CheckpointError (never unpickles)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(not_ours)
    return meta


def _load_dir(path: Path) -> LoadedCheckpoint:
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {META}; it is incomplete")
    meta = read_format_json(meta_path, FORMAT, f"checkpoint {path}: {META}",
                            f"{path} is not a vaelab checkpoint ({META} lacks format={FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: {META} has no valid format_version; it is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this vaelab reads "
            f"({FORMAT_VERSION}); upgrade vaelab"
        )
    try:
        digest = _meta_digest(meta)
    except ValueError:  # NaN / Infinity smuggled into the JSON
        digest = None
    if version >= 2 and meta.get("meta_sha256") != digest:
        raise CheckpointError(f"checkpoint {path}: {META} does not match its SHA-256 (damaged or edited)")
    files = meta.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"checkpoint {path}: {META} does not list model.safetensors")
    tensors = {}
    for fname, info in files.items():
        fpath = path / fname
        if not (isinstance(fname, str) and fname.endswith(".safetensors") and "/" not in fname and fname[0] != "."
                and "\\" not in fname and isinstance(info, dict)):
            raise CheckpointError(f"checkpoint {path}: {META} names an unexpected file {fname!r}")
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {fname}")
        size = fpath.stat().st_size
        if size != info.get("bytes"):
            raise CheckpointError(f"checkpoint {path}: {fname} has {size} bytes, expected {info.get('bytes')} (truncated?)")
        if _sha256(fpath) != info.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {fname} does not match its SHA-256 (damaged or altered)")
        try:
            tensors[fname[: -len(".safetensors")]] = load_file(str(fpath))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: {fname} is not a valid safetensors file ({exc})") from None
    return LoadedCheckpoint(path, meta, tensors)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a checkpoint directory, verifying sizes and hashes.

    If it is missing or damaged and a complete `<path>.old` exists (a write was
    interrupted), that one is loaded instead, with a warning.
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    try:
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return _load_dir(path)
    except CheckpointError as exc:
        if old.is_dir():
            try:
                loaded = _load_dir(old)
            except CheckpointError:
                raise exc from None
            warnings.warn(f"{exc}; using the previous checkpoint {old}", stacklevel=2)
            return loaded
        raise


# --------------------------------------------------------------------------- optimizer and RNG state


def optimizer_state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON."""
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_state_to_tensors`; a malformed entry raises CheckpointError."""
    state: dict[int, dict[str, Any]] = {}
    try:
        if not isinstance(info, dict) or not isinstance(info.get("param_groups"), list):
            raise ValueError("no param_groups list")
        for name, value in tensors.items():
            head, idx, key = name.split(".", 2)
            if head != "state":
                raise ValueError(f"tensor {name!r}")
            state.setdefault(int(idx), {})[key] = value
        scalars = info.get("scalars", {})
        if not isinstance(scalars, dict):
            raise ValueError("scalars is not an object")
        for name, value in scalars.items():
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's optimizer state is malformed ({exc}); it was altered") from None
    return {"state": state, "param_groups": info["param_groups"]}


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()
