import dataclasses
import math

import pytest
import torch
from torch import nn

from vaelab import objectives as obj
from vaelab.evaluation import posterior as post
from vaelab.config import ModelConfig
from vaelab.models import ModelBase
from vaelab.models import DiagonalGaussian, build_model, eval_mode

SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds contention


def tiny_vae(seed: int = 0, latent_dim: int = 2, kind: str = "vae"):
    torch.manual_seed(seed)
    return build_model(ModelConfig(kind=kind, arch="mlp", latent_dim=latent_dim, mlp_hidden=(16,)), SHAPE)


def binary_images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def iwae_log_px(model, x, k: int, seed: int) -> torch.Tensor:
    """log p(x) estimated by the importance-weighted bound with the encoder as proposal, (B,)."""
    g = gen(seed)
    b, d = x.shape[0], model.latent_dim
    with eval_mode(model):
        q = model.encode(x)
        z = obj.reparameterize(q.mean.expand(k, b, d), q.logvar.expand(k, b, d), g).reshape(k * b, d)  # (K*B, D)
        q_flat = DiagonalGaussian(q.mean.repeat(k, 1), q.logvar.repeat(k, 1))  # (K*B, D)
        logw = (model.likelihood.log_prob(x.repeat(k, 1, 1, 1), model.decode(z)) + obj.log_standard_normal(z)
                - q_flat.log_prob(z)).view(k, b)  # (K, B)
    return obj.iwae_bound(logw)


# --------------------------------------------------------------------------- a linear-Gaussian model


class IdentityGaussianLikelihood:
    """p(x|z) = N(params, std^2 I): the decoder output is the mean itself (no sigmoid)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return obj.gaussian_log_likelihood(x, params, self.std)


class LinearGaussian(ModelBase):  # a model of our own: ModelBase gives the optional protocol methods
    """p(z) = N(0, I), p(x|z) = N(W z + b, std^2 I), with a (deliberately bad) linear encoder.

    W has orthogonal columns, so the exact posterior N(S W^T (x - b) / std^2, S), with
    S = (I + W^T W / std^2)^-1, is a *diagonal* Gaussian: the best q makes the ELBO equal
    log p(x) = log N(x; b, W W^T + std^2 I), and the approximation gap is exactly 0.
    """

    variational = True

    def __init__(self, pixels: int = 6, latent: int = 2, std: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        g = gen(seed)
        q, _ = torch.linalg.qr(torch.randn(pixels, latent, generator=g, dtype=torch.float64))
        scales = torch.linspace(2.0, 0.7, latent, dtype=torch.float64)
        self.w = nn.Parameter(q * scales)  # (P, D), W^T W = diag(scales^2)
        self.b = nn.Parameter(0.3 * torch.randn(pixels, generator=g, dtype=torch.float64))  # (P,)
        self.encoder = nn.Linear(pixels, 2 * latent, dtype=torch.float64)  # random: a bad encoder
        with torch.no_grad():
            self.encoder.weight.copy_(0.5 * torch.randn(2 * latent, pixels, generator=g, dtype=torch.float64))
            self.encoder.bias.copy_(0.5 * torch.randn(2 * latent, generator=g, dtype=torch.float64))
        self.likelihood = IdentityGaussianLikelihood(std)
        self.std = std
        self.image_shape = (1, 1, pixels)
        self.latent_dim = latent

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.w.T + self.b).view(-1, *self.image_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return obj.log_standard_normal(z)

    @torch.no_grad()
    def sample_x(self, n: int, seed: int) -> torch.Tensor:
        g = gen(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        return self.decode(z) + self.std * torch.randn(n, *self.image_shape, generator=g, dtype=torch.float64)

    @torch.no_grad()
    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.w @ self.w.T + self.std ** 2 * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        var = 1.0 / (1.0 + (self.w ** 2).sum(0) / self.std ** 2)  # (D,), diagonal as W^T W is
        mean = var * ((x.flatten(1) - self.b) @ self.w) / self.std ** 2  # (B, D)
        return DiagonalGaussian(mean, var.log().expand_as(mean))

    @torch.no_grad()
    def closed_form_elbo(self, x: torch.Tensor, q: DiagonalGaussian) -> torch.Tensor:
        """E_q[log p(x|z)] - KL(q || p), both analytic for a linear-Gaussian decoder, (B,)."""
        resid = (x.flatten(1) - q.mean @ self.w.T - self.b).pow(2).sum(1)
        trace = (q.logvar.exp() * (self.w ** 2).sum(0)).sum(1)
        p = len(self.b)
        expected = -(resid + trace) / (2 * self.std ** 2) - p * (math.log(self.std) + 0.5 * obj.LOG_2PI)
        return expected - q.kl_standard_normal()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- elbo_samples


def test_elbo_samples_matches_the_fully_closed_form_elbo_of_a_linear_gaussian_model():
    model = LinearGaussian()
    x = model.sample_x(4, seed=3)
    with torch.no_grad():
        q = model.encode(x)
        est = post.elbo_samples(model, x, q, 20_000, gen(0))
    exact = model.closed_form_elbo(x, q)
    assert est.shape == (4,)
    # standard error of the estimate from the spread of single-sample estimates
    with torch.no_grad():
        single = torch.stack([post.elbo_samples(model, x, q, 1, gen(100 + i)) for i in range(200)])
    se = single.std(0) / math.sqrt(20_000)
    assert ((est - exact).abs() < 5 * se + 1e-6).all(), (est, exact, se)


def test_elbo_samples_agrees_with_monte_carlo_recon_plus_analytic_kl_on_a_vae():
    model = tiny_vae()
    x = binary_images(3)
    n = 20_000
    with eval_mode(model):
        q = model.encode(x)
        est = post.elbo_samples(model, x, q, n, gen(0))
        # the usual estimator: log p(x|z) by Monte Carlo (independent draws), KL in closed form
        z = obj.reparameterize(q.mean.expand(n, 3, 2), q.logvar.expand(n, 3, 2), gen(1))  # (n, B, D)
        params = model.decode(z.reshape(n * 3, 2))
        log_px_z = model.likelihood.log_prob(x.repeat(n, 1, 1, 1), params).view(n, 3)
        reference = log_px_z.mean(0) - q.kl_standard_normal()
    torch.testing.assert_close(est, reference, atol=0.1, rtol=0.0)


def test_elbo_samples_is_repeatable_differentiable_and_chunked():
    model = tiny_vae()
    x = binary_images(3)
    sizes = []
    decode = model.decode

    def spy(z):
        sizes.append(len(z))
        return decode(z)

    model.decode = spy
    with torch.no_grad():
        q = model.encode(x)
    a = post.elbo_samples(model, x, q, 10_000, gen(5))
    assert max(sizes) <= 4096 and sum(sizes) == 3 * 10_000 and len(sizes) > 1
    b = post.elbo_samples(model, x, q, 10_000, gen(5))
    assert torch.equal(a, b)
    # a big batch is decoded whole but never more than one draw per image at a time
    sizes.clear()
    big = binary_images(5000, seed=2)
    with torch.no_grad():
        post.elbo_samples(model, big, model.encode(big), 3, gen(0))
    assert max(sizes) == 5000
    mean = q.mean.clone().requires_grad_(True)
    logvar = q.logvar.clone().requires_grad_(True)
    post.elbo_samples(model, x, DiagonalGaussian(mean, logvar), 4, gen(0)).sum().backward()
    assert mean.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        post.elbo_samples(model, x, q, 0, gen(0))


# --------------------------------------------------------------------------- refine_posterior


def test_refinement_raises_the_elbo_and_leaves_the_model_untouched():
    model = tiny_vae()
    model.train()
    x = binary_images(8)
    before = snapshot(model)
    refined = post.refine_posterior(model, x, steps=60, lr=0.05, n_samples=2, generator=gen(0))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert_unchanged(model, before)
    assert refined.mean.shape == refined.logvar.shape == (8, 2)
    assert not refined.mean.requires_grad and not refined.logvar.requires_grad
    with eval_mode(model):
        amortized = model.encode(x)
        elbo_a = post.elbo_samples(model, x, amortized, 2000, gen(9))
        elbo_r = post.elbo_samples(model, x, refined, 2000, gen(9))  # same draws: a fair comparison
    assert (elbo_r >= elbo_a - 0.05).all()
    assert elbo_r.mean() > elbo_a.mean() + 0.1  # an untrained encoder is far from the best q


def test_refinement_restores_mode_and_frozen_parameters_and_keeps_old_grads():
    model = tiny_vae()
    model.eval()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    first = next(model.decoder.parameters())
    first.grad = torch.ones_like(first)
    post.refine_posterior(model, binary_images(4), steps=5, generator=gen(0))
    assert not model.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert torch.equal(first.grad, torch.ones_like(first))


def test_refinement_never_ends_below_the_start_even_when_it_diverges():
    model = tiny_vae()
    x = binary_images(6)
    refined = post.refine_posterior(model, x, steps=20, lr=50.0, generator=gen(0))
    with eval_mode(model):
        amortized = model.encode(x)
        elbo_a = post.elbo_samples(model, x, amortized, 2000, gen(9))
        elbo_r = post.elbo_samples(model, x, refined, 2000, gen(9))
    assert torch.isfinite(elbo_r).all()
    assert (elbo_r >= elbo_a - 0.05).all()


def test_refinement_with_zero_steps_is_the_encoder_and_bad_arguments_raise():
    model = tiny_vae()
    x = binary_images(3)
    q = post.refine_posterior(model, x, steps=0)
    with torch.no_grad():
        enc = model.encode(x)
    assert torch.equal(q.mean, enc.mean) and torch.equal(q.logvar, enc.logvar)
    for kw in (dict(steps=-1), dict(lr=0.0), dict(n_samples=0), dict(select_samples=0)):
        with pytest.raises(ValueError):
            post.refine_posterior(model, x, **kw)
    ae = tiny_vae(kind="ae")
    with pytest.raises(ValueError, match="variational"):
        post.refine_posterior(ae, x)


def test_refinement_finds_the_exact_posterior_of_a_linear_gaussian_model():
    model = LinearGaussian()
    x = model.sample_x(5, seed=3)
    refined = post.refine_posterior(model, x, steps=500, lr=0.1, n_samples=4, generator=gen(0))
    exact = model.exact_posterior(x)
    torch.testing.assert_close(refined.mean, exact.mean, atol=0.05, rtol=0.0)
    torch.testing.assert_close(refined.logvar, exact.logvar, atol=0.1, rtol=0.0)
    # at the exact posterior the ELBO is log p(x)
    torch.testing.assert_close(model.closed_form_elbo(x, exact), model.exact_log_px(x))


# --------------------------------------------------------------------------- inference gaps


def test_inference_gaps_of_a_linear_gaussian_model_are_all_amortization():
    model = LinearGaussian()
    x = model.sample_x(5, seed=3)
    before = snapshot(model)
    log_px = model.exact_log_px(x)
    gaps = post.inference_gaps(model, x, log_px, steps=500, lr=0.1, train_samples=4, eval_samples=2000,
                               generator=gen(0))
    assert_unchanged(model, before)
    assert gaps.n == 5 and gaps.steps == 500 and gaps.lr == 0.1
    assert gaps.train_samples == 4 and gaps.eval_samples == 2000
    assert gaps.log_px == pytest.approx(float(log_px.mean()))
    assert abs(gaps.approximation_gap) < 0.02  # the family holds the exact posterior
    assert gaps.amortization_gap > 1.0  # the random encoder is far from it
    assert gaps.inference_gap == pytest.approx(gaps.amortization_gap + gaps.approximation_gap)
    # the amortized ELBO is the closed form's, up to Monte-Carlo error
    with torch.no_grad():
        exact_a = model.closed_form_elbo(x, model.encode(x)).mean()
    with torch.no_grad():
        spread = torch.stack([post.elbo_samples(model, x, model.encode(x), 1, gen(50 + i)) for i in range(200)])
    se = float(spread.std(0).pow(2).sum().sqrt()) / 5 / math.sqrt(2000)  # of the mean over 5 images
    assert abs(gaps.elbo_amortized - float(exact_a)) < 5 * se
    d = gaps.as_dict()
    assert set(d) == {"n", "elbo_amortized", "elbo_refined", "log_px", "amortization_gap", "approximation_gap",
                      "inference_gap", "steps", "lr", "train_samples", "eval_samples", "discrete"}
    assert d["amortization_gap"] == gaps.amortization_gap
    with pytest.raises(dataclasses.FrozenInstanceError):
        gaps.n = 3  # type: ignore[misc]


def test_inference_gaps_on_a_vae_are_repeatable_and_consistent_with_an_iwae_estimate():
    model = tiny_vae()
    x = binary_images(6)
    log_px = iwae_log_px(model, x, k=2000, seed=4)
    a = post.inference_gaps(model, x, log_px, steps=40, lr=0.05, eval_samples=200, generator=gen(1))
    b = post.inference_gaps(model, x, log_px, steps=40, lr=0.05, eval_samples=200, generator=gen(1))
    assert a == b
    assert a.amortization_gap > 0
    assert a.approximation_gap > -0.1  # log p(x) bounds every ELBO, up to estimator error
    assert a.inference_gap > a.amortization_gap - 0.1
    # a scalar log p(x) works too
    c = post.inference_gaps(model, x, float(log_px.mean()), steps=40, lr=0.05, eval_samples=200, generator=gen(1))
    assert c.log_px == pytest.approx(a.log_px) and c.elbo_refined == a.elbo_refined
    with pytest.raises(ValueError, match="log_px"):
        post.inference_gaps(model, x, log_px[:3], steps=1)


# --------------------------------------------------------------------------- posterior collapse


def test_kl_per_dimension_sums_to_the_mean_total_kl():
    g = gen(0)
    mean, logvar = torch.randn(50, 5, generator=g), 0.5 * torch.randn(50, 5, generator=g)
    per_dim = post.kl_per_dimension(mean, logvar)
    assert per_dim.shape == (5,) and (per_dim >= 0).all()
    torch.testing.assert_close(per_dim.sum(), obj.kl_standard_normal(mean, logvar).mean())
    # a dimension at the prior for every image carries no KL
    mean[:, 2], logvar[:, 2] = 0.0, 0.0
    assert post.kl_per_dimension(mean, logvar)[2] == 0


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    n = 1000
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)  # (N,), population variance exactly 1
    means = torch.stack([signs * 1.0, signs * math.sqrt(0.02) + 3.0, signs * math.sqrt(0.001)], dim=1)
    units = post.active_units(means)
    assert units.count == 2 and units.threshold == 0.01
    assert units.active.tolist() == [True, True, False]
    torch.testing.assert_close(units.variance, torch.tensor([1.0, 0.02, 0.001], dtype=torch.float64))
    assert post.active_units(means, threshold=0.0001).count == 3
    assert post.active_units(means, threshold=2.0).count == 0
    with pytest.raises(ValueError):
        post.active_units(means[:1])
    with pytest.raises(ValueError):
        post.active_units(means[:, 0])


def test_collapse_report_of_a_vae_and_refusal_of_an_autoencoder():
    model = tiny_vae(latent_dim=3)
    g = gen(2)
    images = torch.randint(0, 256, (50, *SHAPE), generator=g, dtype=torch.uint8)
    report = post.collapse_report(model, images, batch_size=16)
    assert report["latent_dim"] == 3 and report["n"] == 50 and report["threshold"] == 0.01
    assert len(report["variance"]) == len(report["kl_per_dim"]) == 3
    with eval_mode(model):
        q = model.encode(images.float() / 255)
    assert report["kl_total"] == pytest.approx(float(q.kl_standard_normal().mean()), rel=1e-5)
    assert report["kl_total"] == pytest.approx(sum(report["kl_per_dim"]))
    assert report["active_units"] == post.active_units(q.mean).count
    same = post.collapse_report(model, images.float() / 255, batch_size=1000)
    assert same["kl_per_dim"] == pytest.approx(report["kl_per_dim"], rel=1e-5)
    assert same["active_units"] == report["active_units"]
    ae = tiny_vae(latent_dim=3, kind="ae")
    with pytest.raises(ValueError, match="variational"):
        post.collapse_report(ae, images)


def test_a_collapsed_dimension_is_inactive_and_carries_no_kl():
    model = tiny_vae(latent_dim=3)
    last = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # rows 1 (mean of z_1) and 4 (logvar of z_1) output 0: q(z_1|x) = N(0, 1)
        last.weight[[1, 4]] = 0.0
        last.bias[[1, 4]] = 0.0
    images = torch.randint(0, 256, (40, *SHAPE), generator=gen(3), dtype=torch.uint8)
    report = post.collapse_report(model, images)
    assert report["variance"][1] == 0.0 and report["kl_per_dim"][1] == 0.0
    assert report["active_units"] <= 2


def test_discrete_scores_8_bit_pixels_with_the_likelihoods_probability():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", latent_dim=2, mlp_hidden=(16,), likelihood="gaussian"), SHAPE)
    x = torch.randint(0, 256, (4, *SHAPE), generator=gen(0)).float() / 255
    with eval_mode(model):
        q = model.encode(x)
        dense = post.elbo_samples(model, x, q, 50, gen(1))
        discrete = post.elbo_samples(model, x, q, 50, gen(1), discrete=True)
        z = obj.reparameterize(q.mean.expand(50, 4, 2), q.logvar.expand(50, 4, 2), gen(1)).reshape(200, 2)
        expected = (model.likelihood.discrete_log_prob(x.repeat(50, 1, 1, 1), model.decode(z)).view(50, 4).mean(0)
                    + (obj.log_standard_normal(z) - DiagonalGaussian(q.mean.repeat(50, 1), q.logvar.repeat(50, 1))
                       .log_prob(z)).view(50, 4).mean(0))
    torch.testing.assert_close(discrete, expected, atol=1e-3, rtol=1e-5)
    assert (discrete < 0).all() and not torch.allclose(dense, discrete)  # a probability, not a density
    gaps = post.inference_gaps(model, x, torch.zeros(4), steps=10, lr=0.05, eval_samples=20, generator=gen(2),
                               discrete=True)
    assert gaps.discrete and gaps.amortization_gap > -0.05
