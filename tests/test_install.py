"""vaelab installs the usual way: `python -m build` makes an sdist and a wheel, and the wheel, installed into a
fresh virtual environment, gives a working `vaelab` command, its extras and its shipped models, outside the
source tree.

The fresh environment gets PyTorch and the other dependencies from the environment running the tests,
through a .pth file naming a folder of links to its packages (vaelab itself left out): `--system-site-packages`
would expose the base interpreter's packages, not those of the venv that holds torch, and installing
torch==2.13.0 again would cost minutes and a 200 MB download. pip then resolves the wheel's requirements
(extras included) against those packages with --no-index: the metadata is checked, the network never used.
The build runs --no-isolation for the same reason (setuptools and build come with the test extra).

The build-and-install test takes about a minute: it runs where CI=true (CI runs it) or with --runslow.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vaelab.config import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SHIPPED = "fashion-mnist-vae"


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true")


@pytest.fixture(autouse=True)
def _ci_only(request):
    if request.node.get_closest_marker("ci") and not (_ci() or request.config.getoption("--runslow")):
        pytest.skip("builds and installs the wheel (about a minute): runs where CI=true, or with --runslow")


def test_pyproject_lists_every_package():
    """The packages are listed by hand (pyproject.toml says why): a new one left out would be missing from the
    wheel."""
    src = REPO / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in (src / "vaelab").rglob("*.py")
             if "__pycache__" not in p.parts}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed - {"vaelab._pretrained"} == found, (
        f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}; "
        f"remove: {sorted(listed - found - {'vaelab._pretrained'})}")


def test_package_data_covers_every_shipped_file():
    import json

    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["vaelab._pretrained"]
    registry = json.loads((REPO / "pretrained" / "registry.json").read_text(encoding="utf-8"))
    for name, entry in registry["models"].items():
        if "url" in entry:  # fetched on first use, not in the wheel
            continue
        for rel in entry["files"]:
            assert any(fnmatch.fnmatch(f"{name}/{rel}", g) for g in globs), f"{name}/{rel} is in no package-data glob"
            assert (REPO / "pretrained" / name / rel).is_file(), f"pretrained/{name}/{rel} is missing"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _project_view(dest: Path) -> Path:
    """A folder of links to every package of the running environment except vaelab (and .pth files)."""
    dest.mkdir()
    for root in site.getsitepackages():
        for entry in Path(root).iterdir():
            name = entry.name.lower()
            if name.endswith(".pth") or "vaelab" in name or name.startswith("__editable__") or name == "__pycache__":
                continue
            if not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.ci
def test_wheel_builds_installs_and_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(OMP_NUM_THREADS="1", VAELAB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # the sources the sdist is made of, copied: the build writes build/ and *.egg-info beside them
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for name in ("src", "pretrained"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", tree], tmp_path, env)
    wheels, sdists = sorted((tmp_path / "dist").glob("vaelab-*.whl")), sorted((tmp_path / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    from vaelab import __version__

    assert wheels[0].name == f"vaelab-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
    assert f"vaelab/_pretrained/{SHIPPED}/checkpoints/best/model.safetensors" in names
    assert "vaelab/cli/pretrained.py" in names and "vaelab/_pretrained/registry.json" in names
    with tarfile.open(sdists[0]) as sdist:
        assert any(n.endswith(f"pretrained/{SHIPPED}/checkpoints/best/model.safetensors") for n in sdist.getnames())

    venv = tmp_path / "venv"
    # without pip: pip and setuptools come from the view too (the bundled setuptools 65 would shadow the
    # setuptools>=77 that torch requires)
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py, bindir = venv / "bin" / "python", venv / "bin"
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip()
    (Path(purelib) / "project_packages.pth").write_text(str(_project_view(tmp_path / "view")) + "\n")
    _run([py, "-m", "pip", "install", "--no-index", "--quiet", f"{wheels[0]}[all]"], tmp_path, env)

    work = tmp_path / "work"  # outside the source tree
    work.mkdir()
    where = _run([py, "-c", "import vaelab, vaelab.export, optuna; print(vaelab.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where
    assert "pretrained" in _run([bindir / "vaelab", "--help"], work, env)
    assert "digits" in _run([bindir / "vaelab", "datasets"], work, env)
    listing = _run([bindir / "vaelab", "pretrained"], work, env)
    assert SHIPPED in listing and "installed" in listing, listing
    _run([bindir / "vaelab", "train", "--set", "data.dataset=digits", "--set", "train.epochs=1", "--set",
          "train.threads=1", "--set", "eval.nll_images=50", "--set", "eval.nll_k=10", "--out", work / "run"], work, env)
    assert (work / "run" / "checkpoints" / "best" / "model.safetensors").is_file()
    code = (f"import vaelab; run = vaelab.load_run('pretrained:{SHIPPED}'); x = run.sample(4); "
            "print(tuple(x.shape), run.path)")
    out = _run([py, "-c", code], work, env)
    assert "(4, 1, 28, 28)" in out and str(tmp_path / "cache") in out, out
