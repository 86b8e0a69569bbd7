"""What `vaelab datasets` shows: for each dataset, found or not, where, and its sizes.

IDX datasets are described from their headers alone (nothing is decoded);
the other named datasets (cifar10, svhn, ...) by their files' presence and
their official sizes (nothing is decoded either); folders are read, without
the folder cache.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from vaelab.errors import DataError
from vaelab.data import download as dl
from vaelab.data.catalog import BUILTIN, IDX_DATASETS, NAMED
from vaelab.data.idx import read_idx_header
from vaelab.data.named import find_named, where_to_put
from vaelab.data.sources import find_idx_files, load_folder


@dataclass(frozen=True)
class DatasetDescription:
    name: str
    available: bool
    where: str
    train: int | None
    test: int | None
    image_shape: tuple[int, ...] | None
    note: str = ""


def describe(dataset: str, data_dir: str | None = None) -> DatasetDescription:
    """What `vaelab datasets` shows: found or not, where, sizes (from headers, cheaply)."""
    if dataset == "digits":
        return DatasetDescription("digits", True, "scikit-learn (bundled)", 1797, None, (1, 8, 8),
                                  "no test split: one is carved out (data.test_fraction)")
    if dataset.startswith("folder:"):
        try:
            # not cached: listing datasets should not write full-size copies of folders to the disk
            raw = load_folder(dataset[len("folder:"):], None, None, "resize", data_dir=data_dir, cache=False)
        except DataError as exc:
            return DatasetDescription(dataset, False, str(exc), None, None, None)
        return DatasetDescription(dataset, True, raw.source, len(raw.train_images), None,
                                  tuple(raw.train_images.shape[1:]), "no test split: one is carved out")
    if dataset in NAMED:
        return _describe_named(dataset, data_dir)
    if dataset not in IDX_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(BUILTIN)} or folder:PATH")
    spec = IDX_DATASETS[dataset]
    found = find_idx_files(spec, data_dir)
    if not found:
        how = "offline (VAELAB_OFFLINE=1)" if dl.offline() else f"downloadable from {spec.mirrors[0]}"
        return DatasetDescription(dataset, False, "not found", None, None, None, how)
    files, where = found
    _, train_shape = read_idx_header(files["train_images"])
    test = None
    if "test_images" in files:
        test = read_idx_header(files["test_images"])[1][0]
    note = "" if test is not None else "no test files: a test split is carved out (data.test_fraction)"
    if len(train_shape) == 4:  # (N, H, W, C)
        shape = (train_shape[3], train_shape[1], train_shape[2])
    else:
        shape = (1, *train_shape[1:])
    return DatasetDescription(dataset, True, where, train_shape[0], test, shape, note)


def _describe_named(dataset: str, data_dir: str | None) -> DatasetDescription:
    spec = NAMED[dataset]
    found = find_named(spec, data_dir)
    if not found:
        size = spec.download_size
        host = urllib.parse.urlsplit(spec.files[0].urls[0]).hostname
        how = (f"offline: {where_to_put(spec)}" if dl.offline() else
               f"downloaded on first use from {host}" + (f" ({size / 1e6:,.0f} MB)" if size else ""))
        return DatasetDescription(dataset, False, "not found", None, None, None, how)
    return DatasetDescription(dataset, True, found[1], spec.train, spec.test, spec.image_shape,
                              "official sizes (the files are read when used)")
