"""The hierarchical VAE (model.kind = "hvae"): shapes, training, importance weights, L>k and LLR>k, save/load,
`vaelab evaluate` with the LLR score."""

import json
import math

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.cli import main
from vaelab.config import ModelConfig, TrainConfig
from vaelab.errors import ConfigError
from vaelab.evaluation.likelihood import importance_sampled, llr_scores
from vaelab.training.loss import training_loss
from vaelab.models import HVAE, build_model, eval_mode
from vaelab import objectives as obj

SMALL = dict(kind="hvae", hvae_latents=(2, 3, 4), hvae_channels=8, hvae_blocks=1)


def _model(seed=0, shape=(1, 28, 28), **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**(SMALL | kw)), shape)


def _batch(n=6, shape=(1, 28, 28), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *shape), 0.3), generator=g)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny HVAE trained for one epoch on scikit-learn's digits (8x8) through vaelab.training.loop."""
    out = tmp_path_factory.mktemp("hvae") / "run"
    torch.set_num_threads(1)
    cfg = load_config(overrides=["data.dataset=digits", "model.kind=hvae", "model.hvae_channels=16",
                                 "model.hvae_latents=[4, 4, 4]", "train.epochs=2", "train.grid_every=0",
                                 "train.grid_size=4", "eval.nll_images=8", "eval.nll_k=4", "eval.gap_images=0"])
    train(cfg, out, log=lambda m: None, progress=False)
    return out


def test_shapes_of_every_output(one_thread):
    model = _model()
    x = _batch()
    assert isinstance(model, HVAE) and model.n_layers == 3
    assert model.sizes == [(28, 28), (14, 14), (7, 7), (4, 4)]
    out = model(x)
    assert out.x_params.shape == x.shape
    assert out.kl.shape == (6,) and out.kl_layers.shape == (6, 3)
    assert torch.allclose(out.kl, out.kl_layers.sum(1)) and (out.kl_layers >= -1e-5).all()
    assert model.latent_dim == 4 * 4 * 4 and out.z.shape == (6, 64) and out.posterior.mean.shape == (6, 64)
    lw = model.log_weights(x, 5, torch.Generator().manual_seed(0))
    assert lw.shape == (5, 6) and lw.dtype == torch.float64 and torch.isfinite(lw).all()
    assert model.encode(x).mean.shape == (6, 64) and model.code(x).shape == (6, 64)
    z = model.prior_sample(3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, 64)
    assert model.decode(z).shape == (3, 1, 28, 28)
    images = model.sample_images(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    # four layers, odd and non-square sizes, 3 channels
    deep = _model(shape=(3, 13, 10), hvae_latents=(2, 2, 2, 2))
    x3 = _batch(2, (3, 13, 10))
    assert deep.sizes == [(13, 10), (7, 5), (4, 3), (4, 3), (4, 3)]
    assert deep(x3).x_params.shape == x3.shape and deep(x3).kl_layers.shape == (2, 4)
    assert deep.log_weights(x3, 2, None, prior_layers=4).shape == (2, 2)


def test_decode_uses_the_conditional_prior_means_below_the_top(one_thread):
    model = _model()
    z = model.prior_sample(2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.decode(z), model.decode(z))  # deterministic: no noise below the top
    td = model.top_down(2, z_top=z, sample_lower=False)
    for i in range(model.n_layers - 1):
        assert torch.equal(td.z[i], td.p[i].mean)


def test_one_adam_step_improves_the_loss_on_a_fixed_batch(one_thread):
    model = _model()
    x = _batch(16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss():
        return training_loss(model, x, TrainConfig(), 1.0).loss

    torch.manual_seed(5)
    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    torch.manual_seed(5)
    assert loss().item() < before.item() - 1.0
    # every parameter took part in the ELBO's gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_free_bits_per_layer_and_the_iwae_objective(one_thread):
    model = _model()
    x = _batch(8)
    torch.manual_seed(2)
    out = model(x)
    torch.manual_seed(2)
    terms = training_loss(model, x, TrainConfig(free_bits=3.0, free_bits_mode="group"), 0.5)
    expect = -model.likelihood.log_prob(x, out.x_params).mean() + 0.5 * out.kl_layers.mean(0).clamp(min=3.0).sum()
    assert terms.loss.item() == pytest.approx(expect.item(), rel=1e-6)
    # IWAE: -L_k of the model's own joint weights, differentiable
    torch.manual_seed(4)
    iw = training_loss(model, x, TrainConfig(objective="iwae", iwae_k=4), 1.0)
    torch.manual_seed(4)
    lw = model.log_weights(x, 4)
    assert iw.loss.item() == pytest.approx(-obj.iwae_bound(lw).mean().item(), rel=1e-5)
    iw.loss.backward()
    assert model.post_net[0].weight.grad.abs().sum() > 0
    assert (iw.recon + iw.kl).mean().item() >= iw.loss.item() - 1e-3  # mean -log w >= -log mean w


def test_iwae_bound_is_above_the_elbo_of_the_same_samples(one_thread):
    model = _model().eval()
    x = _batch(6)
    with torch.no_grad():
        lw = model.log_weights(x, 50, torch.Generator().manual_seed(0))
    assert (obj.iwae_bound(lw) >= lw.mean(0)).all()
    est = importance_sampled(model, (x * 255).to(torch.uint8), k=50, seed=3)
    assert (est.log_px >= est.elbo).all() and (est.log_px > est.elbo).any()
    assert ((est.ess >= 1 - 1e-9) & (est.ess <= 50 + 1e-9)).all()


def test_forward_and_log_weights_draw_the_same_sample(one_thread):
    """With one sample and the same generator seed, log p(x|z) of the weights is the ELBO's reconstruction term."""
    model = _model().eval()
    x = _batch(4)
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(9))
        log_px_z, log_ratio = model.log_weight_terms(x, 1, torch.Generator().manual_seed(9))
    assert torch.allclose(log_px_z[0], model.likelihood.log_prob(x, out.x_params), atol=1e-4)
    assert log_ratio.shape == (1, 4)


def test_l_gt_0_is_the_ordinary_bound_and_llr_is_deterministic(one_thread):
    model = _model().eval()
    images = (_batch(5) * 255).to(torch.uint8)
    plain = importance_sampled(model, images, k=8, seed=4, batch_size=2)
    gt0 = importance_sampled(model, images, k=8, seed=4, batch_size=2, prior_layers=0)
    assert torch.equal(plain.log_px, gt0.log_px) and torch.equal(plain.elbo, gt0.elbo)
    assert torch.equal(plain.log_px - gt0.log_px, torch.zeros(5, dtype=torch.float64))  # LLR>0 = 0
    a = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2)
    b = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2)
    c = llr_scores(model, images, prior_layers=1, k=8, seed=5, batch_size=2)
    assert torch.isfinite(a.llr).all() and torch.equal(a.llr, b.llr) and not torch.equal(a.llr, c.llr)
    assert torch.equal(a.log_px, plain.log_px) and a.k == 8 and a.prior_layers == 1
    assert not torch.equal(a.log_px_gt, plain.log_px)  # L>1 is another bound
    # a precomputed L is reused, not recomputed
    reuse = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2, log_px=plain)
    assert torch.equal(reuse.llr, a.llr)
    with pytest.raises(ConfigError):
        llr_scores(model, images, prior_layers=0, k=8)
    with pytest.raises(ConfigError):
        importance_sampled(model, images, k=2, prior_layers=4)


def test_prior_layers_do_not_use_the_posterior_of_the_low_layers(one_thread):
    model = _model().eval()
    x = _batch(3)

    def broken(*args):
        raise AssertionError("q of the lowest layer was computed")

    model.post_net[0].forward = broken
    with torch.no_grad():
        assert torch.isfinite(model.log_weights(x, 2, torch.Generator().manual_seed(0), prior_layers=1)).all()
        with pytest.raises(AssertionError, match="lowest layer"):
            model.log_weights(x, 2, torch.Generator().manual_seed(0), prior_layers=0)


def test_the_vae_has_no_lower_layers_to_take_from_the_prior(one_thread):
    torch.manual_seed(0)
    vae = build_model(ModelConfig(arch="mlp", latent_dim=2, mlp_hidden=(8,)), (1, 2, 2)).eval()
    images = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8)
    with pytest.raises(ConfigError, match="hierarchical"):
        importance_sampled(vae, images, k=2, prior_layers=1)
    with pytest.raises(ValueError):
        vae.log_weights(images.float() / 255, 2, None, prior_layers=1)


def test_config_rules_for_hvae():
    with pytest.raises(ConfigError, match="hvae_latents"):
        ModelConfig(kind="hvae", hvae_latents=(4,))
    with pytest.raises(ConfigError, match="hvae_blocks"):
        ModelConfig(kind="hvae", hvae_blocks=9)
    with pytest.raises(ConfigError, match="hvae_channels"):
        ModelConfig(kind="hvae", hvae_channels=0)
    with pytest.raises(ConfigError, match="standard"):
        load_config(overrides=["model.kind=hvae", "model.prior=vamp"])
    with pytest.raises(ConfigError, match="group"):
        load_config(overrides=["model.kind=hvae", "train.free_bits=1"])
    cfg = load_config(overrides=["model.kind=hvae", "train.free_bits=1", "train.free_bits_mode=group",
                                 "train.objective=elbo", "model.hvae_latents=[4, 4, 4, 4]"])
    assert cfg.model.hvae_latents == (4, 4, 4, 4)


def test_save_load_round_trip_and_trained_bounds(digits_run, one_thread):
    run = load_run(digits_run)
    assert run.config.model.kind == "hvae" and isinstance(run.model, HVAE)
    # the same weights as the checkpoint, rebuilt from the config alone
    fresh = build_model(run.config.model, run.image_shape)
    fresh.load_state_dict(run.model.state_dict())
    x = (run.sample(4, temperature=1.0) > 0.5).float()
    with eval_mode(run.model), eval_mode(fresh):
        a = run.model.log_weights(x, 3, torch.Generator().manual_seed(1))
        b = fresh.log_weights(x, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert run.reconstruct(x).shape == x.shape and run.interpolate(x[0], x[1], steps=3).shape == (3, 1, 8, 8)
    # on a trained model, taking every layer from the prior is a much worse bound than L on real digits
    from vaelab.data import binarize_once, load_dataset

    splits = load_dataset(run.config.data)
    images = binarize_once(splits.test.images[:40], 5)
    full = importance_sampled(run.model, images, k=16, seed=2)
    all_prior = importance_sampled(run.model, images, k=16, seed=2, prior_layers=3)
    one = importance_sampled(run.model, images, k=16, seed=2, prior_layers=1)
    assert not torch.equal(full.log_px, all_prior.log_px) and not torch.equal(full.log_px, one.log_px)
    assert torch.isfinite(one.log_px).all() and torch.isfinite(all_prior.log_px).all()


def test_l_gt_k_falls_below_l_once_the_model_uses_its_latents(one_thread):
    """A model fitted to 32 fixed random 8x8 images must encode which image it sees: drawing the layers from
    the prior instead of q then explains the data far worse, the more layers the worse."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="hvae", hvae_latents=(4, 4, 4), hvae_channels=16), (1, 8, 8))
    x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.5), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        terms = training_loss(model, x, TrainConfig(), 1.0)
        terms.loss.backward()
        opt.step()
    assert terms.kl.mean() > 2.0  # the latents carry information
    images = (x * 255).to(torch.uint8)
    bounds = [importance_sampled(model, images, k=32, seed=1, prior_layers=j).log_px.mean().item() for j in range(4)]
    assert bounds[3] < bounds[0] - 2.0 and bounds[1] < bounds[0]


def test_llr_mode_sets_the_prior_layers_to_their_mean(one_thread):
    """eval.llr_mode = mode (Havtorn et al.'s code): the j lowest layers sit at the conditional prior's mean."""
    model = _model().eval()
    images = (_batch(4) * 255).to(torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        feats = model.bottom_up(x)
        td = model.top_down(4, feats, generator=torch.Generator().manual_seed(2), prior_layers=1, sample_lower=False)
    assert torch.equal(td.z[0], td.p[0].mean) and td.q[0] is None and td.q[1] is not None
    sampled = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2)
    mode = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2, prior_mode=True)
    again = llr_scores(model, images, prior_layers=1, k=8, seed=4, batch_size=2, prior_mode=True)
    assert torch.equal(mode.llr, again.llr) and torch.isfinite(mode.llr).all()
    assert torch.equal(mode.log_px, sampled.log_px) and not torch.equal(mode.log_px_gt, sampled.log_px_gt)
    with pytest.raises(ConfigError):
        importance_sampled(model, images, k=2, prior_mode=True)  # no layers from the prior: nothing to set


def test_vaelab_evaluate_on_noise_reports_the_llr_score(digits_run, tmp_path, capsys, one_thread):
    out = tmp_path / "ev"
    assert main(["evaluate", str(digits_run), "--on", "noise", "--k", "3", "--nll-images", "10",
                 "--set", "eval.ood_images=30", "--set", "eval.ood_k=4", "--set", "eval.gap_images=3",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LLR>1" in text and "no inference gaps" in text and "KL per stochastic layer" in text
    ev = json.loads((out / "evaluation.json").read_text())
    data = ev["datasets_eval"]
    assert data["llr_k"] == 1 and data["model"] == "hvae"
    m = data["ood"]["noise"]["LLR>1"]
    assert 0 <= m["auroc"] <= 1 and m["n_in"] == m["n_out"] == 30
    assert data["datasets"]["noise"]["llr"]["k"] == 4 and math.isfinite(data["datasets"]["noise"]["llr"]["mean"])
    assert "LLR>1" in data["score_notes"] and "k=4" in data["score_notes"]["LLR>1"]
    assert data["datasets"]["noise"]["llr"]["mode"] == "mode" and "mean" in data["score_notes"]["LLR>1"]
    assert "gaps" not in ev["inside"] and "gaps_skipped" in ev["inside"]
    assert len(ev["inside"]["collapse"]["kl_per_layer"]) == 3
    header = (out / "per_image_scores.csv").read_text().splitlines()[0]
    assert "LLR>1" in header


def test_generate_sample_draws_every_layer_from_the_prior():
    from vaelab.models.generate import sample

    torch.manual_seed(0)
    model = build_model(load_config(overrides=["model.kind=hvae"]).model, (1, 28, 28))
    images = sample(model, 3, 1.0, torch.Generator().manual_seed(4))
    with eval_mode(model):
        ancestral = model.sample_images(3, 1.0, torch.Generator().manual_seed(4))
        top_only = model.decode_mean(model.prior_sample(3, 1.0, torch.Generator().manual_seed(4)))
    assert torch.equal(images, ancestral) and not torch.equal(images, top_only)
