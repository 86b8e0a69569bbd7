"""Writing result files safely: atomically, and never over something that is not a file.

Every file vaelab writes beside a run (JSON, PNG, TOML, text) goes through
`atomic_write`: the bytes go to a temporary file in the same directory, are
fsynced, and the temporary file is renamed over the target. A reader sees the
old file or the new one, never half of one; a failed write leaves neither a
damaged target nor a stray temporary file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vaelab.errors import DataError


def output_file(path: str | Path, what: str) -> Path:
    """Check a path about to be replaced: a regular file or nothing (a symlink is followed).

    Directories and special files (/dev/null, pipes, devices) are refused: the
    rename would replace them with a regular file.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a file name for {what}")
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is not a regular file (a device or pipe?); give a file name for {what}")
    return path


def atomic_write(path: str | Path, data: bytes, what: str = "the output") -> Path:
    """Write `data` to `path` atomically (temporary file, fsync, rename); returns the path written."""
    path = output_file(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a size limit: name the file the user asked for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc} (writing {what})", str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | Path, dest: str | Path) -> Path:
    """Copy the file `src` to `dest` atomically (a temporary file beside `dest`, then a rename), making its
    folder; links are followed, so `dest` is a real file. Returns `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
