"""Datasets: loading (IDX, digits, image folders), splits, binarization, batches."""

from vaelab.data.idx import read_idx, read_idx_header, write_idx
from vaelab.data.sources import BUILTIN, IDX_DATASETS, RawData, DatasetDescription, describe, load_raw
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

__all__ = [
    "BUILTIN", "IDX_DATASETS", "SPLITS", "DatasetDescription", "DatasetSplits", "ImageSet", "RawData",
    "batches", "binarize_once", "describe", "eval_view", "load_dataset", "load_raw", "make_splits",
    "read_idx", "read_idx_header", "spread_index", "to_float", "train_view", "write_idx",
]
