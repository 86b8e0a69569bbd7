"""Small files in the real formats of the standard datasets (for tests/test_datasets_named*.py).

Each maker writes a dataset's official files, with a handful of seeded random
images, into a directory and returns what a correct reader must give back:
(train images, train labels, test images, test labels), uint8 (N, C, H, W) and int64.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np


def cifar10(directory: Path, rng: np.random.Generator, per_batch: int = 4, n_test: int = 5, *,
            unpacked: bool = False):
    """cifar-10-binary.tar.gz: six batch files of records (label byte, R plane, G plane, B plane)."""
    directory.mkdir(parents=True, exist_ok=True)
    batches, xs, ys = {}, [], []
    for name, n in [(f"data_batch_{i}.bin", per_batch) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        batches[name] = b"".join(bytes([y[i]]) + x[i].tobytes() for i in range(n))
        xs.append(x)
        ys.append(y.astype(np.int64))
    if unpacked:
        (directory / "cifar-10-batches-bin").mkdir()
        for name, data in batches.items():
            (directory / "cifar-10-batches-bin" / name).write_bytes(data)
    else:
        with tarfile.open(directory / "cifar-10-binary.tar.gz", "w:gz") as tar:
            members = [("batches.meta.txt", b"airplane\nautomobile\n")] + list(batches.items())
            for name, data in members:
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def svhn(directory: Path, rng: np.random.Generator, n_train: int = 7, n_test: int = 4):
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10 is the digit 0)."""
    import scipy.io

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        digits = rng.integers(0, 10, n)
        digits[0] = 0  # the case that is stored as 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(directory / name, {"X": x.transpose(2, 3, 1, 0), "y": y}, do_compression=True)
        out += [x, digits.astype(np.int64)]
    return tuple(out)


def omniglot(directory: Path, rng: np.random.Generator, n_train: int = 6, n_test: int = 3):
    """chardata.mat: data / testdata (784, N) floats in [0, 1], each column an image in Fortran order."""
    import scipy.io

    directory.mkdir(parents=True, exist_ok=True)
    content, out = {}, []
    for key, target, n in (("data", "target", n_train), ("testdata", "testtarget", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        columns = np.stack([img.reshape(-1, order="F") for img in images], axis=1) / 255.0
        alphabets = rng.integers(0, 50, n)
        content[key] = columns
        content[target] = np.eye(50)[alphabets].T  # one-hot (50, N)
        out += [images[:, None], alphabets.astype(np.int64)]
    scipy.io.savemat(directory / "chardata.mat", content)
    return tuple(out)


def binarized_mnist(directory: Path, rng: np.random.Generator, n: tuple[int, int, int] = (5, 2, 3)):
    """binarized_mnist_{train,valid,test}.amat: one image a line, 784 values 0 or 1 separated by spaces."""
    directory.mkdir(parents=True, exist_ok=True)
    bits = {}
    for part, count in zip(("train", "valid", "test"), n):
        b = rng.integers(0, 2, (count, 784)).astype(np.uint8)
        (directory / f"binarized_mnist_{part}.amat").write_text("".join(" ".join(map(str, row)) + "\n" for row in b))
        bits[part] = b
    train = np.concatenate([bits["train"], bits["valid"]]).reshape(-1, 1, 28, 28) * 255
    test = bits["test"].reshape(-1, 1, 28, 28) * 255
    return train.astype(np.uint8), np.zeros(len(train), np.int64), test.astype(np.uint8), np.zeros(len(test), np.int64)


def _emnist_files(split: str, rng: np.random.Generator, n_train: int, n_test: int):
    """The four IDX files of one EMNIST split, each image stored transposed, and the upright truth."""
    files, truth = {}, []
    low, high = (1, 27) if split == "letters" else (0, 47)
    for part, n in (("train", n_train), ("test", n_test)):
        upright = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(low, high, n).astype(np.uint8)
        for kind, array in (("images-idx3", upright.transpose(0, 2, 1)), ("labels-idx1", labels)):
            # IDX written by hand (not with vaelab's writer): magic 0x0000 08 ndim, big-endian dimensions, bytes
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            files[f"emnist-{split}-{part}-{kind}-ubyte.gz"] = gzip.compress(header + array.tobytes(), mtime=0)
        truth += [upright[:, None], labels.astype(np.int64) - (1 if split == "letters" else 0)]
    return files, tuple(truth)


def emnist(directory: Path, rng: np.random.Generator, n_train: int = 6, n_test: int = 3, *, unpacked: bool = False):
    """NIST's gzip.zip (gzip/emnist-<split>-...-ubyte.gz) with the balanced and letters splits; their truths."""
    directory.mkdir(parents=True, exist_ok=True)
    balanced, truth_b = _emnist_files("balanced", rng, n_train, n_test)
    letters, truth_l = _emnist_files("letters", rng, n_train, n_test)
    if unpacked:
        for name, data in {**balanced, **letters}.items():
            (directory / name).write_bytes(data)
    else:
        with zipfile.ZipFile(directory / "gzip.zip", "w") as zf:
            for name, data in {**balanced, **letters}.items():
                zf.writestr(f"gzip/{name}", data)
            zf.writestr("gzip/emnist-balanced-mapping.txt", "0 48\n")
    return truth_b, truth_l


def celeba(directory: Path, rng: np.random.Generator, parts: tuple[int, ...] = (0, 0, 1, 2, 2, 0), *,
           unpacked: bool = False, fmt: str = "PNG"):
    """img_align_celeba.zip (178x218 images) + list_eval_partition.txt; the source arrays (H, W, 3)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    sources, lines = [], []
    if unpacked:
        (directory / "img_align_celeba").mkdir()
    zf = None if unpacked else zipfile.ZipFile(directory / "img_align_celeba.zip", "w")
    for i, part in enumerate(parts, 1):
        arr = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        if fmt == "JPEG":  # smooth (blobs of about 8 pixels), which JPEG keeps nearly as it is
            small = rng.integers(0, 256, (28, 23, 3), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((178, 218), Image.Resampling.BICUBIC))
        name = f"{i:06d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        if zf is None:
            (directory / "img_align_celeba" / name).write_bytes(buf.getvalue())
        else:
            zf.writestr(f"img_align_celeba/{name}", buf.getvalue())
        sources.append(arr)
        lines.append(f"{name} {part}\n")
    if zf is not None:
        zf.close()
    (directory / "list_eval_partition.txt").write_text("".join(lines))
    return np.stack(sources), np.array(parts)


MAKERS = {"cifar10": cifar10, "svhn": svhn, "omniglot": omniglot, "binarized-mnist": binarized_mnist}
