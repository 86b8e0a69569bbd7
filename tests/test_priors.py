"""Priors: the standard normal and the VampPrior (Tomczak & Welling 2018)."""

import math

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab import objectives as obj
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.models import build_model, eval_mode

VAMP = ["model.prior=vamp", "model.pseudo_inputs=30"]


def _direct_log_mixture(z, means, logvars):
    comps = torch.stack([obj.log_normal_diag(z, m.expand_as(z), lv.expand_as(z)) for m, lv in zip(means, logvars)])
    return torch.logsumexp(comps, 0) - math.log(len(means))


def test_log_mixture_matches_the_direct_sum_and_integrates_to_one():
    g = torch.Generator().manual_seed(0)
    means, logvars = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g) * 0.5
    z = torch.randn(50, 2, generator=g) * 3
    assert torch.allclose(obj.log_mixture_diag(z, means, logvars), _direct_log_mixture(z, means, logvars),
                          atol=1e-5)
    # on a fine 2-D grid the density sums to 1 (a wrong normaliser, e.g. a missing log K, would not)
    step = 0.02
    axis = torch.arange(-12, 12, step, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    mass = obj.log_mixture_diag(grid, means.double(), logvars.double()).exp().sum() * step ** 2
    assert abs(float(mass) - 1.0) < 1e-4


def test_vamp_prior_density_of_a_real_model_integrates_to_one():
    cfg = load_config(overrides=[*VAMP, "model.latent_dim=1", "model.arch=mlp", "model.mlp_hidden=[16]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 4, 4))
    step = 0.001
    z = torch.arange(-30, 30, step).unsqueeze(1)
    with eval_mode(model):
        mass = model.log_prior(z).double().exp().sum() * step
    assert abs(float(mass) - 1.0) < 1e-3


def test_vamp_model_shapes_sampling_and_a_step_that_improves_the_loss():
    torch.manual_seed(0)
    model = build_model(load_config(overrides=VAMP).model, (1, 28, 28))
    assert model.pseudo_inputs().shape == (30, 1, 28, 28)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)).bernoulli()
    g = torch.Generator().manual_seed(2)
    out = model(x, generator=g)
    assert out.x_params.shape == x.shape and out.kl.shape == (16,)
    assert model.prior_sample(5, generator=torch.Generator().manual_seed(3)).shape == (5, 20)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss():
        o = model(x, generator=torch.Generator().manual_seed(2))
        return obj.beta_vae_loss(model.likelihood.log_prob(x, o.x_params), o.kl, 1.0).loss

    before = loss()
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss() < before
    assert model.pseudo_logits.grad is not None and model.pseudo_logits.grad.abs().sum() > 0  # u_k learn too


def test_iwae_bound_is_above_the_elbo_and_vamp_runs_train_save_and_load(tmp_path):
    cfg = load_config(overrides=[*VAMP, "data.dataset=digits", "train.epochs=2", "train.grid_every=0",
                                 "train.grid_size=4", "eval.nll_images=20", "eval.nll_k=50"])
    result = train(cfg, tmp_path / "r", log=lambda m: None)
    run = load_run(tmp_path / "r")
    assert run.model.prior == "vamp"
    assert torch.equal(run.model.pseudo_logits, result.model.pseudo_logits)
    images = result.splits.test.images[:20].clone()
    images = (images > 127).to(torch.uint8) * 255
    est = importance_sampled(run.model, images, k=200, batch_size=10)
    assert (est.log_px >= est.elbo - 1e-6).all()
    assert torch.isfinite(est.log_px).all()
    nll = result.evaluation["nll"]["splits"]["test"]
    assert math.isfinite(nll["nll"])


def test_vamp_prior_needs_a_vae():
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match="needs model.kind = 'vae'"):
        load_config(overrides=["model.prior=vamp", "model.kind=ae"])
