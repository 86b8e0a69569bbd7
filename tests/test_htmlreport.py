"""`vaelab report`: the self-contained HTML page of a run, checked as text and as a browser shows it."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import load_config, load_run, load_run_data, train
from vaelab.cli import main
from vaelab.data import load_dataset, load_raw
from vaelab.report.html import (latent_map, map_images, markdown_to_html, run_latent_map, sample_pictures,
                               write_html_report)
from vaelab.report.plots import COLORS, plot_latent_map

# train.grid_size=16: the page shows the run's own grids (16 samples, 8 test images), each over 50 pixels
DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=16", "train.epochs=1",
          "eval.nll_images=0"]
SECTIONS = ["summary", "config", "curves", "evaluation", "samples", "reconstructions", "interpolations",
            "traversals", "latent-map", "evaluate"]
DATA_SECTIONS = ["reconstructions", "interpolations", "traversals", "latent-map"]
quiet = dict(log=lambda m: None)


class Page(HTMLParser):
    """The parts of a page the tests look at: section ids, missing sections, images, links, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.scripts: list[dict[str, str]] = []
        self.warnings = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.images.append(a)
        elif tag == "link":
            self.links.append(a)
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "div" and "warn" in a.get("class", "").split():
            self.warnings += 1


def _section(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}">')
    return text[start:text.index("</section>", start)]


def _png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config(overrides=DIGITS).data)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, digits):
    """A conv VAE (latent_dim 20: the map is a PCA) with the final NLL and a `vaelab evaluate --on noise`."""
    root = tmp_path_factory.mktemp("vae") / "run"
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.lr=3e-3", "eval.nll_images=50", "eval.nll_k=5"])
    train(cfg, root, splits=digits, **quiet)
    code = main(["evaluate", str(root), "--on", "noise", "-k", "5", "--nll-images", "50", "--set", "eval.ood_images=60",
                 "--set", "eval.ood_k=5", "--set", "eval.gap_images=20", "--set", "eval.refine_steps=5"])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def vae_report(vae_run):
    return write_html_report(vae_run, **quiet)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """An MLP VAE with a 2-D latent on an image folder (three digit classes), whose folder then moves away."""
    root = tmp_path_factory.mktemp("folder")
    raw = load_raw("digits")
    for i in range(300):
        label = int(raw.train_labels[i])
        if label < 3:
            (root / "images" / "digits3" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw.train_images[i, 0].numpy()).save(root / "images" / "digits3" / str(label) / f"{i}.png")
    cfg = load_config(overrides=[f"data.dataset=folder:{root / 'images' / 'digits3'}", "data.val_size=10",
                                 "train.grid_every=0", "train.epochs=2", "train.lr=3e-3", "eval.nll_images=0",
                                 "model.arch=mlp", "model.latent_dim=2", "model.mlp_hidden=[64]"])
    train(cfg, root / "run", **quiet)
    (root / "elsewhere").mkdir()
    shutil.move(root / "images" / "digits3", root / "elsewhere" / "digits3")
    return root / "run", root / "elsewhere"


# --------------------------------------------------------------------------- the page as text


def test_every_section_and_only_inline_png_images(vae_report):
    text = vae_report.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS and page.warnings == 0
    for sid in SECTIONS:
        assert f'href="#{sid}"' in text  # the contents list links every section
    assert not page.scripts and not page.links
    for bad in ('src="http', "src='http", "<script", 'href="http', "url(", "@import"):
        assert bad not in text
    assert len(page.images) >= 12
    sizes = [_png(img["src"]).size for img in page.images]
    assert all(w > 50 and h > 50 for w, h in sizes)
    # the numbers of the final evaluation and of `vaelab evaluate`, and the latter's plots
    evaluation = json.loads((vae_report.parent / "evaluation.json").read_text())
    final = _section(text, "evaluation")
    assert f"{evaluation['splits']['test']['nelbo']:.2f}" in final and "Importance-sampled" in final
    assert f"{evaluation['gap_test_minus_train']:.2f}" in final and "Fréchet" in final
    evaluate = _section(text, "evaluate")
    assert "Out-of-distribution detection" in evaluate and "noise" in evaluate
    alts = {img["alt"] for img in Page(evaluate).images}
    assert {"ROC noise", "NLL histograms", "KL per latent dimension"} <= alts
    assert "PCA" in _section(text, "latent-map") and "principal components" in _section(text, "latent-map")
    assert vae_report.stat().st_size < 3_000_000


def test_same_seed_same_page_other_seed_other_samples(vae_run, vae_report, tmp_path):
    again = write_html_report(vae_run, tmp_path / "again.html", **quiet)
    assert again.read_bytes() == vae_report.read_bytes()
    run = load_run(vae_run)
    a, b = sample_pictures(run, 0), sample_pictures(run, 1)
    assert a[0].png == sample_pictures(run, 0)[0].png and a[0].png != b[0].png


# --------------------------------------------------------------------------- the page as a browser shows it


def _not_blank(png: bytes, what: str) -> None:
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert grey.std() > 8 and len(np.unique(grey)) > 1, f"{what} looks blank (std {grey.std():.1f})"


def test_chromium_shows_every_image(browser, vae_report):
    from selenium.webdriver.common.by import By

    browser.get(vae_report.resolve().as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 12
    for img in images:
        ok = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        assert ok, f"image {img.get_attribute('alt')!r} did not load"
    figures = browser.find_elements(By.TAG_NAME, "figure")
    assert len(figures) == len(images)
    for fig in figures:
        browser.execute_script("arguments[0].scrollIntoView()", fig)
        _not_blank(fig.screenshot_as_png, f"figure {fig.find_element(By.TAG_NAME, 'img').get_attribute('alt')!r}")
    assert [s.get_attribute("id") for s in browser.find_elements(By.TAG_NAME, "section")] == SECTIONS
    _not_blank(browser.get_screenshot_as_png(), "the page")


# --------------------------------------------------------------------------- the latent map


def test_two_dimensional_latent_is_mapped_as_it_is(folder_run):
    run_dir, data_dir = folder_run
    out = write_html_report(run_dir, data_dir=data_dir, **quiet)
    run = load_run(run_dir)
    test = load_run_data(run, data_dir, download=False).test
    images = test.images[map_images(test, seed=0)]
    m = run_latent_map(run, images)
    means = run.encode(images.float() / 255).mean  # q(z|x)'s means, as the Run API gives them
    assert m.method == "latent" and m.axis_labels == ("z[0]", "z[1]")
    np.testing.assert_array_equal(m.xy, means.double().numpy())
    text = out.read_text(encoding="utf-8")
    assert "the latent space itself" in _section(text, "latent-map") and Page(text).warnings == 0


def test_larger_latents_are_projected_on_their_principal_components():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(500, 6, generator=gen) * torch.tensor([5.0, 0.1, 2.0, 0.1, 0.1, 0.1])
    m = latent_map(codes)
    assert m.method == "pca" and m.xy.shape == (500, 2)
    # the first axis follows dimension 0 (the largest spread), the second dimension 2
    centred = codes.double().numpy() - codes.double().numpy().mean(0)
    assert abs(np.corrcoef(m.xy[:, 0], centred[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(m.xy[:, 1], centred[:, 2])[0, 1]) > 0.99
    assert m.explained[0] > m.explained[1] > 0.1 and sum(m.explained) <= 1
    np.testing.assert_allclose(m.xy.var(0), centred.var(0)[[0, 2]], rtol=0.01)
    assert np.array_equal(latent_map(codes).xy, m.xy)


def test_latent_map_colours_each_label(tmp_path):
    xy = np.concatenate([np.random.default_rng(0).normal(c, 0.2, (100, 2)) for c in (0.0, 4.0, 8.0)])
    labels = np.repeat([0, 1, 2], 100)
    image = np.asarray(Image.open(plot_latent_map(xy, labels, tmp_path / "map.png",
                                                  class_names=("zero", "one", "two"))).convert("RGB"), dtype=float)
    for color in COLORS[:3]:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
        assert (np.abs(image - rgb).max(-1) < 40).sum() > 200, f"no points in {color}"
    assert (np.abs(image - np.array([int(COLORS[3][i:i + 2], 16) for i in (1, 3, 5)])).max(-1) < 40).sum() == 0


def test_markdown_of_the_evaluation_report_becomes_html():
    text = ("# Title\n\n- model: vae, checkpoint `best`\n- units: nats\n\nA *more* likely <tag> & **bold**.\n"
            "| split | NLL |\n|---|---|\n| test | 1.50 |\n\n![ROC noise](roc_noise.png)\nafter")
    out = markdown_to_html(text, lambda alt, target: f"[{alt}|{target}]")
    assert out.splitlines() == [
        "<h3>Title</h3>",
        "<ul><li>model: vae, checkpoint <code>best</code></li><li>units: nats</li></ul>",
        "<p>A <em>more</em> likely &lt;tag&gt; &amp; <strong>bold</strong>.</p>",
        '<table><thead><tr><th>split</th><th>NLL</th></tr></thead><tbody><tr><td>test</td>'
        '<td class="num">1.50</td></tr></tbody></table>',
        "[ROC noise|roc_noise.png]",
        "<p>after</p>",
    ]


# --------------------------------------------------------------------------- missing things


def test_missing_dataset_gives_a_report_with_a_visible_note(folder_run, tmp_path, capsys):
    run_dir, _ = folder_run
    page_file = tmp_path / "sub" / "page.html"
    assert main(["report", str(run_dir), "--out", str(page_file), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "note: missing reconstructions, interpolations, latent traversals, latent map" in out and "--data-dir" in out
    assert f"wrote {page_file}" in out
    text = page_file.read_text(encoding="utf-8")
    assert "seed 3" in text
    page = Page(text)
    assert page.sections == SECTIONS and page.warnings >= 5  # the summary at the top and one per missing section
    for sid in DATA_SECTIONS:
        body = _section(text, sid)
        assert "not found here" in body and "--data-dir" in body and "<img" not in body
    assert len(Page(_section(text, "samples")).images) == 2  # the checkpoint alone is enough for samples


def test_not_a_run_is_one_line_and_exit_2(tmp_path, vae_run, capsys):
    for argv in (["report", str(tmp_path / "nothing")], ["report", str(tmp_path)],
                 ["report", str(vae_run), "--checkpoint", "epoch-0099"], ["report", str(vae_run), "--seed", "-1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("vaelab: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "report.html").exists()


def test_a_run_still_training_shows_its_epochs_so_far(vae_run, tmp_path):
    run_dir = tmp_path / "running"
    shutil.copytree(vae_run, run_dir, ignore=shutil.ignore_patterns("eval*", "report.html", "checkpoints"))
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (run_dir / "metrics.jsonl").write_text(first + "\n" + first[:40])  # the second record half written
    text = write_html_report(run_dir, **quiet).read_text(encoding="utf-8")
    assert "still training" in text and "1 of 2 epochs" in text
    assert len(Page(_section(text, "curves")).images) == 1 and "could not be read" in _section(text, "curves")
    assert "has not finished" in _section(text, "evaluation")
    assert "no checkpoint yet" in _section(text, "samples")
    assert "has not been run" in _section(text, "evaluate")


# --------------------------------------------------------------------------- other models


@pytest.mark.parametrize("kind, overrides, says", [
    ("ae", ["model.kind=ae"], "fitted to the training codes"),
    ("hvae", ["model.kind=hvae", "model.hvae_channels=8", "model.hvae_latents=[2,2]"], "top layer z_L"),
])
def test_autoencoder_and_hierarchical_runs_get_a_report(kind, overrides, says, tmp_path):
    train(load_config(overrides=[*DIGITS, "data.max_train=400", *overrides]), tmp_path / kind, **quiet)
    text = write_html_report(tmp_path / kind, **quiet).read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS and page.warnings == 0 and len(page.images) >= 8
    assert says in text
    for img in page.images:
        _png(img["src"])


def test_a_run_without_final_evaluation_or_monitor_says_why(tmp_path, digits):
    # what a sweep trial looks like: trained with evaluate=False, no fixed subsets scored per epoch
    from vaelab.training.loop import Trainer

    cfg = load_config(overrides=[*DIGITS, "train.monitor_images=0"])
    Trainer(cfg, tmp_path / "trial", splits=digits, log=lambda m: None, progress=False).run(evaluate=False)
    text = write_html_report(tmp_path / "trial", **quiet).read_text()
    assert "trained without its final evaluation" in _section(text, "evaluation")
    curves = _section(text, "curves")
    assert "No gap panel" in curves and "Bottom: the generalization gap" not in curves


def test_a_monitored_run_has_the_gap_panel_caption(vae_run):
    text = write_html_report(vae_run, vae_run.parent / "monitored.html", **quiet).read_text()
    assert "Bottom: the generalization gap" in _section(text, "curves")


def test_a_demo_folder_names_its_runs(tmp_path, capsys):
    demo = tmp_path / "demo"
    for kind in ("vae", "ae"):
        (demo / kind / "checkpoints").mkdir(parents=True)
    (demo / "fidelity").mkdir()
    assert main(["report", str(demo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a demo folder" in err, err
    assert f"its runs are {demo / 'vae'} and {demo / 'ae'}: vaelab report {demo / 'vae'}" in err
    assert not (demo / "report.html").exists()


def test_the_evaluate_section_says_which_evaluation_it_shows_and_lists_the_others(vae_run, tmp_path):
    from vaelab.report.html import read_run_files
    from vaelab.report.html.sections import evaluate_section

    run = tmp_path / "run"
    shutil.copytree(vae_run, run, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    result = json.loads((run / "evaluation_best.json").read_text())
    # `vaelab evaluate --out RUN/eval-ood` (another result, same checkpoint) and an evaluation of another checkpoint
    shutil.copytree(run / "eval-best", run / "eval-ood")
    (run / "eval-ood" / "evaluation.json").write_text(json.dumps({**result, "epoch": 1}))
    (run / "evaluation_last.json").write_text(json.dumps({**result, "checkpoint": "last"}))
    text = evaluate_section(read_run_files(run), "best").body
    assert "This section shows <code>evaluation_best.json = eval-best/evaluation.json (checkpoint best" in text
    assert "2 other evaluation(s)" in text and "eval-ood/evaluation.json (checkpoint best, epoch 1; --on noise)" in text
    assert "shown below" in text and text.count("<details>") == 1  # the other one of this checkpoint, folded
    assert "evaluation_last.json (checkpoint last" in text and "--checkpoint last</code> shows it" in text
    assert "are not in" not in text  # each evaluation's plots come from its own folder
    # without the run's evaluation_best.json, the one in eval-*/ for this checkpoint is shown
    (run / "evaluation_best.json").unlink()
    shutil.rmtree(run / "eval-best")
    text = evaluate_section(read_run_files(run), "best").body
    assert "This section shows <code>eval-ood/evaluation.json (checkpoint best, epoch 1" in text
    assert "1 other evaluation(s)" in text and "<details>" not in text
    assert "Out-of-distribution detection" in text


# --------------------------------------------------------------------------- the whole-split NLL estimates

WHOLE_KEYS = ("nelbo_whole", "whole_n", "subset_offset", "nll_whole_estimate", "nll_whole_estimate_stderr")


def _nll_result(whole: bool = True) -> dict:
    """An evaluation's "nll" part: three splits of 5,000 images, NLL on 100 of each (the val row as the terminal
    prints it: subset -ELBO 465.38, whole split 465.31: offset +0.07; whole-split NLL 448.96 ± 1.49)."""
    splits = {}
    for name, nll, nelbo, nelbo_whole in [("train", 445.0, 461.0, 462.0), ("val", 449.03, 465.38, 465.31),
                                          ("test", 450.0, 466.0, 465.5)]:
        row = {"n": 100, "nll": nll, "stderr": 1.4, "nelbo": nelbo, "bits_per_dim": nll / (784 * np.log(2)),
               "ess": 3.0, "images_per_s": 10.0, "protocol": {"pixel_likelihood": "Bernoulli"}}
        if whole:
            row |= {"nll_minus_nelbo_stderr": 0.3, "nelbo_whole": nelbo_whole, "whole_n": 5000,
                    "subset_offset": nelbo - nelbo_whole, "nll_whole_estimate": nll - (nelbo - nelbo_whole),
                    "nll_whole_estimate_stderr": 1.49}
        splits[name] = row
    out = {"k": 5, "images": 100, "gap_test_minus_train": 5.0, "gap_stderr": 1.98, "splits": splits}
    return out | ({"gap_whole_estimate": 3.5, "gap_whole_estimate_stderr": 2.11} if whole else {})


def test_the_markdown_report_shows_the_whole_split_estimates_and_renders_without_them():
    from vaelab.report.markdown import markdown

    text = markdown({"nll": _nll_result()}, {})
    assert "| split | subset n | subset -ELBO | split n | whole-split -ELBO | offset | whole-split NLL | ± se | " \
           "bits/dim |" in text
    # 448.96 nats over 784 pixels: 0.8262 bits/dim
    assert "| val | 100 | 465.38 | 5000 | 465.31 | +0.07 | 448.96 | 1.49 | 0.8262 |" in text
    assert "| train | 100 | 461.00 | 5000 | 462.00 | -1.00 | 446.00 | 1.49 | 0.8207 |" in text
    assert "(test - train): **3.50 ± 2.11** nats" in text and "Nats per image" in text
    assert "Generalization gap of the NLL (test - train): **5.00 ± 1.98** nats" in text
    # an evaluation written before the estimates: the NLL table, and one line instead of theirs
    old = markdown({"nll": _nll_result(whole=False)}, {})
    assert "| test | 100 | 450.00 | 1.40 | 466.00 |" in old
    assert "whole-split NLL |" not in old and "Whole-split NLL estimates: not in this evaluation" in old
    # subsets that are the whole splits: nothing to carry over
    nll = _nll_result()
    for row in nll["splits"].values():
        row["whole_n"] = row["n"]
    assert "measured on the whole splits" in markdown({"nll": nll}, {})


def test_the_page_shows_the_whole_split_estimates_of_both_evaluations(vae_run, tmp_path):
    from vaelab.report.html import read_run_files
    from vaelab.report.html.sections import evaluate_section, evaluation_section

    run = tmp_path / "run"
    shutil.copytree(vae_run, run, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    for name, section in (("evaluation.json", evaluation_section(read_run_files(run)).body),
                          ("evaluation_best.json", evaluate_section(read_run_files(run), "best").body)):
        nll = json.loads((run / name).read_text())["nll"]
        assert "whole-split NLL" in section and "offset" in section, name
        for split, row in nll["splits"].items():
            assert row["n"] == 50 < row["whole_n"], (name, split)  # a subset of each split
            for value in (f"{row['nelbo_whole']:.2f}", f"{row['subset_offset']:+.2f}",
                          f"{row['nll_whole_estimate']:.2f}", f"{row['nll_whole_estimate_stderr']:.2f}"):
                assert f">{value}</td>" in section, (name, split, value)
        assert f"{nll['gap_whole_estimate']:.2f} ± {nll['gap_whole_estimate_stderr']:.2f}" in section, name
    # the same run evaluated before the estimates existed: the page renders, with a one-line note
    for name in ("evaluation.json", "evaluation_best.json", "eval-best/evaluation.json"):
        result = json.loads((run / name).read_text())
        for row in result["nll"]["splits"].values():
            for key in WHOLE_KEYS:
                row.pop(key)
        result["nll"].pop("gap_whole_estimate")
        (run / name).write_text(json.dumps(result))
    for section in (evaluation_section(read_run_files(run)).body, evaluate_section(read_run_files(run), "best").body):
        assert "not in this evaluation" in section and "whole-split NLL</th>" not in section
        assert "Importance-sampled" in section
