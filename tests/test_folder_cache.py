"""The decoded-folder cache (vaelab.data.cache): a second load decodes nothing, any change is noticed,
and a damaged or half-written entry is rebuilt, never an error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import DataConfig
from vaelab.data import cache as folder_cache
from vaelab.data import load_dataset
from vaelab.data.sources import folder_cache_dir, load_folder
from vaelab.errors import DataError

N = 6


def _settle(root: Path, age_s: int = 3600) -> int:
    """Give every image an mtime in the past and return it (ns): files changed less than
    cache.RACY_NS ago are not stored, as their mtime may not show a change yet."""
    t = time.time_ns() - age_s * 10**9
    for p in root.rglob("*.png"):
        os.utime(p, ns=(t, t))
    return t


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(N):
        sub = root / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    _settle(root)
    return root


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """Names of the files PIL opens (headers and decodes): the loader calls PIL.Image.open for both."""
    calls: list[str] = []
    real = Image.open

    def counting(fp, *args, **kwargs):
        calls.append(Path(fp).name)
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def _entries() -> tuple[list[str], list[str]]:
    d = folder_cache_dir()
    return sorted(p.name for p in d.glob("*.json")), sorted(p.name for p in d.glob("*.npy"))


def _same(a, b) -> None:
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    assert a.train_images.dtype == torch.uint8 and a.train_labels.dtype == torch.int64
    assert a.classes == b.classes and a.source == b.source


def test_second_load_decodes_nothing(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    first = load_folder(str(root), 8, None, "resize")
    assert len(opens) == 2 * N  # a header pass and a decode per file
    assert [len(x) for x in _entries()] == [1, 1]
    opens.clear()
    second = load_folder(str(root), 8, None, "resize")
    assert opens == []
    _same(first, second)
    _same(first, load_folder(str(root), 8, None, "resize", cache=False))  # what decoding gives
    assert second.classes == ("cats", "dogs") and tuple(second.train_images.shape) == (N, 3, 8, 8)


def test_training_path_uses_the_cache(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    cfg = DataConfig(dataset=f"folder:{root}", image_size=8, val_size=1, test_fraction=0.2)
    a = load_dataset(cfg)
    opens.clear()
    b = load_dataset(cfg)
    assert opens == []
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).images, b.split(name).images)
        assert torch.equal(a.split(name).labels, b.split(name).labels)


def test_touched_file_is_decoded_again(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    load_folder(str(root), 8, None, "resize")
    t = root / "dogs" / "0.png"
    mtime = t.stat().st_mtime_ns + 10**9  # one second later, still long settled
    os.utime(t, ns=(mtime, mtime))
    opens.clear()
    load_folder(str(root), 8, None, "resize")
    assert len(opens) == 2 * N  # the whole folder: its arrays are one entry
    opens.clear()
    load_folder(str(root), 8, None, "resize")
    assert opens == []  # the new state is cached in turn
    assert [len(x) for x in _entries()] == [1, 1]  # and replaced the old entry: one per folder and settings


def test_rewritten_added_and_removed_files_are_noticed(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    before = load_folder(str(root), None, None, "resize")
    Image.new("RGB", (12, 10), (7, 8, 9)).save(root / "cats" / "1.png")  # the first file in sorted order
    _settle(root, age_s=60)
    after = load_folder(str(root), None, None, "resize")
    assert int(after.train_images[0, 0, 0, 0]) == 7 != int(before.train_images[0, 0, 0, 0])
    _same(after, load_folder(str(root), None, None, "resize", cache=False))
    Image.new("RGB", (12, 10)).save(root / "cats" / "new.png")
    _settle(root, age_s=30)
    assert len(load_folder(str(root), None, None, "resize").train_images) == N + 1
    (root / "cats" / "new.png").unlink()
    (root / "cats" / "1.png").unlink()
    opens.clear()
    assert len(load_folder(str(root), None, None, "resize").train_images) == N - 1
    assert len(opens) == 2 * (N - 1)


def test_other_settings_get_their_own_entry(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    eight = load_folder(str(root), 8, None, "resize")
    six = load_folder(str(root), 6, None, "resize")
    grey = load_folder(str(root), 8, 1, "resize")
    padded = load_folder(str(root), 8, None, "pad")
    assert tuple(six.train_images.shape[1:]) == (3, 6, 6) and grey.train_images.shape[1] == 1
    assert not torch.equal(padded.train_images, eight.train_images)
    assert [len(x) for x in _entries()] == [4, 4]
    opens.clear()
    _same(eight, load_folder(str(root), 8, None, "resize"))
    _same(six, load_folder(str(root), 6, None, "resize"))
    assert opens == []


def _damage_data(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one pixel: only the checksum sees it
    path.write_bytes(bytes(raw))


DAMAGE = {
    "truncated data": lambda data, record: data.write_bytes(data.read_bytes()[:-7]),
    "garbage data": lambda data, record: data.write_bytes(b"\x93NUMPY garbage"),
    "empty data": lambda data, record: data.write_bytes(b""),
    "flipped pixel": lambda data, record: _damage_data(data),
    "missing data": lambda data, record: data.unlink(),
    "pickled data": lambda data, record: np.save(data, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    "garbage record": lambda data, record: record.write_bytes(b"{not json"),
    "record of a list": lambda data, record: record.write_text("[1, 2]"),
    "wrong shape": lambda data, record: record.write_text(
        json.dumps({**json.loads(record.read_text()), "shape": [1, 1, 1, 1]})),
    "bad labels": lambda data, record: record.write_text(
        json.dumps({**json.loads(record.read_text()), "labels": ["x"] * N})),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_rebuilt(tmp_path, opens, damage):
    root = _folder(tmp_path / "imgs")
    good = load_folder(str(root), 8, None, "resize")
    (record,), (data,) = _entries()
    DAMAGE[damage](folder_cache_dir() / data, folder_cache_dir() / record)
    opens.clear()
    _same(good, load_folder(str(root), 8, None, "resize"))
    assert len(opens) == 2 * N  # decoded again ...
    opens.clear()
    _same(good, load_folder(str(root), 8, None, "resize"))
    assert opens == []  # ... and stored again


def test_killed_writer_leaves_no_damaged_entry(tmp_path, monkeypatch, opens):
    root = _folder(tmp_path / "imgs")
    good = load_folder(str(root), 8, None, "resize")
    t = root / "cats" / "1.png"
    os.utime(t, ns=(t.stat().st_mtime_ns + 10**9,) * 2)

    def killed_in_save(fh, array, allow_pickle):  # half the file written, then the process dies
        fh.write(b"\x93NUMPY\x01\x00half")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # (not monkeypatch.undo(): that would also undo conftest's isolation)
        m.setattr(folder_cache.np, "save", killed_in_save)
        with pytest.raises(KeyboardInterrupt):
            load_folder(str(root), 8, None, "resize")
    assert len(_entries()[1]) == 1 and not list(folder_cache_dir().glob(".*"))  # no half file, no temporary

    def killed_before_record(*args, **kwargs):  # the data file renamed into place, the record not yet
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(folder_cache, "atomic_write", killed_before_record)
        with pytest.raises(KeyboardInterrupt):
            load_folder(str(root), 8, None, "resize")
    assert len(_entries()[1]) == 2  # an orphan data file: the record still names the old state
    _same(good, load_folder(str(root), 8, None, "resize"))  # the old record's key no longer matches
    assert [len(x) for x in _entries()] == [1, 1]  # the next store removed the orphan


def test_racy_files_are_not_stored(tmp_path, opens):
    root = _folder(tmp_path / "imgs")
    Image.new("RGB", (12, 10)).save(root / "cats" / "fresh.png")  # just written: its mtime may not move yet
    load_folder(str(root), 8, None, "resize")
    assert _entries() == ([], [])
    _settle(root)
    load_folder(str(root), 8, None, "resize")
    assert [len(x) for x in _entries()] == [1, 1]


def test_cache_off_and_unwritable_cache(tmp_path, monkeypatch, opens):
    root = _folder(tmp_path / "imgs")
    monkeypatch.setenv("VAELAB_FOLDER_CACHE", "0")
    load_folder(str(root), 8, None, "resize")
    assert not folder_cache_dir().exists()
    monkeypatch.delenv("VAELAB_FOLDER_CACHE")
    folder_cache_dir().parent.mkdir(parents=True)
    folder_cache_dir().write_text("a file where the cache directory goes")
    good = load_folder(str(root), 8, None, "resize")  # not stored, not an error
    _same(good, load_folder(str(root), 8, None, "resize", cache=False))


def test_errors_are_not_cached(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "cats" / "broken.png").write_bytes(b"not a png")
    _settle(root)
    for _ in range(2):
        with pytest.raises(DataError, match="broken.png"):
            load_folder(str(root), 8, None, "resize")
    assert _entries() == ([], [])
