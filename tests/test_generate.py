import math

import torch

from vaelab.config import ModelConfig
from vaelab.generate import interpolate, lerp, reconstruct, sample, slerp
from vaelab.images import make_grid, pairs_grid
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
