"""The standard datasets that are not IDX files: found, downloaded, verified and read like MNIST.

cifar10, svhn, celeba, omniglot, emnist, emnist-letters and binarized-mnist (their
files, checksums and URLs: `vaelab.data.catalog.NAMED`; their formats:
`vaelab.data.readers` and `vaelab.data.celeba`) are looked for in the same
directories as MNIST (`vaelab.data.sources.search_path`: --data-dir and
--data-dir/<folder>, $VAELAB_DATA/<folder> and $VAELAB_DATA, the cache
~/.cache/vaelab/datasets/<folder>/, /usr/share/datasets/<folder>/). A directory
counts when it holds every file of one of the dataset's forms (the download, or
its unpacked equivalent). If none does and downloads are allowed, the official
files are downloaded into the cache and verified (SHA-256, or the git blob id
where no SHA-256 is published) before use; a file that fails is not kept.
Offline, a missing dataset is one line naming its URLs and where to put them.
VAELAB_MIRROR=URL fetches every file from URL/<folder>/<file name> instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from vaelab.config import DataConfig
from vaelab.errors import ConfigError, DatasetNotFoundError, DownloadError
from vaelab.data import download as dl
from vaelab.data.catalog import NAMED, NamedDataset, RemoteFile
from vaelab.data.readers import READERS, find
from vaelab.data.sources import RawData, cache_root, check_data_dir, search_path

PRESETS = "configs/datasets"


def holds(spec: NamedDataset, directory: Path) -> bool:
    """Whether `directory` holds every file of one of the dataset's forms."""
    return any(all(find(directory, rel) is not None for rel in form) for form in spec.forms)


def find_named(spec: NamedDataset, data_dir: str | None) -> tuple[Path, str] | None:
    """The first directory on the search path that holds the dataset, and where it came from."""
    check_data_dir(data_dir)
    for directory, origin in search_path(spec.folder, data_dir):
        if holds(spec, directory):
            return directory, f"{directory} ({origin})"
    return None


def _urls(spec: NamedDataset, f: RemoteFile) -> tuple[str, ...]:
    override = os.environ.get("VAELAB_MIRROR")
    if override:  # a mirror of every dataset: <mirror>/<folder>/<file>, as for the IDX datasets
        return (f"{override.rstrip('/')}/{spec.folder}/{f.name}",)
    return f.urls


def _size(n: int | None) -> str:
    return f" ({n / 1e6:,.0f} MB)" if n else ""


def where_to_put(spec: NamedDataset) -> str:
    """One line: which URLs to fetch by hand and where to put the files."""
    names = " and ".join(f.name for f in spec.files)
    urls = " and ".join(f"{f.urls[0]}{_size(f.size)}" for f in spec.files)
    what = f"{names} from {spec.by_hand}" if spec.by_hand else urls
    return (f"download {what} by hand and put {'them' if len(spec.files) > 1 else 'it'} in "
            f"{cache_root() / spec.folder} "
            f"(or in a directory you pass as --data-dir)")


def download_named(spec: NamedDataset, log: Callable[[str], None] | None = None) -> Path:
    """Download the dataset's files into the cache, each verified; files already there and verified are kept."""
    target = cache_root() / spec.folder
    for f in spec.files:
        dest = target / f.name
        if dest.is_file() and dl.verify(dest, f.sha256, size=f.size, git_blob=f.git_blob) is None:
            continue
        dl.download_first(_urls(spec, f), dest, f.sha256, size=f.size, git_blob=f.git_blob, log=log)
    return target


def locate_named(spec: NamedDataset, data_dir: str | None, download: bool,
                 log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    found = find_named(spec, data_dir)
    if found:
        return found
    searched = ", ".join(dict.fromkeys(str(d) for d, _ in search_path(spec.folder, data_dir)))
    if not download or dl.offline():
        why = "downloads are off (VAELAB_OFFLINE=1)" if dl.offline() else "downloads are off (data.download=false)"
        raise DatasetNotFoundError(f"{spec.name} not found (searched {searched}) and {why}; {where_to_put(spec)}")
    try:
        download_named(spec, log=log)
    except DownloadError as exc:
        raise DatasetNotFoundError(f"{spec.name} not found (searched {searched}) and the download failed: {exc}; "
                                   f"{where_to_put(spec)}") from None
    found = find_named(spec, None)
    assert found is not None
    return found


def load_named(name: str, data_dir: str | None = None, download: bool = True, image_size: int | None = None,
               *, test_only: bool = False, log: Callable[[str], None] | None = None) -> RawData:
    """Dataset `name` of `NAMED` as raw uint8 tensors (CelebA at `image_size`, 64 by default)."""
    spec = NAMED[name]
    directory, where = locate_named(spec, data_dir, download, log=log)
    if name == "celeba":
        from vaelab.data.celeba import read_celeba

        arrays = read_celeba(directory, image_size, test_only=test_only, log=log)
    else:
        arrays = READERS[name](directory)
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in arrays)
    return RawData(train_x, train_y, test_x, test_y, source=where, classes=spec.classes)


def recommended(name: str) -> dict[str, str]:
    """The config settings the literature uses with dataset `name` (its preset sets them); {} for others."""
    spec = NAMED.get(name)
    return dict(spec.recommended) if spec else {}


def settings_notes(name: str, cfg: DataConfig) -> list[str]:
    """What a user training on `name` with `cfg` should know; ConfigError where the setting breaks the data."""
    want = recommended(name).get("data.binarize")
    preset = f"{PRESETS}/{name}.toml"
    if want == "none" and cfg.binarize != "none":
        return [f"{name} holds 8-bit RGB photographs: the literature models them with data.binarize=none and "
                f"model.likelihood=logistic_mixture (bits/dim), not binarized ({preset} sets both)"]
    if name != "binarized-mnist":
        return []
    if cfg.image_size not in (None, 28):
        raise ConfigError(f"data.image_size={cfg.image_size} would resample binarized-mnist's fixed bits into grey "
                          "levels that binarization would draw again; it is a 28x28 binary dataset: leave "
                          "data.image_size unset")
    if cfg.binarize == "none":
        return ["binarized-mnist is already binary (0 or 255): set data.binarize=static, which leaves its bits as "
                f"they are, so that evaluation scores it with the Bernoulli pmf ({preset})"]
    return ["binarized-mnist is already binary: binarizing it (static or dynamic) leaves every bit as the file "
            "has it, so training and evaluation see Larochelle's fixed binarization"]
