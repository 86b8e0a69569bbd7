"""From raw images to train / validation / test splits, binarized and batched.

Images stay uint8 (N, C, H, W) in memory; batches are converted to float in
[0, 1] on the fly, and binarized there when the config asks for it:

- `dynamic`: every time an image is used in training it is resampled as
  Bernoulli(pixel intensity) (Salakhutdinov & Murray 2008 protocol);
- `static`: the training images are binarized once, with `binarize_seed`;
- `none`: grey values in [0, 1] are used as they are.

Evaluation never resamples: when training binarizes (dynamic or static),
each evaluation split is binarized once with a fixed seed derived from
`binarize_seed`, the usual published protocol, so every number is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from vaelab.config import DataConfig
from vaelab.errors import ConfigError, DataError
from vaelab.data.named import settings_notes
from vaelab.data.sources import RawData, load_raw

SPLITS = ("train", "val", "test")
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ImageSet:
    """A split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet wants uint8 (N, C, H, W) images, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError("ImageSet: images and labels differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | slice) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: str
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def split(self, name: str) -> ImageSet:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


# --------------------------------------------------------------------------- image transforms


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to `channels` channels (grey = ITU-R 601 luma of RGB)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def to_size(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 (N, C, H, W) to (N, C, size, size): resampled (antialiased) or zero-padded/cropped."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if mode == "pad":
        out = torch.zeros((n, c, size, size), dtype=torch.uint8)
        # centre: pad where the image is smaller, crop where it is larger
        sh, sw = max(0, (h - size) // 2), max(0, (w - size) // 2)
        dh, dw = max(0, (size - h) // 2), max(0, (size - w) // 2)
        ch, cw = min(h, size), min(w, size)
        out[:, :, dh:dh + ch, dw:dw + cw] = images[:, :, sh:sh + ch, sw:sw + cw]
        return out
    chunks = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < max(h, w))
        chunks.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


# --------------------------------------------------------------------------- splitting


def _carve(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into k held-out and n-k kept indices (each sorted), reproducibly."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[k:].sort().values, perm[:k].sort().values


def spread_index(n: int, k: int, seed: int) -> torch.Tensor:
    """`min(n, k)` indices drawn at random from range(n) without replacement, reproducibly, sorted.

    Used wherever a few images stand for a whole split (data.max_train,
    data.max_eval, the autoencoder's code fit, the images in the final grids):
    files such as ../shared/data/mnist-10k are grouped by class, so "the first
    k" would be the first classes only.
    """
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def to_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """8-bit images (uint8, 0..255) as float32 in [0, 1], optionally moved to `device`: the one conversion
    every figure, score and reconstruction uses (float images pass through, only moved)."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return x if device is None else x.to(device)


DEFAULT_VAL_SIZE = 5000


def default_val_size(n_train: int) -> int:
    """data.val_size when unset: 5,000 (the usual for MNIST-like sets), at most 10% of the training images."""
    return min(DEFAULT_VAL_SIZE, n_train // 10)


def make_splits(raw: RawData, cfg: DataConfig, name: str) -> DatasetSplits:
    train_x, train_y = raw.train_images, raw.train_labels
    channels = cfg.channels or train_x.shape[1]
    notes = list(raw.notes) + settings_notes(name, cfg)
    if not len(train_x):
        raise DataError(f"{name} ({raw.source}) holds no training images")

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x, channels)
        return to_size(x, cfg.image_size, cfg.resize) if cfg.image_size else x

    train_x = prepare(train_x)
    if raw.test_images is not None:
        test = ImageSet(prepare(raw.test_images), raw.test_labels)
    else:
        n_test = max(1, round(len(train_x) * cfg.test_fraction))
        if n_test >= len(train_x):
            raise DataError(f"{name} has only {len(train_x)} images, too few to carve out a test split")
        keep, held = _carve(len(train_x), n_test, cfg.split_seed + 7919)
        test = ImageSet(train_x[held], train_y[held])
        train_x, train_y = train_x[keep], train_y[keep]
        notes.append(f"{name} has no test split: {n_test} images ({cfg.test_fraction:.0%}) were held out as test")
    val_size = cfg.val_size if cfg.val_size is not None else default_val_size(len(train_x))
    if val_size >= len(train_x):
        raise ConfigError(
            f"data.val_size={val_size} leaves no training images ({name} has {len(train_x)} for training); "
            "lower data.val_size"
        )
    keep, held = _carve(len(train_x), val_size, cfg.split_seed)
    train = ImageSet(train_x[keep], train_y[keep])
    val = ImageSet(train_x[held], train_y[held])
    if cfg.max_train is not None and cfg.max_train < len(train):
        train = train.subset(spread_index(len(train), cfg.max_train, cfg.split_seed + 1))
        notes.append(f"training on {cfg.max_train} of the training images only, drawn at random "
                     f"with data.split_seed (data.max_train)")
    if cfg.max_eval is not None:
        if cfg.max_eval < len(val) or cfg.max_eval < len(test):
            notes.append(f"validation and test limited to {cfg.max_eval} images each, drawn at random "
                         f"with data.split_seed (data.max_eval)")
        val = val.subset(spread_index(len(val), cfg.max_eval, cfg.split_seed + 2))
        test = test.subset(spread_index(len(test), cfg.max_eval, cfg.split_seed + 3))
    return DatasetSplits(name, train, val, test, raw.source, raw.classes, tuple(notes))


def load_dataset(cfg: DataConfig, log: Callable[[str], None] | None = None) -> DatasetSplits:
    """Load, resize and split the dataset a `DataConfig` names."""
    raw = load_raw(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size,
                   channels=cfg.channels, resize=cfg.resize, log=log)
    return make_splits(raw, cfg, cfg.dataset)


# --------------------------------------------------------------------------- binarization and batches


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Bernoulli-binarize uint8 images once: returns uint8 images in {0, 255}."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([
        (torch.bernoulli(chunk.float().div_(255.0), generator=gen) * 255).to(torch.uint8)
        for chunk in images.split(8192)
    ])


def eval_view(split: ImageSet, split_name: str, binarize: str, seed: int) -> ImageSet:
    """The fixed version of a split used for every evaluation (binarized once if training binarizes)."""
    if binarize == "none":
        return split
    return replace(split, images=binarize_once(split.images, seed + 1000 * _SPLIT_SEED_OFFSET[split_name]))


def train_view(split: ImageSet, binarize: str, seed: int) -> tuple[ImageSet, bool]:
    """The training images and whether batches must be resampled (dynamic binarization)."""
    if binarize == "static":
        return replace(split, images=binarize_once(split.images, seed)), False
    return split, binarize == "dynamic"


def batches(
    images: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    dynamic: bool = False,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    order: torch.Tensor | None = None,
    shift: int = 0,
    hflip: bool = False,
) -> Iterator[torch.Tensor]:
    """Float batches in [0, 1] of uint8 images; resampled as Bernoulli if `dynamic`.

    One `torch.randperm` per epoch and tensor indexing per batch: no per-image
    Python work. The order and the binarization both come from `generator`.
    `order` (indices into `images`) replaces the shuffle: the trainer passes the
    rest of an epoch's order when it resumes inside the epoch. `shift` and
    `hflip` augment each image (see `augment`) before it is binarized.
    """
    n = len(images) if order is None else len(order)
    if order is None and shuffle:
        order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        x = images[idx]
        if shift or hflip:
            x = augment(x, shift=shift, hflip=hflip, generator=generator)
        x = x.to(dtype=torch.float32).div_(255.0)
        if dynamic:  # sampled on the CPU with `generator`, so runs repeat exactly on any device
            x = torch.bernoulli(x, generator=generator)
        yield x.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def augment(images: torch.Tensor, *, shift: int = 0, hflip: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly translated and mirrored copies of a batch (N, C, H, W), vectorized, with `generator`.

    Each image moves by its own (dy, dx), uniform in [-shift, shift], with zeros (the background of
    Fashion-MNIST and MNIST) filling what moves in; with `hflip`, each image is mirrored left-right with
    probability 1/2. The draws come from `generator` on the CPU, so a seeded run repeats exactly.
    """
    n, _, h, w = images.shape
    out, dev = images, images.device  # on the device of the images (the device-resident path's) and generator
    if shift:
        offsets = torch.randint(-shift, shift + 1, (2, n), generator=generator, device=dev)
        padded = torch.nn.functional.pad(out, (shift, shift, shift, shift))
        rows = torch.arange(h, device=dev)[None, :] + shift - offsets[0][:, None]  # (N, H): source row of each
        cols = torch.arange(w, device=dev)[None, :] + shift - offsets[1][:, None]  # output row; then columns
        batch = torch.arange(n, device=dev)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()
