"""The named presets in configs/: each loads, builds its model, and one step improves its loss."""

from pathlib import Path

import pytest
import torch

from vaelab import load_config
from vaelab.training.loss import training_loss
from vaelab.models import build_model

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def test_there_are_presets():
    assert {p.stem for p in PRESETS} >= {"vae-long", "hvae"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_builds_and_trains_a_step(path):
    cfg = load_config(path)
    assert cfg.data.dataset == "fashion-mnist" and cfg.eval.nll_k >= 1000  # the published protocol
    assert cfg.train.snapshot_every > 0  # bench/presets.py draws the time-to-quality curve from the snapshots
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28))
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    torch.manual_seed(1)
    before = training_loss(model, x, cfg.train, cfg.train.beta).loss
    for _ in range(3):
        opt.zero_grad()
        training_loss(model, x, cfg.train, cfg.train.beta).loss.backward()
        opt.step()
    torch.manual_seed(1)
    after = training_loss(model, x, cfg.train, cfg.train.beta).loss
    assert float(after.detach()) < float(before.detach())
