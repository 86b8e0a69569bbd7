"""Datasets: loading (IDX, the standard datasets' own formats, digits, image folders, users' own images), splits,
binarization, batches."""

from vaelab.data.catalog import BUILTIN, IDX_DATASETS, NAMED
from vaelab.data.idx import read_idx, read_idx_header, write_idx
from vaelab.data.inventory import DatasetDescription, describe
from vaelab.data.named import recommended
from vaelab.data.sources import RawData, load_raw
from vaelab.data.splits import (
    SPLITS,
    DatasetSplits,
    ImageSet,
    batches,
    binarize_once,
    eval_view,
    load_dataset,
    make_splits,
    spread_index,
    to_float,
    train_view,
)
from vaelab.data.user import as_uint8_images, splits_from_images

__all__ = [
    "BUILTIN", "IDX_DATASETS", "NAMED", "SPLITS", "DatasetDescription", "DatasetSplits", "ImageSet", "RawData",
    "as_uint8_images", "batches", "binarize_once", "describe", "eval_view", "load_dataset", "load_raw",
    "make_splits", "read_idx", "read_idx_header", "recommended", "splits_from_images", "spread_index", "to_float",
    "train_view", "write_idx",
]
