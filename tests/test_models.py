import pytest
import torch

from vaelab.config import ModelConfig, load_config
from vaelab.errors import ConfigError
from vaelab.models import VAE, Autoencoder, build_model
from vaelab.objectives import beta_vae_loss

SHAPES = [(1, 28, 28), (3, 64, 64), (1, 8, 8), (3, 30, 17)]
ARCHS = [dict(arch="conv"), dict(arch="conv", fc_hidden=64, kernel_size=3), dict(arch="mlp")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ARCHS, ids=["conv", "conv-k3-fc", "mlp"])
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_shapes(shape, arch, kind):
    model = build_model(ModelConfig(kind=kind, latent_dim=7, **arch), shape)
    x = torch.rand(4, *shape)
    out = model(x)
    assert out.x_params.shape == (4, *shape)
    assert out.z.shape == (4, 7) and out.kl.shape == (4,)
    assert model.decode(torch.randn(3, 7)).shape == (3, *shape)
    if kind == "vae":
        q = model.encode(x)
        assert q.mean.shape == q.logvar.shape == (4, 7)
        assert (out.kl > 0).all()
    else:
        assert model.encode(x).shape == (4, 7) and (out.kl == 0).all()


def test_classic_mlp_is_784_400_20():
    model = build_model(ModelConfig(arch="mlp"), (1, 28, 28))
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 40)]  # 40 = mean + logvar
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 400), (400, 784)]


def test_default_conv_is_the_seed_design():
    model = build_model(ModelConfig(), (1, 28, 28))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride) for c in convs] == [(32, (2, 2)), (64, (2, 2))]
    assert isinstance(model, VAE) and model.latent_dim == 20


def test_too_small_image_is_a_config_error():
    with pytest.raises(ConfigError, match="too small"):
        build_model(ModelConfig(conv_channels=(8, 8, 8, 8)), (1, 8, 8))


@pytest.mark.parametrize("kind", ["vae", "ae"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_one_step_changes_weights_and_lowers_loss_on_the_batch(kind, likelihood):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, likelihood=likelihood), (1, 28, 28))
    x = torch.bernoulli(torch.rand(16, 1, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss():
        torch.manual_seed(1)  # the same eps for the before/after comparison
        out = model(x)
        return beta_vae_loss(model.likelihood.log_prob(x, out.x_params), out.kl, 1.0).loss

    first = loss()
    first.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    params = [k for k, _ in model.named_parameters()]
    assert set(params) <= set(changed)
    with torch.no_grad():
        assert loss() < first


def test_save_load_identical_tensors_and_outputs(tmp_path):
    from vaelab.runs.checkpoint import load_checkpoint, save_checkpoint
    from vaelab.config import RunConfig, to_dict
    from vaelab.runs import model_from_checkpoint

    for kind in ("vae", "ae"):
        cfg = RunConfig().replace(model={"kind": kind, "latent_dim": 5})
        model = build_model(cfg.model, (1, 28, 28))
        if kind == "ae":
            model.fit_codes(torch.randn(100, 5) * 3 + 1)
        save_checkpoint(tmp_path, kind, {"model": model.state_dict()},
                        {"config": to_dict(cfg), "image_shape": [1, 28, 28]})
        loaded = load_checkpoint(tmp_path / kind)
        model2, cfg2 = model_from_checkpoint(loaded.meta, loaded.tensors["model"], kind)
        assert cfg2 == cfg
        for k, v in model.state_dict().items():
            assert torch.equal(v, model2.state_dict()[k]), k
        x = torch.rand(3, 1, 28, 28)
        model.eval(), model2.eval()
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(model(x, generator=g1).x_params, model2(x, generator=g2).x_params)
        assert torch.equal(model.prior_sample(4, generator=torch.Generator().manual_seed(0)),
                           model2.prior_sample(4, generator=torch.Generator().manual_seed(0)))


def test_autoencoder_samples_from_fitted_code_distribution():
    model = build_model(ModelConfig(kind="ae", latent_dim=3), (1, 8, 8))
    assert isinstance(model, Autoencoder)
    codes = torch.randn(5000, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])
    model.fit_codes(codes)
    z = model.prior_sample(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([3.0, -1.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0, 0.5]), atol=0.05, rtol=0)


@pytest.mark.parametrize("cin,cout,k,op,size", [(32, 1, 4, 0, 14), (32, 1, 4, 1, 7), (16, 1, 3, 1, 5), (64, 2, 4, 0, 7)])
def test_fold_transposed_conv_equals_torch_forward_and_backward(cin, cout, k, op, size):
    from vaelab.models.conv import FoldConvTranspose2d

    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(cin, cout, k, 2, (k - 1) // 2, output_padding=op)
    fold = FoldConvTranspose2d(cin, cout, k, 2, (k - 1) // 2, output_padding=op)
    fold.load_state_dict(ref.state_dict())
    x = torch.randn(5, cin, size, size)
    xa = x.clone().requires_grad_()
    xb = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    a, b = ref(xa), fold(xb)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fold.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4 * ref.weight.grad.abs().max().item())
    torch.testing.assert_close(fold.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("overrides", [[], ["model.fc_hidden=64"], ["model.conv_channels=[8,16,32]"]])
def test_channels_last_fast_paths_compute_the_contiguous_numbers(overrides):
    """The conv encoder and decoder skip format copies when their weights are channels-last (permuted
    linear weights, the fold layer): the same outputs and gradients as the contiguous model."""
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    a = build_model(cfg.model, (1, 28, 28))
    b = build_model(cfg.model, (1, 28, 28))
    b.load_state_dict(a.state_dict())
    b.to(memory_format=torch.channels_last)
    x = (torch.rand(6, 1, 28, 28) < 0.4).float()
    z = torch.randn(6, a.latent_dim)
    for model, inp in ((a, x), (b, x.contiguous(memory_format=torch.channels_last))):
        (model.encoder(inp).square().sum() + model.decoder(z).square().sum()).backward()
    torch.testing.assert_close(b.encoder(x), a.encoder(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.decoder(z), a.decoder(z), rtol=1e-5, atol=1e-5)
    assert b.decoder(z).is_contiguous(memory_format=torch.channels_last)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-4 * (pa.grad.abs().max().item() + 1e-6),
                                   msg=name)
