"""Dropout, data augmentation and epoch snapshots."""

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.data import batches
from vaelab.data.splits import augment
from vaelab.errors import VaelabError
from vaelab.models import build_model, eval_mode

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0",
          "train.monitor_images=0", "eval.gap_images=0"]


@pytest.fixture(scope="module")
def splits():
    from vaelab.data import load_dataset

    return load_dataset(load_config(overrides=DIGITS).data)


def _batch(n=16, seed=1):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).bernoulli()


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("overrides", [[], ["model.arch=mlp"], ["model.fc_hidden=64"], ["model.kind=ae"],
                                       ["model.kind=hvae", "model.hvae_latents=[2,2]", "model.hvae_channels=8"]])
def test_dropout_acts_in_training_only_and_keeps_the_weights_names(overrides):
    x = _batch()
    torch.manual_seed(0)
    plain = build_model(load_config(overrides=overrides).model, (1, 28, 28))
    torch.manual_seed(0)
    dropped = build_model(load_config(overrides=[*overrides, "model.dropout=0.5"]).model, (1, 28, 28))
    # the same parameter names: checkpoints written without dropout load into a model with it
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    with eval_mode(plain), eval_mode(dropped):  # evaluation: dropout is off, the two models agree
        torch.manual_seed(3)
        a = plain(x)
        torch.manual_seed(3)
        b = dropped(x)
    assert torch.equal(a.x_params, b.x_params)
    dropped.train()
    plain.train()
    torch.manual_seed(3)
    c = plain(x).x_params
    torch.manual_seed(3)
    d = dropped(x).x_params
    assert not torch.allclose(c, d)  # training: units are dropped


def test_dropout_model_trains(tmp_path, splits):
    result = train(load_config(overrides=[*DIGITS, "train.epochs=3", "model.dropout=0.2"]), tmp_path / "r",
                   splits=splits, log=lambda _: None)
    losses = [h["val"]["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert load_run(tmp_path / "r").config.model.dropout == 0.2


# --------------------------------------------------------------------------- augmentation


def test_shift_moves_each_image_by_its_own_offset_and_fills_with_zeros():
    images = torch.zeros(64, 1, 10, 12, dtype=torch.uint8)
    images[:, 0, 4, 5] = 255  # one bright pixel, away from the border
    gen = torch.Generator().manual_seed(0)
    out = augment(images, shift=2, generator=gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    moves = set()
    for img in out:
        (r, c), = torch.nonzero(img[0]).tolist()  # still exactly one bright pixel
        assert abs(r - 4) <= 2 and abs(c - 5) <= 2
        moves.add((r - 4, c - 5))
    assert len(moves) > 15  # 25 possible offsets, drawn per image
    again = augment(images, shift=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # repeatable with the generator
    edge = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    moved = [augment(edge, shift=1, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    assert any((m == 0).any() for m in moved)  # what moves in is zero


def test_hflip_mirrors_about_half_and_changes_nothing_else():
    images = torch.arange(200 * 3 * 4, dtype=torch.int64).reshape(200, 1, 3, 4).to(torch.uint8)
    out = augment(images, hflip=True, generator=torch.Generator().manual_seed(1))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 70 < int(mirrored.sum()) < 130


def test_batches_augment_before_binarizing_and_only_when_asked():
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    plain = torch.cat(list(batches(images, 20, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(plain, images.float() / 255)
    shifted = torch.cat(list(batches(images, 20, generator=torch.Generator().manual_seed(0), shift=1)))
    assert not torch.equal(shifted, plain)
    dyn = torch.cat(list(batches(images, 20, generator=torch.Generator().manual_seed(0), dynamic=True, shift=1,
                                 hflip=True)))
    assert set(dyn.unique().tolist()) <= {0.0, 1.0}


def test_augmented_training_differs_and_is_repeatable_while_validation_is_untouched(tmp_path, splits):
    base = [*DIGITS, "train.epochs=1", "train.checkpoint_minutes=0"]
    runs = {}
    for name, extra in [("plain", []), ("aug", ["data.augment_shift=2", "data.augment_hflip=true"]),
                        ("aug2", ["data.augment_shift=2", "data.augment_hflip=true"])]:
        result = train(load_config(overrides=[*base, *extra]), tmp_path / name, splits=splits, log=lambda _: None)
        runs[name] = (load_run(tmp_path / name).model.state_dict(), result.history[-1])
    assert all(torch.equal(runs["aug"][0][k], runs["aug2"][0][k]) for k in runs["aug"][0])
    assert not all(torch.equal(runs["aug"][0][k], runs["plain"][0][k]) for k in runs["aug"][0])
    # validation images are never augmented: re-scoring them with the trained weights gives the logged loss
    from vaelab.evaluation.elbo import evaluate_images
    from vaelab.data import eval_view

    run = load_run(tmp_path / "aug")
    val = eval_view(splits.val, "val", "dynamic", run.config.data.binarize_seed)
    again = evaluate_images(run.model, val, beta=1.0, batch_size=1000, device="cpu")
    assert again.loss == pytest.approx(runs["aug"][1]["val"]["loss"], abs=1e-3)


@pytest.mark.parametrize("bad, match", [("data.augment_shift=-1", "augment_shift"),
                                        ("data.augment_shift=20", "augment_shift"),
                                        ("model.dropout=1.0", "dropout"), ("train.snapshot_every=-1", "snapshot")])
def test_bad_values_are_one_clear_error(bad, match):
    with pytest.raises(VaelabError, match=match):
        load_config(overrides=[bad])


# --------------------------------------------------------------------------- snapshots


def test_snapshots_keep_every_nth_epoch_and_load(tmp_path, splits):
    train(load_config(overrides=[*DIGITS, "train.epochs=4", "train.snapshot_every=2", "train.ema=0.9"]),
          tmp_path / "r", splits=splits, log=lambda _: None)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["best", "epoch-0002", "epoch-0004", "last"]
    two, four, last = (load_run(tmp_path / "r", checkpoint=c) for c in ("epoch-0002", "epoch-0004", "last"))
    assert two.meta["epoch"] == 2 and four.meta["epoch"] == 4
    # a snapshot holds the weights evaluation uses: the EMA, as in `last`'s average
    assert all(torch.equal(four.model.state_dict()[k], last.model.state_dict()[k]) for k in last.model.state_dict())
    assert not all(torch.equal(two.model.state_dict()[k], four.model.state_dict()[k]) for k in two.model.state_dict())
    with pytest.raises(VaelabError, match="no checkpoint 'epoch-0003'; available: best, epoch-0002"):
        load_run(tmp_path / "r", checkpoint="epoch-0003")
