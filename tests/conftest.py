"""Shared fixtures. Fast by default; `--runslow` also runs the tests marked slow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data.sources import IDX_DATASETS, find_idx_files

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir, no VAELAB_DATA, no network, fixed seeds."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.delenv("VAELAB_MIRROR", raising=False)
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: on a busy 2-core machine a second thread only spins
    against the first (many small ops per step). The count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _missing(what: str, how: str):
    # In CI the data is installed by .ci/run: a missing dataset there is a failure, not a skip.
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"{what} is missing in CI; {how}")
    pytest.skip(f"{what} not installed ({how})")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    found = find_idx_files(IDX_DATASETS["fashion-mnist"], None)
    if not found:
        _missing("Fashion-MNIST", "apt-get install -y dataset-fashion-mnist")
    return found[0]["train_images"].parent


@pytest.fixture(scope="session")
def mnist10k_dir() -> Path:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        _missing("../shared/data/mnist-10k", "the shared data folder beside the checkout")
    return SHARED_MNIST


def _chromium_paths() -> tuple[str, str] | None:
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Selenium through the chromedriver of the same build (Debian's
    chromium + chromium-driver). In CI, .ci/run installs them: missing there is a failure."""
    paths = _chromium_paths()
    if paths is None:
        _missing("headless Chromium (chromium + chromedriver)", "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
