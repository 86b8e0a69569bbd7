"""The deep hierarchical VAE (model.hvae_cell = "bottleneck", model.hvae_stages): several stochastic layers per
resolution sharing their bottom-up features, VDVAE-style bottleneck cells. Shapes, one step improves the loss,
IWAE bound >= ELBO, save and load round trip, LLR>0 = 0, and the older HVAE's parameters left as they were."""

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.config import ModelConfig, TrainConfig
from vaelab.errors import ConfigError
from vaelab.evaluation.likelihood import importance_sampled, llr_scores
from vaelab.models import HVAE, build_model
from vaelab.models.cells import Bottleneck
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.training.loss import training_loss

DEEP = dict(kind="hvae", hvae_cell="bottleneck", hvae_stages=(2, 3, 2), hvae_latents=(2, 2, 3, 3, 3, 4, 4),
            hvae_channels=16, hvae_blocks=1)


def _model(seed=0, shape=(1, 28, 28), **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**(DEEP | kw)), shape)


def _batch(n=6, shape=(1, 28, 28), seed=1):
    return torch.bernoulli(torch.full((n, *shape), 0.3), generator=torch.Generator().manual_seed(seed))


def test_layers_per_resolution_and_shapes(one_thread):
    model = _model()
    assert isinstance(model, HVAE) and model.n_layers == 7
    assert model.sizes == [(28, 28), (14, 14), (14, 14), (7, 7), (7, 7), (7, 7), (4, 4), (4, 4)]
    assert any(isinstance(m, Bottleneck) for m in model.modules())
    x = _batch()
    out = model(x)
    assert out.x_params.shape == x.shape and out.kl_layers.shape == (6, 7)
    assert torch.allclose(out.kl, out.kl_layers.sum(1))
    feats = model.bottom_up(x)
    assert len(feats) == 7 and feats[0] is feats[1] and feats[2] is feats[4]  # one stage, one set of features
    assert model.log_weights(x, 3, torch.Generator().manual_seed(0)).shape == (3, 6)
    assert model.sample_images(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)
    assert "bottleneck cells, 7 layers" in model.describe()
    rgb = _model(shape=(3, 13, 10))  # odd, non-square, colour
    assert rgb(_batch(2, (3, 13, 10))).x_params.shape == (2, 3, 13, 10)


def test_one_adam_step_improves_the_loss(one_thread):
    model = _model()
    x = _batch(16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(5)
    before = training_loss(model, x, TrainConfig(), 1.0).loss
    opt.zero_grad()
    before.backward()
    opt.step()
    torch.manual_seed(5)
    assert training_loss(model, x, TrainConfig(), 1.0).loss.item() < before.item() - 1.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_iwae_bound_is_above_the_elbo_and_llr_gt_0_is_zero(one_thread):
    model = _model().eval()
    x = _batch(5)
    est = importance_sampled(model, (x * 255).to(torch.uint8), k=30, seed=3)
    assert (est.log_px >= est.elbo).all() and (est.log_px > est.elbo).any()
    with torch.no_grad():  # L>0 is L itself: LLR>0 = L - L>0 = 0 with the same noise
        l0 = model.log_weights(x, 8, torch.Generator().manual_seed(1))
        l_gt_0 = model.log_weights(x, 8, torch.Generator().manual_seed(1), prior_layers=0)
    assert torch.equal(l0, l_gt_0)
    llr1 = llr_scores(model, (x * 255).to(torch.uint8), k=8, prior_layers=1, seed=1)
    assert llr1.llr.shape == (5,) and torch.isfinite(torch.as_tensor(llr1.llr)).all()


def test_the_original_hvae_keeps_its_parameters():
    """hvae_stages/hvae_cell at their defaults build the very model of older runs: same names, same init."""
    torch.manual_seed(0)
    plain = build_model(ModelConfig(kind="hvae"), (1, 28, 28))
    names = [n for n, _ in plain.named_parameters()]
    assert names[:3] == ["h_top", "down.0.conv.weight", "down.0.conv.bias"]
    assert "post_net.0.weight" in names and not any(isinstance(m, Bottleneck) for m in plain.modules())
    torch.manual_seed(0)
    staged = build_model(ModelConfig(kind="hvae", hvae_stages=(1, 1, 1)), (1, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), staged.state_dict().values()))


def test_config_rules_for_stages():
    with pytest.raises(ConfigError, match="must add up to len"):
        load_config(overrides=["model.kind=hvae", "model.hvae_stages=[2, 2]", "model.hvae_latents=[4, 4, 4]"])
    with pytest.raises(ConfigError, match="positive layer counts"):
        ModelConfig(kind="hvae", hvae_stages=(0, 3), hvae_latents=(4, 4, 4))
    # the order of the overrides does not matter: the sum is checked on the finished config
    assert load_config(overrides=["model.kind=hvae", "model.hvae_stages=[2, 2]",
                                  "model.hvae_latents=[2, 2, 3, 3]"]).model.hvae_stages == (2, 2)
    with pytest.raises(ConfigError, match="2 to 64"):
        ModelConfig(kind="hvae", hvae_latents=(4,) * 65)
    assert ModelConfig(kind="hvae", hvae_stages=(4, 6, 6), hvae_latents=(8,) * 16).latent_layers == 16


def test_trains_saves_and_loads_through_the_run_api(tmp_path, one_thread):
    cfg = load_config(overrides=["data.dataset=digits", "model.kind=hvae", "model.hvae_cell=bottleneck",
                                 "model.hvae_stages=[2, 2]", "model.hvae_latents=[2, 2, 3, 3]",
                                 "model.hvae_channels=16", "train.epochs=2", "train.grid_every=0",
                                 "train.grid_size=4", "eval.nll_images=8", "eval.nll_k=4", "eval.gap_images=0"])
    result = train(cfg, tmp_path / "run", log=lambda m: None, progress=False)
    assert result.history[-1]["val"]["loss"] < result.history[0]["val"]["loss"]
    run = load_run(tmp_path / "run")
    assert run.model.n_layers == 4 and run.model.cell == "bottleneck"
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "best").tensors["model"]
    assert saved.keys() == run.model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())
