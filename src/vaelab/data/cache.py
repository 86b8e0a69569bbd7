"""The decoded-folder cache: a `folder:PATH` dataset is decoded once, later runs read the arrays back.

Decoding thousands of PNG/JPEG files with PIL can take longer than a short
training run, and gives the same arrays every time the files and the settings
are the same. An entry is two files in `$XDG_CACHE_HOME/vaelab/folders/`:

    <slot>.json           the commit record: format, key, shape, checksum, labels, class names
    <slot>-<key16>.npy    the images, uint8 (N, C, H, W), read back with allow_pickle=False

The *slot* names one folder read with one set of settings, so an edited folder
replaces its entry instead of adding one per edit. The *key* covers everything
the arrays depend on: the sorted relative paths of the files, each file's size
and mtime (ns), the conversion settings (image size, channels, resize mode,
decoders, Pillow's version) and FORMAT. A touched, changed, added or removed
file, or other settings, give another key, so the folder is decoded again.

Writing is crash-safe: the .npy goes to a temporary file that is fsynced and
renamed, then the JSON is written atomically; the JSON is the commit point, so
a process killed in between leaves at most an orphan .npy (the next store of
that slot removes it). Reading is forgiving: an entry that is missing,
unreadable, of another format or key, or whose shape or checksum does not match
is a miss, and the folder is decoded again. The cache never raises: it only
saves time, the files themselves are the truth.

Racy files. File timestamps are coarse (one kernel tick on Linux, 2 s on FAT),
so a file rewritten with the same size within a tick of being read keeps its
mtime. As git does with its index, a folder holding a file modified less than
RACY_NS ago (or in the future: clock skew) is not stored; a later run, once the
files have settled, stores it.

VAELAB_FOLDER_CACHE=0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.errors import DataError
from vaelab.fileio import atomic_write

# bump when the decoding changes what a folder's files turn into: old entries then miss, never mislead
FORMAT = 1
RACY_NS = 3 * 10**9
# a temporary file this old belongs to a writer that was killed (a live one finishes in far less)
_STALE_TMP_S = 3600


@dataclass(frozen=True)
class FolderKey:
    slot: str  # which entry: the folder (resolved path) and the settings
    key: str  # what the entry must hold: files, sizes, mtimes, settings, FORMAT
    settled: bool  # no file changed within RACY_NS of now: safe to store


@dataclass(frozen=True)
class DecodedFolder:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]


def enabled() -> bool:
    return os.environ.get("VAELAB_FOLDER_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _digest(obj: Any) -> str:
    # canonical JSON (sorted keys, no spaces) so equal inputs always hash equal
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def folder_key(root: Path, files: list[Path], settings: dict[str, Any]) -> FolderKey | None:
    """The key of `files` (all below `root`, in the order they are decoded) read with `settings`.

    None when a file cannot be stat'ed: decoding will report it by name.
    """
    now = time.time_ns()
    entries, settled = [], True
    try:
        for p in files:
            st = p.stat()  # follows symlinks: a link's target changing is a change
            entries.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
            settled = settled and now - st.st_mtime_ns > RACY_NS
        slot = _digest([FORMAT, str(root.resolve()), settings])[:32]
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop in resolve() on older Pythons
        return None
    return FolderKey(slot, _digest([FORMAT, settings, entries]), settled)


def _data_name(key: FolderKey) -> str:
    return f"{key.slot}-{key.key[:16]}.npy"


def load(directory: Path, key: FolderKey) -> DecodedFolder | None:
    """The entry for `key`, or None (absent, stale or damaged: the caller decodes again)."""
    try:
        record = json.loads((directory / f"{key.slot}.json").read_bytes())
        if record["format"] != FORMAT or record["key"] != key.key:
            return None
        shape = tuple(int(s) for s in record["shape"])
        # the data file's name comes from the key, not from the record: a damaged record names nothing
        mapped = np.load(directory / _data_name(key), mmap_mode="r", allow_pickle=False)
        if mapped.dtype != np.uint8 or mapped.shape != shape or len(shape) != 4:
            return None
        images = np.array(mapped)  # a private copy: the file may be replaced by another process later
        del mapped
        if zlib.crc32(images) != record["crc32"]:
            return None
        labels = np.asarray(record["labels"], dtype=np.int64)
        classes = tuple(str(c) for c in record["classes"])
        if labels.shape != (shape[0],):
            return None
        if len(labels) and not 0 <= labels.min() <= labels.max() < max(1, len(classes)):  # as decoding gives them
            return None
    except Exception:  # noqa: BLE001 - whatever is wrong with an entry (truncated, garbage, wrong types) is a miss
        return None
    return DecodedFolder(images, labels, classes)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """`array` saved to `path` atomically: a unique temporary file beside it, fsynced, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # np.save streams: no second copy of the images in memory
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only there when something failed before the rename


def store(directory: Path, key: FolderKey, decoded: DecodedFolder) -> bool:
    """Write the entry for `key`; False when it was not written (racy files, a full or read-only disk)."""
    if not key.settled:
        return False
    images = np.ascontiguousarray(decoded.images)
    record = {
        "format": FORMAT, "key": key.key, "data": _data_name(key), "shape": list(images.shape),
        "crc32": zlib.crc32(images), "labels": decoded.labels.tolist(), "classes": list(decoded.classes),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_npy(directory / _data_name(key), images)
        atomic_write(directory / f"{key.slot}.json", json.dumps(record).encode(), "the folder cache")
    except (OSError, DataError):  # DataError: something that is not a file sits where the record goes
        return False  # training goes on; the folder is decoded again next time
    _remove_stale(directory, key)
    return True


def _remove_stale(directory: Path, key: FolderKey) -> None:
    """Earlier data files of this slot (the folder's previous contents) and killed writers' temporaries."""
    keep = _data_name(key)
    now = time.time()
    try:
        for p in directory.glob(f"{key.slot}-*.npy"):
            if p.name != keep:
                p.unlink(missing_ok=True)
        for p in directory.glob(f".{key.slot}-*.tmp"):
            if now - p.stat().st_mtime > _STALE_TMP_S:
                p.unlink(missing_ok=True)
    except OSError:
        pass  # another process cleaning up at the same time; what is left is removed next time
