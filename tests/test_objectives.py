import math

import torch

from vaelab import objectives as obj


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 5, generator=g)
    logvar = torch.randn(3, 5, generator=g) * 0.5
    closed = obj.kl_standard_normal(mean, logvar)
    # E_q[log q(z) - log p(z)] with many samples
    z = mean + torch.exp(0.5 * logvar) * torch.randn(200_000, 3, 5, generator=g)
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + (z - mean) ** 2 / logvar.exp()).sum(-1)
    log_p = -0.5 * (math.log(2 * math.pi) + z ** 2).sum(-1)
    mc = (log_q - log_p).mean(0)
    assert closed.shape == (3,)
    torch.testing.assert_close(closed, mc, atol=0.03, rtol=0.01)


def test_kl_is_zero_only_at_the_prior():
    assert obj.kl_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0
    assert (obj.kl_standard_normal(torch.full((2, 4), 0.1), torch.zeros(2, 4)) > 0).all()


def test_general_kl_reduces_to_standard_normal():
    mean, logvar = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(
        obj.kl_diag_gaussians(mean, logvar, torch.zeros(4, 6), torch.zeros(4, 6)),
        obj.kl_standard_normal(mean, logvar),
    )


def test_reparameterization_gives_gradients_to_mean_and_logvar():
    mean = torch.randn(8, 3, requires_grad=True)
    logvar = torch.randn(8, 3, requires_grad=True)
    z = obj.reparameterize(mean, logvar)
    (z ** 2).sum().backward()
    assert mean.grad is not None and mean.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_reparameterization_has_the_right_moments():
    mean = torch.full((100_000, 1), 2.0)
    logvar = torch.full((100_000, 1), math.log(0.25))
    z = obj.reparameterize(mean, logvar, torch.Generator().manual_seed(1))
    assert abs(z.mean().item() - 2.0) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01


def test_bernoulli_log_likelihood_matches_definition():
    logits = torch.randn(2, 1, 3, 3)
    x = torch.bernoulli(torch.full((2, 1, 3, 3), 0.5))
    p = torch.sigmoid(logits)
    manual = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(obj.bernoulli_log_likelihood(x, logits), manual)


def test_gaussian_log_likelihood_matches_torch_distributions():
    x, mean = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    expected = torch.distributions.Normal(mean, 0.1).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(obj.gaussian_log_likelihood(x, mean, 0.1), expected)


def test_log_normal_diag_matches_torch_distributions():
    z, mean, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    torch.testing.assert_close(obj.log_normal_diag(z, mean, logvar), expected)
    torch.testing.assert_close(obj.log_standard_normal(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1))


def test_iwae_bound_is_log_mean_exp_and_above_the_mean():
    logw = torch.randn(50, 4) * 3
    bound = obj.iwae_bound(logw)
    torch.testing.assert_close(bound, logw.exp().mean(0).log())
    assert (bound >= logw.mean(0)).all()  # Jensen: IWAE >= ELBO
    assert torch.isfinite(obj.iwae_bound(torch.full((10, 2), -5000.0))).all()  # no underflow


def test_beta_weights_only_the_kl():
    recon, kl = torch.tensor([10.0, 20.0]), torch.tensor([1.0, 3.0])
    t1 = obj.beta_vae_loss(-recon, kl, beta=1.0)
    t4 = obj.beta_vae_loss(-recon, kl, beta=4.0)
    assert t1.loss.item() == 17.0 and t4.loss.item() == 23.0
    torch.testing.assert_close(t1.nelbo, t4.nelbo)  # the ELBO does not depend on beta


def test_bits_per_dim():
    assert abs(obj.bits_per_dim(784 * math.log(2), 784) - 1.0) < 1e-12

