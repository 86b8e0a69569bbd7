"""The figures of vaelab.report.plots: valid, non-blank, deterministic PNGs; clear errors on empty input."""

from __future__ import annotations

import io
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

from vaelab.report import plots
from vaelab.report.plots import curves, evaluation


def _record(epoch: int, train: float, val: float, *, ae: bool = False, monitor: bool = True) -> dict:
    """A metrics record shaped like the ones train.py writes to metrics.jsonl."""
    def terms(x: float) -> dict:
        return {"n": 100, "loss": x, "recon": x - 5, "kl": 0.0 if ae else 5.0, "nelbo": None if ae else x,
                "stderr": 0.5, "bits_per_dim": None if ae else x / 100}

    rec = {"epoch": epoch, "step": 10 * epoch, "lr": 1e-3,
           "train": {"loss": train + 3, "recon": train - 2, "kl": 0.0 if ae else 5.0, "nelbo": train + 3},
           "val": terms(val), "best": True}
    rec["monitor"] = {"images": 100, "train": terms(train), "val": terms(val), "gap": val - train} if monitor else None
    return rec


def _history(n: int = 6, **kw) -> list[dict]:
    return [_record(e, 100 + 40 / e, 101 + 40 / e + 0.2 * e, **kw) for e in range(1, n + 1)]


def _roc(power: float) -> tuple[np.ndarray, np.ndarray, float]:
    fpr = np.linspace(0, 1, 41)
    return fpr, fpr ** power, 1 / (1 + power)


_rng = np.random.default_rng(0)
TEST_NLL = _rng.normal(0.15, 0.02, 400)
NOISE_NLL = _rng.normal(3.0, 0.2, 300)
KL = np.r_[_rng.exponential(1.0, 12), np.full(4, 1e-3)]

# name -> (function, arguments, keyword arguments, other keyword arguments that change the image)
CASES = {
    "training_curves": (plots.plot_training_curves, (_history(),), {"best_epoch": 4, "title": "VAE"},
                        {"best_epoch": 4, "stopped_epoch": 6, "title": "VAE"}),
    "histograms": (plots.plot_histograms, ({"test": TEST_NLL, "noise": NOISE_NLL},), {"xlabel": "NLL (bits/dim)"},
                   {"xlabel": "NLL (bits/dim)", "bins": 20}),
    "roc_curves": (plots.plot_roc_curves, ({"likelihood": _roc(3.0), "complexity": _roc(0.2)},), {},
                   {"title": "test vs noise"}),
    "kl_per_dimension": (plots.plot_kl_per_dimension, (KL,), {}, {"active": KL > 0.5}),
    "nll_vs_k": (plots.plot_nll_vs_k, ([1, 4, 16, 64], [95.0, 92.0, 90.5, 90.0]), {},
                 {"exact": 89.5, "elbo": 95.0}),
}


def _call(name: str, path, variant: bool = False):
    fn, args, kwargs, other = CASES[name]
    return fn(*args, path, **(other if variant else kwargs))


def _check_png(path) -> Image.Image:
    """A decodable PNG, at least 800 px wide, not blank."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    assert 800 <= image.width <= 1200 and 350 <= image.height <= 1200, image.size
    rgb = np.asarray(image.convert("RGB"))
    assert rgb.astype(float).std() > 10, "the image is (nearly) blank"
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = np.unique(packed).size
    assert colours > 50, f"only {colours} distinct colours"
    return image


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_is_a_readable_deterministic_png(tmp_path, name):
    out = tmp_path / "run" / "images"  # missing directories are created
    written = _call(name, str(out / "a.png"))  # a str path is accepted, a Path comes back
    assert written == out / "a.png" and written.is_file()
    _check_png(written)
    data = written.read_bytes()
    assert b"matplotlib" not in data.lower(), "the PNG names the software (its bytes change with versions)"
    assert _call(name, out / "b.png").read_bytes() == data  # same inputs, same bytes
    other = _call(name, out / "b.png", variant=True)  # replaces the file written before
    _check_png(other)
    assert other.read_bytes() != data
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary file left behind


@pytest.mark.parametrize("call", [
    lambda p: plots.plot_training_curves([], p),
    lambda p: plots.plot_histograms({}, p, xlabel="x"),
    lambda p: plots.plot_histograms({"test": np.array([])}, p, xlabel="x"),
    lambda p: plots.plot_roc_curves({}, p),
    lambda p: plots.plot_roc_curves({"a": (np.array([]), np.array([]), 0.5)}, p),
    lambda p: plots.plot_kl_per_dimension(np.array([]), p),
    lambda p: plots.plot_nll_vs_k([], [], p),
], ids=["curves", "hist-no-datasets", "hist-empty-dataset", "roc-no-curves", "roc-empty-curve", "kl", "nll-k"])
def test_empty_input_is_a_clear_error_and_writes_nothing(tmp_path, call):
    with pytest.raises(ValueError, match=r"(?i)needs|no values|non-empty"):
        call(tmp_path / "out" / "x.png")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("call, match", [
    (lambda p: plots.plot_training_curves([{"no": "epoch"}], p), "epoch"),
    (lambda p: plots.plot_training_curves([{"epoch": 1, "monitor": None, "val": None}], p), "no .* values"),
    (lambda p: plots.plot_histograms({"a": [np.nan, np.inf]}, p, xlabel="x"), "finite"),
    (lambda p: plots.plot_histograms({"a": [1.0, 2.0]}, p, xlabel="x", bins=0), "bins"),
    (lambda p: plots.plot_roc_curves({"a": ([0, 1], [0, 0.5, 1], 0.5)}, p), "equal length"),
    (lambda p: plots.plot_roc_curves({"a": ([0, 2], [0, 1], 0.5)}, p), r"\[0, 1\]"),
    (lambda p: plots.plot_kl_per_dimension(np.ones(4), p, active=np.ones(3, bool)), "3 entries"),
    (lambda p: plots.plot_kl_per_dimension(np.array([1.0, np.nan]), p), "finite"),
    (lambda p: plots.plot_nll_vs_k([1, 2], [3.0], p), "length"),
    (lambda p: plots.plot_nll_vs_k([0, 2], [3.0, 2.0], p), "positive integer"),
    (lambda p: plots.plot_nll_vs_k([1, 2], [3.0, 2.0], p, exact=float("nan")), "exact"),
])
def test_bad_input_is_a_clear_error(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_training_curves_without_monitor_or_validation(tmp_path):
    no_monitor = _history(monitor=False)  # validation of the whole split, no fixed subsets: one panel
    a = plots.plot_training_curves(no_monitor, tmp_path / "a.png", best_epoch=5)
    no_val = [{**r, "val": None} for r in no_monitor]  # no validation split at all: the running average only
    b = plots.plot_training_curves(no_val, tmp_path / "b.png")
    mixed = _history(3, monitor=False) + _history(6)[3:]  # monitoring switched on part-way
    c = plots.plot_training_curves(mixed, tmp_path / "c.png")
    images = [_check_png(p) for p in (a, b, c)]
    assert images[0].height < images[2].height  # no gap panel without monitor records
    assert len({p.read_bytes() for p in (a, b, c)}) == 3


def test_training_curves_of_an_autoencoder_use_the_loss(tmp_path):
    ae = _history(ae=True)
    assert curves._is_autoencoder(ae) and not curves._is_autoencoder(_history())
    # without validation the only hint is a KL of exactly zero
    assert curves._is_autoencoder([{**r, "monitor": None, "val": None} for r in ae])
    _check_png(plots.plot_training_curves(ae, tmp_path / "ae.png", best_epoch=2, stopped_epoch=6))
    single = plots.plot_training_curves(ae[:1], tmp_path / "one.png")  # one epoch: points, not lines
    _check_png(single)


def test_training_curves_with_a_huge_first_epoch(tmp_path):
    history = _history(8)
    history[0]["train"]["nelbo"] = 5000.0  # random weights: the first running average dwarfs the rest
    _check_png(plots.plot_training_curves(history, tmp_path / "c.png"))
    series = [np.array([r["train"]["nelbo"] for r in history]), np.array([r["monitor"]["val"]["nelbo"]
                                                                         for r in history])]
    low, high, clipped = curves._y_limits(series)
    assert clipped == 5000.0 and high < 200 and low < min(s.min() for s in series)
    assert curves._y_limits([np.array([5.0, 4.0, 3.0, 2.5])]) is None  # an ordinary curve keeps its range


def test_histograms_drop_non_finite_values_and_survive_wild_ranges(tmp_path):
    test = np.r_[TEST_NLL, np.nan, np.inf, -np.inf]
    a = plots.plot_histograms({"test": test, "noise": NOISE_NLL, "all-nan": np.full(5, np.nan)},
                              tmp_path / "a.png", xlabel="NLL (bits/dim)", title="NLL per dataset")
    _check_png(a)
    # noise 20x the test NLL: logarithmic shared bins, the test split still spread over many of them
    edges, log_x = evaluation._shared_bins([TEST_NLL, NOISE_NLL], 60)
    assert log_x
    low, high = np.quantile(TEST_NLL, [0.005, 0.995])
    assert ((edges > low) & (edges < high)).sum() >= 8  # linear bins would give it one or two
    # every dataset's central 99% lies inside, whatever one outlier does
    outlier = np.r_[TEST_NLL, 1e6]
    edges, _ = evaluation._shared_bins([outlier, NOISE_NLL], 60)
    assert edges[0] <= np.quantile(TEST_NLL, 0.005) and edges[-1] < 10
    _check_png(plots.plot_histograms({"test": outlier, "noise": NOISE_NLL}, tmp_path / "b.png", xlabel="x"))
    # scores of both signs and very different spreads: linear bins; one repeated value: a small window
    rng = np.random.default_rng(1)
    edges, log_x = evaluation._shared_bins([rng.normal(-5, 1, 100), rng.normal(400, 50, 100)], 30)
    assert not log_x and len(edges) == 31
    c = plots.plot_histograms({"constant": np.full(10, 2.0)}, tmp_path / "c.png", xlabel="x")
    _check_png(c)


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    plots.plot_roc_curves({"a": _roc(0.5)}, tmp_path / "r.png")
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    if not pyplot_loaded:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()
