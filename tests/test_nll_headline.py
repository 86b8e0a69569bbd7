"""The default NLL scores a random subset of each split; its offset to the whole split is carried by the -ELBO,
which is known for every image, so the headline estimates the whole split's NLL (and the gap) honestly."""

import math

import pytest
import torch

from vaelab import load_config, train
from vaelab.data import load_dataset
from vaelab.evaluation.suite import evaluate_run, format_nll

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_images=0",
          "train.monitor_images=0", "train.epochs=2", "eval.nll_k=20", "eval.gap_images=0"]


def test_subsets_report_their_offset_and_the_whole_split_estimate(tmp_path, one_thread):
    splits = load_dataset(load_config(overrides=DIGITS).data)
    result = train(load_config(overrides=DIGITS), tmp_path / "r", splits=splits, log=lambda m: None, progress=False)
    cfg = load_config(overrides=[*DIGITS, "eval.nll_images=60"])
    with torch.no_grad():
        r = evaluate_run(result.model.eval(), cfg, splits, "cpu", log=lambda m: None)
    for name, row in r.nll["splits"].items():
        whole = r.splits[name]
        assert row["n"] == 60 and row["whole_n"] == whole.n > 60
        assert row["nelbo_whole"] == whole.nelbo
        assert row["subset_offset"] == pytest.approx(row["nelbo"] - whole.nelbo)
        assert row["nll_whole_estimate"] == pytest.approx(row["nll"] - row["subset_offset"])
        # the estimator's error: NLL - (-ELBO) on the subset moves far less than the NLL itself
        assert row["nll_minus_nelbo_stderr"] < row["stderr"]
        assert row["nll_whole_estimate"] < whole.nelbo  # a likelihood bound below the whole split's -ELBO
    est = r.nll["splits"]
    assert r.nll["gap_whole_estimate"] == pytest.approx(est["test"]["nll_whole_estimate"]
                                                        - est["train"]["nll_whole_estimate"])
    text = "\n".join(format_nll(r))
    assert "each subset against its whole split" in text and "gap of these (test - train)" in text
    assert f"offset {est['test']['subset_offset']:+.2f}" in text and math.isfinite(r.nll["gap_whole_estimate_stderr"])
