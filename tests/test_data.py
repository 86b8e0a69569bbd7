import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import DataConfig
from vaelab.data import ImageSet, batches, eval_view, load_dataset, load_raw, train_view, write_idx
from vaelab.data import sources
from vaelab.data.splits import to_size
from vaelab.errors import ConfigError, DataError, DatasetNotFoundError


def _mnist_dir(path, n=60, value=None, with_test=True):
    path.mkdir(parents=True, exist_ok=True)
    images = np.full((n, 28, 28), value, np.uint8) if value is not None else \
        np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    write_idx(path / "train-images-idx3-ubyte.gz", images)
    write_idx(path / "train-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    if with_test:
        write_idx(path / "t10k-images-idx3-ubyte.gz", images[:10])
        write_idx(path / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    return path


def test_splits_are_disjoint_reproducible_and_sized(mnist10k_dir):
    cfg = DataConfig(dataset="mnist", data_dir=str(mnist10k_dir), val_size=1000, test_fraction=0.2)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert (len(a.train), len(a.val), len(a.test)) == (7000, 1000, 2000)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.test.images, b.test.images)
    assert any("no test split" in n for n in a.notes)
    # disjoint: no image of the test split is also in train (compare raw bytes)
    train_keys = {bytes(x.numpy().tobytes()) for x in a.train.images}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in a.test.images[:300])
    # the source is grouped by class; a seeded shuffle must give every class to every split
    assert len(set(a.test.labels.tolist())) == 10 and len(set(a.val.labels.tolist())) == 10
    c = load_dataset(DataConfig(dataset="mnist", data_dir=str(mnist10k_dir), val_size=1000, split_seed=1))
    assert not torch.equal(a.val.labels, c.val.labels)


def test_fashion_mnist_splits(fashion_mnist_dir):
    s = load_dataset(DataConfig(val_size=5000))
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    assert s.image_shape == (1, 28, 28) and len(s.classes) == 10
    assert "system" in s.source or "--data-dir" in s.source or "cache" in s.source or "VAELAB_DATA" in s.source


def test_limits(mnist10k_dir):
    s = load_dataset(DataConfig(dataset="mnist", data_dir=str(mnist10k_dir), val_size=100, max_train=300, max_eval=50))
    assert (len(s.train), len(s.val), len(s.test)) == (300, 50, 50)
    # mnist-10k is grouped by class: the subsets must still hold every class, not the first ones
    for split in (s.train, s.val, s.test):
        assert set(split.labels.tolist()) == set(range(10))
    assert torch.equal(load_dataset(DataConfig(dataset="mnist", data_dir=str(mnist10k_dir), val_size=100,
                                               max_train=300, max_eval=50)).train.images, s.train.images)


def test_spread_index():
    from vaelab.data import spread_index

    idx = spread_index(1000, 100, 0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and idx.max() > 900 and idx.min() < 100
    assert torch.equal(idx, spread_index(1000, 100, 0)) and not torch.equal(idx, spread_index(1000, 100, 1))
    assert torch.equal(spread_index(5, 10, 0), torch.arange(5))


def test_val_size_too_large(mnist10k_dir):
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(mnist10k_dir), val_size=20000))


def test_digits_padded_and_resized():
    padded = load_dataset(DataConfig(dataset="digits", image_size=28, resize="pad", val_size=100))
    resized = load_dataset(DataConfig(dataset="digits", image_size=28, resize="resize", val_size=100))
    native = load_dataset(DataConfig(dataset="digits", val_size=100))
    assert padded.image_shape == resized.image_shape == (1, 28, 28)
    assert native.image_shape == (1, 8, 8)
    assert len(native.train) + len(native.val) + len(native.test) == 1797
    # padding keeps the 8x8 digit exactly, in the centre, with a zero border
    assert torch.equal(padded.train.images[:, :, 10:18, 10:18], native.train.images)
    assert padded.train.images[:, :, :10].max() == 0
    # resizing spreads the digit over the whole canvas
    assert resized.train.images[:, :, :10].max() > 0
    assert native.train.images.max() == 255


def test_to_size_crops_when_smaller():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(to_size(x, 2, "pad")[0, 0], torch.tensor([[5, 6], [9, 10]], dtype=torch.uint8))


def test_binarization_modes():
    images = torch.full((50, 1, 4, 4), 128, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    e1 = next(batches(images, 50, generator=g, dynamic=True))
    e2 = next(batches(images, 50, generator=g, dynamic=True))
    assert set(e1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(e1, e2)  # dynamic: resampled at every use
    static, dynamic = train_view(ImageSet(images, torch.zeros(50, dtype=torch.long)), "static", 7)
    assert not dynamic and set(static.images.unique().tolist()) == {0, 255}
    s1 = next(batches(static.images, 50))
    s2 = next(batches(static.images, 50))
    assert torch.equal(s1, s2)  # static: the same binary images every time
    grey = next(batches(images, 50))
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255))  # none: grey values


def test_eval_view_is_fixed_and_differs_per_split():
    split = ImageSet(torch.full((20, 1, 8, 8), 100, dtype=torch.uint8), torch.zeros(20, dtype=torch.long))
    a = eval_view(split, "test", "dynamic", 1234)
    b = eval_view(split, "test", "dynamic", 1234)
    c = eval_view(split, "val", "dynamic", 1234)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert eval_view(split, "test", "none", 1234) is split


def test_batches_cover_each_image_once():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    seen = torch.cat(list(batches(images, 3, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert sorted((seen.flatten() * 255).round().long().tolist()) == list(range(10))
    assert [len(b) for b in batches(images, 3)] == [3, 3, 3, 1]


def test_search_order(tmp_path, monkeypatch):
    user = _mnist_dir(tmp_path / "user", value=1)
    env_root = tmp_path / "env"
    _mnist_dir(env_root / "mnist", value=2)
    cache = tmp_path / "xdg"
    _mnist_dir(cache / "vaelab" / "datasets" / "mnist", value=3)
    system = tmp_path / "system"
    _mnist_dir(system / "mnist", value=4)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", system)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))

    def first_pixel(data_dir):
        return int(load_raw("mnist", data_dir=data_dir, download=False).train_images[0, 0, 0, 0])

    monkeypatch.setenv("VAELAB_DATA", str(env_root))
    assert first_pixel(str(user)) == 1
    assert first_pixel(None) == 2
    monkeypatch.delenv("VAELAB_DATA")
    assert first_pixel(None) == 3
    import shutil

    shutil.rmtree(cache / "vaelab")
    assert first_pixel(None) == 4
    shutil.rmtree(system / "mnist")
    with pytest.raises(DatasetNotFoundError, match="not found"):
        first_pixel(None)


def test_partial_copy_does_not_shadow_a_complete_one(tmp_path, monkeypatch):
    # a cache holding only the training files (an interrupted download) must not hide the
    # complete system copy, nor silently carve a test split out of the training images
    cache, system = tmp_path / "xdg", tmp_path / "system"
    _mnist_dir(cache / "vaelab" / "datasets" / "mnist", value=3, with_test=False)
    _mnist_dir(system / "mnist", value=4)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", system)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    raw = load_raw("mnist", download=False)
    assert int(raw.train_images[0, 0, 0, 0]) == 4 and raw.test_images is not None
    # the user's own --data-dir may hold the training files alone (like mnist-10k): test is carved
    own = _mnist_dir(tmp_path / "own", value=5, with_test=False)
    raw = load_raw("mnist", data_dir=str(own), download=False)
    assert int(raw.train_images[0, 0, 0, 0]) == 5 and raw.test_images is None


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_raw("mnist", data_dir=str(tmp_path / "nope"), download=False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_raw("cifar-100")


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_folder_grayscale_rgb_labels_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        _save(tmp_path / "imgs" / "cats" / f"{i}.png", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
        _save(tmp_path / "imgs" / "dogs" / f"{i}.jpg", rng.integers(0, 256, (20, 20), dtype=np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    cfg = DataConfig(dataset=f"folder:{tmp_path / 'imgs'}", image_size=16, val_size=2, test_fraction=0.2)
    s = load_dataset(cfg)
    assert s.image_shape == (3, 16, 16)  # a mix of grey and colour becomes RGB
    assert len(s.train) + len(s.val) + len(s.test) == 12
    assert s.classes == ("cats", "dogs")
    labels = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    grey = load_dataset(DataConfig(dataset=f"folder:{tmp_path / 'imgs' / 'dogs'}", val_size=1))
    assert grey.image_shape == (1, 20, 20)  # native size when all images agree
    forced = load_dataset(DataConfig(dataset=f"folder:{tmp_path / 'imgs'}", image_size=8, channels=1, val_size=1))
    assert forced.image_shape == (1, 8, 8)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_raw(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="does not exist"):
        load_raw(f"folder:{tmp_path / 'nope'}")
    _save(tmp_path / "mixed" / "a.png", np.zeros((10, 10), np.uint8))
    _save(tmp_path / "mixed" / "b.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError, match="different sizes.*data.image_size"):
        load_raw(f"folder:{tmp_path / 'mixed'}")
    _save(tmp_path / "broken" / "good.png", np.zeros((10, 10), np.uint8))
    (tmp_path / "broken" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        load_raw(f"folder:{tmp_path / 'broken'}")


def test_folder_16bit_alpha_exif_and_root_class(tmp_path):
    # 16-bit grey PNG: rescaled to 8 bits, not clipped to 255
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = load_raw(f"folder:{tmp_path}").train_images[0, 0]
    assert deep.dtype == torch.uint8 and int(deep.max()) == 255 and int(deep[0, 0]) == 0 and int(deep[0, 1]) == 4
    assert len(set(deep.flatten().tolist())) > 60  # a ramp, not a wall of 255
    # transparency is composited over black, not dropped (which would show the hidden colour)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:4, :, 3] = 255  # ... but visible only in the top half
    _save(tmp_path / "alpha" / "a.png", rgba)
    img = load_raw(f"folder:{tmp_path / 'alpha'}").train_images[0]
    assert img.shape == (3, 8, 8) and int(img[0, :4].min()) == 255 and int(img[0, 4:].max()) == 0
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 4x8 file is shown 8x4
    tall = np.zeros((4, 8), np.uint8)
    tall[:, 0] = 255  # left column bright -> top row after the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "exif").mkdir()
    Image.fromarray(tall).save(tmp_path / "exif" / "r.jpg", exif=exif, quality=100)
    turned = load_raw(f"folder:{tmp_path / 'exif'}").train_images[0, 0]
    assert turned.shape == (8, 4) and turned[0].float().mean() > 200 and turned[-1].float().mean() < 50
    # images beside class sub-folders form a class of their own
    _save(tmp_path / "mix" / "cats" / "c.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "mix" / "loose.png", np.zeros((8, 8), np.uint8))
    raw = load_raw(f"folder:{tmp_path / 'mix'}")
    assert raw.classes == ("cats", ".") and sorted(raw.train_labels.tolist()) == [0, 1]


def test_folder_path_relative_to_data_dir_and_empty_path(tmp_path):
    _save(tmp_path / "pics" / "a.png", np.zeros((8, 8), np.uint8))
    raw = load_raw("folder:pics", data_dir=str(tmp_path))
    assert len(raw.train_images) == 1 and str(tmp_path / "pics") in raw.source
    with pytest.raises(DataError, match="folder: needs a path"):
        load_raw("folder:")


def test_default_val_size_is_5000_or_a_tenth():
    from vaelab.data.sources import RawData
    from vaelab.data.splits import make_splits

    def sizes(n):
        raw = RawData(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                      torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.zeros(10, dtype=torch.long), "test")
        s = make_splits(raw, DataConfig(), "x")
        return len(s.train), len(s.val)

    assert sizes(60_000) == (55_000, 5_000)  # Fashion-MNIST: the usual 55k / 5k
    assert sizes(20_000) == (18_000, 2_000)
    assert sizes(35) == (32, 3)


def test_mnist_files_given_as_fashion_mnist_get_a_note(mnist10k_dir, fashion_mnist_dir):
    assert any("look like mnist" in n for n in load_raw("fashion-mnist", data_dir=str(mnist10k_dir)).notes)
    assert load_raw("mnist", data_dir=str(mnist10k_dir)).notes == ()
    assert load_raw("fashion-mnist", data_dir=str(fashion_mnist_dir)).notes == ()
