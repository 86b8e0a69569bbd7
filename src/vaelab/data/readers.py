"""Readers of the standard datasets' own file formats, without pickle: tarball, MATLAB .mat, .amat text, IDX in a zip.

Each reader takes the directory that holds a dataset's files (as `vaelab.data.named` found
them) and returns uint8 images (N, C, H, W) and int64 labels for the training and the test
split. A damaged file raises `DataError` naming it, in one line.

- cifar10: the binary version, `cifar-10-binary.tar.gz` or its extracted
  `cifar-10-batches-bin/`; each record is 1 label byte and 3,072 pixel bytes (the
  red, green and blue planes, 32x32 each, row by row); data_batch_1..5 are the
  training split, test_batch the test split.
- svhn: `train_32x32.mat`, `test_32x32.mat` (read with scipy.io.loadmat): X is
  (32, 32, 3, N) uint8, y is (N, 1) with the digit 0 stored as 10.
- omniglot: Burda et al.'s `chardata.mat`: `data` / `testdata` are (784, N)
  floats in [0, 1], each column a 28x28 image in Fortran (column-major) order;
  `target` / `testtarget` one-hot (50, N) alphabets. Grey levels become 0..255.
- binarized-mnist: Larochelle's `binarized_mnist_{train,valid,test}.amat`, text,
  one image per line as 784 values 0 or 1; train and valid form the training split.
  Pixels become 0 or 255, so binarizing them again changes nothing.
- emnist / emnist-letters: the IDX files of one split, inside NIST's `gzip.zip`
  (as gzip/emnist-<split>-...-ubyte.gz) or extracted; the images are stored
  transposed and are transposed back. The letters' labels 1..26 become 0..25.
"""

from __future__ import annotations

import gzip
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from vaelab.errors import DataError
from vaelab.data.idx import read_idx, read_idx_stream

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train images, train labels, test images, labels

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_MAX_MEMBER = 64 << 20  # bytes: a CIFAR batch is 30 MB; a member claiming more is not one


def damaged(path: object, why: object) -> DataError:
    reason = " ".join(str(why).split()) or type(why).__name__  # one line, whatever the library said
    return DataError(f"cannot read {path}: {reason}; the file is damaged or not the official one: "
                     "delete it (vaelab downloads it again) or replace it")


def find(directory: Path, name: str) -> Path | None:
    """`directory/name`, or for a name ending in .gz the same file without .gz (extracted by hand)."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    return None


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_records(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not raw or len(raw) % _CIFAR_RECORD:
        raise damaged(where, f"{len(raw)} bytes is not a whole number of {_CIFAR_RECORD}-byte records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise damaged(where, f"a label byte is {labels.max()}, CIFAR-10 has labels 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _cifar_members(path: Path) -> dict[str, bytes]:
    """The six batch files of the tarball, read in the order they are stored (a gzip stream has no index)."""
    wanted = set(_CIFAR_TRAIN) | {"test_batch.bin"}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():  # never extracted: no path of the archive is trusted
                    if member.size > _MAX_MEMBER:
                        raise damaged(path, f"{member.name} claims {member.size} bytes")
                    fh = tar.extractfile(member)
                    found[base] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise damaged(path, exc) from None
    missing = sorted(wanted - set(found))
    if missing:
        raise damaged(path, f"the archive has no {', '.join(missing)}")
    return found


def read_cifar10(directory: Path) -> Arrays:
    tarball = directory / "cifar-10-binary.tar.gz"
    if tarball.is_file():
        members, where = _cifar_members(tarball), f"{tarball}:"
    else:
        folder = directory / "cifar-10-batches-bin"
        try:
            members = {n: (folder / n).read_bytes() for n in (*_CIFAR_TRAIN, "test_batch.bin")}
        except OSError as exc:
            raise damaged(exc.filename or folder, exc.strerror or exc) from None
        where = f"{folder}/"
    parts = [_cifar_records(members[n], where + n) for n in _CIFAR_TRAIN]
    test_x, test_y = _cifar_records(members["test_batch.bin"], where + "test_batch.bin")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y)


# --------------------------------------------------------------------------- MATLAB files


def _loadmat(path: Path, keys: list[str], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The variables `keys` (and those of `optional` it has) of a MATLAB v4/v5/v7 file (scipy; v7.3 files are
    HDF5 and refused)."""
    import scipy.io

    try:
        content = scipy.io.loadmat(path, variable_names=[*keys, *optional])
    except NotImplementedError:
        raise damaged(path, "a MATLAB v7.3 (HDF5) file, not the official v5 file") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises MatReadError, ValueError, OSError, TypeError... on bad bytes
        raise damaged(path, exc) from None
    missing = [k for k in keys if k not in content]
    if missing:
        raise damaged(path, f"it holds no variable {', '.join(missing)}")
    return content


def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mat = _loadmat(path, ["X", "y"])
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise damaged(path, f"X is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    if len(y) != x.shape[3]:
        raise damaged(path, f"{x.shape[3]} images but {len(y)} labels")
    if len(y) and not (y.min() >= 1 and y.max() <= 10):
        raise damaged(path, f"labels run from {y.min()} to {y.max()}, SVHN's from 1 to 10 (10 is the digit 0)")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), (y.astype(np.int64) % 10)


def read_svhn(directory: Path) -> Arrays:
    return (*_svhn_split(directory / "train_32x32.mat"), *_svhn_split(directory / "test_32x32.mat"))


def _omniglot_part(path: Path, mat: dict[str, np.ndarray], key: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(mat[key])
    if x.ndim != 2 or x.shape[0] != 784 or not np.issubdtype(x.dtype, np.number):
        raise damaged(path, f"{key} is {x.dtype} {x.shape}, expected numbers (784, N)")
    x = x.astype(np.float64)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise damaged(path, f"{key} holds values outside [0, 1]")
    # each column is a 28x28 image in column-major order: (784, N) -> (N, 28, 28) read in Fortran order
    images = x.T.reshape(-1, 28, 28).transpose(0, 2, 1)
    images = np.rint(images * 255).astype(np.uint8)[:, None]
    labels = np.zeros(len(images), np.int64)
    if target in mat:
        t = np.asarray(mat[target])
        if t.ndim != 2 or t.shape[1] != len(images):
            raise damaged(path, f"{target} is {t.shape}, expected one-hot (alphabets, {len(images)})")
        labels = t.argmax(axis=0).astype(np.int64)
    return np.ascontiguousarray(images), labels


def read_omniglot(directory: Path) -> Arrays:
    path = directory / "chardata.mat"
    mat = _loadmat(path, ["data", "testdata"], optional=("target", "testtarget"))  # the alphabets, where given
    return (*_omniglot_part(path, mat, "data", "target"), *_omniglot_part(path, mat, "testdata", "testtarget"))


# --------------------------------------------------------------------------- .amat text


def read_amat(path: Path, width: int = 784) -> np.ndarray:
    """A text file of 0/1 values, one image of `width` values per line, as uint8 (N, width) in {0, 255}."""
    try:
        raw = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as exc:
        raise damaged(path, exc) from None
    bits = (raw - np.uint8(ord("0"))) <= 1  # uint8 arithmetic wraps: true for the bytes "0" and "1" only
    ok = bits | (raw == ord(" ")) | (raw == ord("\n")) | (raw == ord("\t")) | (raw == ord("\r"))
    if not ok.all():
        bad = raw[~ok][0]
        raise damaged(path, f"it holds the character {bytes([bad])!r}; an .amat file holds only 0, 1 and spaces")
    if (bits[1:] & bits[:-1]).any():
        raise damaged(path, "two digits without a space between them; each value is 0 or 1")
    starts = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    starts = starts[starts < len(raw)]
    # values per line: where each line's start falls among the positions of the digits
    counts = np.diff(np.searchsorted(np.flatnonzero(bits), np.append(starts, len(raw))))
    if not counts.any():
        raise damaged(path, "it holds no images")
    wrong = np.flatnonzero((counts > 0) & (counts != width))
    if len(wrong):
        line = int(wrong[0])
        raise damaged(path, f"line {line + 1} holds {counts[line]} values, expected {width} (a truncated file?)")
    return ((raw[bits] - ord("0")) * 255).astype(np.uint8).reshape(-1, width)


def read_binarized_mnist(directory: Path) -> Arrays:
    train, valid, test = (read_amat(directory / f"binarized_mnist_{s}.amat") for s in ("train", "valid", "test"))
    train = np.concatenate([train, valid]).reshape(-1, 1, 28, 28)
    # no labels in the .amat files
    return train, np.zeros(len(train), np.int64), test.reshape(-1, 1, 28, 28), np.zeros(len(test), np.int64)


# --------------------------------------------------------------------------- EMNIST


def _emnist_reader(directory: Path) -> tuple[Callable[[str, int], np.ndarray], zipfile.ZipFile | None]:
    """A function reading one IDX file of the dataset by name, from gzip.zip or from extracted files."""
    archive = directory / "gzip.zip"
    if not archive.is_file():
        def from_files(name: str, ndim: int) -> np.ndarray:
            path = find(directory, name)
            if path is None:
                raise DataError(f"{directory / name} does not exist; put NIST's gzip.zip or the EMNIST IDX files there")
            return read_idx(path, expected_ndim=ndim)
        return from_files, None
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise damaged(archive, exc) from None

    def from_zip(name: str, ndim: int) -> np.ndarray:
        member = f"gzip/{name}"
        try:
            with zf.open(member) as raw, gzip.GzipFile(fileobj=raw) as stream:  # type: ignore[arg-type]
                return read_idx_stream(stream, f"{archive}:{member}", ndim)
        except KeyError:
            raise damaged(archive, f"the archive has no {member}") from None
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise damaged(f"{archive}:{member}", exc) from None
    return from_zip, zf


def _emnist_pair(read: Callable[[str, int], np.ndarray], split: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    images = read(f"emnist-{split}-{part}-images-idx3-ubyte.gz", 3)
    labels = read(f"emnist-{split}-{part}-labels-idx1-ubyte.gz", 1).astype(np.int64)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"EMNIST {split} {part}: {images.dtype} images {images.shape} and {len(labels)} labels; "
                        "expected uint8 (N, 28, 28) and N labels: the files do not belong together")
    if split == "letters":
        labels = labels - 1  # the letters are numbered from 1
    top = 26 if split == "letters" else 47
    if len(labels) and not (labels.min() >= 0 and labels.max() < top):
        raise DataError(f"EMNIST {split} {part}: labels outside 0..{top - 1}; the files are not the {split} split")
    # EMNIST stores each image transposed (column by column): transpose it back
    return np.ascontiguousarray(images.transpose(0, 2, 1)[:, None]), labels


def read_emnist(directory: Path, split: str) -> Arrays:
    read, zf = _emnist_reader(directory)
    try:
        return (*_emnist_pair(read, split, "train"), *_emnist_pair(read, split, "test"))
    finally:
        if zf is not None:
            zf.close()


READERS: dict[str, Callable[[Path], Arrays]] = {
    "cifar10": read_cifar10,
    "svhn": read_svhn,
    "omniglot": read_omniglot,
    "binarized-mnist": read_binarized_mnist,
    "emnist": lambda d: read_emnist(d, "balanced"),
    "emnist-letters": lambda d: read_emnist(d, "letters"),
}

