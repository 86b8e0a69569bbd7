"""Users' own models and data: a model written here (not in vaelab) trains, resumes bit-identically after an
interruption, evaluates and gets a report; a foreign object (not an nn.Module) gets importance-sampled
likelihoods and OOD scores through the one method the protocol asks of it."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vaelab import load_config, load_run, resume, train, write_html_report
from vaelab.data import load_dataset
from vaelab.errors import ConfigError
from vaelab.evaluation.detect import detect_ood, image_scores
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.evaluation.suite import evaluate_run
from vaelab.models import ModelBase, ModelOutput
from vaelab.models.distributions import BernoulliLikelihood, DiagonalGaussian
from vaelab.training.loop import Trainer

DIGITS = ["data.dataset=digits", "data.image_size=8", "train.epochs=3", "train.grid_every=0", "train.grid_size=4",
          "eval.nll_images=200", "eval.nll_k=20", "train.checkpoint_steps=4"]


class TinyVAE(ModelBase):
    """A user's MLP VAE: x -> 32 -> (mean, logvar) of 4 latents -> 32 -> Bernoulli logits."""

    def __init__(self, image_shape=(1, 8, 8), hidden=32, latent=4):
        super().__init__()
        pixels = math.prod(image_shape)
        self.image_shape, self.latent_dim, self.likelihood = tuple(image_shape), latent, BernoulliLikelihood()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels),
                                 nn.Unflatten(1, self.image_shape))

    def encode(self, x):
        mean, logvar = self.enc(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z):
        return self.dec(z)

    def forward(self, x, generator=None):
        q = self.encode(x)
        z = q.rsample(generator)
        return ModelOutput(x_params=self.decode(z), z=z, kl=q.kl_standard_normal(), posterior=q)

    def log_weight_terms(self, x, s, generator=None, discrete=False, prior_layers=0, context=None, prior_mode=False):
        q = context if context is not None else self.encode(x)
        b, d = q.mean.shape
        eps = torch.randn((s, b, d), generator=generator, device=generator.device if generator else None)
        z = q.mean + q.std * eps.to(x.device)  # (S, B, D)
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        log_px_z = self.likelihood.log_prob(xs, self.decode(z.reshape(s * b, d))).view(s, b)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * ((z - q.mean).pow(2) / q.logvar.exp() + q.logvar + math.log(2 * math.pi)).sum(-1)
        return log_px_z, log_pz - log_qz

    def prior_sample(self, n, temperature=1.0, generator=None):
        return temperature * torch.randn((n, self.latent_dim), generator=generator)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config(overrides=DIGITS).data)


def _weights(run_dir, name="last"):
    return load_run(run_dir, checkpoint=name, model=TinyVAE()).model.state_dict()


def test_own_model_trains_resumes_bit_identically_evaluates_and_reports(tmp_path, digits, monkeypatch, one_thread):
    cfg = load_config(overrides=DIGITS)
    torch.manual_seed(1)
    full = train(cfg, tmp_path / "full", splits=digits, model=TinyVAE(), log=lambda m: None, progress=False)
    assert len(full.history) == 3 and full.history[-1]["val"]["nelbo"] < full.history[0]["val"]["nelbo"]
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["model_class"].endswith("TinyVAE") and info["status"] == "finished"

    # interrupted in the middle of epoch 2 (after a mid-epoch checkpoint), then resumed with a fresh model
    steps_per_epoch = math.ceil(len(digits.train) / cfg.train.batch_size)
    original, calls = Trainer._step, {"n": 0}

    def killed(self, x, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 6:
            raise KeyboardInterrupt
        return original(self, x, **kwargs)

    monkeypatch.setattr(Trainer, "_step", killed)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", splits=digits, model=TinyVAE(), log=lambda m: None, progress=False)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="model of your own"):  # the model must be given again
        resume(tmp_path / "part", splits=digits, log=lambda m: None, progress=False)
    resumed = resume(tmp_path / "part", splits=digits, model=TinyVAE(), log=lambda m: None, progress=False)
    for name in ("last", "best"):
        a, b = _weights(tmp_path / "full", name), _weights(tmp_path / "part", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.evaluation["splits"] == full.evaluation["splits"]

    # the final evaluation is vaelab's, and the run loads, evaluates and reports with the model given again
    nll = full.evaluation["nll"]["splits"]["test"]
    assert 0 < nll["nll"] <= full.evaluation["splits"]["test"]["nelbo"] + 3 * nll["stderr"]
    with pytest.raises(Exception, match="model of your own"):
        load_run(tmp_path / "full")
    run = load_run(tmp_path / "full", model=TinyVAE())
    again = evaluate_run(run.model, run.config, digits)
    assert again.nll["splits"]["test"]["nll"] == nll["nll"]  # the same numbers from the reloaded run
    notes = []
    page = write_html_report(tmp_path / "full", model=TinyVAE(), splits=digits, log=notes.append)
    html = page.read_text()
    assert "TinyVAE" in html and html.count("data:image/png;base64,") >= 5
    assert not [n for n in notes if n.startswith("note: missing")], notes  # every section has what it needs


def test_own_model_scores_like_the_same_network_built_by_vaelab(tmp_path, digits, one_thread):
    """The same architecture trained once as the user's model and once as vaelab's MLP VAE: the final NLLs agree
    within their standard errors (vaelab's evaluation treats both the same way)."""
    cfg = load_config(overrides=[*DIGITS, "model.arch=mlp", "model.mlp_hidden=[32]", "model.latent_dim=4",
                                 "train.epochs=6", "eval.nll_images=300"])
    own = train(cfg, tmp_path / "own", splits=digits, model=TinyVAE(), log=lambda m: None, progress=False)
    ours = train(cfg, tmp_path / "ours", splits=digits, log=lambda m: None, progress=False)
    a, b = own.evaluation["nll"]["splits"]["test"], ours.evaluation["nll"]["splits"]["test"]
    assert abs(a["nll"] - b["nll"]) <= math.hypot(a["stderr"], b["stderr"]), (a, b)


def test_a_model_lacking_a_protocol_method_is_one_clear_error(tmp_path, digits):
    class NoWeights(TinyVAE):
        log_weight_terms = None

    with pytest.raises(ConfigError, match=r"lacks the method log_weight_terms") as err:
        train(load_config(overrides=DIGITS), tmp_path / "r", splits=digits, model=NoWeights(), log=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()  # nothing was written


class ForeignPixels:
    """A model trained elsewhere (not an nn.Module): independent Bernoulli pixels with probabilities `p`, a latent
    z ~ N(0, 1) that the pixels ignore and q(z|x) = p(z). Every importance weight is then exactly p(x)."""

    def __init__(self, p):
        self.logits = torch.logit(torch.as_tensor(p, dtype=torch.float64))

    def log_px(self, x):
        return -nn.functional.binary_cross_entropy_with_logits(self.logits.expand_as(x.double()), x.double(),
                                                               reduction="none").flatten(1).sum(1)

    def log_weights(self, x, k, generator=None):
        z = torch.randn((k, len(x)), generator=generator, dtype=torch.float64)  # drawn, and cancelled: p(z) = q(z|x)
        log_pz = log_qz = -0.5 * (z.pow(2) + math.log(2 * math.pi))
        return self.log_px(x).unsqueeze(0) + log_pz - log_qz


def _binary_images(p, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 1, 6, 6), generator=g) < p).to(torch.uint8) * 255


def test_a_foreign_model_gets_exact_likelihoods_and_ood_scores():
    p_in = torch.linspace(0.1, 0.9, 36).view(1, 6, 6)
    model = ForeignPixels(p_in)
    images = _binary_images(p_in, 300, seed=0)
    est = importance_sampled(model, images, k=5, batch_size=50)
    exact = model.log_px(images.double() / 255)
    assert torch.allclose(est.log_px, exact, atol=1e-9)  # every weight is p(x): L_k is exact for any k
    assert torch.allclose(est.ess, torch.full_like(est.ess, 5.0))
    np.testing.assert_allclose(image_scores(model, images.numpy(), k=5)["-log p(x)"], -exact.numpy(), atol=1e-9)
    unseen = _binary_images(1 - p_in, 300, seed=1)  # the pixel probabilities mirrored: other images
    found = detect_ood(model, images, unseen, k=5)
    assert found.metrics["-log p(x)"].auroc > 0.99
    assert set(found.metrics) == {"-log p(x)", "-ELBO", "complexity-corrected"}


def test_an_object_without_log_weights_is_named_in_one_line():
    with pytest.raises(ConfigError, match=r"has no method log_weights"):
        importance_sampled(object(), torch.zeros((2, 1, 4, 4), dtype=torch.uint8), k=2)
