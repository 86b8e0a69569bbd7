"""Where images come from: IDX datasets, scikit-learn's digits, image folders (the other named datasets:
`vaelab.data.named`, which builds on the search path here).

Each loader returns raw uint8 tensors (N, C, H, W) for a train split and, when
the dataset has one, a test split. Resizing, splitting and binarization happen
later (`vaelab.data.splits`), the same way for every source.

IDX datasets (fashion-mnist, mnist, kmnist) are looked for, in this order:
  1. the directory given by the user (`--data-dir` / `data.data_dir`),
  2. `$VAELAB_DATA/<name>/`, then `$VAELAB_DATA/` itself,
  3. the user cache, `$XDG_CACHE_HOME/vaelab/datasets/<name>/` (~/.cache/...),
  4. `/usr/share/datasets/<name>/` (Debian's `dataset-fashion-mnist`).
A directory counts when it holds all four files (gzipped or not); the user's
own `--data-dir` also counts with the training files alone (a test split is
then carved out, as for ../shared/data/mnist-10k), so a half-filled cache never
hides a complete copy further down the path. A `--data-dir` that does not
exist is an error. If no directory counts and downloads are allowed, the
official files are downloaded into the cache and their SHA-256 verified before
use (files already there and verified are kept, so an interrupted download
resumes). The built-in datasets' files, checksums and mirrors are listed in
`vaelab.data.catalog`.

Image folders are decoded with PIL once: the arrays are kept in
`$XDG_CACHE_HOME/vaelab/folders/` and read back while the files and the
settings stay the same (`vaelab.data.cache`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vaelab.errors import DataError, DatasetNotFoundError, DownloadError
from vaelab.data import cache as folder_cache
from vaelab.data import download as dl
from vaelab.data.catalog import BUILTIN, IDX_DATASETS, NAMED, IdxDataset  # re-exported: their historic home
from vaelab.data.idx import read_idx


@dataclass(frozen=True)
class RawData:
    """Images as loaded, before resizing and splitting."""

    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    source: str  # where the files were found, for humans
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # things the user should know (logged by training)


SYSTEM_DATA_DIR = Path("/usr/share/datasets")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# decoders tried on a folder's files, whatever their name says (PIL would otherwise try every format
# it knows, EPS through Ghostscript included); JPEG also opens cameras' multi-picture (MPO) files
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
# largest image read (pixels): PIL allocates the whole image before decoding, so a 100-byte file
# whose header claims 9000 x 9000 pixels would cost 324 MB (RGBA) before failing
MAX_IMAGE_PIXELS = 1 << 25
# what PIL's decoders raise on damaged files, beside UnidentifiedImageError and DecompressionBombError
_IMAGE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error)


# --------------------------------------------------------------------------- locating IDX files


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab" / "datasets"


def search_path(name: str, data_dir: str | None) -> list[tuple[Path, str]]:
    """Candidate directories for dataset `name`, in search order, with where each came from."""
    found: list[tuple[Path, str]] = []
    if data_dir:
        root = Path(data_dir).expanduser()
        found += [(root, "--data-dir"), (root / name, "--data-dir")]
    env = os.environ.get("VAELAB_DATA")
    if env:
        found += [(Path(env) / name, "VAELAB_DATA"), (Path(env), "VAELAB_DATA")]
    found.append((cache_root() / name, "cache"))
    found.append((SYSTEM_DATA_DIR / name, "system"))
    return found


def _file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def check_data_dir(data_dir: str | None) -> None:
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"data directory {data_dir} does not exist; check --data-dir / data.data_dir")


def find_idx_files(spec: IdxDataset, data_dir: str | None) -> tuple[dict[str, Path], str] | None:
    """The first directory on the search path that holds the dataset (see the module docstring)."""
    check_data_dir(data_dir)
    for directory, origin in search_path(spec.name, data_dir):
        files = {role: _file(directory, stem) for role, stem in spec.files.items()}
        complete = all(files.values())
        if complete or (origin == "--data-dir" and files["train_images"] and files["train_labels"]):
            return {r: p for r, p in files.items() if p is not None}, f"{directory} ({origin})"
    return None


def download_idx(spec: IdxDataset, log: Callable[[str], None] | None = None) -> Path:
    """Download the four official files into the cache; returns the directory."""
    target = cache_root() / spec.name
    mirrors = spec.mirrors
    override = os.environ.get("VAELAB_MIRROR")
    if override:
        mirrors = (override.rstrip("/") + f"/{spec.name}/",)
    for role, stem in spec.files.items():
        dest = target / f"{stem}.gz"
        if dest.is_file() and dl.sha256_file(dest) == spec.sha256[role]:
            continue
        dl.download_first([mirror + f"{stem}.gz" for mirror in mirrors], dest, spec.sha256[role], log=log)
    return target


def locate_idx(spec: IdxDataset, data_dir: str | None, download: bool,
               log: Callable[[str], None] | None = None) -> tuple[dict[str, Path], str]:
    found = find_idx_files(spec, data_dir)
    if found:
        return found
    searched = ", ".join(dict.fromkeys(str(d) for d, _ in search_path(spec.name, data_dir)))
    if not download or dl.offline():
        why = "downloads are off (VAELAB_OFFLINE=1)" if dl.offline() else "downloads are off (data.download=false)"
        raise DatasetNotFoundError(
            f"{spec.name} not found (searched {searched}) and {why}; download its four IDX files "
            f"({', '.join(f'{stem}.gz' for stem in spec.files.values())}) from {spec.mirrors[0]} by hand and put "
            f"them in {cache_root() / spec.name} (or in a directory you pass as --data-dir)"
        )
    try:
        download_idx(spec, log=log)
    except DownloadError as exc:
        raise DatasetNotFoundError(
            f"{spec.name} not found (searched {searched}) and the download failed: {exc}"
        ) from None
    found = find_idx_files(spec, None)
    assert found is not None
    return found


def _load_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4:  # (N, H, W, C) as in some RGB IDX files
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{images_path} holds an array of shape {images.shape}; expected images (N, H, W)")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} values; vaelab reads 8-bit (ubyte) images")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds {len(labels)} labels; "
            "the files belong to different datasets or one is damaged"
        )
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(name: str, data_dir: str | None, download: bool,
                     log: Callable[[str], None] | None = None) -> RawData:
    spec = IDX_DATASETS[name]
    files, where = locate_idx(spec, data_dir, download, log=log)
    train_x, train_y = _load_pair(files["train_images"], files["train_labels"])
    test_x = test_y = None
    if "test_images" in files and "test_labels" in files:
        test_x, test_y = _load_pair(files["test_images"], files["test_labels"])
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(f"test images are {tuple(test_x.shape[1:])} but training images {tuple(train_x.shape[1:])}")
    return RawData(train_x, train_y, test_x, test_y, source=where, classes=spec.classes,
                   notes=_content_check(name, train_x))


# mean grey level (0..255) of the training images: MNIST digits are mostly black background
_TYPICAL_MEAN = {"mnist": 33.3, "fashion-mnist": 72.9}


def _content_check(name: str, images: torch.Tensor) -> tuple[str, ...]:
    """A note when the files look like the other MNIST-like dataset (both have the same file names)."""
    if name not in _TYPICAL_MEAN or images.shape[1:] != (1, 28, 28) or not len(images):
        return ()
    mean = float(images[:: max(1, len(images) // 2000)].float().mean())
    closest = min(_TYPICAL_MEAN, key=lambda k: abs(_TYPICAL_MEAN[k] - mean))
    if closest != name and abs(_TYPICAL_MEAN[closest] - mean) < 10:
        return (f"these {name} files look like {closest} (mean grey level {mean:.1f}, typical of {closest}: "
                f"{_TYPICAL_MEAN[closest]}, of {name}: {_TYPICAL_MEAN[name]}); if they are {closest}, "
                f"set data.dataset={closest}",)
    return ()


# --------------------------------------------------------------------------- digits


def load_digits() -> RawData:
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0..16 -> 0..255)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return RawData(
        torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)), None, None,
        source="scikit-learn (bundled)", classes=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- image folders


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def folder_root(path: str, data_dir: str | None = None) -> Path:
    """The directory of a `folder:PATH` dataset; a relative PATH is taken inside `data_dir` when given."""
    if not path.strip():
        raise DataError("folder: needs a path, e.g. folder:~/pictures/faces")
    root = Path(path).expanduser()
    if not root.is_absolute() and data_dir:
        root = Path(data_dir).expanduser() / root
    return root


_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# modes read as one grey channel when data.channels is unset (a palette image counts as colour)
_GREY_MODES = frozenset({"1", "L", "LA", "La", *_WIDE_GREY_MODES})


def _to_8bit(img):
    """A PIL image as 8-bit L / RGB(A): 16-bit and float grey rescaled, not clipped; EXIF rotation applied."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_GREY_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0  # floats in [0, 1] or in [0, 255]
        else:
            scale = 255.0 / 65535.0  # 16-bit PNG grey levels
        arr = np.nan_to_num(arr * scale, nan=0.0)
        return Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), mode="L")
    return img


def _flatten(img, mode: str):
    """Convert to L or RGB; transparent pixels are composited over black (the padding colour)."""
    from PIL import Image

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert(mode)


def pil_to_array(img) -> np.ndarray:
    """A PIL image as uint8 (H, W) grey or (H, W, 3) RGB, converted as folder images are (see load_folder)."""
    mode = "L" if img.mode in _GREY_MODES else "RGB"  # decided on the image as given, as for folders
    return np.asarray(_flatten(_to_8bit(img), mode), dtype=np.uint8)


def _unreadable(p: Path, exc: Exception) -> DataError:
    return DataError(f"cannot read image {p}: {exc}; remove or replace the file")


def _read_headers(files: list[Path]) -> tuple[set[str], set[tuple[int, int]]]:
    """The colour modes and (width, height) sizes (after EXIF rotation) of `files`, from their headers only."""
    from PIL import Image, UnidentifiedImageError

    modes, sizes = set(), set()
    for p in files:
        try:
            with Image.open(p, formats=IMAGE_FORMATS) as img:
                modes.add(img.mode)
                w, h = img.size
                if not 0 < w * h <= MAX_IMAGE_PIXELS:
                    raise ValueError(f"its header claims {w} x {h} pixels (vaelab reads 1 to "
                                     f"{MAX_IMAGE_PIXELS:,} pixels; scale large images down first)")
                orientation = img.getexif().get(0x0112, 1)
                sizes.add((h, w) if orientation in (5, 6, 7, 8) else (w, h))
        except (UnidentifiedImageError, Image.DecompressionBombError, *_IMAGE_ERRORS) as exc:
            raise _unreadable(p, exc) from None
    return modes, sizes


def _decode(p: Path, mode: str, image_size: int | None, resize: str) -> np.ndarray:
    """The image at `p` as a uint8 array (H, W) or (H, W, C), flattened to `mode` and resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(p, formats=IMAGE_FORMATS)
        img.load()
        img = _flatten(_to_8bit(img), mode)
        if image_size is not None:
            img = _square(img, resize).resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, *_IMAGE_ERRORS) as exc:
        raise _unreadable(p, exc) from None


def read_images(files: Sequence[Path], image_size: int, channels: int, resize: str = "resize") -> torch.Tensor:
    """The image files as uint8 (N, C, H, W): each read as a folder's images are (8-bit grey or RGB, EXIF
    orientation applied, transparency over black), cropped or padded to a square and resized to image_size.
    DataError (naming the file) for one that is not a readable image."""
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for p in files:
        arr = _decode(Path(p), mode, image_size, resize)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    if not arrays:
        raise DataError("no image files given")
    return torch.from_numpy(np.stack(arrays))


def _decode_folder(root: Path, files: list[Path], image_size: int | None, channels: int | None,
                   resize: str) -> folder_cache.DecodedFolder:
    """Decode every file (headers first: a bad file or mixed sizes fail before any pixel is decoded)."""
    modes, sizes = _read_headers(files)
    if channels is None:
        channels = 1 if modes <= _GREY_MODES else 3
    if image_size is None and len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise DataError(
            f"images in {root} have different sizes ({a[0]}x{a[1]}, {b[0]}x{b[1]}, ...); "
            "set data.image_size to resize them all"
        )
    mode = "L" if channels == 1 else "RGB"
    parts = [p.relative_to(root).parts for p in files]
    subdirs = sorted({q[0] for q in parts if len(q) > 1})
    class_index = {name: i for i, name in enumerate(subdirs)}
    classes = tuple(subdirs) + ((".",) if subdirs and any(len(q) == 1 for q in parts) else ())
    arrays, labels = [], []
    for p, q in zip(files, parts):
        arr = _decode(p, mode, image_size, resize)
        if arrays and arr.shape[:2] != arrays[0].shape[1:]:  # a size the headers did not show (late EXIF)
            raise DataError(
                f"images in {root} have different sizes ({files[0].name}: {arrays[0].shape[1]}x{arrays[0].shape[2]}, "
                f"{p.name}: {arr.shape[0]}x{arr.shape[1]}); set data.image_size to resize them all"
            )
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        labels.append(class_index[q[0]] if len(q) > 1 else len(subdirs))
    return folder_cache.DecodedFolder(np.stack(arrays), np.asarray(labels, dtype=np.int64), classes)


def folder_cache_dir() -> Path:
    """Where decoded folders are kept: beside the downloaded datasets, in vaelab's cache directory."""
    return cache_root().parent / "folders"


def load_folder(path: str, image_size: int | None, channels: int | None, resize: str,
                data_dir: str | None = None, *, cache: bool = True) -> RawData:
    """Every PNG/JPEG/BMP/WebP below `path`; sub-folder names become class labels.

    Images are read as 8-bit grey or RGB: 16-bit grey is rescaled to 0..255,
    EXIF orientation is applied, transparency is composited over black.
    Non-square images are centre-cropped (resize="resize") or zero-padded
    (resize="pad") to a square before resizing to `image_size`. Images lying
    directly in `path` beside class sub-folders get a class of their own (".").

    With `cache` (and VAELAB_FOLDER_CACHE not 0), the decoded arrays are kept
    in `folder_cache_dir()` and read back while the files and the settings
    stay the same (`vaelab.data.cache`): a second run decodes nothing.
    """
    import PIL

    root = folder_root(path, data_dir)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory; check folder:PATH")
    files = list_images(root)
    if not files:
        raise DataError(f"image folder {root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    key = None
    if cache and folder_cache.enabled():
        # everything beside the files that changes the arrays (the decoding code itself: cache.FORMAT)
        settings = dict(image_size=image_size, channels=channels, resize=resize, formats=list(IMAGE_FORMATS),
                        max_pixels=MAX_IMAGE_PIXELS, pillow=PIL.__version__)
        key = folder_cache.folder_key(root, files, settings)
    decoded = folder_cache.load(folder_cache_dir(), key) if key else None
    if decoded is None:
        decoded = _decode_folder(root, files, image_size, channels, resize)
        if key:
            folder_cache.store(folder_cache_dir(), key, decoded)
    return RawData(torch.from_numpy(decoded.images), torch.from_numpy(decoded.labels), None, None,
                   source=f"{root} ({len(files)} files)", classes=decoded.classes)


def _square(img, resize: str):
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = min(w, h) if resize == "resize" else max(w, h)
    if resize == "resize":
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    canvas = Image.new(img.mode, (side, side))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


# --------------------------------------------------------------------------- entry point


def load_raw(dataset: str, *, data_dir: str | None = None, download: bool = True,
             image_size: int | None = None, channels: int | None = None, resize: str = "resize",
             log: Callable[[str], None] | None = None, test_only: bool = False) -> RawData:
    """Load dataset `dataset` (a built-in name or folder:PATH) as raw uint8 tensors.

    `test_only` (for scoring a dataset's test images, e.g. as an unseen dataset) lets a loader skip decoding
    the training images where that is slow (celeba): its training split is then empty."""
    if dataset.startswith("folder:"):
        return load_folder(dataset[len("folder:"):], image_size, channels, resize, data_dir=data_dir)
    if dataset == "digits":
        return load_digits()
    if dataset in IDX_DATASETS:
        return load_idx_dataset(dataset, data_dir, download, log=log)
    if dataset in NAMED:
        from vaelab.data.named import load_named  # named builds on this module

        return load_named(dataset, data_dir, download, image_size, test_only=test_only, log=log)
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(BUILTIN)} or folder:PATH")
