"""Trained models shipped by name: the registry, `load_run("pretrained:NAME")`, `vaelab pretrained`, adding one,
and fetching one from a URL (a local HTTP server on 127.0.0.1; no internet here)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from vaelab import load_run
from vaelab.cli import main
from vaelab.cli.pretrained import CHECK_IMAGES, CHECK_K, add_model, reproduction_check
from vaelab.data.download import sha256_file
from vaelab.errors import CheckpointError, DatasetNotFoundError, DownloadError
from vaelab.runs import pretrained as shipped

REPO = Path(__file__).resolve().parents[1]
NAME = "fashion-mnist-vae"
FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1.0"  # a 2-epoch MLP VAE on digits


def _entry() -> dict:
    return json.loads((REPO / "pretrained" / "registry.json").read_text())["models"][NAME]


def test_registry_matches_the_committed_files():
    entry = _entry()
    for rel, info in entry["files"].items():
        path = REPO / "pretrained" / NAME / rel
        assert path.stat().st_size == info["bytes"] and sha256_file(path) == info["sha256"], rel
    assert "checkpoints/best/model.safetensors" in entry["files"]
    assert not any("optimizer" in rel or rel.startswith("images/") for rel in entry["files"])
    assert sum(i["bytes"] for i in entry["files"].values()) < 5e6  # a few MB: it travels in the wheel
    evaluation = json.loads((REPO / "pretrained" / NAME / "evaluation.json").read_text())
    config = load_run(f"pretrained:{NAME}").config
    from vaelab.config import to_dict

    assert entry["summary"] == shipped.summarize(evaluation, to_dict(config))


def test_load_run_resolves_into_the_cache(one_thread):
    run = load_run(f"pretrained:{NAME}")
    assert run.path == shipped.cache_dir() / NAME and run.path.is_relative_to(os.environ["XDG_CACHE_HOME"])
    assert run.image_shape == (1, 28, 28) and run.config.data.dataset == "fashion-mnist"
    assert run.sample(4, seed=0).shape == (4, 1, 28, 28)
    # a damaged copy in the cache is replaced by the shipped file
    weights = run.path / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(b"not a model")
    assert load_run(f"pretrained:{NAME}").meta["epoch"] == run.meta["epoch"]
    assert sha256_file(weights) == _entry()["files"]["checkpoints/best/model.safetensors"]["sha256"]


def test_unknown_and_malformed_names_are_one_line(capsys):
    with pytest.raises(CheckpointError, match=f"no pretrained model 'nope'; shipped: .*{NAME}"):
        load_run("pretrained:nope")
    with pytest.raises(CheckpointError, match="not a pretrained model name"):
        load_run("pretrained:../etc")
    assert main(["evaluate", "pretrained:nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: no pretrained model 'nope'")


def test_the_listing_shows_the_measured_numbers(capsys):
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    summary = _entry()["summary"]
    row = next(line for line in out.splitlines() if line.startswith(NAME))
    assert "fashion-mnist" in row and "clone" in row and f"{summary['test_nelbo']:.2f}" in row
    assert f"{summary['test_nll']['nll']:.2f}" in row and f"k={summary['test_nll']['k']}" in row
    assert "load_run('pretrained:NAME')" in out


def _committed() -> list[str]:
    return sorted(json.loads((REPO / "pretrained" / "registry.json").read_text())["models"])


@pytest.mark.parametrize("name", _committed())
def test_each_shipped_model_reproduces_its_test_nll(name, one_thread):
    """On a CPU, the committed weights give the stored test NLL at k=100 on 200 test images (the registry's
    check, measured when the model was added) within its standard error, and agree with the run's own
    evaluation.json (k=1000 on more test images) within that one's standard error."""
    run = load_run(f"pretrained:{name}")
    try:
        check = reproduction_check(run, log=lambda line: None)
    except DatasetNotFoundError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"the dataset of {name} is missing in CI: {exc}")
        pytest.skip(f"the dataset of {name} is not on this machine: {exc}")
    stored = json.loads((REPO / "pretrained" / "registry.json").read_text())["models"][name]["check"]
    assert (check["k"], check["images"]) == (stored["k"], stored["images"]) == (CHECK_K, CHECK_IMAGES)
    assert abs(check["nll"] - stored["nll"]) <= stored["stderr"], (check, stored)
    assert abs(check["nll"] - stored["nll"]) < 0.05  # in fact the same number, up to float rounding
    headline = (json.loads((run.path / "evaluation.json").read_text()).get("nll") or {}).get("splits", {}).get("test")
    if headline:  # the run's own final NLL, when it measured one
        assert abs(check["nll"] - headline["nll"]) <= headline["stderr"], (check, headline)


def _shipped_at(monkeypatch, root: Path) -> None:
    monkeypatch.setattr(shipped, "shipped_root", lambda: root)


def test_add_model_then_load_it_by_name(tmp_path, monkeypatch, one_thread, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    root = tmp_path / "pretrained"
    folder = add_model(run_dir, "tiny-digits", root, log=lambda line: None)
    registry = json.loads((root / "registry.json").read_text())
    entry = registry["models"]["tiny-digits"]
    assert folder == root / "tiny-digits" and sorted(entry["files"]) == [
        "checkpoints/best/meta.json", "checkpoints/best/model.safetensors", "config.toml", "evaluation.json",
        "metrics.jsonl", "run.json"]
    assert not (folder / "checkpoints" / "last").exists() and entry["check"]["k"] == CHECK_K
    assert entry["description"] == "mlp VAE, latent 4" and entry["summary"]["dataset"] == "digits"
    _shipped_at(monkeypatch, root)
    run = load_run("pretrained:tiny-digits")
    assert run.path == shipped.cache_dir() / "tiny-digits"
    assert reproduction_check(run, log=lambda line: None)["nll"] == pytest.approx(entry["check"]["nll"], abs=1e-3)
    assert main(["pretrained"]) == 0
    assert "tiny-digits" in capsys.readouterr().out
    # adding it again replaces the entry, not duplicates it; a bad name or URL is refused
    add_model(run_dir, "tiny-digits", root, description="again", log=lambda line: None)
    assert json.loads((root / "registry.json").read_text())["models"]["tiny-digits"]["description"] == "again"
    with pytest.raises(CheckpointError, match="not a pretrained model name"):
        add_model(run_dir, "Tiny Digits", root)
    with pytest.raises(Exception, match="https://"):
        add_model(run_dir, "tiny", root, url="http://example.org/x")


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (the tests' stand-in for a file host)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_model_with_a_url_is_downloaded_and_verified(tmp_path, monkeypatch, served, one_thread):
    www, base = served
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    root = tmp_path / "pretrained"
    add_model(run_dir, "far", root, url="https://example.invalid/models/far", log=lambda line: None)
    shutil.move(str(root / "far"), str(www / "far"))  # only the registry stays: the files are "uploaded"
    registry = json.loads((root / "registry.json").read_text())
    registry["models"]["far"]["url"] = f"{base}/far"  # the local stand-in (download_file allows http to loopback)
    (root / "registry.json").write_text(json.dumps(registry))
    _shipped_at(monkeypatch, root)
    with pytest.raises(DownloadError, match=f"VAELAB_OFFLINE forbids.*fetch {base}/far/"):
        load_run("pretrained:far")
    monkeypatch.setenv("VAELAB_OFFLINE", "0")
    row = next(r for r in shipped.listing() if r["name"] == "far")
    assert row["where"].startswith("download (")
    run = load_run("pretrained:far")
    assert run.path == shipped.cache_dir() / "far" and run.sample(2).shape == (2, 1, 8, 8)
    # a file the server changed is refused and leaves nothing in the cache
    shutil.rmtree(shipped.cache_dir() / "far")
    (www / "far" / "config.toml").write_text("# altered\n" + (www / "far" / "config.toml").read_text())
    with pytest.raises(DownloadError, match="SHA-256"):
        load_run("pretrained:far")
    assert not (shipped.cache_dir() / "far" / "config.toml").exists()
    assert not list((shipped.cache_dir() / "far").glob(".*part*"))


def test_a_damaged_installation_is_named(tmp_path, monkeypatch):
    root = tmp_path / "pretrained"
    shutil.copytree(REPO / "pretrained", root, ignore=shutil.ignore_patterns("README.md"))
    (root / NAME / "config.toml").write_text("changed")
    _shipped_at(monkeypatch, root)
    with pytest.raises(CheckpointError, match="does not match the registry's SHA-256; the installation is damaged"):
        load_run(f"pretrained:{NAME}")
    (root / "registry.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        shipped.listing()


def test_samples_are_deterministic_across_loads():
    a = load_run(f"pretrained:{NAME}").sample(3, seed=7)
    b = load_run(f"pretrained:{NAME}").sample(3, seed=7)
    assert torch.equal(a, b)
