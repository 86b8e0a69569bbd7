"""Trained models shipped by name: `load_run("pretrained:NAME")`, `vaelab evaluate pretrained:NAME`.

A shipped model is an ordinary run directory, cut down to what loading, evaluating and reporting need::

    pretrained/registry.json            every model: its files (bytes, SHA-256), a summary of its numbers,
                                        the reproduction check, optionally a URL its files are fetched from
    pretrained/NAME/config.toml         the run's config
    pretrained/NAME/run.json            versions, dataset, timings
    pretrained/NAME/metrics.jsonl       per-epoch numbers (the report's curves)
    pretrained/NAME/evaluation.json     the run's own final evaluation (its measured numbers)
    pretrained/NAME/checkpoints/best/   model.safetensors + meta.json (no optimizer state)

`pretrained/` sits at the top of the repository; the wheel carries it as the data package
`vaelab._pretrained` (pyproject.toml maps the folder there), so an installed vaelab has its models without
a network. A model too large for the wheel names a `url` in the registry instead: its files are fetched from
`url + relative path` by vaelab's download code (HTTPS, SHA-256, atomic) on first use.

Resolving NAME copies (or downloads) the files into `$XDG_CACHE_HOME/vaelab/pretrained/NAME/`, each checked
against the registry's SHA-256, and returns that directory. Commands that write into a run (`vaelab
evaluate` writes `eval-best/`, the OOD scorer `ood/`) therefore write into the user's cache, never into the
installed package or the repository. `vaelab pretrained add RUN NAME` (vaelab.cli.pretrained) adds a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from vaelab.data.download import download_file, offline, sha256_file
from vaelab.errors import CheckpointError, DownloadError
from vaelab.fileio import atomic_copy, atomic_write

PREFIX = "pretrained:"
HF_PREFIX = "hf:"  # a run shared on the Hugging Face Hub (vaelab.runs.hub)
REGISTRY = "registry.json"
FORMAT = "vaelab-pretrained"
FORMAT_VERSION = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# what a shipped model keeps of its run directory (relative paths); the checkpoint's own files are added
RUN_FILES = ("config.toml", "run.json", "metrics.jsonl", "evaluation.json")
CHECKPOINT = "best"


def check_model_name(name: str) -> str:
    """`name` if it can name a shipped model (lowercase letters, digits, '.', '-', '_'), else CheckpointError."""
    if not (isinstance(name, str) and _NAME.fullmatch(name) and ".." not in name):
        raise CheckpointError(f"{name!r} is not a pretrained model name; use lowercase letters, digits, "
                              "'.', '-' and '_' (e.g. fashion-mnist-vae)")
    return name


def packaged_root() -> Path:
    """Where an installed vaelab (a wheel) keeps its shipped models."""
    return Path(__file__).resolve().parents[1] / "_pretrained"


def source_root() -> Path | None:
    """The repository's `pretrained/` folder when vaelab runs from a clone (src layout), else None."""
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "pretrained" / REGISTRY).is_file():
        return repo / "pretrained"
    return None


def shipped_root() -> Path | None:
    """The folder holding registry.json and the shipped model folders: the package's, else the clone's."""
    for root in (packaged_root(), source_root()):
        if root is not None and (root / REGISTRY).is_file():
            return root
    return None


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vaelab/pretrained` (~/.cache/...): the resolved, writable copies."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab" / "pretrained"


def read_registry(root: Path | None = None) -> dict[str, Any]:
    """The registry (`{"format", "format_version", "models": {name: entry}}`); an empty one when none ships."""
    root = shipped_root() if root is None else root
    path = None if root is None else root / REGISTRY
    if path is None or not path.is_file():
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "models": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the installation is damaged") from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("models"), dict)):
        raise CheckpointError(f"{path} is not a vaelab pretrained-model registry")
    if not isinstance(data.get("format_version"), int) or data["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has registry format {data.get('format_version')}, newer than this vaelab "
                              f"reads ({FORMAT_VERSION}); upgrade vaelab")
    return data


def model_entry(name: str, registry: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registry entry of shipped model `name`; CheckpointError listing the shipped ones when unknown."""
    models = (registry or read_registry())["models"]
    if name not in models:
        have = ", ".join(sorted(models)) or "none"
        raise CheckpointError(f"no pretrained model {name!r}; shipped: {have} (`vaelab pretrained` lists them)")
    return models[name]


def _files(name: str, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"pretrained model {name}: the registry lists no files")
    for rel, info in files.items():
        parts = Path(rel).parts
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or Path(rel).is_absolute()
                or any(p in ("..", ".") or p.startswith(".") for p in parts) or "\\" in rel):
            raise CheckpointError(f"pretrained model {name}: the registry names an unexpected file {rel!r}")
    return files


def _copy_verified(src: Path, dest: Path, sha256: str, what: str) -> None:
    if sha256_file(src) != sha256:
        raise CheckpointError(f"{what} ({src}) does not match the registry's SHA-256; the installation is "
                              "damaged: reinstall vaelab")
    atomic_copy(src, dest)


def _fetch(url: str, rel: str, dest: Path, sha256: str, log: Callable[[str], None] | None) -> None:
    full = url.rstrip("/") + "/" + rel
    if offline():
        raise DownloadError(f"pretrained file {rel} is not in the cache and VAELAB_OFFLINE forbids downloading "
                            f"it: fetch {full} and put it at {dest}")
    download_file(full, dest, sha256, log=log)


def resolve(name: str, *, log: Callable[[str], None] | None = None) -> Path:
    """The run directory of shipped model `name`, in the user's cache: copied from the package (or the clone)
    or downloaded from the registry's URL, every file checked against its SHA-256 (every time: a few MB)."""
    check_model_name(name)
    registry = read_registry()
    entry = model_entry(name, registry)
    root = shipped_root()
    dest = cache_dir() / name
    for rel, info in _files(name, entry).items():
        target = dest / rel
        if target.is_file() and sha256_file(target) == info["sha256"]:
            continue
        shipped = None if root is None else root / name / rel
        if shipped is not None and shipped.is_file():
            _copy_verified(shipped, target, info["sha256"], f"pretrained model {name}: {rel}")
        elif isinstance(entry.get("url"), str):
            _fetch(entry["url"], rel, target, info["sha256"], log)
        else:
            raise CheckpointError(f"pretrained model {name}: {rel} is neither installed nor downloadable; "
                                  "reinstall vaelab")
    return dest


def resolve_run_path(path: str | Path) -> Path:
    """`path` as a run directory: "pretrained:NAME" resolved (`resolve`), "hf:OWNER/NAME[@REVISION]" pulled
    from the Hugging Face Hub into the cache (`vaelab.runs.hub.resolve`), anything else as it is."""
    text = str(path)
    if isinstance(path, str) and text.startswith(PREFIX) and not Path(text).exists():
        return resolve(text[len(PREFIX):])
    if isinstance(path, str) and text.startswith(HF_PREFIX) and not Path(text).exists():
        from vaelab.runs import hub  # imported on use: it imports this module (and huggingface_hub on use)

        return hub.resolve(text[len(HF_PREFIX):])
    return Path(path)


def _nll_row(evaluation: dict[str, Any], split: str) -> dict[str, Any]:
    nll = evaluation.get("nll") or {}
    row = (nll.get("splits") or {}).get(split) or {}
    return {"nll": row.get("nll"), "stderr": row.get("stderr"), "bits_per_dim": row.get("bits_per_dim"),
            "k": nll.get("k"), "images": row.get("n")}


def summarize(evaluation: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The numbers `vaelab pretrained` lists, from a run's evaluation.json and config (as a dict)."""
    test = (evaluation.get("splits") or {}).get("test") or {}
    model, data = config.get("model", {}), config.get("data", {})
    return {
        "dataset": data.get("dataset"), "kind": model.get("kind"), "arch": model.get("arch"),
        "latent_dim": model.get("latent_dim"), "epochs": evaluation.get("epochs_trained", evaluation.get("epoch")),
        "test_nelbo": test.get("nelbo"), "test_nelbo_stderr": test.get("stderr"), "test_images": test.get("n"),
        "test_nll": _nll_row(evaluation, "test"), "gap_test_minus_train": evaluation.get("gap_test_minus_train"),
    }


def listing() -> list[dict[str, Any]]:
    """Every shipped model: name, description, summary (from its evaluation.json), size, where it comes from."""
    root = shipped_root()
    rows = []
    for name, entry in sorted(read_registry()["models"].items()):
        files = entry.get("files") or {}
        local = root is not None and all((root / name / rel).is_file() for rel in files)
        rows.append({"name": name, "description": entry.get("description", ""), "summary": entry.get("summary", {}),
                     "bytes": sum(int(i.get("bytes", 0)) for i in files.values()),
                     "where": ("installed" if root == packaged_root() else "clone") if local
                     else f"download ({entry.get('url', 'no URL')})"})
    return rows


def write_registry(root: Path, registry: dict[str, Any]) -> None:
    """Write `root/registry.json` (sorted, indented: reviewable diffs)."""
    text = json.dumps(registry, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(root / REGISTRY, text.encode("utf-8"), "the registry")


def copy_run(run_dir: Path, dest: Path) -> dict[str, dict[str, Any]]:
    """Copy what a shipped model keeps of `run_dir` (RUN_FILES and checkpoints/best without optimizer state)
    into `dest` (replaced); returns the files' registry records {relative path: {bytes, sha256}}."""
    ckpt = run_dir / "checkpoints" / CHECKPOINT
    meta_path = ckpt / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoints/{CHECKPOINT}/meta.json; pass a finished run directory")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    rels = [rel for rel in RUN_FILES if (run_dir / rel).is_file()]
    if "evaluation.json" not in rels or "config.toml" not in rels:
        raise CheckpointError(f"{run_dir} lacks config.toml or evaluation.json; pass a finished run directory")
    rels += [f"checkpoints/{CHECKPOINT}/meta.json"] + [f"checkpoints/{CHECKPOINT}/{f}" for f in sorted(meta["files"])]
    if any(f != "model.safetensors" for f in meta["files"]):
        raise CheckpointError(f"{ckpt} holds more than the model's weights ({', '.join(meta['files'])}); "
                              "ship a best checkpoint, which has no optimizer state")
    shutil.rmtree(dest, ignore_errors=True)
    records = {}
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / rel, dest / rel)
        records[rel] = {"bytes": (dest / rel).stat().st_size, "sha256": sha256_file(dest / rel)}
    return records
