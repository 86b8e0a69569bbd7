"""vaelab export: ONNX and TorchScript files of the decoder and encoder, checked against vaelab's own outputs,
run without vaelab, described by export.json; the CLI and its errors."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vaelab import export as ex
from vaelab import load_config, load_run, train
from vaelab.cli import main
from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning")

TINY = ["data.dataset=digits", "data.val_size=100", "data.max_train=200", "data.max_eval=100", "train.epochs=1",
        "train.grid_every=0", "train.grid_size=4", "eval.nll_k=4", "eval.nll_images=8", "eval.gap_images=0"]
# every model kind and both archs; the three likelihoods
KINDS = {
    "vae-conv": ["model.conv_channels=[16, 16]"],  # its last layer: FoldConvTranspose2d
    "ae-mlp": ["model.kind=ae", "model.arch=mlp", "model.mlp_hidden=[32]", "model.likelihood=gaussian",
               "data.binarize=none"],
    "hvae": ["model.kind=hvae", "model.hvae_channels=8", "model.hvae_latents=[2, 3, 4]",
             "model.likelihood=logistic_mixture", "model.mixture_components=2", "data.binarize=none"],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny digits runs, one per kind, each exported in both formats (vae-conv through the CLI)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, overrides in KINDS.items():
        train(load_config(overrides=[*TINY, *overrides]), root / name, log=lambda m: None, progress=False)
        if name == "vae-conv":
            assert main(["export", str(root / name)]) == 0
        else:
            ex.export_run(root / name, log=lambda m: None)
        out[name] = root / name
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(KINDS))
def test_onnx_and_torchscript_match_run_decode_and_encode(exported, name):
    run = load_run(exported[name])
    d = run.model.latent_dim
    z = torch.randn(7, d, generator=torch.Generator().manual_seed(1))  # 7: not the traced batch of 2
    x = torch.rand(7, *run.image_shape, generator=torch.Generator().manual_seed(2))
    want_image = run.decode(z)
    q = run.encode(x)
    want_code = (q.mean, q.logvar) if run.model.variational else (q,)
    folder = exported[name] / "export"
    (image,) = _session(folder / "decoder.onnx").run(["image"], {"z": z.numpy()})
    np.testing.assert_allclose(image, want_image.numpy(), atol=1e-5, rtol=0)
    codes = _session(folder / "encoder.onnx").run(None, {"image": x.numpy()})
    for got, want in zip(codes, want_code, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    decoder, encoder = (torch.jit.load(str(folder / f)) for f in ("decoder.pt", "encoder.pt"))
    torch.testing.assert_close(decoder(z), want_image, atol=1e-5, rtol=0)
    codes = encoder(x)
    for got, want in zip(codes if isinstance(codes, tuple) else (codes,), want_code, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not decoder(z).requires_grad
    # ONNX: valid, batch dimension symbolic, named as documented
    model = onnx.load(str(folder / "decoder.onnx"))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == d
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["part"] == "decoder" and meta["latent_dim"] == str(d) and meta["pixel_range"] == "0,1"


def test_decoder_files_hold_only_the_decoder(exported):
    """The encoder's weights stay out of decoder.pt and decoder.onnx (and the decoder's out of the encoder's)."""
    run = load_run(exported["vae-conv"])
    folder = exported["vae-conv"] / "export"
    keys = set(torch.jit.load(str(folder / "decoder.pt")).state_dict())
    assert keys == {f"model.{k}" for k in run.model.state_dict() if k.startswith("decoder.")}
    keys = set(torch.jit.load(str(folder / "encoder.pt")).state_dict())
    assert keys == {f"model.{k}" for k in run.model.state_dict() if k.startswith("encoder.")}
    n_decoder = sum(p.numel() for p in run.model.decoder.parameters())
    n_onnx = sum(int(np.prod(t.dims)) for t in onnx.load(str(folder / "decoder.onnx")).graph.initializer)
    assert n_decoder <= n_onnx < n_decoder * 1.05 + 100  # its weights, plus a few shape constants
    # the fold form of the last transposed convolution is written as the standard operator it computes
    assert any(type(m).__name__ == "FoldConvTranspose2d" for m in run.model.decoder.modules())
    ops = {node.op_type for node in onnx.load(str(folder / "decoder.onnx")).graph.node}
    assert "ConvTranspose" in ops and "Col2Im" not in ops


def test_vamp_prior_pseudo_inputs_are_not_exported(tmp_path):
    model = build_model(ModelConfig(prior="vamp", pseudo_inputs=7, conv_channels=(4, 8)), (1, 8, 8))
    result = ex.export_model(model, tmp_path, formats=["torchscript"], log=lambda m: None)
    keys = set(torch.jit.load(str(tmp_path / "decoder.pt")).state_dict())
    assert keys and all(k.startswith("model.decoder.") for k in keys)
    assert "VampPrior" in result.manifest["latent"]["distribution"]


WITHOUT_VAELAB = textwrap.dedent("""
    import json, os, sys
    class Refuse:  # vaelab cannot even be imported here
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "vaelab":
                raise ImportError("vaelab is not allowed in this process")
    sys.meta_path.insert(0, Refuse())
    results = {}
    for folder in sys.argv[1:]:
        manifest = json.load(open(os.path.join(folder, "export.json")))
        for fmt, spec in manifest["formats"].items():
            os.chdir(folder)
            scope = {}
            exec("\\n".join(spec["usage"]), scope)  # the manifest's own example, as a user would run it
            names = ["image", "mean", "logvar", "code"]
            results[f"{folder}|{fmt}"] = {k: __import__("numpy").asarray(scope[k]).tolist()
                                          for k in names if k in scope}
    print(json.dumps({"results": results, "vaelab": sorted(m for m in sys.modules if m.startswith("vaelab"))}))
""")


def test_exported_files_run_without_vaelab(exported):
    """A fresh interpreter that imports only torch, onnxruntime and numpy runs each manifest's usage example;
    its outputs are what vaelab computes for the same codes."""
    folders = [str(exported[name] / "export") for name in KINDS]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_VAELAB, *folders], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["vaelab"] == []
    for name in KINDS:
        run = load_run(exported[name])
        d = run.model.latent_dim
        z = {"onnx": torch.from_numpy(np.random.default_rng(0).standard_normal((16, d), dtype=np.float32)),
             "torchscript": torch.randn(16, d, generator=torch.Generator().manual_seed(0))}
        for fmt in ex.FORMATS:
            got = {k: torch.tensor(v) for k, v in report["results"][f"{exported[name] / 'export'}|{fmt}"].items()}
            torch.testing.assert_close(got["image"], run.decode(z[fmt]), atol=1e-5, rtol=0)
            q = run.encode(got["image"])
            if run.model.variational:
                torch.testing.assert_close(got["mean"], q.mean, atol=1e-5, rtol=0)
                torch.testing.assert_close(got["logvar"], q.logvar, atol=1e-5, rtol=0)
            else:
                torch.testing.assert_close(got["code"], q, atol=1e-5, rtol=0)


def test_manifest(exported):
    manifest = json.loads((exported["vae-conv"] / "export" / "export.json").read_text())
    assert manifest["versions"]["vaelab"] and manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert manifest["run"] == str(exported["vae-conv"]) and manifest["checkpoint"] == "best"
    assert manifest["epoch"] == 1 and manifest["data"]["dataset"] == "digits"
    assert manifest["data"]["binarize"] == "dynamic" and manifest["data"]["image_size"] is None
    model = manifest["model"]
    assert model == {"kind": "vae", "arch": "conv", "latent_dim": 20, "image_shape": [1, 8, 8],
                     "pixel_range": [0.0, 1.0], "likelihood": {"name": "bernoulli"}}
    dec, enc = manifest["parts"]["decoder"], manifest["parts"]["encoder"]
    assert [(s["name"], s["shape"], s["dtype"]) for s in dec["inputs"]] == [("z", ["batch", 20], "float32")]
    assert [(s["name"], s["shape"]) for s in dec["outputs"]] == [("image", ["batch", 1, 8, 8])]
    assert "mean of p(x|z)" in dec["outputs"][0]["meaning"]
    assert [s["name"] for s in enc["outputs"]] == ["mean", "logvar"]
    assert dec["files"] == {"onnx": "decoder.onnx", "torchscript": "decoder.pt"}
    assert manifest["formats"]["onnx"]["opset"] >= ex.MIN_OPSET
    assert all(len(f["usage"]) == 5 for f in manifest["formats"].values())
    import hashlib

    for f in manifest["files"]:
        data = (exported["vae-conv"] / "export" / f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        assert 0 <= f["max_abs_diff"] <= manifest["check"]["tolerance"] and f["seconds"] > 0
    ae = json.loads((exported["ae-mlp"] / "export" / "export.json").read_text())
    assert ae["model"]["kind"] == "ae" and ae["model"]["arch"] == "mlp"
    assert [s["name"] for s in ae["parts"]["encoder"]["outputs"]] == ["code"]
    assert ae["model"]["likelihood"] == {"name": "gaussian", "std": 0.1}
    assert torch.allclose(torch.tensor(ae["latent"]["mean"]), load_run(exported["ae-mlp"]).model.code_mean)
    hvae = json.loads((exported["hvae"] / "export" / "export.json").read_text())
    assert hvae["model"]["likelihood"] == {"name": "logistic_mixture", "components": 2}
    assert "conditional prior mean" in hvae["latent"]["note"]
    assert hvae["model"]["latent_dim"] == 4 * 4 * 4  # the top layer, 4 channels at 4x4


def test_cli_options_and_printed_report(exported, tmp_path, capsys):
    run = exported["vae-conv"]
    assert main(["export", str(run), "--format", "onnx", "--parts", "decoder", "--opset", "18",
                 "--checkpoint", "last", "--out", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr().out
    assert "decoder.onnx" in printed and "max |onnx - PyTorch|" in printed and "export.json" in printed
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["decoder.onnx", "export.json"]
    assert onnx.load(str(tmp_path / "x" / "decoder.onnx")).opset_import[0].version == 18
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert manifest["checkpoint"] == "last" and list(manifest["parts"]) == ["decoder"]
    assert manifest["formats"]["onnx"]["opset"] == 18 and len(manifest["formats"]["onnx"]["usage"]) == 4
    assert main(["export", str(run), "--format", "torchscript", "--parts", "encoder",
                 "--out", str(tmp_path / "x")]) == 0  # the same folder: the earlier file is named, and kept
    assert "decoder.onnx is left from an earlier export" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["decoder.onnx", "encoder.pt", "export.json"]
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["encoder.pt"] and "onnx" not in manifest["formats"]
    extra = {"vaelab.json": ""}
    torch.jit.load(str(tmp_path / "x" / "encoder.pt"), _extra_files=extra)
    assert json.loads(extra["vaelab.json"])["part"] == "encoder"


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_arguments_exit_2_with_one_line(exported, tmp_path, capsys):
    run = str(exported["vae-conv"])
    for argv, needle in [(["--format", "png"], "invalid choice"), (["--parts", "decoder,prior"], "'prior'"),
                         (["--parts", "decoder,decoder"], "twice"), (["--parts", ""], "unknown part"),
                         (["--opset", "x"], "invalid int")]:
        with pytest.raises(SystemExit) as exc:
            main(["export", run, *argv])
        assert exc.value.code == 2
        _one_error_line(capsys, needle)
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for argv, needle in [([str(tmp_path / "missing")], "does not exist"),
                         ([run, "--checkpoint", "epoch-9"], "no checkpoint"),
                         ([run, "--opset", "17"], "--opset must lie between 18"),
                         ([run, "--opset", "18", "--format", "torchscript"], "ONNX files only"),
                         ([run, "--out", str(a_file)], "not a directory")]:
        assert main(["export", *argv]) == 2
        _one_error_line(capsys, needle)
    assert a_file.read_text() == "keep me"
    (tmp_path / "d" / "decoder.pt").mkdir(parents=True)  # a directory where a file should go
    assert main(["export", run, "--format", "torchscript", "--out", str(tmp_path / "d")]) == 2
    _one_error_line(capsys, "is a directory")


def test_options_are_checked_in_the_library():
    for kwargs, needle in [({"formats": []}, "no format"), ({"formats": ["onnx", "onnx"]}, "twice"),
                           ({"parts": ["decoder", "x"]}, "unknown part 'x'"), ({"opset": 10_000}, "--opset")]:
        with pytest.raises(ConfigError, match=needle):
            ex.check_options(**{"formats": ex.FORMATS, "parts": ex.PARTS, "opset": None, **kwargs})


def test_missing_onnx_names_the_extra(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", str(exported["vae-conv"]), "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "pip install 'vaelab[export]'")
    assert not (tmp_path / "o").exists()
    # TorchScript needs nothing more
    assert main(["export", str(exported["vae-conv"]), "--format", "torchscript", "--out", str(tmp_path / "t")]) == 0
    # --opset is checked against the installed onnx: without it, the same one line, not an ImportError
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(exported["vae-conv"]), "--opset", "18", "--out", str(tmp_path / "p")]) == 2
    _one_error_line(capsys, "pip install 'vaelab[export]'")


def test_a_disagreeing_export_is_a_loud_error_and_writes_nothing(exported, tmp_path, monkeypatch):
    real = ex.reference
    monkeypatch.setattr(ex, "reference", lambda model, part, x: tuple(t + 1e-3 for t in real(model, part, x)))
    with pytest.raises(ex.ExportError, match=r"decoder\.pt disagrees with PyTorch .* vaelab bug"):
        ex.export_run(exported["vae-conv"], out=tmp_path / "bad", formats=["torchscript"], log=lambda m: None)
    assert list((tmp_path / "bad").iterdir()) == []


def test_verification_compares_every_output():
    a = (torch.zeros(2, 3), torch.zeros(2, 3))
    assert ex.max_abs_diff(a, (torch.zeros(2, 3), torch.full((2, 3), 0.5))) == 0.5
    assert ex.max_abs_diff(a, (torch.zeros(2, 3),)) == float("inf")
    assert ex.max_abs_diff(a, (torch.zeros(2, 3), torch.zeros(3, 3))) == float("inf")
    assert ex.max_abs_diff((torch.tensor([float("nan")]),), (torch.zeros(1),)) == float("inf")


def test_torchscript_round_trip_keeps_the_batch_dynamic():
    """A trace at batch 2 runs at batch 1 and 9 (the sizes are recorded as shape ops, not constants)."""
    model = build_model(ModelConfig(kind="hvae", hvae_latents=(2, 2), hvae_channels=4), (1, 8, 8))
    graph = ex.build_graph(model, "decoder")
    data = ex.to_torchscript(graph, ex.example_input(model, "decoder", 2), {"part": "decoder"})
    module = torch.jit.load(io.BytesIO(data))
    for n in (1, 9):
        z = ex.example_input(model, "decoder", n, seed=n)
        torch.testing.assert_close(module(z), ex.reference(model, "decoder", z)[0], atol=1e-6, rtol=0)
