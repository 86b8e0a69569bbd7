import gzip
import struct
import time

import numpy as np
import pytest

from vaelab.data import load_raw, read_idx, read_idx_header, write_idx
from vaelab.errors import DataError


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / name, arr)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and np.array_equal(back, arr)
    dtype, shape = read_idx_header(tmp_path / name)
    assert shape == (7, 5, 3) and dtype == np.uint8


def test_round_trip_multibyte_types(tmp_path):
    arr = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "i.idx", arr)
    assert np.array_equal(read_idx(tmp_path / "i.idx"), arr)
    f = np.linspace(0, 1, 6, dtype=np.float32)
    write_idx(tmp_path / "f.idx", f)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), f)


def test_real_fashion_mnist_files(fashion_mnist_dir):
    images = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images.max() == 255 and images.min() == 0


def test_real_mnist10k_round_trip(mnist10k_dir, tmp_path):
    images = read_idx(mnist10k_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(mnist10k_dir / "train-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    # the class counts documented in ../shared/data/README.md
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    write_idx(tmp_path / "copy.gz", images)
    assert np.array_equal(read_idx(tmp_path / "copy.gz"), images)


def test_truncated_file(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((10, 4, 4), np.uint8))
    data = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t.idx")
    (tmp_path / "t.idx.gz").write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t.idx.gz")
    (tmp_path / "h.idx").write_bytes(data[:6])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "h.idx")


def test_wrong_magic(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "code.idx").write_bytes(b"\x00\x00\x42\x01" + struct.pack(">I", 3) + bytes(3))
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(tmp_path / "code.idx")


def test_trailing_bytes(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((2, 2), np.uint8))
    (tmp_path / "a.idx").write_bytes((tmp_path / "a.idx").read_bytes() + b"xx")
    with pytest.raises(DataError, match="bytes after"):
        read_idx(tmp_path / "a.idx")


def test_huge_header_does_not_allocate(tmp_path):
    # a header that claims 4 billion 28x28 images, followed by a few bytes
    (tmp_path / "huge.idx").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 4_000_000_000, 28, 28) + bytes(100))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "huge.idx")
    assert time.perf_counter() - t0 < 2.0


def test_header_whose_size_overflows_64_bits(tmp_path):
    # 8 dimensions of 2**32-1: the product overflows int64 (numpy would wrap it); a clear error, no crash
    (tmp_path / "wrap.idx").write_bytes(b"\x00\x00\x08\x08" + struct.pack(">8I", *[2**32 - 1] * 8) + bytes(64))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "wrap.idx")


def test_damaged_gzip(tmp_path):
    write_idx(tmp_path / "a.idx.gz", np.zeros((50, 28, 28), np.uint8))
    raw = bytearray((tmp_path / "a.idx.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[-6] ^= 0xFF  # break the CRC too
    (tmp_path / "a.idx.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError):
        read_idx(tmp_path / "a.idx.gz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope.idx")


def _write_mnist_like(directory, n_images, n_labels, with_test=True):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8))
    write_idx(directory / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_labels, dtype=np.uint8))
    if with_test:
        write_idx(directory / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
        write_idx(directory / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20, dtype=np.uint8))


def test_count_mismatch_between_images_and_labels(tmp_path):
    _write_mnist_like(tmp_path / "d", 100, 99)
    with pytest.raises(DataError, match="holds 100 images but .* holds 99 labels"):
        load_raw("mnist", data_dir=str(tmp_path / "d"), download=False)


def test_swapped_image_and_label_files(tmp_path):
    d = tmp_path / "d"
    _write_mnist_like(d, 10, 10)
    images = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes((d / "train-labels-idx1-ubyte.gz").read_bytes())
    (d / "train-labels-idx1-ubyte.gz").write_bytes(images)
    with pytest.raises(DataError, match="swapped|expected images"):
        load_raw("mnist", data_dir=str(d), download=False)
