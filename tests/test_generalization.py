"""`vaelab evaluate --on ...`: unseen datasets, OOD detection, the inside of the model, the report."""

import csv
import json
import re

import pytest

from vaelab import load_config, train
from vaelab.cli import main
from vaelab.data import load_dataset

FAST_EVAL = ["--k", "5", "--nll-images", "40", "--set", "eval.ood_images=80", "--set", "eval.ood_k=5",
             "--set", "eval.gap_images=6", "--set", "eval.refine_steps=10"]


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory, fashion_mnist_dir):
    """A small VAE trained on 5,000 Fashion-MNIST images (3 epochs, a few seconds)."""
    out = tmp_path_factory.mktemp("runs") / "fm"
    cfg = load_config(overrides=["data.max_train=5000", "data.max_eval=1000", "train.epochs=3", "train.grid_every=0",
                                 "train.grid_size=4", "eval.nll_images=0"])
    train(cfg, out, log=lambda m: None, progress=False)
    return out


def test_evaluate_on_unseen_datasets_writes_tables_plots_report(fm_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(fm_run), "--on", "digits", "noise", "inverted", "constant", "flipped",
                 *FAST_EVAL, "--out", str(out), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "out-of-distribution detection" in text and "AUROC" in text and "active" in text
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev == json.loads((tmp_path / "e.json").read_text())
    data = ev["datasets_eval"]
    assert set(data["datasets"]) == {"test", "digits", "noise", "inverted", "constant", "flipped"}
    assert set(data["ood"]) == {"digits", "noise", "inverted", "constant", "flipped"}
    for name, scores in data["ood"].items():
        assert set(scores) == {"-log p(x)", "-ELBO", "complexity-corrected"}
        for m in scores.values():
            assert 0 <= m["auroc"] <= 1 and 0 <= m["auprc"] <= 1 and 0 <= m["fpr_at_80_tpr"] <= 1
            assert m["n_in"] == m["n_out"] == 80
    # uniform noise is far less likely than any garment: every score detects it
    assert data["ood"]["noise"]["-log p(x)"]["auroc"] > 0.99
    assert data["ood"]["noise"]["-ELBO"]["auroc"] > 0.99
    assert data["ood"]["noise"]["complexity-corrected"]["auroc"] > 0.8  # weaker: PNG codes noise poorly too
    assert "gap_stderr" in ev["nll"] and ev["nll"]["gap_stderr"] > 0
    assert data["datasets"]["noise"]["nll"]["nll"] > 2 * data["datasets"]["test"]["nll"]["nll"]
    # the NLL of the splits, with k and the protocol beside the numbers
    assert ev["nll"]["k"] == 5 and ev["nll"]["images"] == 40
    assert "binarized once" in ev["nll"]["splits"]["test"]["protocol"]["data"]
    # inside the model
    gaps = ev["inside"]["gaps"]
    assert gaps["n"] == 6
    assert gaps["amortization_gap"] == pytest.approx(gaps["elbo_refined"] - gaps["elbo_amortized"])
    collapse = ev["inside"]["collapse"]
    assert 0 <= collapse["active_units"] <= collapse["latent_dim"] == 20 and len(collapse["kl_per_dim"]) == 20
    # files: the plots the report shows, the per-image scores
    report = (out / "report.md").read_text()
    for name in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (out / name).is_file(), name
    assert "roc_noise.png" in report and "nll_histogram.png" in report and "kl_per_dimension.png" in report
    rows = list(csv.DictReader((out / "per_image_scores.csv").open()))
    assert len(rows) == 6 * 80 and {"dataset", "index", "-log p(x)", "complexity-corrected"} <= set(rows[0])


def test_fashion_mnist_model_finds_mnist_more_likely(fm_run, mnist10k_dir, tmp_path, capsys):
    """Nalisnick et al. 2019: trained on Fashion-MNIST, the VAE gives unseen MNIST digits a HIGHER likelihood,
    so -log p(x) ranks MNIST as in-distribution (AUROC well below 0.5); the complexity correction fixes it."""
    assert main(["evaluate", str(fm_run), "--on", f"mnist@{mnist10k_dir}", "--k", "5", "--nll-images", "0",
                 "--set", "eval.ood_images=400", "--set", "eval.ood_k=20", "--set", "eval.gap_images=0",
                 "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    assert "0.268" in text and "0.984" in text and "0.994" in text  # the published anchors, printed beside ours
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    data = ev["datasets_eval"]
    assert data["datasets"]["mnist"]["nll"]["nll"] < data["datasets"]["test"]["nll"]["nll"]
    assert data["ood"]["mnist"]["-log p(x)"]["auroc"] < 0.35
    assert data["ood"]["mnist"]["complexity-corrected"]["auroc"] > 0.8
    assert [a["auroc"] for a in ev["anchors"][-3:]] == [0.268, 0.984, 0.994]


def test_evaluate_mistakes_are_one_line_errors(fm_run, tmp_path, capsys):
    assert main(["evaluate", str(fm_run), "--on", "imagenet"]) == 2
    assert "unknown dataset 'imagenet' for --on" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--set", "train.lr=1"]) == 2
    assert "eval.* overrides only" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--nll-images", "many"]) == 2
    assert "--nll-images" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--k", "0"]) == 2
    assert "eval.nll_k" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--on", f"folder:{tmp_path / 'nope'}", *FAST_EVAL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_autoencoder_run_has_no_likelihood_to_compare(tmp_path, capsys):
    splits = load_dataset(load_config(overrides=["data.dataset=digits"]).data)
    cfg = load_config(overrides=["data.dataset=digits", "model.kind=ae", "train.epochs=1", "train.grid_every=0",
                                 "train.grid_size=4"])
    train(cfg, tmp_path / "ae", splits=splits, log=lambda m: None)
    assert main(["evaluate", str(tmp_path / "ae"), "--on", "noise"]) == 2
    assert "autoencoder has no likelihood" in capsys.readouterr().err
    # without --on the AE is evaluated as before (no NLL, no inside-the-model section)
    assert main(["evaluate", str(tmp_path / "ae"), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "nll" not in ev and "inside" not in ev and ev["splits"]["test"]["nelbo"] is None
    # written elsewhere (--out), the evaluation left the run's own results alone
    assert not (tmp_path / "ae" / "evaluation_best.json").exists()
    assert main(["evaluate", str(tmp_path / "ae")]) == 0  # without --out: the run's own file, as before
    assert json.loads((tmp_path / "ae" / "evaluation_best.json").read_text())["splits"] == ev["splits"]


# --------------------------------------------------------------------------- fixes found in review


def test_subsets_keep_the_bits_of_the_whole_split_static_binarization(tmp_path):
    """Static binarization: the monitored train subset holds the very bits the model trains on, and an NLL
    subset is a subset of the split's one binarization (not a fresh binarization of the subset)."""
    import torch

    from vaelab.data import eval_view, spread_index
    from vaelab.training.loop import Trainer

    cfg = load_config(overrides=["data.dataset=digits", "data.binarize=static", "train.monitor_images=100",
                                 "train.grid_every=0", "train.grid_size=4"])
    trainer = Trainer(cfg, tmp_path / "r", log=lambda m: None)
    idx = spread_index(len(trainer.splits.train), 100, cfg.train.seed + 5)
    assert torch.equal(trainer.monitor["train"].images, trainer.train_images.images[idx])
    trainer.close()
    from vaelab.evaluation.unseen import load_eval_set

    s = load_eval_set("test", cfg, trainer.splits, 50, seed=3)
    whole = eval_view(trainer.splits.test, "test", "static", cfg.data.binarize_seed).images
    assert torch.equal(s.images, whole[spread_index(len(whole), 50, 3)])


def test_constant_shift_stays_constant_on_binarized_runs():
    from vaelab.evaluation.unseen import load_eval_set

    cfg = load_config(overrides=["data.dataset=digits"])
    splits = load_dataset(cfg.data)
    s = load_eval_set("constant", cfg, splits, 40, seed=1)
    flat = s.images.flatten(1)
    assert ((flat == flat[:, :1]).all(1)).all() and set(flat[:, 0].tolist()) <= {0, 255}
    assert len(set(flat[:, 0].tolist())) == 2  # both black and white images


def test_bad_specs_fail_fast_before_any_long_computation(fm_run, tmp_path, capsys, monkeypatch):
    import vaelab.evaluation.suite as ev

    def boom(*a, **k):
        raise AssertionError("the NLL started before the datasets were checked")

    monkeypatch.setattr(ev, "nll_on_splits", boom)
    assert main(["evaluate", str(fm_run), "--on", f"mnist@{tmp_path / 'nowhere'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--on", "digits@/tmp"]) == 2
    assert "NAME@DIR only applies" in capsys.readouterr().err
    assert main(["evaluate", str(fm_run), "--on", "fashion-mnist"]) == 2
    assert "the run's own dataset" in capsys.readouterr().err


def test_a_dataset_named_twice_gets_two_rows(fm_run):
    from vaelab import load_run
    from vaelab.evaluation.unseen import load_eval_sets

    run = load_run(fm_run)
    cfg = run.config.replace(eval={"ood_images": 20})
    splits = load_dataset(run.config.data)
    names = [s.name for s in load_eval_sets(["noise", "noise"], cfg, splits)]
    assert names == ["test", "noise", "noise#2"]


def test_bernoulli_on_grey_pixels_is_evaluated_without_a_likelihood(tmp_path, capsys):
    cfg = load_config(overrides=["data.dataset=digits", "data.binarize=none", "train.epochs=1", "train.grid_every=0",
                                 "train.grid_size=4"])
    train(cfg, tmp_path / "grey", log=lambda m: None)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "grey"), "--out", str(tmp_path / "ev"), "--set", "eval.gap_images=4"]) == 0
    out = capsys.readouterr().out
    assert "no NLL" in out and "no inference gaps" in out
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "nll" not in ev and "gaps" not in ev["inside"] and "caveat" in ev["protocol"]
    assert main(["evaluate", str(tmp_path / "grey"), "--on", "noise"]) == 2
    assert "has none" in capsys.readouterr().err


def test_gaussian_run_reports_bits_per_dim_only_for_the_discrete_nll(tmp_path, capsys):
    cfg = load_config(overrides=["data.dataset=digits", "data.binarize=none", "model.likelihood=gaussian",
                                 "train.epochs=1", "train.grid_every=0", "train.grid_size=4", "eval.nll_k=5",
                                 "eval.nll_images=30"])
    result = train(cfg, tmp_path / "g", log=lambda m: None)
    test = result.evaluation["splits"]["test"]
    assert test["nelbo"] is not None and test["bits_per_dim"] is None  # a density: no bits/dim
    nll = result.evaluation["nll"]["splits"]["test"]
    assert nll["bits_per_dim"] > 0 and "discretized" in nll["protocol"]["pixel_likelihood"]
    assert "density" in result.evaluation["protocol"]


def test_grey_images_are_refused_by_the_bernoulli_likelihood():
    import torch

    from vaelab.config import ModelConfig
    from vaelab.errors import ConfigError
    from vaelab.evaluation.likelihood import importance_sampled
    from vaelab.models import build_model

    model = build_model(ModelConfig(arch="mlp", latent_dim=2, mlp_hidden=(8,)), (1, 2, 2))
    with pytest.raises(ConfigError, match="binarize them once first"):
        importance_sampled(model, torch.full((3, 1, 2, 2), 128, dtype=torch.uint8), k=2)


def test_compare_refuses_a_classifier_of_another_dataset(fm_run, tmp_path, capsys):
    import torch

    from vaelab.data import ImageSet
    from vaelab.evaluation.classifier import save_classifier, train_classifier

    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    clf = train_classifier(ImageSet(images, torch.arange(40) % 2), 2, epochs=1, log=lambda m: None)
    path = save_classifier(clf, tmp_path / "clf.safetensors", {"dataset": "mnist"})
    assert main(["compare", str(fm_run), "-n", "50", "--classifier", str(path), "--out", str(tmp_path / "c")]) == 2
    assert "trained on mnist" in capsys.readouterr().err


def test_llr_rows_carry_the_published_anchor_and_eval_llr_k_is_read_when_present():
    import types

    from vaelab.evaluation import unseen as gen
    from vaelab.errors import ConfigError

    m = {"auroc": 0.9, "auprc": 0.9, "fpr_at_80_tpr": 0.1, "n_in": 10, "n_out": 10}
    result = {"k": 5, "datasets": {"test": {"nll": {"n": 10, "nll": 1.0, "stderr": 0.1, "nelbo": 1.0,
                                                    "bits_per_dim": 0.1, "ess": 1.0}}},
              "ood": {"mnist": {"-log p(x)": m, "LLR>1": m}}, "model": "hvae",
              "score_notes": {"LLR>1": "Havtorn et al. 2021"}}
    text = gen.format_dataset_tables(result, "fashion-mnist")
    llr_line = next(line for line in text.splitlines() if "LLR>1" in line and "0.900" in line)
    assert "published LLR>1" in llr_line and "0.984" in llr_line
    assert "0.984" not in gen.format_dataset_tables(result, "digits").split("LLR>1")[1].splitlines()[0]
    assert any(r["method"] == "vaelab HVAE, LLR>1" for r in gen.anchors(result))
    cfg = load_config(overrides=["model.kind=hvae", "model.hvae_latents=[2, 2, 2, 2]"])
    assert gen.llr_layers(cfg) == 1 and gen.llr_layers(load_config()) is None
    eval_with_k = types.SimpleNamespace(llr_k=3)
    assert gen.llr_layers(types.SimpleNamespace(model=cfg.model, eval=eval_with_k)) == 3
    with pytest.raises(ConfigError, match="llr_k"):
        gen.llr_layers(types.SimpleNamespace(model=cfg.model, eval=types.SimpleNamespace(llr_k=4)))
