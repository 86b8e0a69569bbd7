"""CelebA's aligned faces: the usual 148-pixel centre crop, resized to 64x64 (or `data.image_size`), with Pillow.

The files are `img_align_celeba.zip` (or the folder `img_align_celeba/` it
unpacks to) and `list_eval_partition.txt` (one line per image: its file name and
0 train, 1 validation, 2 test). The training split is the official train and
validation images (182,637), the test split the official test images (19,962);
vaelab carves its own validation split from the training split as for every
dataset. No labels are read (the images get label 0).

Each 178x218 image is cropped to the centred 148x148 square (DCGAN, PyTorch-VAE and
most VAE papers on CelebA 64x64 do the same), then resized with Pillow's
antialiased bilinear filter. Decoding the 202,599 JPEG files takes minutes, so the
arrays are kept in the decoded-folder cache (`vaelab.data.cache`), keyed by the
files' sizes and modification times and the settings: the next run reads them back.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from vaelab.errors import DataError
from vaelab.data import cache as folder_cache
from vaelab.data.readers import Arrays, damaged
from vaelab.data.sources import MAX_IMAGE_PIXELS, folder_cache_dir

CROP = 148
DEFAULT_SIZE = 64
PARTITION = "list_eval_partition.txt"
_FORMAT = 1  # bump when the decoding changes: cached arrays of older code then miss
_SPLIT_NAMES = ("train", "valid", "test")


def read_partition(path: Path) -> list[tuple[str, int]]:
    """(file name, 0 | 1 | 2) for each line of list_eval_partition.txt."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, exc) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or "/" in parts[0] or "\\" in parts[0]:
            raise damaged(path, f"line {number} is {line.strip()[:60]!r}, expected 'NNNNNN.jpg 0|1|2'")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise damaged(path, "it lists no images")
    return entries


def _opener(directory: Path) -> tuple[Callable[[str], tuple[bytes, str]], list[Path], zipfile.ZipFile | None]:
    """A function giving an image's bytes (and where they are) by file name, the files the cache key covers,
    the open zip if any."""
    archive = directory / "img_align_celeba.zip"
    if archive.is_file():
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise damaged(archive, exc) from None
        members = {name.rsplit("/", 1)[-1]: name for name in zf.namelist() if not name.endswith("/")}

        def from_zip(name: str) -> tuple[bytes, str]:
            if name not in members:
                raise damaged(archive, f"the archive has no {name}, which {PARTITION} lists")
            try:
                return zf.read(members[name]), f"{archive}:{members[name]}"
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise damaged(f"{archive}:{members[name]}", exc) from None
        return from_zip, [archive], zf
    folder = directory / "img_align_celeba"

    def from_folder(name: str) -> tuple[bytes, str]:
        try:
            return (folder / name).read_bytes(), str(folder / name)
        except OSError as exc:
            raise DataError(f"cannot read {folder / name} ({exc.strerror or exc}), which {PARTITION} lists") from None
    return from_folder, [folder], None


def crop_and_resize(data: bytes, where: str, size: int) -> np.ndarray:
    """One image file's bytes as uint8 (3, size, size): the centred 148-pixel square, resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
            w, h = img.size
            if not 0 < w * h <= MAX_IMAGE_PIXELS:
                raise ValueError(f"its header claims {w} x {h} pixels")
            side = min(CROP, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.convert("RGB").crop((left, top, left + side, top + side))
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise damaged(where, exc) from None


def _decode(directory: Path, entries: list[tuple[str, int]], size: int,
            log: Callable[[str], None] | None) -> folder_cache.DecodedFolder:
    read, _, zf = _opener(directory)
    images = np.empty((len(entries), 3, size, size), np.uint8)
    try:
        for i, (name, _) in enumerate(entries):
            if log and i and i % 20_000 == 0:
                log(f"celeba: decoded {i:,} of {len(entries):,} images")
            images[i] = crop_and_resize(*read(name), size)
    finally:
        if zf is not None:
            zf.close()
    labels = np.array([part for _, part in entries], np.int64)
    return folder_cache.DecodedFolder(images, labels, _SPLIT_NAMES)


def read_celeba(directory: Path, image_size: int | None = None, *, test_only: bool = False,
                log: Callable[[str], None] | None = None) -> Arrays:
    """The training (official train + validation) and test images; with `test_only`, an empty training split."""
    import PIL

    size = image_size or DEFAULT_SIZE
    partition = directory / PARTITION
    entries = read_partition(partition)
    if test_only:
        entries = [e for e in entries if e[1] == 2]
    _, covered, zf = _opener(directory)
    if zf is not None:
        zf.close()
    files = [partition, *covered]
    if covered[0].is_dir():  # the unpacked folder: every image listed counts, not the folder's own mtime
        files = [partition] + [covered[0] / name for name, _ in entries]
    key = None
    if folder_cache.enabled():
        settings = dict(dataset="celeba", format=_FORMAT, crop=CROP, size=size, test_only=test_only,
                        pillow=PIL.__version__)
        key = folder_cache.folder_key(directory, files, settings)
    decoded = folder_cache.load(folder_cache_dir(), key) if key else None
    if decoded is None or len(decoded.labels) != len(entries):
        if log:
            log(f"celeba: decoding {len(entries):,} images (148-pixel centre crop, {size}x{size}); "
                "kept in the cache afterwards")
        decoded = _decode(directory, entries, size, log)
        if key:
            folder_cache.store(folder_cache_dir(), key, decoded)
    test = decoded.labels == 2
    train_x, test_x = decoded.images[~test], decoded.images[test]
    return train_x, np.zeros(len(train_x), np.int64), test_x, np.zeros(len(test_x), np.int64)
