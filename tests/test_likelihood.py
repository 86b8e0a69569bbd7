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


# --------------------------------------------------------------------------- the GPU path and eval.compile


def _small(kind: str):
    """The default VAE (28 x 28) or a small hierarchical VAE, seeded, and 4 binary images for it."""
    torch.manual_seed(0)
    cfg, shape = ((ModelConfig(), (1, 28, 28)) if kind == "vae" else
                  (ModelConfig(kind="hvae", hvae_latents=(2, 3), hvae_channels=8), (1, 8, 8)))
    images = (torch.rand(4, *shape, generator=torch.Generator().manual_seed(1)) > 0.6).to(torch.uint8) * 255
    return build_model(cfg, shape).eval(), images


@pytest.mark.slow  # inductor compiles C++ on the CPU: about 20 s each
@pytest.mark.parametrize("kind", ["vae", "hvae"])
def test_compiled_weights_give_the_eager_likelihood(kind, monkeypatch, one_thread):
    """eval.compile: the same noise (the generator's draws survive compilation) and float32 rounding only."""
    from vaelab.evaluation import compiled

    said: list[str] = []
    monkeypatch.setattr(compiled, "_FAILED", {})
    monkeypatch.setattr(compiled, "say", said.append)
    model, images = _small(kind)
    # 4 images in one batch, 3 calls of 10 samples: one shape, one compilation
    eager = importance_sampled(model, images, k=30, batch_size=4, seed=5, max_decode=40)
    fast = importance_sampled(model, images, k=30, batch_size=4, seed=5, max_decode=40, compile=True)
    assert said == [] and compiled._FAILED == {}  # it compiled: no fallback
    scale = eager.log_px.abs().max().item()
    for a, b in ((fast.log_px, eager.log_px), (fast.elbo, eager.elbo)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fast.ess, eager.ess, rtol=1e-3, atol=1e-3)
    # the weights are inputs of the compiled graph, not constants: a model trained further is scored as it is now
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    eager = importance_sampled(model, images, k=30, batch_size=4, seed=5, max_decode=40)
    fast = importance_sampled(model, images, k=30, batch_size=4, seed=5, max_decode=40, compile=True)
    torch.testing.assert_close(fast.log_px, eager.log_px, rtol=0, atol=1e-5 * scale)


def test_a_failed_compilation_says_one_line_and_gives_the_eager_numbers(monkeypatch, capsys):
    from vaelab.evaluation import compiled

    said: list[str] = []
    monkeypatch.setattr(compiled, "_FAILED", {})
    monkeypatch.setattr(compiled, "say", said.append)

    def broken_compile(fn, **options):
        def run(model, x, s, generator, **kw):
            torch.randn(7, generator=generator)  # part of the call ran: the noise moved on before the failure
            raise RuntimeError("backend='inductor' raised:\nCppCompileError: no C++ compiler\n(long details)")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = _tiny_vae(2)
    images = _all_binary_images()
    eager = importance_sampled(model, images, k=50, seed=4, batch_size=8)
    est = importance_sampled(model, images, k=50, seed=4, batch_size=8, compile=True)
    for a, b in zip((est.log_px, est.elbo, est.ess), (eager.log_px, eager.elbo, eager.ess)):
        assert torch.equal(a, b)  # the generator was put back: the eager numbers exactly
    assert said == ["eval.compile: torch.compile failed (RuntimeError: backend='inductor' raised: CppCompileError: "
                    "no C++ compiler); evaluating eagerly"]
    # a later evaluation does not compile again: one line that says so, and the same numbers
    again = importance_sampled(model, images, k=50, seed=4, batch_size=8, compile=True)
    assert torch.equal(again.log_px, eager.log_px)
    assert len(said) == 2 and said[1].startswith("eval.compile: evaluating eagerly (torch.compile failed earlier")
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err


def test_an_error_of_the_model_is_not_taken_for_a_compiler_failure(monkeypatch):
    from vaelab.evaluation import compiled

    said: list[str] = []
    monkeypatch.setattr(compiled, "_FAILED", {})
    monkeypatch.setattr(compiled, "say", said.append)
    model = _tiny_vae(1)

    def bad_weights(*args, **kwargs):
        raise ValueError("the model's own mistake")

    monkeypatch.setattr(model, "log_weights", bad_weights)
    monkeypatch.setattr(torch, "compile", lambda fn, **options: (lambda model, *a, **k: model.log_weights(*a, **k)))
    with pytest.raises(ValueError, match="own mistake"):
        importance_sampled(model, _all_binary_images(), k=5, compile=True)
    assert said == [] and compiled._FAILED == {}


def test_where_the_noise_is_drawn_and_how_k_is_split():
    from vaelab.evaluation import likelihood
    from vaelab.models.base import ForeignScorer

    vae = _tiny_vae(1)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a plan only: no CUDA device needed
    # on a GPU vaelab's models draw on the device, in equal calls of up to 16,384 decoder inputs
    assert likelihood._plan(vae, cuda, "auto", None) == likelihood._Plan(cuda, likelihood.MAX_DECODE_CUDA, True)
    # noise="cpu": the CPU's generator and chunks, so the CPU's numbers
    assert likelihood._plan(vae, cuda, "cpu", None) == likelihood._Plan(cpu, likelihood.MAX_DECODE, False)
    # a model of your own keeps its CPU generator (it may call torch.randn(generator=...) without a device)
    foreign = ForeignScorer(type("Mine", (), {"log_weights": lambda self, x, k, generator=None: None})())
    assert likelihood._plan(foreign, cuda, "auto", None) == likelihood._Plan(cpu, likelihood.MAX_DECODE_CUDA, False)
    # on the CPU every choice is today's stream
    for noise in likelihood.NOISE:
        assert likelihood._plan(vae, cpu, noise, None) == likelihood._Plan(cpu, likelihood.MAX_DECODE, False)
    with pytest.raises(ConfigError, match="noise must be one of"):
        importance_sampled(vae, _all_binary_images(), k=5, noise="gpu")


def test_the_gpu_chunking_estimates_the_same_likelihood(monkeypatch):
    """The device path's split (equal calls, the last call's surplus samples dropped, the last batch padded to the
    others' shape) is another draw of the same estimator: forced on the CPU, its means over replicates agree with
    the CPU stream's within their standard errors and stay below the exact log p(x)."""
    from vaelab.evaluation import likelihood

    model = _tiny_vae(2)
    images = _all_binary_images()
    exact = exact_log_px(model, images, 2)
    reps = 40
    data = images.repeat(reps, 1, 1, 1)  # 640 images: 6 batches of 100 and one of 40
    # k=100 in calls of 34 samples per image: 34, 34, 32 on the CPU; 3 x 34 with 2 dropped on the device path
    cpu = importance_sampled(model, data, k=100, seed=9, batch_size=100, max_decode=3400)
    monkeypatch.setattr(likelihood, "_plan", lambda m, device, noise, max_decode: likelihood._Plan(
        torch.device("cpu"), max_decode, True))
    dev = importance_sampled(model, data, k=100, seed=9, batch_size=100, max_decode=3400)
    assert dev.log_px.shape == cpu.log_px.shape == (640,) and not torch.equal(dev.log_px, cpu.log_px)
    assert (dev.ess >= 1 - 1e-9).all() and (dev.ess <= 100 + 1e-9).all() and (dev.elbo <= dev.log_px).all()
    means, ses = [], []
    for est in (cpu, dev):
        per_image = est.log_px.view(reps, 16)
        means.append(per_image.mean(0))
        ses.append(per_image.std(0) / math.sqrt(reps))
        assert (means[-1] < exact + 4 * ses[-1] + 1e-3).all()
    assert ((means[0] - means[1]).abs() < 4 * (ses[0] ** 2 + ses[1] ** 2).sqrt() + 1e-3).all()
    se_all = math.sqrt(float(cpu.log_px.var() + dev.log_px.var()) / 640)
    assert abs(float(cpu.log_px.mean() - dev.log_px.mean())) < 4 * se_all


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_sampler_waits_for_the_host_once_and_gives_the_cpu_likelihood():
    import copy
    import warnings

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=8), (1, 28, 28)).eval()
    images = (torch.rand(12, 1, 28, 28) > 0.7).to(torch.uint8) * 255
    cpu = importance_sampled(model, images, k=300, batch_size=6, seed=3)
    gpu_model = copy.deepcopy(model).cuda()
    # noise="cpu": the same samples as the CPU (TF32 convolutions: test_cuda.py's tolerance)
    same = importance_sampled(gpu_model, images, k=300, batch_size=6, seed=3, device="cuda", noise="cpu")
    torch.testing.assert_close(same.log_px, cpu.log_px, atol=0.05, rtol=0)
    # the default on a GPU: the device's generator, another draw of the same estimator
    fast = importance_sampled(gpu_model, images, k=300, batch_size=6, seed=3, device="cuda")
    se = math.sqrt(float(cpu.log_px.var() + fast.log_px.var()) / len(images))
    assert abs(float(cpu.log_px.mean() - fast.log_px.mean())) < 4 * se
    compiled = importance_sampled(gpu_model, images, k=300, batch_size=6, seed=3, device="cuda", compile=True)
    torch.testing.assert_close(compiled.log_px, fast.log_px, atol=0.05, rtol=0)

    def host_waits(max_decode: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                importance_sampled(gpu_model, images, k=300, batch_size=6, seed=3, device="cuda",
                                   max_decode=max_decode)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    # 300 calls per batch or one: the same synchronizations (the upload of the images, the results' download),
    # none per call
    assert host_waits(6) == host_waits(6 * 300)
