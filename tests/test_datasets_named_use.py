"""Using the standard datasets: their settings (binarized-mnist is never binarized again; the natural-image sets
want 8-bit pixels and the logistic mixture), their presets in configs/datasets/, and `vaelab evaluate --on NAME`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import named_fixtures as make
from vaelab import load_config
from vaelab.config import DataConfig, RunConfig
from vaelab.data import BUILTIN, IDX_DATASETS, NAMED, batches, eval_view, load_dataset, recommended, train_view
from vaelab.data.splits import DatasetSplits, ImageSet
from vaelab.errors import ConfigError
from vaelab.models import build_model
from vaelab.training.loss import training_loss

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs" / "datasets").glob("*.toml"))


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_binarized_mnist_keeps_its_fixed_bits(tmp_path, binarize):
    """Training and evaluation see exactly the bits of the .amat files, however the config binarizes."""
    train, _, test, _ = make.binarized_mnist(tmp_path, np.random.default_rng(21), n=(40, 10, 12))
    s = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(tmp_path), binarize=binarize, val_size=8))
    rows = {x.tobytes() for x in train}
    assert {x.numpy().tobytes() for x in s.train.images} | {x.numpy().tobytes() for x in s.val.images} == rows
    np.testing.assert_array_equal(s.test.images.numpy(), test)
    view, dynamic = train_view(s.train, binarize, 1234)
    assert torch.equal(view.images, s.train.images) and dynamic == (binarize == "dynamic")
    for name in ("val", "test"):
        assert torch.equal(eval_view(s.split(name), name, binarize, 1234).images, s.split(name).images)
    gen = torch.Generator().manual_seed(0)
    batch = next(batches(s.train.images, 16, dynamic=True, generator=gen))
    assert torch.equal(batch, s.train.images[:16].float() / 255)  # Bernoulli(0) = 0 and Bernoulli(1) = 1
    assert any("already binary" in n for n in s.notes)


def test_binarized_mnist_settings_that_would_break_it(tmp_path):
    make.binarized_mnist(tmp_path, np.random.default_rng(22), n=(20, 5, 5))
    with pytest.raises(ConfigError, match="data.image_size=32 would resample binarized-mnist"):
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(tmp_path), image_size=32, val_size=2))
    s = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(tmp_path), binarize="none", val_size=2))
    assert any("set data.binarize=static" in n for n in s.notes)


def test_natural_images_say_how_the_literature_models_them(tmp_path):
    make.cifar10(tmp_path, np.random.default_rng(23))
    s = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=2))  # binarize: the default
    assert s.image_shape == (3, 32, 32)
    assert any("model.likelihood=logistic_mixture" in n and "configs/datasets/cifar10.toml" in n for n in s.notes)
    s = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=2, binarize="none"))
    assert not any("logistic_mixture" in n for n in s.notes)
    assert recommended("celeba") == {"data.binarize": "none", "model.likelihood": "logistic_mixture"}
    assert recommended("binarized-mnist") == {"data.binarize": "static"} and recommended("mnist") == {}


def test_every_standard_dataset_has_a_preset():
    assert {p.stem for p in PRESETS} == {"cifar10", "svhn", "celeba", "omniglot", "kmnist", "emnist",
                                          "binarized-mnist"}
    assert set(NAMED) | set(IDX_DATASETS) | {"digits"} == set(BUILTIN)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_sets_the_recommended_settings_and_trains_a_step(path, one_thread):
    cfg = load_config(path)
    name = cfg.data.dataset
    assert name == path.stem and cfg.eval.nll_k >= 1000
    for key, value in recommended(name).items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == value, key
    shape = NAMED[name].image_shape if name in NAMED else (1, 28, 28)
    if cfg.data.image_size:
        shape = (shape[0], cfg.data.image_size, cfg.data.image_size)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, *shape), generator=gen).float() / 255
    if cfg.data.binarize != "none":
        x = x.bernoulli(generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    torch.manual_seed(1)
    before = float(training_loss(model, x, cfg.train, cfg.train.beta).loss.detach())
    for _ in range(3):
        opt.zero_grad()
        training_loss(model, x, cfg.train, cfg.train.beta).loss.backward()
        opt.step()
    torch.manual_seed(1)
    assert float(training_loss(model, x, cfg.train, cfg.train.beta).loss.detach()) < before


def _splits(shape: tuple[int, int, int], name: str) -> DatasetSplits:
    images = torch.randint(0, 256, (6, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    part = ImageSet(images, torch.zeros(6, dtype=torch.int64))
    return DatasetSplits(name, part, part, part, "synthetic")


@pytest.mark.parametrize("name", ["cifar10", "svhn", "celeba", "omniglot", "binarized-mnist", "emnist-letters"])
def test_on_accepts_each_as_an_unseen_dataset(tmp_path, name):
    """`vaelab evaluate RUN --on NAME@DIR` goes through the data catalog: each set comes in the run's shape."""
    from vaelab.evaluation.unseen import load_eval_set

    rng = np.random.default_rng(24)
    maker = {"celeba": make.celeba, "emnist-letters": make.emnist, **make.MAKERS}[name]
    maker(tmp_path, rng)
    grey = load_eval_set(f"{name}@{tmp_path}", RunConfig(), _splits((1, 28, 28), "fashion-mnist"), 2, 0)
    assert tuple(grey.images.shape) == (2, 1, 28, 28) and set(grey.images.unique().tolist()) <= {0, 255}
    rgb_cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "datasets" / "cifar10.toml")
    if name != "cifar10":
        rgb = load_eval_set(f"{name}@{tmp_path}", rgb_cfg, _splits((3, 32, 32), "cifar10"), 2, 0)
        assert tuple(rgb.images.shape) == (2, 3, 32, 32) and rgb.images.dtype == torch.uint8


def test_svhn_as_unseen_for_a_cifar10_run_is_its_test_images_unchanged(tmp_path):
    _, _, test_x, _ = make.svhn(tmp_path, np.random.default_rng(25), n_test=9)
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "datasets" / "cifar10.toml")
    from vaelab.evaluation.unseen import load_eval_set

    got = load_eval_set(f"svhn@{tmp_path}", cfg, _splits((3, 32, 32), "cifar10"), 4, 0)
    rows = {x.tobytes() for x in test_x}
    assert got.available == 9 and all(x.numpy().tobytes() in rows for x in got.images)  # 8-bit, not binarized


def test_the_cli_applies_a_datasets_recommended_settings_unless_given(capsys):
    """`vaelab train --set data.dataset=cifar10` trains on 8-bit pixels with the logistic mixture (the literature's
    setting); a --set or the config file still decides."""
    import argparse

    from vaelab.cli.common import _config_from_args

    def cfg(*overrides, config=None):
        return _config_from_args(argparse.Namespace(overrides=list(overrides), data_dir=None, config=config))

    c = cfg("data.dataset=cifar10")
    assert (c.data.binarize, c.model.likelihood) == ("none", "logistic_mixture")
    assert "note: cifar10 is trained with" in capsys.readouterr().out
    c = cfg("data.dataset=cifar10", "data.binarize=dynamic", "model.likelihood=bernoulli")
    assert (c.data.binarize, c.model.likelihood) == ("dynamic", "bernoulli")
    assert cfg().data.binarize == "dynamic" and "note:" not in capsys.readouterr().out  # fashion-mnist: as before
