"""Sharing a run on the Hugging Face Hub: `push_run`, `pull_run` and `load_run("hf:OWNER/NAME[@REVISION]")`.

Needs the `hub` extra (`pip install 'vaelab[hub]'`: huggingface_hub); without it every entry point says so
in one line. What travels is what loading, evaluating and reporting a run need, and nothing that could run
code when read::

    README.md                            the model card, written at push time (library_name: vaelab, tags)
    config.toml run.json metrics.jsonl   the run's config, its record (versions, dataset, timings), its curves
    evaluation.json evaluation_*.json    the run's final evaluation (and `vaelab evaluate`'s, when there is one)
    checkpoints/best/                    meta.json + the safetensors files it lists (no optimizer state)
    images/{samples,reconstructions,interpolations,curves}.png

The train log, `checkpoints/last` (optimizer and RNG state), per-epoch grids, TensorBoard files and anything
else stay home; a pull asks only for these patterns (anything else in the repository is never downloaded),
copies only names of this form (safetensors, JSON, TOML, text, PNG) and then loads every checkpoint as
`load_run` does: safetensors and JSON only, each file checked against meta.json's SHA-256, nothing unpickled.

The download goes through huggingface_hub's own cache (HF_HOME, HF_HUB_CACHE; HF_HUB_OFFLINE serves a
repository pulled before without the network) and is then copied, so that what a command writes into the run
(`vaelab evaluate`'s eval-best/) never lands in that cache: into DEST for `pull_run(repo, DEST)`, else into
`$XDG_CACHE_HOME/vaelab/hub/OWNER/NAME/COMMIT/`. The token and the endpoint are huggingface_hub's (HF_TOKEN
or `hf auth login`; HF_ENDPOINT).
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vaelab._version import __version__
from vaelab.errors import CheckpointError, VaelabError
from vaelab.fileio import atomic_copy
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.runs.load import model_from_checkpoint
from vaelab.runs.pretrained import RUN_FILES, cache_dir, summarize

INSTALL = "pip install 'vaelab[hub]'"
CHECKPOINT = "best"
IMAGES = ("samples.png", "reconstructions.png", "interpolations.png", "curves.png")
# what a pull asks the Hub for (huggingface_hub's fnmatch patterns, where `*` also crosses `/`) ...
ALLOW_PATTERNS = ("README.md", "config.toml", "run.json", "metrics.jsonl", "evaluation*.json",
                  "checkpoints/*/meta.json", "checkpoints/*/*.safetensors", "images/*.png")
# ... and the exact names a pushed or pulled run may hold
_TRAVELS = re.compile(r"README\.md|config\.toml|run\.json|metrics\.jsonl|evaluation(_[A-Za-z0-9_-]{1,64})?\.json"
                      r"|checkpoints/[A-Za-z0-9][A-Za-z0-9_-]{0,63}/(meta\.json|[A-Za-z0-9_-]{1,64}\.safetensors)"
                      r"|images/[A-Za-z0-9_-]{1,64}\.png")
_ORDER = {"train": 0, "val": 1, "test": 2}  # the model card's table
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,199}")


class HubError(VaelabError):
    """Talking to the Hugging Face Hub failed in a way the user can fix (exit code 2 in the CLI)."""


@dataclass(frozen=True)
class PushResult:
    """What `push_run` did."""

    repo_id: str
    revision: str  # the branch the commit went to
    commit: str  # the new commit's id
    commit_url: str
    url: str  # the repository's page
    files: tuple[str, ...]  # what was uploaded, README.md (the model card) included
    left_out: tuple[str, ...]  # the run folder's other files, which stayed home


def travels(rel: str) -> bool:
    """Whether `rel` (a '/'-separated path in a run folder) is a file a pushed or pulled run may hold."""
    return bool(_TRAVELS.fullmatch(rel)) and ".." not in rel


def check_repo_id(repo_id: str) -> str:
    if not (isinstance(repo_id, str) and _REPO_ID.fullmatch(repo_id) and ".." not in repo_id
            and "--" not in repo_id):
        raise HubError(f"{repo_id!r} is not a Hub repository name; write OWNER/NAME (letters, digits, '-', '_', "
                       "'.'), e.g. alice/digits-vae")
    return repo_id


def _check_revision(revision: str | None) -> str | None:
    if revision is not None and not (isinstance(revision, str) and _REVISION.fullmatch(revision)
                                     and ".." not in revision):
        raise HubError(f"{revision!r} is not a revision; name a branch, a tag or a commit id")
    return revision


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"OWNER/NAME" or "OWNER/NAME@REVISION" (what follows "hf:") as (repo_id, revision or None)."""
    repo_id, _, revision = spec.partition("@")
    return check_repo_id(repo_id), _check_revision(revision or None)


def _hf():
    """huggingface_hub, or one line saying how to install it."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors  # submodules: the package's lazy attributes do not include them
    except ImportError:
        raise HubError(f"sharing runs on the Hugging Face Hub needs huggingface_hub: {INSTALL}") from None
    return huggingface_hub


# --------------------------------------------------------------------------- errors, in one line


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection and timeout errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x,
    requests before), from the modules it has already imported."""
    found = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        loaded = sys.modules.get(module)
        found += [getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name)]
    return tuple(found)


def _http_error(exc, repo_id: str, where: str) -> HubError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return HubError(f"the Hub at {where} refused the token (401 Unauthorized): run `hf auth login` or set "
                        "HF_TOKEN to a valid token")
    if status == 403:
        return HubError(f"your token may not do this on {repo_id} (403 Forbidden): use a token with write access "
                        f"to {repo_id.split('/')[0]}")
    detail = getattr(exc, "server_message", None) or _first_line(exc)
    return HubError(f"the Hub at {where} answered {status} for {repo_id}: {detail.splitlines()[0][:200]}")


@contextmanager
def _hub_errors(hub, repo_id: str, revision: str | None, pushing: bool = False) -> Iterator[None]:
    """huggingface_hub's exceptions (several lines each) as one HubError naming the problem and the fix."""
    errors, where = hub.errors, hub.constants.ENDPOINT
    ref = repo_id + (f"@{revision}" if revision else "")
    offline = bool(getattr(hub.constants, "HF_HUB_OFFLINE", False))
    try:
        yield
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id} on {where} has no revision {revision!r}; name an existing branch, tag or "
                       "commit") from None
    except errors.RepositoryNotFoundError:  # gated ones too
        raise HubError(f"no repository {repo_id} on {where}, or it is private and your token may not read it: "
                       "check the name, run `hf auth login` or set HF_TOKEN") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, *_transport_errors()) as exc:
        if pushing and offline:
            raise HubError("HF_HUB_OFFLINE is set: pushing needs the network; unset it") from None
        if offline:
            raise HubError(f"{ref} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}) and "
                           "HF_HUB_OFFLINE forbids downloading it: unset HF_HUB_OFFLINE to pull it once") from None
        cached, why = "" if pushing else f" and {ref} is not in the cache", _first_line(exc.__cause__ or exc)[:160]
        raise HubError(f"cannot reach the Hub at {where} ({why}){cached}: check the connection (and HF_ENDPOINT)") \
            from None
    except errors.HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, where) from None
    except ValueError as exc:  # a name the Hub refuses, invalid card metadata
        raise HubError(f"the Hub refused {ref}: {_first_line(exc)[:200]}") from None


# --------------------------------------------------------------------------- pushing


def run_files(run_dir: Path) -> list[str]:
    """The files of `run_dir` that travel (relative paths, sorted), after checking its best checkpoint loads."""
    ckpt = run_dir / "checkpoints" / CHECKPOINT
    if not (ckpt / "meta.json").is_file() or not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a finished vaelab run (no config.toml or checkpoints/"
                              f"{CHECKPOINT}/meta.json); pass the directory `vaelab train` wrote")
    loaded = load_checkpoint(ckpt)  # sizes and SHA-256 checked before anything leaves
    if loaded.path != ckpt:  # it fell back to best.old: best itself is damaged
        raise CheckpointError(f"{ckpt} is damaged (only {loaded.path.name} loads); resume or retrain the run first")
    meta = loaded.meta
    rels = [rel for rel in RUN_FILES if (run_dir / rel).is_file()]
    rels += sorted(p.name for p in run_dir.glob("evaluation_*.json") if travels(p.name))
    rels += [f"images/{name}" for name in IMAGES if (run_dir / "images" / name).is_file()]
    weights = [f"checkpoints/{CHECKPOINT}/{name}" for name in sorted(meta.get("files", []))]
    rels += [f"checkpoints/{CHECKPOINT}/meta.json"] + weights
    odd = [rel for rel in rels if not travels(rel)]
    if odd:
        raise CheckpointError(f"{run_dir}: {', '.join(odd)} is not a file a shared run may hold (safetensors, "
                              "JSON, TOML, text, PNG)")
    return sorted(rels)


def _number(value: Any, stderr: Any = None) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2f} ± {stderr:.2f}" if isinstance(stderr, (int, float)) else f"{value:.2f}"


def _tag(text: Any) -> str | None:
    tag = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return tag[:40] or None


def _dataset(name: Any) -> str:
    return "a folder of images" if str(name).startswith("folder:") else str(name)


def model_card(repo_id: str, config: dict[str, Any], evaluation: dict[str, Any], files: list[str]) -> str:
    """The README.md a pushed run gets: YAML front matter (library_name: vaelab, tags), what the model is, its
    measured numbers, how to load it, and which files it has."""
    s, m = summarize(evaluation, config), config.get("model", {})
    dataset = config.get("data", {}).get("dataset")
    kind = str(m.get("kind") or "vae")
    tags = ["vaelab", "variational-autoencoder" if kind != "ae" else "autoencoder", _tag(kind), _tag(m.get("arch"))]
    if dataset and not str(dataset).startswith("folder:"):
        tags.append(_tag(dataset))
    tags = list(dict.fromkeys(t for t in tags if t))
    lines = ["---", "library_name: vaelab", "tags:", *[f"- {t}" for t in tags],
             "pipeline_tag: unconditional-image-generation", "---", "", f"# {repo_id.split('/')[1]}", "",
             f"A {kind.upper()} with {m.get('arch', '?')} networks and latent dimension {m.get('latent_dim', '?')}, "
             f"trained with vaelab on {_dataset(dataset)} for {s['epochs'] or '?'} epoch(s); pushed with vaelab "
             f"{__version__}.", ""]
    splits = evaluation.get("splits") or {}
    if splits:
        lines += ["| split | images | -ELBO (nats per image) |", "|---|---|---|"]
        lines += [f"| {name} | {row.get('n', '-')} | {_number(row.get('nelbo'), row.get('stderr'))} |"
                  for name, row in sorted(splits.items(), key=lambda kv: _ORDER.get(kv[0], 9))
                  if isinstance(row, dict)]
        lines.append("")
    nll = s["test_nll"]
    if isinstance(nll.get("nll"), (int, float)):
        lines += [f"Test NLL: {_number(nll['nll'], nll.get('stderr'))} nats ({nll.get('bits_per_dim') or 0:.4f} "
                  f"bits/dim), importance-sampled with k={nll['k']} on {nll['images']} test images.", ""]
    if isinstance(s["gap_test_minus_train"], (int, float)):
        lines += [f"Generalization gap (test minus train -ELBO): {s['gap_test_minus_train']:.2f} nats.", ""]
    if "images/samples.png" in files:
        lines += ["![samples](images/samples.png)", ""]
    lines += ["## Use it", "", "```sh", INSTALL, f"vaelab hub pull {repo_id} DIR", f"vaelab evaluate hf:{repo_id}",
              "```", "", "```python", "from vaelab import load_run", "", f'run = load_run("hf:{repo_id}")',
              "images = run.sample(16)  # (16, C, H, W) in [0, 1]", "```", "",
              "Loading reads safetensors and JSON only (each file checked against the SHA-256 in meta.json); "
              "nothing is unpickled.", "", "## Files", ""]
    lines += [f"- `{rel}`" for rel in files] + [""]
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); pass a finished run directory") from None
    return data if isinstance(data, dict) else {}


def _left_out(run_dir: Path, files: list[str]) -> tuple[str, ...]:
    every = (p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    return tuple(sorted(rel for rel in every if rel not in files and rel != ".lock"))


def push_run(run_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
             revision: str | None = None, commit_message: str | None = None) -> PushResult:
    """Upload the run `run_dir` to the Hub repository `repo_id` (created when missing; `private` then makes it
    private) as one commit on `revision` (a branch, created from main when missing; default main), with a
    model card. Only the files a run needs travel (the module's docstring lists them)."""
    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    _check_revision(revision)
    files = run_files(run_dir)
    meta = _read_json(run_dir / "checkpoints" / CHECKPOINT / "meta.json")
    card = model_card(repo_id, meta.get("config") or {}, _read_json(run_dir / "evaluation.json"), files)
    hub = _hf()
    if token is None and hub.get_token() is None:
        raise HubError("pushing needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN")
    ops = [hub.CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(run_dir / rel)) for rel in files]
    ops.append(hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    api = hub.HfApi(token=token, library_name="vaelab", library_version=__version__)
    with _hub_errors(hub, repo_id, revision, pushing=True):
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations=ops, revision=revision,
                                 commit_message=commit_message or f"Upload vaelab run {run_dir.resolve().name}")
    return PushResult(repo_id=repo_id, revision=revision or "main", commit=info.oid, commit_url=info.commit_url,
                      url=str(repo_url), files=tuple(sorted([*files, "README.md"])),
                      left_out=_left_out(run_dir, files))


# --------------------------------------------------------------------------- pulling


def hub_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vaelab/hub` (~/.cache/...): the pulled runs `hf:` resolves to, one folder per commit."""
    return cache_dir().parent / "hub"


def _snapshot(hub, repo_id: str, revision: str | None, token: str | None) -> Path:
    with _hub_errors(hub, repo_id, revision):
        folder = hub.snapshot_download(repo_id, revision=revision, token=token, allow_patterns=list(ALLOW_PATTERNS),
                                       library_name="vaelab", library_version=__version__)
    return Path(folder)


def _pulled_files(snapshot: Path, ref: str) -> list[str]:
    files = sorted(rel for rel in (p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
                   if travels(rel))
    if f"checkpoints/{CHECKPOINT}/meta.json" not in files:
        raise HubError(f"{ref} holds no vaelab run (no checkpoints/{CHECKPOINT}/meta.json); share one with "
                       "`vaelab hub push RUN OWNER/NAME`")
    return files


def _copy_files(snapshot: Path, dest: Path, files: list[str]) -> None:
    for rel in files:
        target = dest / rel
        if target.is_file() and filecmp.cmp(snapshot / rel, target, shallow=False):
            continue  # already there from an earlier load of this commit: not written again
        atomic_copy(snapshot / rel, target)  # follows the cache's links: real files, which may be written


def verify_run(folder: Path, ref: str) -> None:
    """Load every checkpoint of a pulled run as `load_run` would (safetensors + JSON, SHA-256 checked, the model
    rebuilt from its config when it is one of vaelab's), naming the repository when one does not."""
    for ckpt in sorted(p for p in (folder / "checkpoints").iterdir() if p.is_dir()):
        try:
            loaded = load_checkpoint(ckpt)
            if not loaded.meta.get("model_class"):  # a model of your own needs its class to be rebuilt
                model_from_checkpoint(loaded.meta, loaded.tensors.get("ema", loaded.tensors.get("model", {})),
                                      str(ckpt))
        except CheckpointError as exc:
            raise CheckpointError(f"{ref} does not hold a loadable vaelab run: {exc}") from None


def _pull(repo_id: str, dest: str | Path | None, revision: str | None, token: str | None, verify: bool) -> Path:
    check_repo_id(repo_id)
    _check_revision(revision)
    ref = repo_id + (f"@{revision}" if revision else "")
    if dest is not None and Path(dest).exists() and (not Path(dest).is_dir() or any(Path(dest).iterdir())):
        raise HubError(f"{dest} exists and is not an empty folder; pull into a new one")
    hub = _hf()
    snapshot = _snapshot(hub, repo_id, revision, token)
    files = _pulled_files(snapshot, ref)
    target = Path(dest) if dest is not None else hub_cache_dir() / repo_id / snapshot.name
    created = not target.exists()
    empty = created or not any(target.iterdir())
    try:
        _copy_files(snapshot, target, files)
        if verify:
            verify_run(target, ref)
    except BaseException:
        if empty:  # nothing half-pulled is left behind (a folder given empty stays, empty)
            for child in [target] if created else list(target.iterdir()):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    return target


def pull_run(repo_id: str, dest: str | Path | None = None, *, revision: str | None = None,
             token: str | None = None) -> Path:
    """Download the run in Hub repository `repo_id` (at `revision`: a branch, tag or commit; default main) into
    `dest` (a new or empty folder; default: `hub_cache_dir()/OWNER/NAME/COMMIT`), asking only for the files a run
    holds, and check that it loads. Returns the run folder, ready for `load_run`."""
    return _pull(repo_id, dest, revision, token, verify=True)


def resolve(spec: str) -> Path:
    """The run folder of "OWNER/NAME[@REVISION]" (what follows "hf:"), pulled into the cache; `load_run` then
    loads (and so checks) it."""
    repo_id, revision = parse_spec(spec)
    return _pull(repo_id, None, revision, None, verify=False)
