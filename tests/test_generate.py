import math

import numpy as np
import torch
from PIL import Image

from vaelab.config import ModelConfig
from vaelab.models.generate import interpolate, lerp, reconstruct, sample, slerp
from vaelab.report.images import DISPLAY_SCALE, make_grid, pairs_grid, upscale
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


# --------------------------------------------------------------------------- the pictures `vaelab sample`,
# `reconstruct` and `interpolate` write: the bare grid enlarged DISPLAY_SCALE times under a caption

PRETRAINED = "pretrained:fashion-mnist-vae"  # shipped with vaelab: 28x28 tiles, no training needed


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _placed(picture: np.ndarray, raw: np.ndarray) -> tuple[int, int]:
    """Where (top, left) the raw grid, enlarged DISPLAY_SCALE times, sits in the picture (bottom-aligned)."""
    big = upscale(raw, DISPLAY_SCALE)
    top = picture.shape[0] - big.shape[0]
    for left in range(picture.shape[1] - big.shape[1] + 1):
        if np.array_equal(picture[top:, left:left + big.shape[1]], big):
            return top, left
    raise AssertionError("the enlarged grid is not in the picture")


def _captions(monkeypatch) -> list:
    """Record the title of every picture the commands label (the real labelling still draws it)."""
    import vaelab.cli.generate as generate

    seen = []
    for name in ("label_grid", "labelled_square", "labelled_pairs"):
        real = getattr(generate, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("title"))
            return _real(*args, **kwargs)
        monkeypatch.setattr(generate, name, spy)
    return seen


def test_sample_writes_a_captioned_2x_picture_and_raw_keeps_the_bare_grid(tmp_path, monkeypatch, one_thread):
    from vaelab.cli import main

    args = ["sample", PRETRAINED, "-n", "9", "--temperature", "0.5", "--seed", "3"]
    assert main([*args, "--raw", "--out", str(tmp_path / "raw.png")]) == 0
    raw = _png(tmp_path / "raw.png")
    assert raw.shape == (3 * 30 + 2, 3 * 30 + 2)  # 28-px tiles, 2 px apart, one pixel per pixel
    seen = _captions(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "pic.png")]) == 0
    pic = _png(tmp_path / "pic.png")
    top, left = _placed(pic, raw)
    assert left == 0 and pic.shape[0] == top + 2 * raw.shape[0] and pic.shape[1] >= 2 * raw.shape[1]
    assert top >= 3 * 10 and pic[:top].min() < 128  # a header band of three lines, with dark text in it
    title = " / ".join(seen[0])
    for words in (PRETRAINED, "9 samples", "temperature 0.5", "seed 3", "std x 0.5", "checkpoint best (epoch 10)"):
        assert words in title, words
    assert "EMA" not in title  # the shipped model was trained without train.ema
    # the same seed draws the same picture
    assert main([*args, "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "pic.png").read_bytes()


def test_reconstruct_and_interpolate_pictures_are_labelled(tmp_path, monkeypatch, fashion_mnist_dir, one_thread):
    from vaelab.cli import main

    recon = ["reconstruct", PRETRAINED, "-n", "8", "--seed", "1"]
    paths = ["interpolate", PRETRAINED, "--pairs", "2", "--steps", "7", "--split", "val"]
    for args, name in ((recon, "r"), (paths, "i")):
        assert main([*args, "--raw", "--out", str(tmp_path / f"{name}-raw.png")]) == 0
    seen = _captions(monkeypatch)
    for args, name in ((recon, "r"), (paths, "i")):
        assert main([*args, "--out", str(tmp_path / f"{name}.png")]) == 0
    raw, pic = _png(tmp_path / "r-raw.png"), _png(tmp_path / "r.png")
    assert raw.shape[1] == 4 * 30 + 2  # 2 pairs per row
    top, left = _placed(pic, raw)
    assert left == 0 and top > 0 and pic[:top].min() < 128  # title and the image/recon column heads
    assert "8 test images beside their reconstructions" in seen[0][0] and "seed 1" in seen[0][1]
    raw, pic = _png(tmp_path / "i-raw.png"), _png(tmp_path / "i.png")
    assert raw.shape == (4 * 30 + 2, 7 * 30 + 2)  # 2 pairs x (lerp, slerp)
    top, left = _placed(pic, raw)
    assert top > 0 and pic[:top].min() < 128  # title, A and B over the end columns
    assert left > 0 and pic[top:, :left].min() < 128  # row labels: the method and the two images
    for r in range(4):  # a label beside every row
        y = top + DISPLAY_SCALE * (2 + r * 30)
        assert pic[y:y + DISPLAY_SCALE * 28, :left].min() < 128, r
    title = " / ".join(seen[1])
    assert "two val images" in title and "lerp (linear) and slerp (spherical)" in title and "7 steps" in title


def test_the_caption_names_a_run_directory_and_its_moving_average(tmp_path, monkeypatch, one_thread):
    from vaelab import load_config, train
    from vaelab.cli import main

    cfg = load_config(overrides=["data.dataset=digits", "data.image_size=8", "data.val_size=100", "model.arch=mlp",
                                 "model.mlp_hidden=[16]", "train.epochs=1", "train.grid_every=0", "train.grid_size=4",
                                 "eval.nll_images=0", "train.ema=0.9"])
    train(cfg, tmp_path / "ema-run", log=lambda m: None, progress=False)
    seen = _captions(monkeypatch)
    assert main(["sample", str(tmp_path / "ema-run"), "-n", "4", "--checkpoint", "last"]) == 0
    title = " / ".join(seen[0])
    assert title.startswith("ema-run: 4 samples") and "checkpoint last (epoch 1), EMA weights (decay 0.9)" in title
    pic = _png(tmp_path / "ema-run" / "images" / "samples_seed0_t1.png")  # the default place
    assert pic.shape[0] > DISPLAY_SCALE * (2 * 26 + 2) and pic[:30].min() < 128  # 8-px tiles shown at 24 px, x2
