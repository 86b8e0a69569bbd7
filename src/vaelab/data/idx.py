"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
number of dimensions, then each dimension as a big-endian uint32, then the
values in C order (big-endian for multi-byte types). Files may be gzipped.

Every malformed file raises `DataError` with the file's name: missing,
truncated, wrong magic number, trailing bytes, unreadable gzip. The header is
checked against the bytes actually present before anything is allocated, so a
header that claims billions of images cannot exhaust memory.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaelab.errors import DataError

# IDX type code -> numpy dtype (big-endian where it matters)
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).newbyteorder("=").str if v.itemsize > 1 else v.str: k for k, v in _DTYPES.items()}
_CHUNK = 1 << 20
_MAX_NDIM = 16


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to n bytes in chunks (memory grows with what is really there)."""
    parts = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(min(_CHUNK, remaining))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def read_idx_header(path: str | Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and shape declared by an IDX file, without reading its data."""
    path = Path(path)
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as stream:
            return _parse_header(stream, path)
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; the file is damaged, download it again") from None


def _parse_header(stream: BinaryIO, path: str | Path) -> tuple[np.dtype, tuple[int, ...]]:
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(head)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: wrong magic number 0x{head.hex()} "
            "(expected 0x000008NN); check that the file is an MNIST-style IDX file"
        )
    if ndim > _MAX_NDIM:  # numpy cannot hold more (64), and no image or label file needs them
        raise DataError(
            f"IDX file {path} declares {ndim} dimensions, more than the {_MAX_NDIM} vaelab reads; "
            "the file is damaged or not an IDX file"
        )
    dims_raw = stream.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"IDX file {path} is truncated inside its header; download it again")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    return _DTYPES[code], tuple(int(d) for d in shape)


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read a whole IDX file (optionally gzipped) into a native-endian array."""
    path = Path(path)
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as stream:
            return read_idx_stream(stream, path, expected_ndim)
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; the file is damaged, download it again") from None


def read_idx_stream(stream: BinaryIO, path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read a whole IDX array from an open (already decompressed) binary stream; `path` names it in errors.

    The caller turns the stream's own errors (OSError, EOFError, zlib.error) into a DataError."""
    dtype, shape = _parse_header(stream, path)
    if expected_ndim is not None and len(shape) != expected_ndim:
        raise DataError(
            f"IDX file {path} has {len(shape)} dimensions {shape}, expected {expected_ndim}; "
            "are the image and label files swapped?"
        )
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any header
    data = _read_exact(stream, expected)
    if len(data) < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header promises {expected} bytes of data "
            f"for shape {shape}, found {len(data)}; download it again"
        )
    extra = len(stream.read(1))
    if extra:
        raise DataError(
            f"IDX file {path} has bytes after the {expected} its header promises for shape {shape}; "
            "the file is damaged or not an IDX file"
        )
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. a zero dimension beside dimensions too big for numpy
        raise DataError(f"IDX file {path} declares shape {shape}, which numpy cannot hold ({exc}); "
                        "the file is damaged or not an IDX file") from None
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX (gzipped when the name ends in .gz or compress=True)."""
    path = Path(path)
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str if array.dtype.itemsize > 1 else array.dtype.str
    if key not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    code = _CODES[key]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
