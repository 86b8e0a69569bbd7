"""The standard datasets by name (cifar10, svhn, celeba, omniglot, kmnist, emnist, binarized-mnist): each reader
on small files made in the real format, downloaded from a local HTTP server on 127.0.0.1 into the cache and
verified, damaged files refused in one line with the cache left clean, and `vaelab datasets`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import named_fixtures as make
from test_download import _Handler, server  # noqa: F401 (the local HTTP server fixture)
from vaelab.data import NAMED, load_raw, write_idx
from vaelab.data import catalog, sources
from vaelab.data.download import git_blob_id
from vaelab.errors import DatasetNotFoundError


@pytest.fixture
def no_system(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")


def _serve(monkeypatch, root: Path, url: str, name: str, *, wrong: set[str] = frozenset(), blob: bool = False):
    """Serve dataset `name`'s files from the local server; the catalog expects their real hashes (or, for the
    files in `wrong`, other ones); with `blob`, the git blob id instead of a SHA-256 (as for omniglot)."""
    spec = NAMED[name]
    files = []
    for f in spec.files:
        path = root / spec.folder / f.name
        digest = "0" * 64 if f.name in wrong else hashlib.sha256(path.read_bytes()).hexdigest()
        if blob:
            f = dataclasses.replace(f, sha256=None, git_blob=("0" * 40 if f.name in wrong else git_blob_id(path)))
        else:
            f = dataclasses.replace(f, sha256=digest, git_blob=None)
        # the real URL list's shape: the first URL is dead (404), the second serves the file
        files.append(dataclasses.replace(f, size=None, urls=(url + "gone/" + f.name, url + f"{spec.folder}/{f.name}")))
    monkeypatch.setitem(catalog.NAMED, name, dataclasses.replace(spec, files=tuple(files)))
    monkeypatch.delenv("VAELAB_OFFLINE")


def _assert_same(raw, truth):
    train_x, train_y, test_x, test_y = truth
    assert raw.train_images.dtype.is_floating_point is False and str(raw.train_images.dtype) == "torch.uint8"
    assert str(raw.train_labels.dtype) == "torch.int64"
    np.testing.assert_array_equal(raw.train_images.numpy(), train_x)
    np.testing.assert_array_equal(raw.train_labels.numpy(), train_y)
    np.testing.assert_array_equal(raw.test_images.numpy(), test_x)
    np.testing.assert_array_equal(raw.test_labels.numpy(), test_y)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "omniglot", "binarized-mnist"])
def test_download_verify_and_read(server, tmp_path, monkeypatch, no_system, name):  # noqa: F811
    """Fetched from the mirror (after a dead URL), verified, cached, and read back exactly as written."""
    root, url = server
    truth = make.MAKERS[name](root / NAMED[name].folder, np.random.default_rng(zlib.crc32(name.encode())))
    _serve(monkeypatch, root, url, name, blob=name == "omniglot")
    raw = load_raw(name, download=True)
    _assert_same(raw, truth)
    assert "cache" in raw.source
    cached = sorted(p.name for p in (sources.cache_root() / NAMED[name].folder).iterdir())
    assert cached == sorted(f.name for f in NAMED[name].files)  # the files, nothing else (no .part file)
    # the second load reads the cache: nothing more is requested
    _Handler.requests = []
    _assert_same(load_raw(name, download=True), truth)
    assert _Handler.requests == []


def test_what_the_readers_give(tmp_path):
    """Shapes, channels, label conventions: SVHN's 10 is the digit 0, Omniglot's columns are Fortran-ordered,
    binarized MNIST's valid images join the training split and hold only 0 and 255."""
    rng = np.random.default_rng(5)
    x, y, tx, ty = make.svhn(tmp_path / "svhn", rng)
    raw = load_raw("svhn", data_dir=str(tmp_path / "svhn"))
    assert tuple(raw.train_images.shape) == (7, 3, 32, 32) and raw.train_labels[0] == 0 and 10 not in raw.train_labels
    make.omniglot(tmp_path / "omni", rng)
    raw = load_raw("omniglot", data_dir=str(tmp_path / "omni"))
    assert tuple(raw.train_images.shape) == (6, 1, 28, 28) and tuple(raw.test_images.shape) == (3, 1, 28, 28)
    assert len(raw.classes) == 50 and raw.train_labels.max() < 50
    make.binarized_mnist(tmp_path / "bm", rng)
    raw = load_raw("binarized-mnist", data_dir=str(tmp_path / "bm"))
    assert tuple(raw.train_images.shape) == (7, 1, 28, 28) and tuple(raw.test_images.shape) == (3, 1, 28, 28)
    assert set(np.unique(raw.train_images.numpy())) <= {0, 255}
    make.cifar10(tmp_path / "c10", rng, unpacked=True)  # the extracted cifar-10-batches-bin/ counts too
    raw = load_raw("cifar10", data_dir=str(tmp_path / "c10"))
    assert tuple(raw.train_images.shape) == (20, 3, 32, 32) and len(raw.classes) == 10


@pytest.mark.parametrize("unpacked", [False, True], ids=["gzip.zip", "extracted"])
def test_emnist_splits_are_transposed_back(tmp_path, unpacked):
    (bx, by, btx, bty), (lx, ly, ltx, lty) = make.emnist(tmp_path, np.random.default_rng(3), unpacked=unpacked)
    raw = load_raw("emnist", data_dir=str(tmp_path))
    _assert_same(raw, (bx, by, btx, bty))
    assert len(raw.classes) == 47
    letters = load_raw("emnist-letters", data_dir=str(tmp_path))
    _assert_same(letters, (lx, ly, ltx, lty))
    assert letters.train_labels.min() >= 0 and letters.train_labels.max() <= 25 and len(letters.classes) == 26
    # the stored (transposed) images are not what comes back
    assert not np.array_equal(raw.train_images.numpy(), bx.transpose(0, 1, 3, 2))


def test_emnist_download_is_shared_by_both_splits(server, monkeypatch, no_system):  # noqa: F811
    root, url = server
    truth_b, truth_l = make.emnist(root / "emnist", np.random.default_rng(4))
    _serve(monkeypatch, root, url, "emnist")
    monkeypatch.setitem(catalog.NAMED, "emnist-letters",
                        dataclasses.replace(NAMED["emnist-letters"], files=catalog.NAMED["emnist"].files))
    _assert_same(load_raw("emnist", download=True), truth_b)
    _Handler.requests = []
    _assert_same(load_raw("emnist-letters", download=True), truth_l)
    assert _Handler.requests == []  # the letters come from the zip already in the cache


def test_kmnist_is_an_idx_dataset_downloaded_like_mnist(server, monkeypatch, no_system):  # noqa: F811
    root, url = server
    rng = np.random.default_rng(6)
    spec = sources.IDX_DATASETS["kmnist"]
    (root / "kmnist").mkdir()
    hashes, images = {}, {}
    for role, stem in spec.files.items():
        n = 12 if role.startswith("train") else 4
        shape = (n, 28, 28) if "images" in role else (n,)
        arr = rng.integers(0, 256 if "images" in role else 10, shape, dtype=np.uint8)
        write_idx(root / "kmnist" / f"{stem}.gz", arr)
        hashes[role] = hashlib.sha256((root / "kmnist" / f"{stem}.gz").read_bytes()).hexdigest()
        images[role] = arr
    monkeypatch.setitem(sources.IDX_DATASETS, "kmnist",
                        dataclasses.replace(spec, sha256=hashes, mirrors=(url + "kmnist/",)))
    monkeypatch.delenv("VAELAB_OFFLINE")
    raw = load_raw("kmnist", download=True)
    np.testing.assert_array_equal(raw.train_images.numpy()[:, 0], images["train_images"])
    np.testing.assert_array_equal(raw.test_labels.numpy(), images["test_labels"])
    assert raw.classes[0] == "o" and len(raw.classes) == 10


# --------------------------------------------------------------------------- CelebA


def test_celeba_crop_resize_partition_and_cache(tmp_path, monkeypatch):
    src, parts = make.celeba(tmp_path, np.random.default_rng(7))
    for f in tmp_path.iterdir():  # files written within the last seconds are never cached (vaelab.data.cache)
        os.utime(f, (time.time() - 3600,) * 2)
    # at 148 pixels the crop is exact: rows 35..182, columns 15..162 of the 178x218 image
    raw = load_raw("celeba", data_dir=str(tmp_path), image_size=148)
    expect = src[:, 35:183, 15:163].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(raw.train_images.numpy(), expect[parts != 2])
    np.testing.assert_array_equal(raw.test_images.numpy(), expect[parts == 2])
    assert raw.train_labels.tolist() == [0] * 4 and len(raw.test_images) == 2
    # the default size is 64; the arrays are kept in the cache and read back without decoding
    raw64 = load_raw("celeba", data_dir=str(tmp_path))
    assert tuple(raw64.train_images.shape) == (4, 3, 64, 64)
    from vaelab.data import celeba

    monkeypatch.setattr(celeba, "_decode", lambda *a: pytest.fail("decoded again instead of using the cache"))
    assert np.array_equal(load_raw("celeba", data_dir=str(tmp_path)).test_images.numpy(), raw64.test_images.numpy())
    # test_only (scoring CelebA as an unseen dataset) decodes the test partition only
    monkeypatch.undo()
    only = load_raw("celeba", data_dir=str(tmp_path), image_size=32, test_only=True)
    assert len(only.train_images) == 0 and tuple(only.test_images.shape) == (2, 3, 32, 32)


def test_celeba_unpacked_folder_and_jpeg(tmp_path):
    src, parts = make.celeba(tmp_path, np.random.default_rng(8), unpacked=True, fmt="JPEG")
    raw = load_raw("celeba", data_dir=str(tmp_path), image_size=148)
    got = raw.train_images.numpy().astype(float)
    # JPEG is lossy: close to the source's centre square, far from the same square moved by a few pixels
    right = np.abs(got - src[parts != 2][:, 35:183, 15:163].transpose(0, 3, 1, 2)).mean()
    moved = np.abs(got - src[parts != 2][:, 30:178, 10:158].transpose(0, 3, 1, 2)).mean()
    assert right < 8 and moved > 3 * right, (right, moved)


def test_celeba_download_and_wrong_partition_file(server, monkeypatch, no_system):  # noqa: F811
    root, url = server
    make.celeba(root / "celeba", np.random.default_rng(9))
    _serve(monkeypatch, root, url, "celeba", wrong={"list_eval_partition.txt"})
    with pytest.raises(DatasetNotFoundError, match="SHA-256") as info:
        load_raw("celeba", download=True)
    assert "\n" not in str(info.value) and "mmlab.ie.cuhk.edu.hk" in str(info.value)
    cache = sources.cache_root() / "celeba"
    assert sorted(p.name for p in cache.iterdir()) == ["img_align_celeba.zip"]  # verified; the wrong file is gone
