"""Users' own images, from Python: arrays, tensors and torch Datasets as vaelab's uint8 (N, C, H, W).

`splits_from_images` gives the `DatasetSplits` the built-in datasets get: the
images become a `RawData` without a test split and go through `make_splits`,
so the test and validation images are carved out, resized and converted by
the same rules and seeds as for digits or an image folder.
`as_uint8_images` is the conversion alone, for the APIs that score images.

Accepted:
- a numpy array or torch tensor of uint8 (0..255), bool (True = 255) or
  floats in [0, 1], shaped (N, H, W), (N, H, W, C) or (N, C, H, W) with
  C = 1 (grey) or 3 (RGB). Where both 4-D layouts fit (images 1 or 3 pixels
  wide), numpy arrays are read as (N, H, W, C), the convention of PIL and
  matplotlib, and torch tensors as (N, C, H, W), torchvision's;
- a torch `Dataset` (or a list, or any sequence) whose items are images or
  (image, label) pairs; an image is a PIL image, or an array or tensor as
  above without the N axis. PIL images are converted as folder images are
  (16-bit grey rescaled, EXIF rotation applied, transparency over black);
  grey images beside colour ones become RGB, as in a mixed folder.
Float images are quantized to 8 bits, round(255 x): vaelab keeps every image
as uint8 and converts batches to floats on the fly (`to_float`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.errors import DataError
from vaelab.data.sources import RawData, pil_to_array
from vaelab.data.splits import DatasetSplits, make_splits

_LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 (grey) or 3 (RGB)"
_ONE_LAYOUT = "(H, W), (H, W, C) or (C, H, W) with C = 1 (grey) or 3 (RGB)"


# --------------------------------------------------------------------------- arrays and tensors


def _as_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """`x` as a torch tensor of an accepted dtype (uint8, bool, float); other dtypes are refused by name."""
    if isinstance(x, np.ndarray):
        if not (x.dtype == np.uint8 or x.dtype == np.bool_ or np.issubdtype(x.dtype, np.floating)):
            raise _dtype_error(what, str(x.dtype))
        if x.dtype == np.float16 or x.dtype.itemsize > 8:  # half and long double: not torch-friendly
            x = x.astype(np.float64)
        x = np.ascontiguousarray(x)  # from_numpy refuses negative strides (x[:, ::-1])
        # a read-only array (np.asarray of a PIL image, a memory map) would give a tensor torch warns about
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    if not (x.dtype in (torch.uint8, torch.bool) or x.dtype.is_floating_point):
        raise _dtype_error(what, str(x.dtype).removeprefix("torch."))
    return x


def _dtype_error(what: str, dtype: str) -> DataError:
    # integers other than uint8 are refused rather than guessed at: 0..1 masks and 0..255 grey levels look alike
    return DataError(f"{what}: {dtype} values; give uint8 (0..255) or floats in [0, 1] "
                     f"(integers 0..255: x.astype(np.uint8) or x.to(torch.uint8))")


def _to_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    """Values to uint8: bool to {0, 255}, floats in [0, 1] to round(255 x)."""
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:
        return x.to(torch.uint8) * 255
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what}: NaN or infinite values; replace them before passing the images")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{what}: float values must lie in [0, 1], these range over [{lo:g}, {hi:g}]; "
                        f"divide 0..255 values by 255, or pass uint8")
    return x.mul(255).round_().to(torch.uint8)


def _channels_last(shape: tuple[int, ...], tie: bool, what: str, shown: tuple[int, ...], expected: str) -> bool:
    """Whether a 4-D batch is (N, H, W, C); `tie` decides when both layouts fit (module docstring)."""
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and last:
        return tie
    if first or last:
        return last
    hint = "; drop the alpha channel of RGBA images first" if 4 in (shape[1], shape[3]) else ""
    raise DataError(f"{what}: shape {shown} has no axis of 1 or 3 channels; expected {expected}{hint}")


def _batch_to_nchw(x: np.ndarray | torch.Tensor, what: str, single: bool = False) -> torch.Tensor:
    """A batch of images (array or tensor) as uint8 (N, C, H, W), checked. `single`: `x` is one image with
    a batch axis added, and messages show its own shape."""
    tie = isinstance(x, np.ndarray)  # numpy: (N, H, W, C) like PIL; torch: (N, C, H, W) like torchvision
    t = _as_tensor(x, what)
    shape = tuple(t.shape)
    shown, expected = (shape[1:], _ONE_LAYOUT) if single else (shape, _LAYOUTS)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4:
        if _channels_last(shape, tie, what, shown, expected):
            t = t.permute(0, 3, 1, 2)
    else:
        one = "; for one image, add a leading axis: x[None]" if t.dim() == 2 and not single else ""
        raise DataError(f"{what}: shape {shown}; expected {expected}{one}")
    if not t.shape[0]:
        raise DataError(f"{what}: no images (shape {shown})")
    if not t.shape[2] or not t.shape[3]:
        raise DataError(f"{what}: shape {shown} holds images of zero width or height")
    return _to_uint8(t, what).contiguous()


# --------------------------------------------------------------------------- datasets of items


def _items(data: Any, what: str) -> Iterator[Any]:
    """The items of a map-style dataset or sequence (indices 0..len-1) or of an iterable dataset."""
    if isinstance(data, torch.utils.data.IterableDataset):
        return iter(data)
    if isinstance(data, torch.utils.data.Dataset) and not hasattr(data, "__len__"):
        raise DataError(f"{what}: the {type(data).__name__} dataset has no __len__; vaelab reads its items "
                        "0..len-1 (or make it an IterableDataset)")
    if isinstance(data, (str, bytes, Mapping)) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise DataError(f"{what}: got a {type(data).__name__}; expected a uint8 array or tensor shaped "
                        f"{_LAYOUTS}, or a torch Dataset (or list) of images or (image, label) pairs")
    return (data[i] for i in range(len(data)))


def _item_image(image: Any, what: str) -> torch.Tensor:
    """One item's image as uint8 (C, H, W)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = pil_to_array(image)  # (H, W) or (H, W, 3)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise DataError(f"{what}: {type(image).__name__} is not an image; expected a PIL image, a numpy array "
                        f"or a torch tensor, or an (image, label) pair of them")
    if image.ndim not in (2, 3):
        raise DataError(f"{what}: shape {tuple(image.shape)}; expected one image {_ONE_LAYOUT}")
    return _batch_to_nchw(image[None], what, single=True)[0]


def _item_label(label: Any, what: str) -> int:
    if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
        raise DataError(f"{what}: label {label!r}; labels are class indices 0, 1, 2, ...")
    return int(label)


def _collect(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every item of `data` as uint8 (N, C, H, W), and its labels when the items are (image, label) pairs."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for i, item in enumerate(_items(data, what)):
        where = f"{what}, item {i}"
        pair = isinstance(item, (tuple, list))
        if pair and len(item) != 2:
            raise DataError(f"{where}: {type(item).__name__} of {len(item)} elements; expected an image or an "
                            "(image, label) pair")
        if i and pair != bool(labels):
            raise DataError(f"{where}: {'an' if pair else 'not an'} (image, label) pair, unlike item 0; "
                            "give every item a label or none")
        image = _item_image(item[0] if pair else item, where)
        if images and image.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{what}: images differ in size (item 0: {images[0].shape[1]}x{images[0].shape[2]}, "
                            f"item {i}: {image.shape[1]}x{image.shape[2]}); resize them to one size first")
        images.append(image)
        if pair:
            labels.append(_item_label(item[1], where))
    if not images:
        raise DataError(f"{what}: no images (the dataset is empty)")
    if len({x.shape[0] for x in images}) > 1:  # grey and colour mixed: grey becomes RGB, as in a folder
        images = [x.expand(3, -1, -1) for x in images]
    return torch.stack(images), (torch.tensor(labels, dtype=torch.int64) if labels else None)


# --------------------------------------------------------------------------- public API


def _images_and_labels(obj: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _batch_to_nchw(obj, what), None
    return _collect(obj, what)


def as_uint8_images(obj: Any, *, what: str = "images") -> torch.Tensor:
    """Images in any accepted form (see the module docstring) as a uint8 tensor (N, C, H, W).

    A tensor keeps its device; labels of (image, label) items are dropped.
    `what` names the images in error messages (e.g. "the images to score").
    """
    return _images_and_labels(obj, what)[0]


def _labels(labels: Any, n: int, classes: tuple[str, ...]) -> torch.Tensor:
    if labels is None:
        return torch.zeros(n, dtype=torch.int64)
    try:
        t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DataError("labels must be integer class indices (0, 1, 2, ...); map class names to indices "
                        "and pass the names as classes=")
    t = t.cpu().to(torch.int64)
    if tuple(t.shape) != (n,):
        raise DataError(f"labels have shape {tuple(t.shape)}; expected one label per image, shape ({n},)")
    if n and (int(t.min()) < 0 or (classes and int(t.max()) >= len(classes))):
        top = f" and below {len(classes)} (the number of classes)" if classes else ""
        raise DataError(f"labels range over {int(t.min())}..{int(t.max())}; they must be 0 or more{top}")
    return t


def splits_from_images(images: Any, cfg: DataConfig, labels: Any = None, name: str = "user",
                       classes: Sequence[str] = ()) -> DatasetSplits:
    """Train / validation / test splits of the user's own images, as the built-in datasets get them.

    `images`: an array, tensor or torch Dataset (see the module docstring).
    `cfg`: the data section; its image_size, resize, channels, test_fraction,
    val_size, split_seed, max_train and max_eval apply (its dataset is ignored).
    `labels`: class indices, one per image (not with a dataset of (image, label)
    pairs, which carry theirs); none: every image gets class 0.
    `classes`: the class names, in index order.
    """
    what = f"the {name} images"
    x, item_labels = _images_and_labels(images, what)
    if labels is not None and item_labels is not None:
        raise DataError(f"{what} come with labels (image, label) and labels= was given too; give one of them")
    classes = tuple(str(c) for c in classes)
    y = _labels(labels if labels is not None else item_labels, len(x), classes)
    raw = RawData(x.cpu(), y, None, None, source=f"{type(images).__name__} from Python ({len(x)} images)",
                  classes=classes)
    return make_splits(raw, cfg, name)


__all__ = ["as_uint8_images", "splits_from_images"]
