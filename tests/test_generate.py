import math

import torch

from vaelab.config import ModelConfig
from vaelab.models.generate import interpolate, lerp, reconstruct, sample, slerp
from vaelab.report.images import make_grid, pairs_grid
from vaelab.models import build_model


def test_lerp_and_slerp_end_points():
    z0, z1 = torch.randn(8), torch.randn(8)
    t = torch.linspace(0, 1, 5)
    for f in (lerp, slerp):
        path = f(z0, z1, t)
        assert path.shape == (5, 8)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)


def test_slerp_keeps_the_norm_on_a_circle_and_lerp_does_not():
    z0, z1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(slerp(z0, z1, t).norm(dim=1), torch.full((11,), 3.0))
    assert lerp(z0, z1, t).norm(dim=1)[5] < 3.0 / math.sqrt(2) + 1e-4
    # parallel vectors: falls back to the straight line
    torch.testing.assert_close(slerp(z0, 2 * z0, t)[5], 1.5 * z0)
    # opposite vectors and a zero code have no great circle: the straight line, finite everywhere
    opposite = slerp(z0, -z0, t)
    assert torch.isfinite(opposite).all()
    torch.testing.assert_close(opposite, lerp(z0, -z0, t))
    torch.testing.assert_close(slerp(torch.zeros(2), z1, t), lerp(torch.zeros(2), z1, t))
    # nearly parallel codes (float32 cosine rounds to 1) still interpolate smoothly, with the right ends
    near = slerp(z0, z0 + torch.tensor([0.0, 1e-4]), t)
    torch.testing.assert_close(near[0], z0)
    torch.testing.assert_close(near[-1], z0 + torch.tensor([0.0, 1e-4]))


def test_prior_sample_std_scales_with_temperature():
    from vaelab.models import Autoencoder

    vae = build_model(ModelConfig(latent_dim=64), (1, 28, 28))
    for temperature in (0.5, 2.0):
        z = vae.prior_sample(4000, temperature, torch.Generator().manual_seed(0))
        assert abs(z.std().item() - temperature) < 0.02 * temperature and abs(z.mean().item()) < 0.02
    ae = build_model(ModelConfig(kind="ae", latent_dim=3), (1, 28, 28))
    assert isinstance(ae, Autoencoder)
    ae.fit_codes(torch.tensor([[0.0, 10.0, -1.0], [2.0, 14.0, -1.0]]).repeat(50, 1))
    z = ae.prior_sample(4000, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, 12.0, -1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0)[:2], 0.5 * ae.code_std[:2], atol=0.03, rtol=0)


def test_sampling_is_seeded_and_temperature_scales_the_prior():
    model = build_model(ModelConfig(), (1, 28, 28))
    a = sample(model, 4, 1.0, torch.Generator().manual_seed(0))
    b = sample(model, 4, 1.0, torch.Generator().manual_seed(0))
    c = sample(model, 4, 1.0, torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    cold = sample(model, 3, 1e-8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cold[0], cold[2])  # temperature -> 0: every sample is the decoded prior mean
    assert model.training  # generation restores the mode it found


def test_interpolation_ends_at_the_reconstructions():
    model = build_model(ModelConfig(), (1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    path = interpolate(model, x[0], x[1], steps=6, method="lerp")
    rec = reconstruct(model, x)
    assert path.shape == (6, 1, 28, 28)
    torch.testing.assert_close(path[0], rec[0])
    torch.testing.assert_close(path[-1], rec[1])


def test_grids():
    images = torch.zeros(10, 1, 28, 28)
    images[3] = 1.0
    grid = make_grid(images, nrow=4, padding=2)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2) and grid.dtype.name == "uint8"
    assert grid[2 + 14, 2 + 3 * 30 + 14] == 255 and grid[2 + 14, 2 + 14] == 0
    rgb = make_grid(torch.rand(5, 3, 8, 8), nrow=5)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] == 24 + 4  # 8x8 enlarged x3
    pg = pairs_grid(torch.zeros(8, 1, 28, 28), torch.ones(8, 1, 28, 28))
    assert pg[2 + 14, 2 + 14] == 0 and pg[2 + 14, 2 + 30 + 14] == 255  # original, then its reconstruction


def test_latent_frame_units_per_model():
    from vaelab.models.generate import latent_frame

    codes = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    standard = latent_frame(build_model(ModelConfig(latent_dim=6), (1, 28, 28)), codes)
    assert torch.equal(standard.loc, torch.zeros(6)) and torch.equal(standard.scale, torch.ones(6))
    assert standard.units == "prior standard deviations"
    # the VampPrior has no per-dimension scale: the codes' own mean and spread
    vamp = latent_frame(build_model(ModelConfig(latent_dim=6, prior="vamp", pseudo_inputs=4), (1, 28, 28)), codes)
    torch.testing.assert_close(vamp.loc, codes.mean(0))
    torch.testing.assert_close(vamp.scale, codes.std(0))
    assert "VampPrior" in vamp.units
    # the autoencoder: the Gaussian fitted to its training codes
    ae = build_model(ModelConfig(kind="ae", latent_dim=6), (1, 28, 28))
    ae.fit_codes(codes)
    frame = latent_frame(ae, torch.zeros(3, 6))
    torch.testing.assert_close(frame.loc, codes.mean(0))
    torch.testing.assert_close(frame.scale, codes.std(0))
