import json
import os
import pickle
import shutil
import struct

import pytest
import torch

from vaelab.runs.checkpoint import (
    CheckpointWriteError, decode_rng, encode_rng, load_checkpoint, optimizer_state_from_tensors, optimizer_state_to_tensors,
    save_checkpoint,
)
from vaelab.config import ModelConfig, RunConfig, to_dict
from vaelab.errors import CheckpointError
from vaelab.models import build_model
from vaelab.runs import load_run, model_from_checkpoint


def _write_meta(path, meta):
    """Write meta.json with a valid digest, as a forger or a careful editor would."""
    from vaelab.runs.checkpoint import _meta_digest

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


def test_temporary_directories_of_a_killed_writer_are_cleared_by_the_next_save(tmp_path):
    _save(tmp_path, scale=1.0)
    stale = tmp_path / ".last.tmp-99999"  # what SIGKILL during a write by process 99999 leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".best.tmp-99999"
    other.mkdir()
    _save(tmp_path, scale=2.0)
    assert not stale.exists()
    assert other.exists()  # only the name being written is swept
    _save(tmp_path, "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


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
    marker = tmp_path / "PWNED"  # absolute: the payload would write it whatever the working directory

    class Boom:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')",))

    payload = pickle.dumps({"model": Boom()})
    torch.save({"model": Boom()}, tmp_path / "zip.pt")  # torch's format: a zip holding the same pickle
    for name, blob in (("last", payload), ("best", (tmp_path / "zip.pt").read_bytes())):
        _plant(tmp_path / name, blob)
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickled, it leaves the marker
    assert marker.exists()


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

    from vaelab.report.images import save_png
    from vaelab.runs import write_json

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError):
        write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(OSError):
        save_png(np.zeros((4, 4), np.uint8), tmp_path / "a.png")
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        _save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ckpt"]  # only the (empty) checkpoint root


def test_failed_rename_puts_the_previous_checkpoint_back(tmp_path, monkeypatch):
    """The new checkpoint is complete but cannot be renamed in after the old one moved aside:
    the old one returns under its own name (not only as last.old)."""
    _save(tmp_path, scale=1.0)
    real = os.replace

    def refuse_the_new_one(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr("os.replace", refuse_the_new_one)
    with pytest.raises(CheckpointWriteError):
        _save(tmp_path, scale=2.0)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert load_checkpoint(tmp_path / "last").meta["step"] == 1


def _lying(header, data=b"", header_len=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


LYING_HEADERS = {
    "data_offsets beyond the file": _lying({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    "data_offsets claiming a terabyte": _lying({"w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}},
                                               bytes(8)),
    "overlapping offsets": _lying({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "reversed offsets": _lying({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
    "bytes not covered": _lying({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(64)),
    "header length 2**63": _lying({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), 2**63),
    "header length past the end": _lying({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                                         50_000_000),
    "header length 2**64-1": _lying({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                                    2**64 - 1),
    "header not JSON": _lying(b"\x80\x04not json at all", bytes(8)),
    "header a JSON list": _lying(b"[1, 2, 3]", bytes(8)),
    "unknown dtype": _lying({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    "shape product != byte length": _lying({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "shape product overflows": _lying({"w": {"dtype": "F32", "shape": [2**32, 2**32, 8], "data_offsets": [0, 8]}},
                                      bytes(8)),
    "negative dimension": _lying({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    "shorter than its length field": b"\x01\x02",
}


def _plant(d, blob):
    import hashlib

    d.mkdir()
    (d / "model.safetensors").write_bytes(blob)
    meta = {"format": "vaelab-checkpoint", "format_version": 2,
            "files": {"model.safetensors": {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}}
    _write_meta(d / "meta.json", meta)  # the forger re-signs meta.json: only the safetensors checks remain


@pytest.mark.parametrize("what", sorted(LYING_HEADERS))
def test_safetensors_header_that_lies_is_refused_in_one_line(tmp_path, what):
    import resource

    _plant(tmp_path / "last", LYING_HEADERS[what])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as info:
        load_checkpoint(tmp_path / "last")
    assert "\n" not in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB: no huge allocation


def test_valid_safetensors_with_foreign_dtype_or_shape_is_refused_by_the_model_check(tmp_path):
    cfg = RunConfig().replace(model={"arch": "mlp", "latent_dim": 2, "mlp_hidden": [8]})
    model = build_model(cfg.model, (1, 4, 4))
    meta = {"config": to_dict(cfg), "image_shape": [1, 4, 4]}
    state = model.state_dict()
    key = next(iter(state))
    for bad in (state[key].to(torch.float64), torch.zeros((0, 10**12)), state[key].to(torch.float8_e4m3fn)):
        save_checkpoint(tmp_path, "best", {"model": {**state, key: bad}}, meta)
        loaded = load_checkpoint(tmp_path / "best")
        with pytest.raises(CheckpointError, match="the config needs"):
            model_from_checkpoint(loaded.meta, loaded.tensors["model"], "best")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """A whole load (checkpoint files, meta, model rebuild) with every unpickler disabled still works."""
    cfg = RunConfig().replace(model={"arch": "mlp", "latent_dim": 2, "mlp_hidden": [8]})
    model = build_model(cfg.model, (1, 4, 4))
    save_checkpoint(tmp_path / "run" / "checkpoints", "best", {"model": model.state_dict()},
                    {"config": to_dict(cfg), "image_shape": [1, 4, 4]})

    def forbidden(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load", "numpy.load"):
        monkeypatch.setattr(target, forbidden)
    run = load_run(tmp_path / "run")
    assert run.image_shape == (1, 4, 4)
