"""Sample fidelity in a trained classifier's feature space: precision/recall, the classifier, scoring."""

from __future__ import annotations

import json

import pytest
import torch

from vaelab.data import ImageSet
from vaelab.errors import CheckpointError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds contention


def _clusters(centres: torch.Tensor, per_cluster: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([c + torch.randn(per_cluster, centres.shape[1], generator=g) for c in centres])


CENTRES = torch.tensor([[-20.0, -20.0], [-20.0, 20.0], [20.0, -20.0], [20.0, 20.0]])


def test_precision_recall_identical_shifted_and_half_the_modes():
    from vaelab.evaluation.generators import precision_recall

    real = _clusters(CENTRES, 200, 0)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    half = _clusters(CENTRES[:2], 400, 1)  # a generator that found two of the four modes
    precision, recall = precision_recall(real, half, k=3)
    assert precision > 0.9
    assert 0.4 < recall <= 0.5
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(real, real[:3])


def test_precision_recall_chunks_match_a_direct_computation(monkeypatch):
    import vaelab.evaluation.generators as fidelity

    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(300, 5, generator=g), 0.5 + 1.3 * torch.randn(250, 5, generator=g)

    def direct(a, b, k):  # the definition, written out: no chunks, no centring, float64
        ra = torch.cdist(a.double(), a.double()).sort(1).values[:, k]
        return float((torch.cdist(b.double(), a.double()) <= ra).any(1).double().mean())

    want = (direct(real, fake, 3), direct(fake, real, 3))
    assert fidelity.precision_recall(real, fake) == pytest.approx(want, abs=1 / 250)
    monkeypatch.setattr(fidelity, "_CHUNK_ELEMENTS", 1000)  # a few rows at a time
    assert fidelity.precision_recall(real, fake) == pytest.approx(want, abs=1 / 250)
    assert 0.2 < want[0] < 0.99 and 0.2 < want[1] < 0.99  # a case where neither is trivially 0 or 1


def _halves(n: int, size: int, seed: int) -> ImageSet:
    """Two classes: the left half bright (0) or the right half bright (1), on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    cols = torch.arange(size) < size // 2
    bright = torch.where(labels.view(-1, 1) == 0, cols, ~cols)  # (n, size)
    x = x + 0.5 * bright.view(n, 1, 1, size)
    return ImageSet((x * 255).round().to(torch.uint8), labels)


def test_train_classifier_learns_a_toy_task_deterministically():
    from vaelab.evaluation.classifier import FEATURE_DIM, classifier_accuracy, image_features, train_classifier

    train, test = _halves(256, 16, 0), _halves(256, 16, 1)
    logs = []
    clf = train_classifier(train, 2, epochs=2, batch_size=64, seed=5, log=logs.append)
    assert len(logs) == 2 and "epoch 2/2" in logs[-1]
    assert classifier_accuracy(clf, test) > 0.95
    assert image_features(clf, test.images[:10]).shape == (10, FEATURE_DIM)
    again = train_classifier(train, 2, epochs=2, batch_size=64, seed=5, log=None)
    for (name, a), b in zip(clf.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    other = train_classifier(train, 2, epochs=1, batch_size=64, seed=6, log=None)
    assert not torch.equal(other.fc.weight, clf.fc.weight)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(train, 1, log=None)


def test_save_and_load_round_trip_and_damage(tmp_path):
    from vaelab.evaluation.classifier import FeatureClassifier, image_features, load_classifier, save_classifier

    torch.manual_seed(1)
    clf = FeatureClassifier((1, 16, 16), 3)
    path = save_classifier(clf, tmp_path / "clf.safetensors", {"dataset": "toy", "test_accuracy": 0.5, "seed": 1})
    meta = json.loads((tmp_path / "clf.json").read_text())
    assert meta["architecture"] == {"image_shape": [1, 16, 16], "n_classes": 3, "channels": [32, 64],
                                    "feature_dim": 128}
    x = _halves(8, 16, 0).images
    loaded = load_classifier(path)
    assert loaded.info == {"dataset": "toy", "test_accuracy": 0.5, "seed": 1}
    assert torch.equal(image_features(loaded, x), image_features(clf, x))
    assert torch.equal(image_features(load_classifier(tmp_path / "clf.json"), x), image_features(clf, x))

    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_classifier(path)
    path.write_bytes(blob)

    # a sidecar that describes another network, its hash made to fit: the shapes give it away
    save_classifier(FeatureClassifier((1, 16, 16), 4), tmp_path / "other.safetensors", {})
    other = json.loads((tmp_path / "other.json").read_text())
    other["weights_sha256"] = meta["weights_sha256"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "other.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_classifier(tmp_path / "other.safetensors")

    for damage in ("{not json", json.dumps({**meta, "format": "x"}),
                   json.dumps({**meta, "architecture": {**meta["architecture"], "n_classes": -1}})):
        (tmp_path / "clf.json").write_text(damage)
        with pytest.raises(CheckpointError) as err:
            load_classifier(path)
        assert "\n" not in str(err.value)
    (tmp_path / "clf.json").unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(path)


def test_score_samples_real_against_itself_beats_noise():
    from vaelab.evaluation.classifier import train_classifier
    from vaelab.evaluation.generators import FEATURE_SPACE_NOTE, format_scores, score_samples

    data = _halves(600, 16, 2)
    clf = train_classifier(data.subset(slice(0, 300)), 2, epochs=1, batch_size=64, log=None)
    real = data.images[300:]
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = score_samples(clf, real, {"itself": real.float() / 255, "other real": data.images[:300], "noise": noise})
    assert list(scores) == ["itself", "other real", "noise"]
    s = scores["itself"]
    assert abs(s.fd) < 1e-6 and (s.precision, s.recall, s.n) == (1.0, 1.0, 300)
    assert scores["other real"].fd < scores["noise"].fd
    assert scores["noise"].precision < 0.1 and scores["other real"].precision > 0.8
    # density: each real image sits in its own ball and in those of the k images it is a neighbour of
    assert s.coverage == 1.0 and s.density == pytest.approx(4 / 3, abs=0.05)
    assert scores["noise"].coverage < 0.1 < 0.5 < scores["other real"].coverage
    assert scores["noise"].density < 0.1 < 0.5 < scores["other real"].density
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_samples(clf, real, {"0..255 floats": real.float()})
    table = format_scores(scores)
    assert "noise" in table and table.endswith(FEATURE_SPACE_NOTE) and "NOT" in FEATURE_SPACE_NOTE


def test_generator_samples_for_a_vae_and_an_autoencoder():
    from vaelab.config import ModelConfig
    from vaelab.evaluation.generators import generator_samples
    from vaelab.models import build_model

    torch.manual_seed(0)
    vae = build_model(ModelConfig(kind="vae", arch="mlp", latent_dim=3, mlp_hidden=(16,)), (1, 8, 8))
    out = generator_samples(vae, 5, seed=0, batch_size=2)
    assert list(out) == ["prior N(0,I)"] and out["prior N(0,I)"].shape == (5, 1, 8, 8)
    assert torch.equal(out["prior N(0,I)"], generator_samples(vae, 5, seed=0, batch_size=2)["prior N(0,I)"])
    assert torch.allclose(out["prior N(0,I)"], generator_samples(vae, 5, seed=0)["prior N(0,I)"], atol=1e-6)
    assert vae.training  # the mode is restored

    ae = build_model(ModelConfig(kind="ae", arch="conv", latent_dim=3, conv_channels=(4,)), (1, 8, 8))
    ae.fit_codes(torch.randn(50, 3) * 5 + 10)
    out = generator_samples(ae, 4, seed=1)
    assert list(out) == ["N(0,I)", "fitted Gaussian"]
    assert all(x.shape == (4, 1, 8, 8) and 0 <= x.min() and x.max() <= 1 for x in out.values())
    assert not torch.equal(out["N(0,I)"], out["fitted Gaussian"])


def test_classifier_on_fashion_mnist(fashion_mnist_dir):
    from vaelab.config import DataConfig
    from vaelab.data import load_dataset
    from vaelab.evaluation.classifier import classifier_accuracy, train_classifier

    splits = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(fashion_mnist_dir), download=False,
                                     max_train=4000, max_eval=1000))
    clf = train_classifier(splits.train, len(splits.classes), epochs=2, batch_size=64, log=None)
    assert classifier_accuracy(clf, splits.test) > 0.75


def test_find_classifier_takes_one_of_the_same_data_and_seed(tmp_path):
    from vaelab.evaluation.classifier import FeatureClassifier, find_classifier, save_classifier

    info = {"dataset": "toy", "test_accuracy": 0.5, "seed": 0, "train_images": 100}
    want = dict(dataset="toy", image_shape=(1, 16, 16), n_classes=3, train_images=100, seed=0)
    save_classifier(FeatureClassifier((1, 16, 16), 3), tmp_path / "other" / "c.safetensors", {**info, "seed": 7})
    save_classifier(FeatureClassifier((1, 16, 16), 3), tmp_path / "fits" / "c.safetensors", info)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "c.safetensors").write_bytes(b"junk")
    candidates = [tmp_path / d / "c.safetensors" for d in ("absent", "broken", "other", "fits")]
    clf, path, notes = find_classifier(candidates, **want)
    assert path == tmp_path / "fits" / "c.safetensors" and clf.info == info
    assert len(notes) == 2 and "broken" in notes[0] and "seed 7, not 0" in notes[1]  # absent ones: no note
    for key, value in (("dataset", "mnist"), ("train_images", 99), ("n_classes", 4), ("image_shape", (1, 8, 8))):
        assert find_classifier(candidates, **{**want, key: value})[0] is None, key


def test_compare_reuses_the_classifier_a_demo_saved(tmp_path, monkeypatch, capsys):
    import vaelab.evaluation.generators as generators
    from vaelab.cli import main

    demo = tmp_path / "demo"  # a demo's layout: DEMO/vae, DEMO/ae and the classifier in DEMO/fidelity/
    for kind in ("vae", "ae"):
        assert main(["train", "--set", "data.dataset=digits", "--set", "train.epochs=1", "--set", "train.grid_size=4",
                     "--set", "eval.nll_images=0", "--set", "model.arch=mlp", "--set", "model.mlp_hidden=[32]",
                     "--set", f"model.kind={kind}", "--out", str(demo / kind)]) == 0
    assert main(["compare", str(demo / "vae"), str(demo / "ae"), "-n", "100", "--out", str(demo / "fidelity")]) == 0
    assert (demo / "fidelity" / "classifier.safetensors").is_file()
    first = json.loads((demo / "fidelity" / "compare.json").read_text())
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("the classifier was trained again")

    monkeypatch.setattr(generators, "train_classifier", no_training)
    assert main(["compare", str(demo / "vae"), str(demo / "ae"), "-n", "100"]) == 0
    out = capsys.readouterr().out
    assert f"note: reusing the feature classifier {demo / 'fidelity' / 'classifier.safetensors'}" in out
    again = json.loads((demo / "vae" / "compare" / "compare.json").read_text())
    assert again["classifier"] == str(demo / "fidelity" / "classifier.safetensors")
    assert again["scores"] == first["scores"]  # the same feature space, the same numbers
    # another seed, or --new-classifier: a classifier is trained (here: the patched training refuses)
    for extra in (["--seed", "3"], ["--new-classifier"]):
        with pytest.raises(AssertionError, match="trained again"):
            main(["compare", str(demo / "vae"), "-n", "100", "--out", str(tmp_path / "x"), *extra])
    assert "passed over the saved classifier" in capsys.readouterr().out
