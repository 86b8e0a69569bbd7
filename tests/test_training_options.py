"""Training options: the IWAE objective, KL warm-up, free bits, weight decay, LR schedules, EMA,
skipping exploding updates."""

import math

import pytest
import torch

from vaelab import load_config, load_run, resume, train
from vaelab import objectives as obj
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.errors import VaelabError
from vaelab.training.loss import iwae_loss, training_loss
from vaelab.models import build_model
from vaelab.training.schedules import kl_weight, lr_factor

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0",
          "train.monitor_images=0"]


@pytest.fixture(scope="module")
def splits():
    from vaelab.data import load_dataset

    return load_dataset(load_config(overrides=DIGITS).data)


def _batch(n=32, seed=1):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).bernoulli()


def test_schedules():
    assert kl_weight(0, 0, 2.0) == 2.0
    assert [kl_weight(s, 4, 1.0) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert [lr_factor(s, 10, "constant", 4) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, 10, "cosine") for s in range(11)]
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and cos[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_free_bits_kl_value_and_gradient():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # batch means: 0.2 and 3.0
    out = obj.free_bits_kl(kl, 0.5)
    assert float(out.detach()) == pytest.approx(0.5 + 3.0)
    out.backward()
    assert kl.grad[:, 0].abs().sum() == 0  # under the floor: no push towards zero
    assert torch.allclose(kl.grad[:, 1], torch.full((2,), 0.5))
    assert float(obj.free_bits_kl(torch.tensor([1.0, 3.0]), 5.0)) == 5.0


def test_iwae_bound_is_at_least_the_elbo_of_the_same_samples_and_k1_is_the_elbo():
    torch.manual_seed(0)
    model = build_model(load_config().model, (1, 28, 28))
    x = _batch()
    for k in (1, 10):
        torch.manual_seed(5)
        terms = iwae_loss(model, x, k)
        elbo_same_samples = -(terms.recon + terms.kl).detach()  # mean over the k samples of log w, per image
        if k == 1:
            assert torch.allclose(-terms.loss, elbo_same_samples.mean(), atol=1e-4)
        else:
            assert float(-terms.loss.detach()) > float(elbo_same_samples.mean()) + 0.01
    # the MC KL of one sample averages to the closed form over many samples
    torch.manual_seed(6)
    many = iwae_loss(model, x[:4], 4000)
    closed = model.encode(x[:4])
    assert torch.allclose(many.kl, closed.kl_standard_normal(), atol=0.3)


def test_iwae_objective_trains_and_its_steps_improve_the_bound(tmp_path, splits):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.objective=iwae", "train.iwae_k=5"])
    result = train(cfg, tmp_path / "r", splits=splits, log=lambda m: None)
    assert result.history[1]["train"]["nelbo"] < result.history[0]["train"]["nelbo"]
    torch.manual_seed(0)
    model = build_model(cfg.model, splits.image_shape)
    x = splits.train.images[:64].float().div(255).bernoulli()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss():
        torch.manual_seed(9)
        return training_loss(model, x, cfg.train, 1.0).loss

    before = float(loss().detach())
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < before


def test_kl_warmup_rises_linearly_and_reaches_beta(tmp_path, splits):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=3", "train.warmup=2", "train.beta=1.0"])
    result = train(cfg, tmp_path / "r", splits=splits, log=lambda m: None)
    steps = math.ceil(len(splits.train) / cfg.train.batch_size)
    betas = [r["beta"] for r in result.history]
    assert betas[0] == pytest.approx((steps - 1) / (2 * steps))  # the last step of epoch 1
    assert betas[1] == pytest.approx((2 * steps - 1) / (2 * steps))
    assert betas[2] == 1.0
    plain = train(cfg.replace(train={"warmup": 0}), tmp_path / "p", splits=splits, log=lambda m: None)
    # with the KL weighed less at first, epoch 1 buys a better reconstruction and a larger KL
    assert result.history[0]["train"]["kl"] > plain.history[0]["train"]["kl"]


def test_free_bits_keeps_more_units_active(tmp_path, splits):
    base = load_config(overrides=[*DIGITS, "train.epochs=2", "model.latent_dim=32", "train.beta=4"])
    plain = train(base, tmp_path / "p", splits=splits, log=lambda m: None)
    fb = train(base.replace(train={"free_bits": 0.5}), tmp_path / "f", splits=splits, log=lambda m: None)
    # a strong beta squeezes the KL; free bits hold each dimension's KL near its floor of 0.5 nats
    assert fb.history[-1]["train"]["kl"] > plain.history[-1]["train"]["kl"] + 2.0


def test_weight_decay_uses_adamw_and_shrinks_the_weights(tmp_path, splits):
    base = load_config(overrides=[*DIGITS, "train.epochs=1"])
    train(base, tmp_path / "a", splits=splits, log=lambda m: None)
    train(base.replace(train={"weight_decay": 20.0}), tmp_path / "w", splits=splits, log=lambda m: None)
    norm = {n: sum(v.pow(2).sum() for k, v in load_run(tmp_path / n, "last").model.state_dict().items()
                   if k.endswith("weight")) for n in ("a", "w")}
    assert norm["w"] < 0.85 * norm["a"]  # lr * wd = 2% per step, 10 steps
    assert load_checkpoint(tmp_path / "w" / "checkpoints" / "last").meta["optimizer"]["type"] == "AdamW"


def test_cosine_schedule_and_lr_warmup_are_applied(tmp_path, splits):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.lr_schedule=cosine", "train.lr_warmup_steps=3"])
    result = train(cfg, tmp_path / "r", splits=splits, log=lambda m: None)
    steps = math.ceil(len(splits.train) / cfg.train.batch_size)
    expect = [1e-3 * lr_factor(e * steps - 1, 2 * steps, "cosine", 3) for e in (1, 2)]
    assert [r["lr"] for r in result.history] == pytest.approx(expect)
    assert result.history[1]["lr"] < 1e-4
    # training further stretches the schedule over the new length, and says so
    lines = []
    longer = resume(tmp_path / "r", epochs=4, splits=splits, log=lines.append)
    assert any("cosine learning-rate schedule now ends at epoch 4" in line for line in lines)
    assert longer.history[-2]["lr"] == pytest.approx(1e-3 * lr_factor(3 * steps - 1, 4 * steps, "cosine", 3))


def test_ema_weights_are_evaluated_saved_as_best_and_resumed_exactly(tmp_path, splits, monkeypatch):
    from vaelab.training.loop import Trainer

    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.ema=0.99", "train.checkpoint_steps=4"])
    train(cfg, tmp_path / "full", splits=splits, log=lambda m: None)
    last = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")
    assert "ema" in last.tensors
    raw, avg = last.tensors["model"], last.tensors["ema"]
    assert not all(torch.equal(raw[k], avg[k]) for k in raw)  # the average is not the last iterate
    best = load_checkpoint(tmp_path / "full" / "checkpoints" / "best").tensors["model"]
    assert all(torch.equal(best[k], avg[k]) for k in best)  # best (epoch 2 here) holds the average
    assert all(torch.equal(load_run(tmp_path / "full", "last").model.state_dict()[k], avg[k]) for k in avg)
    # killed inside epoch 2 and resumed: the same raw weights and the same average
    original, calls = Trainer._step, {"n": 0}

    def killed(self, x, **kwargs):
        calls["n"] += 1
        if calls["n"] == math.ceil(len(splits.train) / 128) + 6:
            raise KeyboardInterrupt
        return original(self, x, **kwargs)

    monkeypatch.setattr(Trainer, "_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", splits=splits, log=lambda m: None)
    monkeypatch.undo()
    resume(tmp_path / "part", splits=splits, log=lambda m: None)
    again = load_checkpoint(tmp_path / "part" / "checkpoints" / "last").tensors
    for part in ("model", "ema"):
        assert all(torch.equal(again[part][k], last.tensors[part][k]) for k in last.tensors[part])


def test_exploding_updates_are_skipped_and_counted(tmp_path, splits, monkeypatch):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=1", "train.skip_grad_norm=1e-6"])
    with pytest.raises(VaelabError, match="every step of epoch 1 had a gradient norm above train.skip_grad_norm"):
        train(cfg, tmp_path / "all", splits=splits, log=lambda m: None)
    # steps 2 and 5 get a loss a million times too large (gradient norms ~1e7, the others ~10)
    from vaelab.models.distributions import BernoulliLikelihood

    original, calls = BernoulliLikelihood.log_prob, {"n": 0}

    def exploding(self, x, params):
        out = original(self, x, params)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in (2, 5):
                return out * 1e6
        return out

    monkeypatch.setattr(BernoulliLikelihood, "log_prob", exploding)
    some = train(cfg.replace(train={"skip_grad_norm": 1000.0}), tmp_path / "some", splits=splits,
                 log=lambda m: None).history[0]
    steps = math.ceil(len(splits.train) / 128)
    assert some["skipped_large"] == 2 and some["step"] == steps - 2 and some["skipped_steps"] == 0


@pytest.mark.parametrize("bad, match", [
    (["train.objective=iwae", "train.free_bits=1"], "free_bits applies to the elbo"),
    (["model.kind=ae", "train.warmup=3"], "an autoencoder"),
    (["model.kind=ae", "train.ema=0.9"], "train.ema averages"),
    (["train.ema=1"], "train.ema must lie in"),
    (["train.iwae_k=0"], "iwae_k"),
    (["train.weight_decay=-1"], "weight_decay"),
])
def test_bad_option_combinations_are_one_clear_error(bad, match):
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(overrides=bad)


def test_combination_rules_wait_for_the_last_override():
    # file-free: kind=ae then back to vae, then a prior that needs a VAE; valid at the end, so accepted
    cfg = load_config(overrides=["model.kind=ae", "model.prior=vamp", "model.kind=vae"])
    assert cfg.model.prior == "vamp"
