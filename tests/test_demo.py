import json

import numpy as np
from PIL import Image

from vaelab import load_config
from vaelab.cli import main
from vaelab.data import sources
from vaelab.demo import run_demo


def test_demo_falls_back_to_digits_without_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")  # and VAELAB_OFFLINE=1 (conftest)
    lines = []
    cfg = load_config(overrides=["train.epochs=1", "train.grid_every=0", "train.grid_size=4", "eval.nll_k=5",
                                 "eval.nll_images=20"])
    monkeypatch.setattr("vaelab.demo.FALLBACK_EPOCHS", 1)
    summary = run_demo(cfg, tmp_path / "demo", log=lines.append)
    text = "\n".join(lines)
    assert "falling back to scikit-learn's digits" in text
    assert summary["dataset"] == "digits" and summary["image_shape"] == [1, 28, 28]
    # 64 samples of 28 px a side, 2 px apart, enlarged twice, each side under a band of labels that is not blank
    picture = np.asarray(Image.open(tmp_path / "demo" / "samples_vae_vs_ae.png"))
    grid = 8 * (28 + 2) + 2
    band = picture.shape[0] - 2 * grid
    assert 10 < band < 60 and picture[:band].min() < 128 and picture.shape[1] >= 2 * 2 * grid
    assert picture[:band, :picture.shape[1] // 2].min() < 128 and picture[:band, picture.shape[1] // 2:].min() < 128
    for kind in ("vae", "ae"):
        assert (tmp_path / "demo" / kind / "images" / "interpolations.png").is_file()
    text = (tmp_path / "demo" / "summary.txt").read_text()
    title, units = text.splitlines()[:2]
    assert title.startswith("vaelab demo: the VAE") and "digits (1x28x28" in title
    assert f"{summary['sizes']['train']} train" in title
    assert "nats per image" in units and "bits/dim" in units and "VAE -ELBO" in text
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["evaluation"]["ae"]["splits"]["test"]["nelbo"] is None
    assert saved["evaluation"]["vae"]["splits"]["test"]["nelbo"] > 0


def test_demo_command_on_fashion_mnist(tmp_path, fashion_mnist_dir, capsys):
    assert main(["demo", "--set", "train.epochs=1", "--set", "data.max_train=1000", "--set", "data.max_eval=500",
                 "--set", "train.grid_every=0", "--set", "eval.nll_k=5", "--set", "eval.nll_images=20",
                 "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "summary: fashion-mnist" in out and "gap" in out and "falling back" not in out
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2  # never overwrites a finished demo
