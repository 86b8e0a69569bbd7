"""Likelihood Regret (vaelab.evaluation.regret) on a tiny VAE: never negative, larger for OOD-ish inputs,
seeded, and the model left as it was."""

import numpy as np
import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.config import ModelConfig
from vaelab.data import eval_view, load_dataset
from vaelab.errors import ConfigError
from vaelab.evaluation.regret import check_regret_model, likelihood_regret
from vaelab.models import build_model

TINY = ["data.dataset=digits", "model.arch=mlp", "model.latent_dim=8", "train.epochs=4", "train.lr=3e-3",
        "data.binarize=static", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small MLP VAE trained on statically binarized 8x8 digits, its test images and binary noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("regret") / "run"
        train(load_config(overrides=TINY), out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    run = load_run(out)
    splits = load_dataset(run.config.data)
    test = eval_view(splits.test, "test", "static", run.config.data.binarize_seed).images[:24]
    noise = (torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).to(torch.uint8) * 255
    return run.model, test, noise


def test_regret_is_never_negative_and_larger_for_noise(tiny, one_thread):
    model, test, noise = tiny
    r_in = likelihood_regret(model, test, steps=40, lr=1e-3, k=32, batch_size=12)
    r_out = likelihood_regret(model, noise, steps=40, lr=1e-3, k=32, batch_size=12)
    for r in (r_in, r_out):
        assert r.regret.shape == (24,) and np.isfinite(r.regret).all() and (r.regret >= 0).all()
        # the regret is the gain of the better encoder: zero exactly where fine-tuning did not help
        assert np.allclose(r.regret, np.maximum(r.after - r.before, 0))
        assert (r.regret > 0).any()
    # an encoder trained on digits gives noise a poor posterior: fine-tuning it gains far more there
    assert r_out.regret.mean() > 2 * r_in.regret.mean()
    assert np.median(r_out.regret) > np.median(r_in.regret)


def test_regret_is_seeded_and_leaves_the_model_unchanged(tiny, one_thread):
    model, test, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    a = likelihood_regret(model, test[:6], steps=5, k=8, batch_size=4, seed=11)
    b = likelihood_regret(model, test[:6], steps=5, k=8, batch_size=4, seed=11)
    assert np.array_equal(a.regret, b.regret) and np.array_equal(a.before, b.before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert a.steps == 5 and a.k == 8 and a.seconds > 0


def test_more_steps_regret_more(tiny, one_thread):
    """The fine-tuned bound improves with the steps: the regret is an optimisation's gain, not noise."""
    model, _, noise = tiny
    few = likelihood_regret(model, noise[:8], steps=2, lr=1e-3, k=32, batch_size=8)
    many = likelihood_regret(model, noise[:8], steps=60, lr=1e-3, k=32, batch_size=8)
    assert np.array_equal(few.before, many.before)  # the same seeded noise scores the trained encoder
    assert many.regret.mean() > few.regret.mean()


def test_regret_needs_a_single_latent_vae(tiny):
    shape = (1, 8, 8)
    for cfg in (ModelConfig(kind="ae", arch="mlp", latent_dim=3, mlp_hidden=(16,)),
                ModelConfig(kind="hvae", hvae_latents=(2, 2), hvae_channels=8)):
        with pytest.raises(ConfigError, match="Likelihood Regret"):
            check_regret_model(build_model(cfg, shape))
    model, test, _ = tiny
    with pytest.raises(ConfigError, match="steps >= 1"):
        likelihood_regret(model, test[:2], steps=0)
