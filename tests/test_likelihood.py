"""The importance-sampled likelihood against exact marginals, and the discretized Gaussian."""

import itertools
import math

import pytest
import torch

from vaelab import objectives as obj
from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.evaluation.likelihood import estimate_nll, importance_sampled, likelihood_protocol, summarize
from vaelab.models import build_model


def _tiny_vae(latent_dim: int, seed: int = 0, likelihood: str = "bernoulli"):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="mlp", latent_dim=latent_dim, mlp_hidden=(8,), likelihood=likelihood),
                        (1, 2, 2))
    with torch.no_grad():  # a decoder with strong, z-dependent logits: a marginal far from any one q
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model.eval()


def _all_binary_images() -> torch.Tensor:
    """The 16 binary 2x2 images as uint8 (16, 1, 2, 2)."""
    return torch.tensor(list(itertools.product([0, 255], repeat=4)), dtype=torch.uint8).view(16, 1, 2, 2)


@torch.no_grad()
def exact_log_px(model, images: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """log p(x) = log integral p(x|z) N(z; 0, I) dz by the midpoint rule on a fine grid (float64)."""
    n = 4001 if latent_dim == 1 else 401
    axis = torch.linspace(-8, 8, n, dtype=torch.float64)
    step = float(axis[1] - axis[0])
    grid = axis.view(-1, 1) if latent_dim == 1 else torch.cartesian_prod(axis, axis)
    x = images.float() / 255
    logits = model.decode(grid.float()).double()  # (G, 1, 2, 2)
    out = []
    log_pz = obj.log_standard_normal(grid)
    for xi in x.double():
        log_px_z = obj.bernoulli_log_likelihood(xi.expand_as(logits), logits)
        out.append(torch.logsumexp(log_px_z + log_pz, 0) + latent_dim * math.log(step))
    return torch.stack(out)


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_importance_sampling_converges_to_the_exact_marginal(latent_dim):
    model = _tiny_vae(latent_dim)
    images = _all_binary_images()
    exact = exact_log_px(model, images, latent_dim)
    # the quadrature itself is right: a distribution over the 16 possible images sums to 1
    assert torch.logsumexp(exact, 0).exp().item() == pytest.approx(1.0, abs=1e-6)
    # E[L_k] grows with k and stays below log p(x) (Burda et al. 2015, theorem 1): 200 independent
    # replicates of each image estimate the expectation, so the check is not at the mercy of noise
    reps = 200
    means = {}
    for k in (1, 10, 100):
        est = importance_sampled(model, images.repeat(reps, 1, 1, 1), k=k, seed=7, batch_size=512)
        per_image = est.log_px.view(reps, 16)
        if k == 1:
            torch.testing.assert_close(est.log_px, est.elbo)  # L_1 is the ELBO
        means[k] = per_image.mean(0)
        se = per_image.std(0) / math.sqrt(reps)
        assert (means[k] < exact + 4 * se + 1e-3).all(), (k, means[k] - exact, se)
    assert means[1].mean() < means[10].mean() < means[100].mean() < exact.mean()
    # single estimates with large k: their error shrinks towards 0 (Monte-Carlo noise only)
    errors = {}
    for k in (1000, 10000, 100_000):
        est = importance_sampled(model, images, k=k, seed=k)
        errors[k] = (exact - est.log_px).abs().mean().item()
        assert (est.elbo < exact).all()  # the ELBO, a k-sample average here, is below the exact marginal
    assert errors[100_000] < errors[1000] and errors[100_000] < 0.006, errors
    big = importance_sampled(model, images, k=20000, seed=8)
    elbo_gap = (exact - big.elbo)
    assert (elbo_gap > 0).all() and elbo_gap.mean() > 0.05  # a real gap that the k samples close


def test_memory_bound_does_not_change_the_numbers():
    model = _tiny_vae(2)
    images = _all_binary_images()
    a = importance_sampled(model, images, k=300, seed=3, max_decode=16)  # one sample of 16 images per call
    b = importance_sampled(model, images, k=300, seed=3, max_decode=100_000)
    torch.testing.assert_close(a.log_px, b.log_px, rtol=0, atol=1e-9)
    assert a.ess.min() >= 1 - 1e-9 and a.ess.max() <= 300 + 1e-9


def test_seeded_and_deterministic():
    model = _tiny_vae(1)
    images = _all_binary_images()
    a = importance_sampled(model, images, k=50, seed=1)
    b = importance_sampled(model, images, k=50, seed=1)
    c = importance_sampled(model, images, k=50, seed=2)
    assert torch.equal(a.log_px, b.log_px) and not torch.equal(a.log_px, c.log_px)


def test_summary_units_and_protocol():
    model = _tiny_vae(1)
    images = _all_binary_images()
    summary, est = estimate_nll(model, images, likelihood="bernoulli", binarize="dynamic", binarize_seed=1234,
                                k=20)
    assert summary.n == 16 and summary.k == 20
    assert summary.nll == pytest.approx(float(-est.log_px.mean()))
    assert summary.bits_per_dim == pytest.approx(summary.nll / (4 * math.log(2)))
    assert summary.nelbo >= summary.nll - 1e-9  # L_k >= ELBO on average (same samples)
    assert "k=20" in summary.protocol["estimator"] and summary.protocol["images"] == 16
    assert summary.stderr == pytest.approx(float(est.log_px.std() / 4))


def test_no_likelihood_for_bernoulli_on_grey_pixels_or_for_an_autoencoder():
    with pytest.raises(ConfigError, match="no likelihood"):
        likelihood_protocol("bernoulli", "none", 0, 10, 10)
    ae = build_model(ModelConfig(kind="ae", arch="mlp", latent_dim=2, mlp_hidden=(8,)), (1, 2, 2))
    with pytest.raises(ConfigError, match="autoencoder"):
        importance_sampled(ae, _all_binary_images(), k=2)
    with pytest.raises(ConfigError, match="k"):
        importance_sampled(_tiny_vae(1), _all_binary_images(), k=0)


def test_summarize_rejects_nothing():
    from vaelab.evaluation.likelihood import ImportanceEstimate

    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError):
        summarize(ImportanceEstimate(empty, empty, empty, 5), (1, 2, 2))


# --------------------------------------------------------------------------- discretized Gaussian


@pytest.mark.parametrize("mean,std", [(0.5, 0.1), (0.0, 0.01), (1.0, 0.3), (0.3, 0.001), (0.9, 5.0)])
def test_discretized_gaussian_sums_to_one_over_all_256_levels(mean, std):
    levels = torch.arange(256, dtype=torch.float32).div(255).view(256, 1)
    logp = obj.discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), std)
    assert torch.isfinite(logp).all()
    assert torch.logsumexp(logp.double(), 0).exp().item() == pytest.approx(1.0, abs=1e-6)


def test_discretized_gaussian_is_the_bin_mass():
    x = torch.tensor([[0.0, 100 / 255, 1.0]])
    mean, std = torch.tensor([[0.2, 0.4, 0.7]]), 0.1
    normal = torch.distributions.Normal(mean.double(), std)
    h = 0.5 / 255
    mass = torch.stack([normal.cdf(torch.tensor(h, dtype=torch.float64))[0, 0],
                        normal.cdf(x[0, 1].double() + h)[0, 1] - normal.cdf(x[0, 1].double() - h)[0, 1],
                        1 - normal.cdf(torch.tensor(1 - h, dtype=torch.float64))[0, 2]])
    assert obj.discretized_gaussian_log_likelihood(x, mean, std).item() == pytest.approx(mass.log().sum().item(),
                                                                                         rel=1e-5)


def test_discretized_gaussian_far_tails_stay_finite():
    x = torch.tensor([[0.5, 0.0, 1.0]])
    mean = torch.tensor([[-40.0, 60.0, -60.0]])  # 100s of standard deviations away
    logp = obj.discretized_gaussian_log_likelihood(x, mean, 0.1)
    assert torch.isfinite(logp).all() and logp.item() < -1e5


def test_gaussian_decoder_scores_8bit_images_with_a_probability():
    model = _tiny_vae(1, likelihood="gaussian")
    images = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    est = importance_sampled(model, images, k=10, seed=0)
    assert (est.log_px < 0).all()  # a probability of discrete data: log p <= 0, unlike a density
    summary, _ = estimate_nll(model, images, likelihood="gaussian", binarize="none", binarize_seed=0, k=10)
    assert "discretized" in summary.protocol["pixel_likelihood"]


def _reference_batch(model, x, k, generator, max_decode):
    """The estimator as it was before models got `log_weights` (vaelab 0.1, part 2): encode once, draw
    (S, B, D) noise per chunk, score with log p(x, z) - log q(z|x), fold into running log-sum-exps."""

    def log_weights(model, x, q, z, discrete):  # the old `likelihood.log_weights`, kept here as the reference
        s, b, d = z.shape
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        log_joint = model.log_joint(xs, z.reshape(s * b, d), discrete).view(s, b).double()
        return log_joint - (-0.5 * (obj.LOG_2PI + q.logvar + (z - q.mean).pow(2) / q.logvar.exp()).sum(-1).double())

    q = model.encode(x)
    b, d = q.mean.shape
    chunk = max(1, max_decode // b)
    lse = torch.full((b,), -math.inf, dtype=torch.float64)
    lse2 = lse.clone()
    total = torch.zeros(b, dtype=torch.float64)
    for start in range(0, k, chunk):
        s = min(chunk, k - start)
        eps = torch.randn((s, b, d), generator=generator, device=generator.device).to(x.device)
        lw = log_weights(model, x, q, q.mean + q.std * eps, True)
        lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        total += lw.sum(0)
    return lse - math.log(k), total / k, torch.exp(2 * lse - lse2)


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_model_log_weights_keep_the_vae_numbers_bit_identical(prior):
    """Moving the weights into `model.log_weights` changed no number: same noise, same order, same float ops."""
    from vaelab.data import batches
    from vaelab.models import eval_mode

    torch.manual_seed(3)
    model = build_model(ModelConfig(latent_dim=4, conv_channels=(8, 16), prior=prior, pseudo_inputs=5), (1, 12, 12))
    images = (torch.rand(10, 1, 12, 12) > 0.5).to(torch.uint8) * 255
    for k, batch_size, max_decode in [(20, 4, 4096), (13, 4, 10), (1, 3, 4096)]:
        est = importance_sampled(model, images, k=k, batch_size=batch_size, seed=5, max_decode=max_decode)
        gen = torch.Generator().manual_seed(5)
        parts = []
        with eval_mode(model):
            for x in batches(images, batch_size):
                parts.append(_reference_batch(model, x, k, gen, max_decode))
        for new, old in zip((est.log_px, est.elbo, est.ess), (torch.cat([p[i] for p in parts]) for i in range(3))):
            assert torch.equal(new, old)
