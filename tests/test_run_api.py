import shutil

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.errors import DataError
from vaelab.models import DiagonalGaussian


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    cfg = load_config(overrides=["data.dataset=digits", "data.val_size=200", "data.image_size=16",
                                 "train.epochs=2", "train.grid_every=0", "train.grid_size=4", "eval.nll_k=10",
                                 "eval.nll_images=50"])
    train(cfg, root / "trained", log=lambda m: None)
    # "another machine": only the run directory travels, to a new place
    shutil.copytree(root / "trained", root / "elsewhere" / "copy")
    shutil.rmtree(root / "trained")
    return root / "elsewhere" / "copy"


def test_load_run_and_use_it(moved_run):
    run = load_run(moved_run)
    assert run.image_shape == (1, 16, 16) and run.config.model.kind == "vae"
    samples = run.sample(6, temperature=0.9, seed=3)
    assert samples.shape == (6, 1, 16, 16) and torch.equal(samples, run.sample(6, temperature=0.9, seed=3))
    q = run.encode(samples)
    assert isinstance(q, DiagonalGaussian) and q.mean.shape == (6, 20)
    assert run.decode(q.mean).shape == (6, 1, 16, 16)
    rec = run.reconstruct((samples * 255).to(torch.uint8))  # uint8 images are accepted too
    assert rec.shape == (6, 1, 16, 16)
    path = run.interpolate(samples[0], samples[1], steps=5)
    assert path.shape == (5, 1, 16, 16)
    assert "Run(" in repr(run)


def test_wrong_image_size_is_a_clear_error(moved_run):
    run = load_run(moved_run)
    with pytest.raises(DataError, match="trained on 1x16x16"):
        run.encode(torch.rand(2, 1, 28, 28))


def test_checkpoint_directory_itself_can_be_loaded(moved_run):
    run = load_run(moved_run / "checkpoints" / "last")
    assert run.meta["epoch"] == 2
