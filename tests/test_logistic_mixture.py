"""The discretized logistic mixture likelihood of 8-bit pixels (Salimans et al. 2017)."""

import math

import pytest
import torch

from vaelab import objectives as obj
from vaelab.models.distributions import LogisticMixtureLikelihood


def _params(k, c=1, h=3, w=2, seed=0, scale_shift=-1.5):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(2, c, 3, k, h, w, generator=g, dtype=torch.float64) * 2
    p[:, :, 1] = 0.9 * torch.tanh(p[:, :, 1])  # means inside the data range
    p[:, :, 2] = scale_shift + 0.3 * p[:, :, 2]  # log scales around e^-1.5: mass spread over tens of levels
    return p.view(2, c * 3 * k, h, w)


def _per_pixel_log_probs(params, c):
    """log P(level) for every level, pixel and channel: (256, B, C, H, W), scoring 1x1x1 crops."""
    b, _, h, w = params.shape
    k = params.shape[1] // (3 * c)
    out = torch.empty(256, b, c, h, w, dtype=torch.float64)
    p = params.view(b, c, 3 * k, h, w)
    for level in range(256):
        x = torch.full((b, 1, 1, 1), level / 255.0, dtype=torch.float64)
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    out[level, :, ch, i, j] = obj.discretized_logistic_mixture_log_likelihood(
                        x, p[:, ch, :, i:i + 1, j:j + 1])
    return out


@pytest.mark.parametrize("k, shift", [(1, -1.5), (5, -1.5), (3, -6.0), (3, 2.0)])
def test_probabilities_of_all_256_levels_sum_to_one(k, shift):
    lp = _per_pixel_log_probs(_params(k, scale_shift=shift), c=1)
    total = torch.logsumexp(lp, 0).exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-9)


def test_matches_the_plain_cdf_difference_and_handles_the_edges():
    k = 2
    params = _params(k, h=1, w=1, scale_shift=-2.0)
    p = params.view(2, 3, k)
    logits, means, log_scales = p[:, 0], p[:, 1], p[:, 2]
    for level in (0, 1, 100, 254, 255):
        x = torch.full((2, 1, 1, 1), level / 255.0, dtype=torch.float64)
        centre = 2 * level / 255 - 1
        up = (centre + 1 / 255 - means) / log_scales.exp()
        lo = (centre - 1 / 255 - means) / log_scales.exp()
        # F(up) - F(lo), written as 1 - F in the upper tail so that float64 does not cancel
        mass = torch.where(up + lo > 0, torch.sigmoid(-lo) - torch.sigmoid(-up), torch.sigmoid(up) - torch.sigmoid(lo))
        if level == 0:
            mass = torch.sigmoid(up)
        if level == 255:
            mass = torch.sigmoid(-lo)
        direct = torch.log((torch.softmax(logits, 1) * mass).sum(1))
        ours = obj.discretized_logistic_mixture_log_likelihood(x, params)
        assert torch.allclose(ours, direct, atol=1e-8), level


def test_a_far_tail_is_computed_without_cancellation():
    # mean -4.36, scale e^-4.17: the bin at level 1 lies 218 nats deep in the upper tail, where both
    # CDFs round to 1 in float64; the mass is F(-lower) - F(-upper) of the survival function
    params = torch.tensor([-30.0, -4.3576, -4.1690], dtype=torch.float64).view(1, 3, 1, 1)  # K = 1
    x = torch.full((1, 1, 1, 1), 1 / 255, dtype=torch.float64)
    s, centre = math.exp(-4.1690), 2 / 255 - 1
    lo, hi = (centre - 1 / 255 + 4.3576) / s, (centre + 1 / 255 + 4.3576) / s
    # 1 - F(t) = e^-t / (1 + e^-t); the mass is (1 - F(lo)) - (1 - F(hi)), exact in float64 this deep
    exact = math.log(math.exp(-lo) / (1 + math.exp(-lo)) - math.exp(-hi) / (1 + math.exp(-hi)))
    ours = float(obj.discretized_logistic_mixture_log_likelihood(x, params))
    assert ours == pytest.approx(exact, abs=1e-6) and ours < -200


def test_wide_components_use_the_density_times_the_bin_width():
    params = torch.tensor([0.0, 0.1, 6.0], dtype=torch.float64).view(1, 3, 1, 1)  # scale e^6 = 403
    x = torch.full((1, 1, 1, 1), 128 / 255, dtype=torch.float64)
    s, v = math.exp(6.0), 2 * 128 / 255 - 1
    pdf = math.exp(-(v - 0.1) / s) / (s * (1 + math.exp(-(v - 0.1) / s)) ** 2)
    assert float(obj.discretized_logistic_mixture_log_likelihood(x, params)) == pytest.approx(
        math.log(pdf * 2 / 255), abs=1e-6)


def test_far_tails_stay_finite_with_finite_gradients():
    params = torch.zeros(1, 3, 1, 2, requires_grad=True)
    with torch.no_grad():
        params[0, 1, 0, 0] = -1.0  # mean at the black end, x white: 1e-30-ish mass
        params[0, 2] = -7.0  # the narrowest scale allowed
    x = torch.tensor([[[[1.0, 120 / 255]]]])
    lp = obj.discretized_logistic_mixture_log_likelihood(x, params)
    assert torch.isfinite(lp).all() and lp.item() < -100
    lp.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_mean_and_samples_of_the_likelihood_object():
    lik = LogisticMixtureLikelihood(3)
    params = _params(3, c=2, h=4, w=4, scale_shift=-4.0).float()
    m = lik.mean(params)
    assert m.shape == (2, 2, 4, 4) and (m >= 0).all() and (m <= 1).all()
    draws = torch.stack([lik.sample(params, torch.Generator().manual_seed(s)) for s in range(300)])
    assert torch.equal(draws * 255, (draws * 255).round())  # on the 8-bit grid
    # with narrow components the sample average approaches the mixture mean
    assert (draws.mean(0) - m).abs().max() < 0.08
    assert torch.equal(lik.sample(params, torch.Generator().manual_seed(1)), draws[1])


def test_bad_parameter_shapes_are_refused():
    with pytest.raises(ValueError, match="3K values per channel"):
        obj.discretized_logistic_mixture_log_likelihood(torch.zeros(1, 1, 2, 2), torch.zeros(1, 4, 2, 2))
    assert math.isclose(float(LogisticMixtureLikelihood(4).params_per_channel), 12.0)


def test_a_vae_with_the_logistic_mixture_trains_on_8_bit_digits_and_reports_bits_per_dim(tmp_path):
    from vaelab import load_config, load_run, train

    cfg = load_config(overrides=["data.dataset=digits", "data.binarize=none", "model.likelihood=logistic_mixture",
                                 "model.mixture_components=3", "train.epochs=2", "train.grid_every=0",
                                 "train.grid_size=4", "eval.nll_images=20", "eval.nll_k=20"])
    result = train(cfg, tmp_path / "r", log=lambda m: None)
    assert result.history[1]["train"]["nelbo"] < result.history[0]["train"]["nelbo"]
    test = result.evaluation["nll"]["splits"]["test"]
    assert 0 < test["bits_per_dim"] < 8  # a probability of 8-bit pixels: at most 8 bits each for a sane model
    assert "logistics" in test["protocol"]["pixel_likelihood"]
    run = load_run(tmp_path / "r")
    assert run.model.decoder(torch.zeros(1, 20)).shape == (1, 9, 8, 8)  # digits at their 8x8; 3 x K values per pixel
    images = run.sample(4, seed=0)
    assert images.shape == (4, 1, 8, 8) and images.min() >= 0 and images.max() <= 1


def test_logistic_mixture_needs_8_bit_data_and_builds_into_the_hvae():
    from vaelab import load_config
    from vaelab.errors import ConfigError
    from vaelab.models import build_model

    with pytest.raises(ConfigError, match="set data.binarize = 'none'"):
        load_config(overrides=["model.likelihood=logistic_mixture"])
    cfg = load_config(overrides=["model.kind=hvae", "model.likelihood=logistic_mixture", "data.binarize=none"])
    model = build_model(cfg.model, (1, 28, 28))
    out = model(torch.rand(2, 1, 28, 28))
    assert out.x_params.shape == (2, 15, 28, 28)  # 5 components x 3 values


def test_the_elbo_table_gives_bits_per_dim_for_the_logistic_mixture():
    """Its -ELBO is a bound on a probability of the 8-bit data, so it has bits/dim (a Gaussian's has none)."""
    import math

    import torch

    from vaelab.config import ModelConfig
    from vaelab.data.splits import ImageSet
    from vaelab.evaluation.elbo import evaluate_images
    from vaelab.models import build_model

    torch.manual_seed(0)
    images = ImageSet(images=(torch.rand(6, 1, 8, 8) * 255).to(torch.uint8), labels=torch.zeros(6, dtype=torch.int64))
    for likelihood, has_bits in (("logistic_mixture", True), ("gaussian", False)):
        model = build_model(ModelConfig(likelihood=likelihood, latent_dim=2, conv_channels=(4,)), (1, 8, 8))
        s = evaluate_images(model, images, batch_size=3)
        if has_bits:
            assert s.bits_per_dim == pytest.approx(s.nelbo / (64 * math.log(2)), rel=1e-9)
        else:
            assert s.bits_per_dim is None
