"""Users' own images from Python (vaelab.data.user): arrays, tensors and torch Datasets become the same
splits the built-in datasets get, and wrong input gets one clear line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import DataConfig
from vaelab.data import as_uint8_images, load_dataset, splits_from_images, write_idx
from vaelab.errors import DataError

RNG = np.random.default_rng(0)
HWC = RNG.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)  # 6 x 5 RGB images: H and W differ from C
NCHW = torch.from_numpy(HWC).permute(0, 3, 1, 2)


class Images(torch.utils.data.Dataset):
    """A user's map-style dataset: items made by a function of the index."""

    def __init__(self, n, item):
        self.n, self.item = n, item

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item(i)


def _equal_splits(a, b) -> None:
    assert a.image_shape == b.image_shape
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).images, b.split(name).images), name
        assert torch.equal(a.split(name).labels, b.split(name).labels), name


def test_three_layouts_and_value_types_give_the_same_images():
    assert torch.equal(as_uint8_images(HWC), NCHW)  # numpy (N, H, W, C)
    assert torch.equal(as_uint8_images(HWC.transpose(0, 3, 1, 2)), NCHW)  # numpy (N, C, H, W)
    assert torch.equal(as_uint8_images(NCHW), NCHW)  # torch (N, C, H, W)
    assert torch.equal(as_uint8_images(torch.from_numpy(HWC)), NCHW)  # torch (N, H, W, C)
    grey = HWC[..., 0]
    assert torch.equal(as_uint8_images(grey), NCHW[:, :1])  # (N, H, W)
    assert torch.equal(as_uint8_images(torch.from_numpy(grey).double() / 255), NCHW[:, :1])  # floats in [0, 1]
    assert torch.equal(as_uint8_images(HWC[:, ::-1].astype(np.float32) / 255), NCHW.flip(2))  # strided
    assert as_uint8_images(np.ones((2, 3, 3), dtype=bool)).unique().tolist() == [255]
    assert as_uint8_images(HWC).dtype == torch.uint8 and as_uint8_images(HWC).is_contiguous()
    # both layouts fit (images 3 pixels wide): numpy follows PIL (channels last), torch torchvision
    tie = RNG.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    assert as_uint8_images(tie).shape == (2, 3, 3, 4) and as_uint8_images(torch.from_numpy(tie)).shape == (2, 3, 4, 3)
    assert torch.equal(as_uint8_images(tie), torch.from_numpy(tie).permute(0, 3, 1, 2))
    assert torch.equal(as_uint8_images(torch.from_numpy(tie)), torch.from_numpy(tie))


def test_splits_match_the_builtin_idx_path(tmp_path):
    """The same images as IDX training files (no test files: test is carved out, as for mnist-10k)."""
    images = RNG.integers(0, 256, (120, 8, 8), dtype=np.uint8)
    labels = RNG.integers(0, 10, 120).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    for extra in ({}, {"image_size": 6, "channels": 3, "max_train": 50, "max_eval": 5}):
        cfg = DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False, val_size=10, split_seed=3,
                         **extra)
        builtin = load_dataset(cfg)
        assert builtin.test is not None and len(builtin.test) > 0
        _equal_splits(splits_from_images(images, cfg, labels=labels.astype(np.int64)), builtin)
        _equal_splits(splits_from_images(torch.from_numpy(images), cfg, labels=labels.tolist()), builtin)
    user = splits_from_images(images, cfg, name="mine")
    assert user.name == "mine" and user.train.labels.unique().tolist() == [0] and user.classes == ()


def test_torch_dataset_of_pil_images_matches_the_folder_path(tmp_path):
    """PIL images converted as folder images are: grey 16-bit rescaled, alpha over black, grey + RGB = RGB."""
    pictures = [Image.fromarray(RNG.integers(0, 256, (7, 9), dtype=np.uint8)),  # the modes follow the dtypes:
                Image.fromarray(RNG.integers(0, 256, (7, 9, 4), dtype=np.uint8)),  # RGBA
                Image.fromarray(RNG.integers(0, 65536, (7, 9)).astype(np.uint16))]  # I;16
    assert [p.mode for p in pictures] == ["L", "RGBA", "I;16"]
    pictures += [Image.fromarray(RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)) for _ in range(17)]
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"{i:02d}.png")
    cfg = DataConfig(dataset=f"folder:{tmp_path}", val_size=2)
    folder = load_dataset(cfg)
    from_python = splits_from_images(Images(len(pictures), lambda i: Image.open(tmp_path / f"{i:02d}.png")), cfg)
    _equal_splits(from_python, folder)
    assert from_python.image_shape == (3, 7, 9)
    grey = splits_from_images([Image.open(tmp_path / "00.png")] * 10, DataConfig(val_size=1))
    assert grey.image_shape == (1, 7, 9)  # one channel when every image is grey


def test_dataset_of_tensor_label_pairs():
    floats = torch.rand(30, 1, 4, 4)  # what torchvision's ToTensor gives: float (C, H, W) in [0, 1]
    pairs = Images(30, lambda i: (floats[i], i % 3))
    s = splits_from_images(pairs, DataConfig(val_size=3, test_fraction=0.1), classes=("a", "b", "c"))
    assert s.classes == ("a", "b", "c") and s.image_shape == (1, 4, 4)
    assert len(s.train) + len(s.val) + len(s.test) == 30
    assert torch.equal(as_uint8_images(pairs), floats.mul(255).round().to(torch.uint8))
    # labels as 0-d tensors, numpy ints; uint8 (H, W, C) arrays; an IterableDataset
    arrays = [(HWC[i], torch.tensor(i % 2)) for i in range(20)] + [(HWC[i], np.int64(1)) for i in range(20, 40)]
    s = splits_from_images(arrays, DataConfig(val_size=2))
    assert s.image_shape == (3, 6, 5) and sorted(torch.cat([s.train.labels, s.val.labels, s.test.labels]).tolist()) \
        == [0] * 10 + [1] * 30

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(NCHW)

    assert torch.equal(as_uint8_images(Stream()), NCHW)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 300
    return message


ERRORS = [
    (HWC.astype(np.int64), {}, "int64 values; give uint8"),
    (torch.from_numpy(HWC).int(), {}, "int32 values; give uint8"),
    (HWC.astype(np.float32), {}, r"must lie in \[0, 1\], these range over \[0, 255\]"),
    (np.full((2, 4, 4), np.nan, dtype=np.float32), {}, "NaN"),
    (np.zeros((5, 4, 4, 4), dtype=np.uint8), {}, "no axis of 1 or 3 channels.*alpha"),
    (np.zeros((5, 4, 4, 5), dtype=np.uint8), {}, r"shape \(5, 4, 4, 5\) has no axis of 1 or 3 channels"),
    (np.zeros((4, 4), dtype=np.uint8), {}, "add a leading axis"),
    (np.zeros((1, 1, 1, 4, 4), dtype=np.uint8), {}, r"shape \(1, 1, 1, 4, 4\); expected \(N, H, W\)"),
    (np.zeros((0, 4, 4), dtype=np.uint8), {}, "no images"),
    (np.zeros((3, 0, 4), dtype=np.uint8), {}, "zero width or height"),
    ("pictures/", {}, "got a str; expected"),
    ({"image": HWC}, {}, "got a dict; expected"),
    ([1, 2, 3], {}, "item 0: int is not an image"),
    ([], {}, "no images"),
    ([HWC[0], HWC[0, :5]], {}, r"differ in size \(item 0: 6x5, item 1: 5x5\)"),
    ([(HWC[0], 1, "x")], {}, "item 0: tuple of 3 elements"),
    ([(HWC[0], 1), HWC[1]], {}, "item 1: not an .* pair, unlike item 0"),
    ([(HWC[0], -1)], {}, "label -1; labels are class indices"),
    ([(HWC[0], "cat")], {}, "label 'cat'"),
    ([np.zeros((2, 2, 2, 2), dtype=np.uint8)], {}, r"item 0: shape \(2, 2, 2, 2\); expected one image"),
    ([np.zeros((4, 4, 2), dtype=np.uint8)], {}, r"item 0: shape \(4, 4, 2\) has no axis"),
    ([(HWC[0], 1)] * 20, {"labels": [1] * 20}, "labels= was given too"),
    (HWC, {"labels": [0] * 39}, r"shape \(39,\); expected one label per image, shape \(40,\)"),
    (HWC, {"labels": np.zeros(40)}, "integer class indices"),
    (HWC, {"labels": ["cat"] * 40}, "integer class indices"),
    (HWC, {"labels": [2] * 40, "classes": ("a", "b")}, "below 2"),
    (HWC[:1], {}, "too few to carve out a test split"),
]


@pytest.mark.parametrize("images, kwargs, message", ERRORS, ids=[m[:30] for _, _, m in ERRORS])
def test_wrong_input_gets_one_clear_line(images, kwargs, message):
    with pytest.raises(DataError) as exc:
        splits_from_images(images, DataConfig(val_size=1), **kwargs)
    assert re.search(message, _one_line(exc)), str(exc.value)


def test_as_uint8_images_names_what_it_converts():
    class Unsized(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return HWC[i]

    with pytest.raises(DataError, match="the images to score: .*Unsized dataset has no __len__"):
        as_uint8_images(Unsized(), what="the images to score")
    with pytest.raises(DataError, match="^images: int64 values"):
        as_uint8_images(HWC.astype(np.int64))
