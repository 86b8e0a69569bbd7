"""Per-image statistics of a model (vaelab.evaluation.statistics): columns, values, storage, cache."""

import numpy as np
import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.errors import CheckpointError
from vaelab.evaluation import statistics as st
from vaelab.evaluation.likelihood import importance_sampled, llr_scores
from vaelab.evaluation.ood import png_code_length_bits
from vaelab.models import build_model

SHAPE = (1, 8, 8)


def _images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) > 0.6).to(torch.uint8) * 255


def _vae():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="mlp", latent_dim=3, mlp_hidden=(16,)), SHAPE)


def _hvae():
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="hvae", hvae_latents=(2, 3, 2), hvae_channels=8), SHAPE)


def test_vae_statistics_shapes_values_and_the_bound(one_thread):
    x = _images()
    s = st.compute_statistics(_vae(), x, split="val", k=16, batch_size=10)
    units = ("post_mean_1", "post_mean_2", "post_mean_3", "post_logvar_1", "post_logvar_2", "post_logvar_3")
    prefer = tuple(f"prefer_{t}" for t in ("hflip", "vflip", "rot180", "rot90", "rot270", "transpose",
                                            "antitranspose"))
    assert s.names == ("log_px", "elbo", "recon", "kl", "post_mean_norm", "post_logvar_mean", *units, *prefer,
                       "png_bits", "complexity")
    assert len(s) == len(x) and all(v.shape == (len(x),) and v.dtype == np.float64 for v in s.columns.values())
    assert all(np.isfinite(v).all() for v in s.columns.values())
    c = s.columns
    assert (c["log_px"] >= c["elbo"]).all()  # log-mean-exp of the same k weights >= their mean
    assert c["log_px"].mean() >= c["elbo"].mean()
    assert (c["kl"] >= 0).all() and (c["recon"] > 0).all() and (c["post_mean_norm"] >= 0).all()
    # -ELBO = recon + KL in expectation: the forward draws and the importance samples agree roughly
    assert abs((c["recon"] + c["kl"]).mean() + c["elbo"].mean()) < 0.05 * abs(c["elbo"].mean()) + 1
    assert s.features() == ("log_px", "elbo", "recon", "kl", "post_mean_norm", "post_logvar_mean", *units,
                            "png_bits")
    # the per-unit columns are the encoder's own mean and log-variance of each image
    model = _vae()
    with torch.no_grad():
        q = model.encode(x.float() / 255)
    assert np.allclose(np.stack([c[f"post_mean_{j}"] for j in (1, 2, 3)], 1), q.mean.double().numpy(), atol=1e-6)
    assert np.allclose(np.stack([c[f"post_logvar_{j}"] for j in (1, 2, 3)], 1), q.logvar.double().numpy(),
                       atol=1e-6)
    assert np.allclose(c["post_mean_norm"], np.linalg.norm(q.mean.double().numpy(), axis=1))


def test_wide_posteriors_keep_their_summaries_only(one_thread):
    torch.manual_seed(0)
    wide = build_model(ModelConfig(arch="mlp", latent_dim=st.UNIT_COLUMNS + 1, mlp_hidden=(16,)), SHAPE)
    s = st.compute_statistics(wide, _images(), split="val", k=2, batch_size=12, samples=1)
    assert "post_mean_norm" in s.names and not any(n.startswith(("post_mean_", "post_logvar_")) and
                                                   n[-1].isdigit() for n in s.names)


def test_statistics_reuse_the_evaluation_numbers(one_thread):
    x = _images()
    model = _hvae()
    s = st.compute_statistics(model, x, split="test", k=8, batch_size=10, seed=7)
    est = importance_sampled(model, x, k=8, batch_size=10, seed=7)
    assert np.array_equal(s.columns["log_px"], est.log_px.numpy())
    assert np.array_equal(s.columns["elbo"], est.elbo.numpy())
    for j in (1, 2):
        llr = llr_scores(model, x, prior_layers=j, k=8, batch_size=10, seed=7, prior_mode=True)
        assert np.array_equal(s.columns[f"llr_{j}"], llr.llr.numpy())
    assert np.array_equal(s.columns["png_bits"], png_code_length_bits(x, binary=True).astype(float))
    bits = s.columns["png_bits"]
    assert np.allclose(s.columns["complexity"], -s.columns["log_px"] / np.log(2) - bits)


def test_hvae_has_a_kl_per_layer_and_every_llr(one_thread):
    s = st.compute_statistics(_hvae(), _images(), split="val", k=4, batch_size=12, samples=3)
    for name in ("kl_1", "kl_2", "kl_3", "llr_1", "llr_2"):
        assert name in s.names and np.isfinite(s.columns[name]).all()
    assert "llr_3" not in s.names
    assert np.allclose(s.columns["kl_1"] + s.columns["kl_2"] + s.columns["kl_3"], s.columns["kl"])
    assert "kl" not in s.features() and "complexity" not in s.features()
    only_one = st.compute_statistics(_hvae(), _images(), split="val", k=4, llr_layers=[2], llr_mode="sample")
    assert [n for n in only_one.names if n.startswith("llr_")] == ["llr_2"]


def test_autoencoder_and_foreign_models_skip_what_they_cannot_give(one_thread):
    torch.manual_seed(0)
    ae = build_model(ModelConfig(kind="ae", arch="mlp", latent_dim=3, mlp_hidden=(16,)), SHAPE)
    s = st.compute_statistics(ae, _images(), split="val")
    assert s.names == ("recon", "code_norm", "png_bits")

    class Foreign:  # a model known only through its importance weights
        def log_weights(self, x, k, generator=None):
            return -x.flatten(1).sum(1).double().expand(k, -1) - torch.rand(k, len(x), generator=generator)

    f = st.compute_statistics(Foreign(), _images(), split="val", k=5)
    assert f.names == ("log_px", "elbo", "png_bits", "complexity")
    assert (f.columns["log_px"] >= f.columns["elbo"]).all()


def test_save_load_round_trip_without_pickle(tmp_path, one_thread):
    s = st.compute_statistics(_hvae(), _images(), split="mnist", k=4)
    path = s.save(tmp_path / "stats" / "mnist.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    t = st.ImageStatistics.load(path)
    assert t.split == "mnist" and t.names == s.names and t.protocol == s.protocol
    assert all(np.array_equal(t.columns[n], s.columns[n]) for n in s.names)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        st.ImageStatistics.load(path)


def test_cache_is_reused_only_for_the_same_protocol_and_images(tmp_path, monkeypatch, one_thread):
    model, x = _vae(), _images()
    path = tmp_path / "val.safetensors"
    first = st.cached_statistics(path, model, x, split="val", k=6)
    calls = []
    real = st.compute_statistics
    monkeypatch.setattr(st, "compute_statistics", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    again = st.cached_statistics(path, model, x, split="val", k=6)
    assert not calls and np.array_equal(again.columns["log_px"], first.columns["log_px"])
    st.cached_statistics(path, model, x, split="val", k=7)  # another k
    st.cached_statistics(path, model, _images(seed=1), split="val", k=7)  # other images
    st.cached_statistics(path, model, _images(seed=1), split="test", k=7)  # another split
    assert len(calls) == 3


def test_statistics_are_deterministic(one_thread):
    a = st.compute_statistics(_vae(), _images(), split="val", k=5)
    b = st.compute_statistics(_vae(), _images(), split="val", k=5)
    assert all(np.array_equal(a.columns[n], b.columns[n]) for n in a.names)


def test_subset_and_matrix():
    s = st.ImageStatistics("val", {"a": np.arange(5.0), "b": np.arange(5.0) * 2}, {"n": 5})
    sub = s.subset([1, 3])
    assert len(sub) == 2 and sub.matrix(["b", "a"]).tolist() == [[2.0, 1.0], [6.0, 3.0]]
    with pytest.raises(ValueError, match="one length"):
        st.ImageStatistics("val", {"a": np.zeros(3), "b": np.zeros(4)})
