import json
import pickle
import shutil

import pytest
import torch

from vaelab.checkpoint import (
    decode_rng, encode_rng, load_checkpoint, optimizer_state_from_tensors, optimizer_state_to_tensors,
    save_checkpoint,
)
from vaelab.config import ModelConfig, RunConfig, to_dict
from vaelab.errors import CheckpointError
from vaelab.models import build_model
from vaelab.runs import load_run, model_from_checkpoint


def _write_meta(path, meta):
    """Write meta.json with a valid digest, as a forger or a careful editor would."""
    from vaelab.checkpoint import _meta_digest

    meta = {**meta, "meta_sha256": _meta_digest(meta)}
    path.write_text(json.dumps(meta))


def _save(root, name="last", scale=1.0):
    t = {"model": {"w": torch.arange(6, dtype=torch.float32) * scale}}
    return save_checkpoint(root, name, t, {"step": int(scale)})


def test_save_replaces_atomically_and_keeps_no_leftovers(tmp_path):
    _save(tmp_path, scale=1.0)
    _save(tmp_path, scale=2.0)
    loaded = load_checkpoint(tmp_path / "last")
    assert loaded.meta["step"] == 2 and torch.equal(loaded.tensors["model"]["w"], torch.arange(6.0) * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_truncated_file_falls_back_to_previous_with_warning(tmp_path):
    _save(tmp_path, scale=1.0)
    # simulate a crash between "rename old away" and "rename new in": the new one is damaged
    shutil.copytree(tmp_path / "last", tmp_path / "last.old")
    _save(tmp_path / "scratch", scale=5.0)
    shutil.rmtree(tmp_path / "last")
    shutil.copytree(tmp_path / "scratch" / "last", tmp_path / "last")
    weights = tmp_path / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.warns(UserWarning, match="truncated"):
        loaded = load_checkpoint(tmp_path / "last")
    assert loaded.meta["step"] == 1


def test_altered_file_is_detected(tmp_path):
    _save(tmp_path)
    weights = tmp_path / "last" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "last")


def test_edited_meta_is_detected_and_the_previous_checkpoint_used(tmp_path):
    _save(tmp_path, scale=1.0)
    shutil.copytree(tmp_path / "last", tmp_path / "last.old")
    meta_path = tmp_path / "last" / "meta.json"
    meta_path.write_text(meta_path.read_text().replace('"step": 1', '"step": 7'))
    with pytest.warns(UserWarning, match="meta.json does not match its SHA-256"):
        loaded = load_checkpoint(tmp_path / "last")
    assert loaded.path == tmp_path / "last.old" and loaded.meta["step"] == 1
    shutil.rmtree(tmp_path / "last.old")
    with pytest.raises(CheckpointError, match="meta.json does not match its SHA-256"):
        load_checkpoint(tmp_path / "last")


def test_format_1_checkpoints_without_a_meta_digest_still_load(tmp_path):
    # the first format had no meta_sha256: runs trained with it must stay usable
    _save(tmp_path, scale=3.0)
    meta_path = tmp_path / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["meta_sha256"]
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    loaded = load_checkpoint(tmp_path / "last")
    assert loaded.meta["step"] == 3 and torch.equal(loaded.tensors["model"]["w"], torch.arange(6.0) * 3)
    # but a format-2 checkpoint that lost its digest is refused
    meta["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "last")


def test_missing_checkpoint_and_missing_meta(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "last")
    (tmp_path / "odd").mkdir()
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_checkpoint(tmp_path / "odd")


def test_pickle_renamed_as_checkpoint_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))

    d = tmp_path / "last"
    d.mkdir()
    payload = pickle.dumps({"model": Boom()})
    (d / "model.safetensors").write_bytes(payload)
    import hashlib

    meta = {"format": "vaelab-checkpoint", "format_version": 2,
            "files": {"model.safetensors": {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}}
    _write_meta(d / "meta.json", meta)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(d)
    assert not (tmp_path / "PWNED").exists()


def test_meta_naming_other_files_is_refused(tmp_path):
    _save(tmp_path)
    meta = json.loads((tmp_path / "last" / "meta.json").read_text())
    meta["files"]["../../etc/passwd.safetensors"] = {"bytes": 1, "sha256": "0"}
    _write_meta(tmp_path / "last" / "meta.json", meta)
    with pytest.raises(CheckpointError, match="unexpected file"):
        load_checkpoint(tmp_path / "last")


def test_shapes_that_do_not_match_the_config_are_refused(tmp_path):
    cfg = RunConfig()
    model = build_model(cfg.model, (1, 28, 28))
    save_checkpoint(tmp_path, "best", {"model": model.state_dict()},
                    {"config": to_dict(cfg.replace(model={"latent_dim": 8})), "image_shape": [1, 28, 28]})
    loaded = load_checkpoint(tmp_path / "best")
    with pytest.raises(CheckpointError, match="the config needs"):
        model_from_checkpoint(loaded.meta, loaded.tensors["model"], "best")


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", latent_dim=4, mlp_hidden=(16,)), (1, 4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(8, 1, 4, 4)

    def step(m, o):
        torch.manual_seed(1)
        out = m(x)
        loss = (-(m.likelihood.log_prob(x, out.x_params)) + out.kl).mean()
        o.zero_grad()
        loss.backward()
        o.step()

    step(model, opt)
    tensors, info = optimizer_state_to_tensors(opt.state_dict())
    save_checkpoint(tmp_path, "last", {"model": model.state_dict(), "optimizer": tensors}, {"optimizer": info})
    loaded = load_checkpoint(tmp_path / "last")
    model2 = build_model(ModelConfig(arch="mlp", latent_dim=4, mlp_hidden=(16,)), (1, 4, 4))
    model2.load_state_dict(loaded.tensors["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(optimizer_state_from_tensors(loaded.tensors["optimizer"], loaded.meta["optimizer"]))
    step(model, opt)
    step(model2, opt2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])


def test_rng_state_round_trip():
    state = torch.get_rng_state()
    assert torch.equal(decode_rng(encode_rng(state)), state)


def test_load_run_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a vaelab run directory"):
        load_run(tmp_path / "plain")


def test_bad_image_shape_or_config_in_meta_is_one_clear_error(tmp_path):
    cfg = RunConfig()
    model = build_model(cfg.model, (1, 28, 28))
    for bad in ([1, 8], [1, 28, -28], [1, 28, 28.5], None):
        save_checkpoint(tmp_path, "best", {"model": model.state_dict()}, {"config": to_dict(cfg), "image_shape": bad})
        loaded = load_checkpoint(tmp_path / "best")
        with pytest.raises(CheckpointError, match="image_shape"):
            model_from_checkpoint(loaded.meta, loaded.tensors["model"], "best")
    save_checkpoint(tmp_path, "best", {"model": model.state_dict()}, {"config": None, "image_shape": [1, 28, 28]})
    loaded = load_checkpoint(tmp_path / "best")
    with pytest.raises(CheckpointError, match="valid config"):
        model_from_checkpoint(loaded.meta, loaded.tensors["model"], "best")


def test_failed_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    import numpy as np

    from vaelab.images import save_png
    from vaelab.runs import write_json

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError):
        write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(OSError):
        save_png(np.zeros((4, 4), np.uint8), tmp_path / "a.png")
    with pytest.raises(OSError):
        _save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ckpt"]  # only the (empty) checkpoint root
