"""Damaged files of the standard datasets: each gives one line naming the file (exit code 2 in the CLI), a failed
download leaves the cache clean, offline a missing dataset names its URL and where to put it; fuzzed parsers."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import named_fixtures as make
from test_download import _Handler, server  # noqa: F401 (the local HTTP server fixture)
from vaelab.cli import main
from vaelab.data import BUILTIN, NAMED, load_raw
from vaelab.data import catalog, sources
from vaelab.data.celeba import read_partition
from vaelab.data.readers import _cifar_records, read_amat
from vaelab.errors import DataError, DatasetNotFoundError


def _one_line(exc_info, *parts: str) -> None:
    text = str(exc_info.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- damaged files in --data-dir


def test_cifar10_damaged(tmp_path):
    rng = np.random.default_rng(11)
    make.cifar10(tmp_path, rng)
    _cut(tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError) as info:
        load_raw("cifar10", data_dir=str(tmp_path))
    _one_line(info, "cifar-10-binary.tar.gz", "damaged")
    # a batch whose length is not a whole number of records, and a label byte beyond 9
    bad = tmp_path / "bad"
    make.cifar10(bad, rng, unpacked=True)
    batch = bad / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(DataError) as info:
        load_raw("cifar10", data_dir=str(bad))
    _one_line(info, "data_batch_3.bin", "3073-byte records")
    data = bytearray((bad / "cifar-10-batches-bin" / "test_batch.bin").read_bytes())
    data[0] = 12
    batch.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_raw("cifar10", data_dir=str(bad))
    _one_line(info, "data_batch_3.bin", "label byte is 12")


def test_cifar10_archive_without_a_batch(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 3073
        tar.addfile(info, io.BytesIO(bytes(3073)))
    with pytest.raises(DataError) as info:
        load_raw("cifar10", data_dir=str(tmp_path))
    _one_line(info, "has no data_batch_2.bin")


@pytest.mark.parametrize("damage, expect", [
    ("cut", "train_32x32.mat"),
    ("garbage", "train_32x32.mat"),
    ("label 0", "labels run from 0"),
    ("float X", "expected uint8 (32, 32, 3, N)"),
])
def test_svhn_damaged(tmp_path, damage, expect):
    import scipy.io

    make.svhn(tmp_path, np.random.default_rng(12))
    path = tmp_path / "train_32x32.mat"
    if damage == "cut":
        _cut(path)
    elif damage == "garbage":
        path.write_bytes(b"not a MATLAB file" * 50)
    elif damage == "label 0":
        scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]], np.uint8)})
    else:
        scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2)), "y": np.array([[1], [3]], np.uint8)})
    with pytest.raises(DataError) as info:
        load_raw("svhn", data_dir=str(tmp_path))
    _one_line(info, expect)


def test_omniglot_damaged(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "chardata.mat", {"data": np.full((784, 2), 2.0), "testdata": np.zeros((784, 1))})
    with pytest.raises(DataError) as info:
        load_raw("omniglot", data_dir=str(tmp_path))
    _one_line(info, "chardata.mat", "outside [0, 1]")
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": np.zeros((784, 2))})
    with pytest.raises(DataError) as info:
        load_raw("omniglot", data_dir=str(tmp_path))
    _one_line(info, "chardata.mat", "no variable testdata")
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": np.zeros((783, 2)), "testdata": np.zeros((784, 1))})
    with pytest.raises(DataError) as info:
        load_raw("omniglot", data_dir=str(tmp_path))
    _one_line(info, "(784, N)")


@pytest.mark.parametrize("text, expect", [
    ("0 1 " * 391 + "0\n", "line 1 holds 783 values, expected 784"),
    ("0 " * 783 + "2\n", "the character b'2'"),
    ("10 " + "0 " * 782 + "1\n", "two digits without a space"),
    ("\n\n", "no images"),
])
def test_amat_damaged(tmp_path, text, expect):
    make.binarized_mnist(tmp_path, np.random.default_rng(13))
    (tmp_path / "binarized_mnist_valid.amat").write_text(text)
    with pytest.raises(DataError) as info:
        load_raw("binarized-mnist", data_dir=str(tmp_path))
    _one_line(info, "binarized_mnist_valid.amat", expect)


def test_emnist_damaged(tmp_path):
    make.emnist(tmp_path, np.random.default_rng(14))
    _cut(tmp_path / "gzip.zip", 0.9)  # the central directory at the end is gone
    with pytest.raises(DataError) as info:
        load_raw("emnist", data_dir=str(tmp_path))
    _one_line(info, "gzip.zip")
    with zipfile.ZipFile(tmp_path / "gzip.zip", "w") as zf:  # only the balanced split
        for name in catalog.NAMED["emnist"].forms[1]:
            zf.writestr(f"gzip/{name}", gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 0])))
    with pytest.raises(DataError) as info:
        load_raw("emnist-letters", data_dir=str(tmp_path))
    _one_line(info, "has no gzip/emnist-letters-train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as info:  # a 1-dimensional "image" file
        load_raw("emnist", data_dir=str(tmp_path))
    _one_line(info, "emnist-balanced-train-images-idx3-ubyte.gz", "dimensions")


@pytest.mark.parametrize("damage, expect", [
    ("partition", "line 2 is"),
    ("missing image", "has no 000007.jpg"),
    ("bad image", "img_align_celeba.zip:img_align_celeba/000001.jpg"),
])
def test_celeba_damaged(tmp_path, damage, expect):
    make.celeba(tmp_path, np.random.default_rng(15))
    partition = tmp_path / "list_eval_partition.txt"
    if damage == "partition":
        partition.write_text("000001.jpg 0\n000002.jpg 3\n")
    elif damage == "missing image":
        partition.write_text(partition.read_text() + "000007.jpg 2\n")
    else:
        with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as zf:
            zf.writestr("img_align_celeba/000001.jpg", b"\xff\xd8\xff\xe0 not really a JPEG")
        partition.write_text("000001.jpg 0\n")
    with pytest.raises(DataError) as info:
        load_raw("celeba", data_dir=str(tmp_path))
    _one_line(info, expect)


# --------------------------------------------------------------------------- downloads that fail


def test_truncated_download_leaves_the_cache_clean(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    root, url = server
    make.cifar10(root / "cifar10", np.random.default_rng(16))
    f = NAMED["cifar10"].files[0]
    digest = hashlib.sha256((root / "cifar10" / f.name).read_bytes()).hexdigest()
    monkeypatch.setitem(catalog.NAMED, "cifar10", dataclasses.replace(
        NAMED["cifar10"], files=(dataclasses.replace(f, sha256=digest, size=None, urls=(url + "cifar10/" + f.name,)),)))
    monkeypatch.delenv("VAELAB_OFFLINE")
    monkeypatch.setattr("vaelab.data.download.DEFAULT_RETRIES", 0)
    _Handler.truncate = {"cifar10/cifar-10-binary.tar.gz"}
    with pytest.raises(DatasetNotFoundError) as info:
        load_raw("cifar10", download=True)
    _one_line(info, "could not download", "cifar-10-binary.tar.gz")
    cache = sources.cache_root() / "cifar10"
    assert not cache.exists() or list(cache.iterdir()) == []  # no file, no .part file


def test_omniglot_wrong_git_blob_is_refused(server, tmp_path, monkeypatch):  # noqa: F811
    """chardata.mat has no published SHA-256: its git blob id is what guards it."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    root, url = server
    make.omniglot(root / "omniglot", np.random.default_rng(17))
    f = NAMED["omniglot"].files[0]
    assert f.sha256 is None and len(f.git_blob) == 40  # the real entry: no SHA-256, a blob id
    monkeypatch.setitem(catalog.NAMED, "omniglot", dataclasses.replace(
        NAMED["omniglot"], files=(dataclasses.replace(f, urls=(url + "omniglot/chardata.mat",)),)))
    monkeypatch.delenv("VAELAB_OFFLINE")
    with pytest.raises(DatasetNotFoundError) as info:
        load_raw("omniglot", download=True)
    _one_line(info, "git blob id", f.git_blob)
    assert list((sources.cache_root() / "omniglot").iterdir()) == []


# --------------------------------------------------------------------------- offline, and `vaelab datasets`


def test_offline_missing_dataset_is_one_line_with_url_and_place(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    for name in NAMED:
        with pytest.raises(DatasetNotFoundError) as info:
            load_raw(name)
        _one_line(info, "VAELAB_OFFLINE", str(sources.cache_root() / NAMED[name].folder), "--data-dir")
        assert (NAMED[name].by_hand or NAMED[name].files[0].urls[0]) in str(info.value)
    assert main(["train", "--set", "data.dataset=cifar10", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_datasets_command_lists_every_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line[:1].strip()}
    assert set(BUILTIN) <= set(rows) and rows["cifar10"] == "missing" and rows["digits"] == "found"
    assert "cifar-10-binary.tar.gz" in out and str(sources.cache_root() / "svhn") in out  # offline: URL and place
    make.cifar10(tmp_path / "c", np.random.default_rng(18))
    make.binarized_mnist(tmp_path / "c", np.random.default_rng(18))
    assert main(["datasets", "--data-dir", str(tmp_path / "c"), "cifar10", "binarized-mnist", "svhn"]) == 0
    out = capsys.readouterr().out
    assert "50000" in out and "3x32x32" in out and "60000" in out and "1x28x28" in out
    assert [line.split()[1] for line in out.splitlines()[2:] if line[:1].strip()] == ["found", "found", "missing"]


# --------------------------------------------------------------------------- fuzzed parsers


def _fuzz(n: int):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_fuzz(60)
@given(bits=st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=5),
       sep=st.sampled_from([" ", "  ", "\t", " \t"]), eol=st.sampled_from(["\n", "\r\n", " \n"]),
       blank=st.booleans())
def test_amat_roundtrip(tmp_path, bits, sep, eol, blank):
    text = "".join(sep.join(map(str, row)) + eol + ("\n" if blank else "") for row in bits)
    (tmp_path / "f.amat").write_text(text)
    np.testing.assert_array_equal(read_amat(tmp_path / "f.amat", width=6), np.array(bits, np.uint8) * 255)


@_fuzz(150)
@given(data=st.binary(max_size=300))
def test_amat_garbage_is_a_data_error(tmp_path, data):
    (tmp_path / "f.amat").write_bytes(data)
    try:
        out = read_amat(tmp_path / "f.amat", width=4)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert out.shape[1] == 4 and set(np.unique(out)) <= {0, 255}


@_fuzz(150)
@given(data=st.binary(max_size=8000))
def test_cifar_records_garbage(data):
    try:
        x, y = _cifar_records(data, "f.bin")
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(data) % 3073 == 0 and x.shape == (len(data) // 3073, 3, 32, 32) and y.max() <= 9


@_fuzz(150)
@given(text=st.text(max_size=200))
def test_partition_garbage(tmp_path, text):
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    try:
        entries = read_partition(tmp_path / "p.txt")
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert entries and all(part in (0, 1, 2) and "/" not in name for name, part in entries)
