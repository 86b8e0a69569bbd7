"""Sharing runs on the Hugging Face Hub (`vaelab.runs.hub`, `vaelab hub`, `load_run("hf:...")`), tested against a
local stand-in for the Hub's HTTP API on 127.0.0.1 (tests/hubstub.py), never the network: huggingface_hub
2.x itself makes every request (create_repo, create_branch, create_commit, snapshot_download), pointed at
the stand-in by HF_ENDPOINT, with HF_HOME in a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubstub import HubStub
from vaelab import load_config, load_run, train
from vaelab.cli import main
from vaelab.errors import CheckpointError
from vaelab.runs.hub import INSTALL, HubError, PushResult, pull_run, push_run

TRAVELS = {"config.toml", "run.json", "metrics.jsonl", "evaluation.json", "checkpoints/best/meta.json",
           "checkpoints/best/model.safetensors", "images/samples.png", "images/reconstructions.png",
           "images/interpolations.png", "images/curves.png"}
# what huggingface_hub reads from the environment (once, at import): set here, then its constants recomputed
HF_ENV = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
          "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE",
          "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_XET_CACHE", "HF_ASSETS_CACHE")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real run, tiny: an MLP VAE trained one epoch on scikit-learn's digits (a few seconds)."""
    root = tmp_path_factory.mktemp("hub-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("VAELAB_OFFLINE", "1")
        cfg = load_config(overrides=["data.dataset=digits", "data.val_size=200", "train.epochs=1",
                                     "train.grid_every=0", "train.grid_size=4", "model.arch=mlp",
                                     "model.latent_dim=4", "eval.nll_k=2", "eval.nll_images=20"])
        train(cfg, root / "run", log=lambda line: None)
    torch.set_num_threads(threads)
    return root / "run"


def _refresh_constants(monkeypatch) -> None:
    """huggingface_hub.constants as a fresh import would compute them from the environment now; monkeypatch
    puts the old values back after the test (the library reads them as `constants.NAME` at call time)."""
    from huggingface_hub import constants

    spec = importlib.util.spec_from_file_location("_hf_constants_now", constants.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name in dir(fresh):
        if name.isupper() and getattr(constants, name, None) != getattr(fresh, name):
            monkeypatch.setattr(constants, name, getattr(fresh, name))


def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refresh_constants(monkeypatch)


@pytest.fixture
def hub(tmp_path, monkeypatch, one_thread):
    """The stand-in Hub, with huggingface_hub pointed at it (HF_ENDPOINT), its cache in tmp_path (HF_HOME) and the
    stand-in's token in HF_TOKEN."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("huggingface_hub is missing in CI; pip install 'vaelab[test]'")
        pytest.skip("huggingface_hub not installed (pip install 'vaelab[hub]')")
    with HubStub() as stub:
        for name in HF_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_TOKEN", stub.token)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        _refresh_constants(monkeypatch)
        yield stub


def _run_copy(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_push_then_pull_gives_the_same_run(hub, trained, tmp_path):
    run_dir = _run_copy(trained, tmp_path / "run")
    (run_dir / "weights.pt").write_bytes(b"a pickle would go here")  # nothing but safetensors/JSON/TOML/text/PNG
    (run_dir / "checkpoints" / "best" / "extra.pkl").write_bytes(b"nor here")
    result = push_run(run_dir, "alice/digits-vae")
    assert isinstance(result, PushResult) and result.repo_id == "alice/digits-vae" and result.revision == "main"
    assert set(result.files) == TRAVELS | {"README.md"}
    assert {"weights.pt", "checkpoints/best/extra.pkl", "train.log", "checkpoints/last/optimizer.safetensors",
            "checkpoints/last/model.safetensors"} <= set(result.left_out)
    assert result.commit == hub.repos["alice/digits-vae"]["branches"]["main"]
    assert result.url == f"{hub.url}/alice/digits-vae" and result.commit in result.commit_url
    stored = hub.files("alice/digits-vae")
    assert set(stored) == TRAVELS | {"README.md", ".gitattributes"}  # .gitattributes: the Hub's own
    assert all(stored[rel] == (run_dir / rel).read_bytes() for rel in TRAVELS)

    card = stored["README.md"].decode()
    front = card.split("---\n")[1]
    assert card.startswith("---\nlibrary_name: vaelab\ntags:\n- vaelab\n") and "- digits\n" in front
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert f"{evaluation['splits']['test']['nelbo']:.2f}" in card and 'load_run("hf:alice/digits-vae")' in card
    assert hub.cards == [card]  # the card went through the Hub's metadata check

    pulled = pull_run("alice/digits-vae", tmp_path / "pulled")
    assert pulled == tmp_path / "pulled" and _files(pulled) == TRAVELS | {"README.md"}
    mine, theirs = load_run(run_dir), load_run(pulled)
    assert _same_weights(mine, theirs) and theirs.meta == mine.meta
    assert (pulled / "evaluation.json").read_bytes() == (run_dir / "evaluation.json").read_bytes()
    assert torch.equal(mine.sample(4, seed=3), theirs.sample(4, seed=3))
    with pytest.raises(HubError, match="not an empty folder"):  # a pull never writes into a folder with files
        pull_run("alice/digits-vae", pulled)


def test_load_run_hf_pulls_into_the_cache(hub, trained, tmp_path):
    run_dir = _run_copy(trained, tmp_path / "run")
    push_run(run_dir, "alice/digits-vae")
    run = load_run("hf:alice/digits-vae")
    main_commit = hub.repos["alice/digits-vae"]["branches"]["main"]
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "vaelab" / "hub" / "alice" / "digits-vae"
    assert run.path == cache / main_commit and _same_weights(run, load_run(run_dir))
    assert _files(run.path) == TRAVELS | {"README.md"}
    # a branch: hf:OWNER/NAME@REVISION (pushed with revision=, which creates it)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    (run_dir / "evaluation.json").write_text(json.dumps({**evaluation, "note": "second"}))
    result = push_run(run_dir, "alice/digits-vae", revision="experiment", commit_message="another try")
    assert result.revision == "experiment" and hub.repos["alice/digits-vae"]["branches"]["main"] == main_commit
    branch = load_run("hf:alice/digits-vae@experiment")
    assert branch.path == cache / result.commit
    assert json.loads((branch.path / "evaluation.json").read_text())["note"] == "second"
    assert "note" not in json.loads((load_run("hf:alice/digits-vae").path / "evaluation.json").read_text())
    # a second load leaves the cached files as they are (nothing written again) ...
    weights = run.path / "checkpoints" / "best" / "model.safetensors"
    stamps = {p: p.stat().st_mtime_ns for p in run.path.rglob("*") if p.is_file()}
    os.utime(weights, ns=(1, 1))  # an old stamp: a rewrite would change it
    assert _same_weights(load_run("hf:alice/digits-vae"), run) and weights.stat().st_mtime_ns == 1
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != weights)
    # ... and a damaged copy in the cache is put right on the next load
    weights.write_bytes(b"broken")
    assert _same_weights(load_run("hf:alice/digits-vae"), run)


def test_a_pull_takes_only_what_a_run_holds(hub, trained, tmp_path):
    files = {rel: (trained / rel).read_bytes() for rel in TRAVELS}
    odd = {"checkpoints/best/model.pt": b"pickle", "model.pkl": b"pickle", "setup.py": b"import os",
           "checkpoints/best/model.bin": b"torch.save", "notes/evaluation.json": b"{}", "images/x.png.pt": b"pt"}
    hub.seed("bob/mixed", {**files, **odd})
    pulled = pull_run("bob/mixed", tmp_path / "pulled")
    assert _files(pulled) == TRAVELS
    downloaded = {path for method, path in hub.requests if "/resolve/" in path}
    assert not [path for path in downloaded if path.endswith((".pt", ".pkl", ".bin", ".py", ".gitattributes"))]
    assert _same_weights(load_run(pulled), load_run(trained))


def test_a_pulled_run_must_load(hub, trained, tmp_path):
    files = {rel: (trained / rel).read_bytes() for rel in TRAVELS}
    weights = bytearray(files["checkpoints/best/model.safetensors"])
    weights[-1] ^= 0xFF  # one bit changed: meta.json's SHA-256 no longer matches
    hub.seed("bob/damaged", {**files, "checkpoints/best/model.safetensors": bytes(weights)})
    with pytest.raises(CheckpointError, match="bob/damaged does not hold a loadable vaelab run"):
        pull_run("bob/damaged", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()  # nothing half-pulled is left behind
    hub.seed("bob/card-only", {"README.md": b"# hello\n"})
    with pytest.raises(HubError, match=r"bob/card-only holds no vaelab run \(no checkpoints/best/meta.json\)"):
        pull_run("bob/card-only", tmp_path / "pulled")


def test_a_fresh_process_finds_the_hub_through_hf_endpoint(hub, trained, tmp_path):
    """`vaelab hub pull` in a new interpreter: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_TOKEN at import,
    as it does for every user (the other tests recompute its constants in this process)."""
    push_run(_run_copy(trained, tmp_path / "run"), "erin/digits-vae", private=True)
    command = [sys.executable, "-m", "vaelab", "hub", "pull", "erin/digits-vae", str(tmp_path / "pulled")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert f"pulled erin/digits-vae into {tmp_path / 'pulled'}" in proc.stdout
    assert _same_weights(load_run(tmp_path / "pulled"), load_run(trained))
    assert any(path.startswith("/erin/digits-vae/resolve/") for method, path in hub.requests)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: "), err
    return err


def test_the_command_line(hub, trained, tmp_path, capsys, monkeypatch):
    run_dir = _run_copy(trained, tmp_path / "run")
    assert main(["hub", "push", str(run_dir), "carol/cli-vae", "--private", "--message", "first share"]) == 0
    out = capsys.readouterr().out
    assert f"pushed {len(TRAVELS) + 1} files to {hub.url}/carol/cli-vae (branch main" in out and "train.log" in out
    assert hub.repos["carol/cli-vae"]["private"]
    assert main(["hub", "pull", "carol/cli-vae", str(tmp_path / "pulled")]) == 0
    assert f"into {tmp_path / 'pulled'}" in capsys.readouterr().out
    assert _files(tmp_path / "pulled") == TRAVELS | {"README.md"}
    # hf:OWNER/NAME goes wherever a run directory goes
    assert main(["sample", "hf:carol/cli-vae", "-n", "4", "--out", str(tmp_path / "samples.png")]) == 0
    assert (tmp_path / "samples.png").stat().st_size > 0

    # every failure is one line and exit code 2
    assert main(["hub", "pull", "carol/nope", str(tmp_path / "x")]) == 2
    assert "no repository carol/nope on http://127.0.0.1:" in _error_line(capsys)
    assert main(["hub", "pull", "carol/cli-vae", str(tmp_path / "x"), "--revision", "v9"]) == 2
    line = _error_line(capsys)
    assert "carol/cli-vae on http://127.0.0.1:" in line and "has no revision 'v9'" in line
    assert main(["hub", "pull", "not-a-repo"]) == 2
    assert "is not a Hub repository name; write OWNER/NAME" in _error_line(capsys)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert main(["hub", "push", str(run_dir), "carol/cli-vae"]) == 2
    assert "refused the token (401 Unauthorized)" in _error_line(capsys)
    hub.seed("carol/secret", hub.files("carol/cli-vae"), private=True)
    assert main(["hub", "pull", "carol/secret", str(tmp_path / "y")]) == 2  # private: unreadable without its token
    assert "or it is private and your token may not read it" in _error_line(capsys)
    monkeypatch.delenv("HF_TOKEN")
    assert main(["hub", "push", str(run_dir), "carol/cli-vae"]) == 2
    assert "pushing needs a Hugging Face token" in _error_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_offline_a_pulled_run_comes_from_the_cache(hub, trained, tmp_path, monkeypatch, capsys):
    push_run(_run_copy(trained, tmp_path / "run"), "dave/offline-vae")
    online = load_run("hf:dave/offline-vae")
    pull_run("dave/offline-vae", tmp_path / "first")
    _offline(monkeypatch)
    asked = len(hub.requests)
    again = load_run("hf:dave/offline-vae")
    assert again.path == online.path and _same_weights(again, online)
    copy = pull_run("dave/offline-vae", tmp_path / "second")  # from huggingface_hub's cache
    assert _files(copy) == TRAVELS | {"README.md"} and _same_weights(load_run(copy), online)
    assert len(hub.requests) == asked  # the stand-in was never asked
    with pytest.raises(HubError, match="dave/other is not in the Hugging Face cache .* HF_HUB_OFFLINE forbids"):
        load_run("hf:dave/other")
    assert main(["hub", "push", str(tmp_path / "run"), "dave/offline-vae"]) == 2
    assert "HF_HUB_OFFLINE is set: pushing needs the network" in _error_line(capsys)
    assert len(hub.requests) == asked


def test_without_huggingface_hub_one_line_names_the_fix(trained, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    with pytest.raises(HubError, match=r"needs huggingface_hub: pip install 'vaelab\[hub\]'"):
        push_run(trained, "alice/digits-vae")
    with pytest.raises(HubError, match="needs huggingface_hub"):
        load_run("hf:alice/digits-vae")
    assert main(["hub", "pull", "alice/digits-vae"]) == 2
    assert _error_line(capsys).rstrip().endswith(INSTALL)
