"""`vaelab.report.figures`: one version of a run's figures, for its images/ folder and its HTML page."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import load_config, load_run, train
from vaelab.data import load_dataset, spread_index
from vaelab.models.generate import interpolate, reconstruct, sample
from vaelab.report.figures import (interpolations, reconstruction_figure, sample_figure, sample_grid, shown_index,
                                   write_run_images)
from vaelab.report.html import write_html_report
from vaelab.report.images import DISPLAY_SCALE, label_grid, make_grid, pairs_grid, save_png, square_grid, upscale

TINY = ["data.dataset=digits", "data.image_size=8", "data.val_size=200", "model.arch=mlp", "model.mlp_hidden=[32]",
        "train.epochs=1", "train.grid_every=0", "train.grid_size=16", "eval.nll_images=0"]
FILES = ("samples.png", "reconstructions.png", "interpolations.png")


def _images_as_training_wrote_them(model, splits, config, images_dir) -> None:
    """Trainer.write_images / _samples before `write_run_images` (vaelab 0.2, training/loop.py), kept
    here as the reference the figures must reproduce pixel for pixel."""
    tc = config.train
    save_png(square_grid(sample(model, tc.grid_size, 1.0, torch.Generator().manual_seed(tc.seed + 2))),
             images_dir / "samples.png")
    pick = spread_index(len(splits.test), max(2, tc.grid_size // 2), tc.seed + 4)
    test = splits.test.images[pick].float().div(255).to("cpu")
    save_png(pairs_grid(test, reconstruct(model, test)), images_dir / "reconstructions.png")
    rows = []
    for i in range(min(4, len(test) // 2)):
        for method in ("lerp", "slerp"):
            rows.append(interpolate(model, test[2 * i], test[2 * i + 1], steps=10, method=method))
    if rows:
        save_png(make_grid(torch.cat(rows), nrow=10), images_dir / "interpolations.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-epoch MLP VAE on 8x8 digits, its splits and its directory."""
    root = tmp_path_factory.mktemp("figures") / "run"
    cfg = load_config(overrides=TINY)
    splits = load_dataset(cfg.data)
    train(cfg, root, splits=splits, log=lambda m: None)
    return root, splits


def _grid_inside(picture: np.ndarray, grid: np.ndarray) -> tuple[int, int] | None:
    """Where (top, left) `grid` sits in `picture` (bottom-aligned, below the label band), or None."""
    top = picture.shape[0] - grid.shape[0]
    for left in range(picture.shape[1] - grid.shape[1] + 1):
        if np.array_equal(picture[top:, left:left + grid.shape[1]], grid):
            return top, left
    return None


def test_write_run_images_gives_the_bytes_of_a_trained_run(tiny, tmp_path):
    root, splits = tiny
    run = load_run(root)  # the best weights, as training had them when it wrote images/
    written = write_run_images(run.model, splits, run.config, tmp_path / "new")
    assert [p.name for p in written] == list(FILES)
    _images_as_training_wrote_them(run.model, splits, run.config, tmp_path / "old")
    for name in FILES:
        expected = (root / "images" / name).read_bytes()
        assert (tmp_path / "new" / name).read_bytes() == expected, name
    # each picture is the plain grid training used to write, pixel for pixel, enlarged DISPLAY_SCALE times
    # under a band of labels that is not blank
    for name in FILES:
        old = np.asarray(Image.open(tmp_path / "old" / name))
        new = np.asarray(Image.open(tmp_path / "new" / name))
        where = _grid_inside(new, upscale(old, DISPLAY_SCALE))
        assert where is not None, name
        top, left = where
        assert top > 0 and new[:top].min() < 128, name  # a label band with dark text in it
        assert new.shape[0] == top + DISPLAY_SCALE * old.shape[0]
    # the final samples.png is the picture of the per-epoch grid (plain) of the best weights
    assert save_png(sample_figure(run.model, run.config), tmp_path / "pic.png").read_bytes() == \
        (root / "images" / "samples.png").read_bytes()
    plain = sample_grid(run.model, run.config)
    assert np.array_equal(plain, np.asarray(Image.open(tmp_path / "old" / "samples.png")))


def test_pictures_are_enlarged_and_labelled(tiny):
    root, splits = tiny
    run = load_run(root)
    x = splits.test.images[:6].float() / 255
    paths = interpolations(run.model, x)
    raw, pic = paths.grid(), paths.figure()
    rows, cols = 6, 10
    cell = (raw.shape[0] - 2) // rows - 2
    assert raw.shape == (rows * (cell + 2) + 2, cols * (cell + 2) + 2)
    top, left = _grid_inside(pic, upscale(raw, 2))
    assert pic.shape[0] == top + 2 * raw.shape[0] and pic.shape[1] >= left + 2 * raw.shape[1]
    assert top > 0 and pic[:top].min() < 128  # title and column labels
    assert left > 0 and pic[top:, :left].min() < 128  # row labels: lerp 1, slerp 1, ...
    # each row label sits beside its own row: some ink in the label column at the height of every row
    for r in range(rows):
        y0 = top + 2 * (2 + r * (cell + 2))
        assert pic[y0:y0 + 2 * cell, :left].min() < 128, r
    one = paths.figure("lerp")
    assert one.shape[0] < pic.shape[0] and one[: one.shape[0] - 2 * paths.grid("lerp").shape[0]].min() < 128
    recon = reconstruction_figure(run.model, x)
    plain = pairs_grid(x, run.model.decode_mean(run.model.code(x)).detach())
    top, _ = _grid_inside(recon, upscale(plain, 2))
    assert recon.shape[0] == top + 2 * plain.shape[0] and recon[:top].min() < 128
    # the text is drawn in RGB pictures too
    rgb = label_grid(np.full((20, 20, 3), 200, np.uint8), 1, 1, title="x", row_labels=["r"], column_labels=["c"])
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.min() < 128


def test_the_picks_are_fixed_spread_out_and_follow_the_seed(tiny):
    _, splits = tiny
    cfg = load_config(overrides=TINY)
    index = shown_index(len(splits.test), cfg)
    assert len(index) == 8 and torch.equal(index, shown_index(len(splits.test), cfg))
    assert torch.equal(index, index.sort().values) and index.max() > len(splits.test) // 2  # not the first 8
    other = shown_index(len(splits.test), cfg, seed=cfg.train.seed + 1)
    assert not torch.equal(index, other)
    assert len(shown_index(1, cfg)) == 1 and len(shown_index(len(splits.test), load_config(
        overrides=[*TINY, "train.grid_size=1"]))) == 2  # at least one pair to interpolate


def test_interpolation_grid_alternates_lerp_and_slerp_rows(tiny):
    root, splits = tiny
    run = load_run(root)
    x = splits.test.images[:6].float() / 255
    paths = interpolations(run.model, x)
    assert paths.pairs == 3 and all(p.shape == (10, 1, 8, 8) for p in paths.lerp + paths.slerp)
    both, lerp, slerp = paths.grid(), paths.grid("lerp"), paths.grid("slerp")
    cell = (both.shape[0] - 2) // 6  # six rows of cells, each with its padding
    assert lerp.shape[0] == slerp.shape[0] == 3 * cell + 2
    for i in range(3):  # row 2i of the whole grid is lerp row i, row 2i + 1 slerp row i
        np.testing.assert_array_equal(both[2 + 2 * i * cell:(2 * i + 1) * cell], lerp[2 + i * cell:(i + 1) * cell])
        np.testing.assert_array_equal(both[2 + (2 * i + 1) * cell:(2 * i + 2) * cell],
                                      slerp[2 + i * cell:(i + 1) * cell])


class _Images(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.alts: dict[str, bytes] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.alts[a.get("alt", "")] = base64.b64decode(a["src"].split(",", 1)[1])


def test_the_page_shows_the_images_of_the_run_folder(tiny, tmp_path):
    root, _ = tiny
    page = write_html_report(root, tmp_path / "page.html", log=lambda m: None).read_text(encoding="utf-8")
    shown = _Images(page).alts
    assert shown["samples at temperature 1"] == (root / "images" / "samples.png").read_bytes()
    assert shown["test images beside their reconstructions"] == (root / "images" / "reconstructions.png").read_bytes()
    # another seed: other prior draws and other test images
    other = _Images(write_html_report(root, tmp_path / "other.html", seed=5, log=lambda m: None)
                    .read_text(encoding="utf-8")).alts
    assert other["samples at temperature 1"] != shown["samples at temperature 1"]
    assert other["test images beside their reconstructions"] != shown["test images beside their reconstructions"]
    # the 0.7 grid shows the same draws, shrunk towards the prior's centre: the same size, other pixels
    cold = Image.open(io.BytesIO(shown["samples at temperature 0.7"]))
    assert cold.size == Image.open(root / "images" / "samples.png").size
