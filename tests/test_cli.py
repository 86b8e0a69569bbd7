import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from vaelab.cli import main

TINY = ["--set", "train.epochs=1", "--set", "data.max_train=512", "--set", "data.max_eval=256",
        "--set", "train.grid_size=16", "--set", "eval.nll_k=10", "--set", "eval.nll_images=64"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True, env=full_env,
                          timeout=300)


@pytest.mark.parametrize("command", ["", "train", "sample", "reconstruct", "interpolate", "evaluate",
                                     "datasets", "demo", "report", "sweep", "serve", "export"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"] if command else ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: vaelab" in out
    if command in ("", "train", "evaluate", "demo"):
        assert "summed over all pixels" in out and "beta" in out  # the loss conventions
    if command == "train":
        assert "model.latent_dim = 20" in out and "train.beta = 1.0" in out  # every key with its default


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_mnist_dir):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_every_promised_file(tiny_run):
    for rel in ["config.toml", "run.json", "metrics.jsonl", "train.log", "evaluation.json",
                "checkpoints/best/model.safetensors", "checkpoints/best/meta.json",
                "checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors",
                "checkpoints/last/meta.json", "images/samples.png", "images/samples_epoch_001.png",
                "images/reconstructions.png", "images/interpolations.png"]:
        assert (tiny_run / rel).is_file(), rel
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for split in ("train", "val"):
        assert {"loss", "recon", "kl", "nelbo"} <= set(record[split])
        assert record[split]["recon"] > 0 and record[split]["kl"] > 0
    assert "max_train = 512" in (tiny_run / "config.toml").read_text()
    meta = json.loads((tiny_run / "checkpoints/last/meta.json").read_text())
    assert meta["config"]["data"]["max_train"] == 512 and meta["step"] == 4 and "torch" in meta["rng"]
    ev = json.loads((tiny_run / "evaluation.json").read_text())
    assert set(ev["splits"]) == {"train", "val", "test"}
    assert ev["gap_test_minus_train"] == pytest.approx(ev["splits"]["test"]["nelbo"] - ev["splits"]["train"]["nelbo"])
    img = Image.open(tiny_run / "images/samples.png")
    assert img.size[0] > 28 * 4


def test_sample_reconstruct_interpolate_evaluate(tiny_run, tmp_path, capsys):
    # --raw: the bare grids (the labelled pictures are tested in test_generate.py)
    raw = ["--raw", "--out"]
    assert main(["sample", str(tiny_run), "-n", "9", "--temperature", "0.5", *raw, str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (3 * 30 + 2, 3 * 30 + 2)
    assert main(["reconstruct", str(tiny_run), "-n", "8", *raw, str(tmp_path / "r.png")]) == 0
    assert Image.open(tmp_path / "r.png").size[0] == 4 * 30 + 2  # 2 pairs per row
    assert main(["interpolate", str(tiny_run), "--pairs", "2", "--steps", "7", *raw, str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (7 * 30 + 2, 4 * 30 + 2)  # 2 pairs x (lerp, slerp)
    assert main(["evaluate", str(tiny_run), "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "-ELBO" in out and "generalization gap" in out
    ev = json.loads((tmp_path / "e.json").read_text())
    train_ev = json.loads((tiny_run / "evaluation.json").read_text())
    # the same checkpoint, binarization and seed: the numbers of the end of training (to float rounding:
    # training ran in channels-last memory format)
    assert ev["splits"]["test"]["nelbo"] == pytest.approx(train_ev["splits"]["test"]["nelbo"], rel=1e-6)
    # the sample-fidelity score is deterministic too: 256 test images, 25 PCA dimensions
    assert ev["samples"]["images"] == 256 and ev["samples"]["pca_dims"] == 25
    assert ev["samples"]["fd_samples_test"] == pytest.approx(train_ev["samples"]["fd_samples_test"], rel=1e-5)
    assert 0 < ev["samples"]["fd_train_test"] < ev["samples"]["fd_samples_test"]
    assert "Frechet distance" in out


def test_bad_config_key_exits_2_with_one_line():
    r = run_cli("train", "--set", "model.latentdim=3")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.latentdim" in lines[0] and "did you mean model.latent_dim" in lines[0]
    assert "Traceback" not in r.stderr


def test_missing_data_exits_2_with_one_line(tmp_path):
    r = run_cli("train", "--set", "data.dataset=mnist", "--set", "data.download=false", "--out", str(tmp_path / "r"),
                env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "mnist not found" in r.stderr and "--data-dir" in r.stderr
    r = run_cli("train", "--set", f"data.dataset=folder:{tmp_path / 'nope'}", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()  # a mistake leaves no half-made run


def test_usage_errors_exit_2_with_one_line(tmp_path):
    r = run_cli("sample")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("sample", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml does not exist" in r.stderr


def test_corrupt_checkpoint_exits_2(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    for name in ("best", "last"):
        (copy / "checkpoints" / name / "model.safetensors").write_bytes(b"not safetensors")
    r = run_cli("sample", str(copy))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "checkpoint" in r.stderr


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_outputs_and_options_exit_2_with_one_line(tiny_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["train", *TINY, "--out", str(a_file)]) == 2
    _one_error_line(capsys, "is not a directory")
    assert main(["demo", "--out", str(a_file)]) == 2
    _one_error_line(capsys, "is not a directory")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    assert main(["sample", str(tiny_run), "-n", "4", "--out", str(a_dir)]) == 2
    _one_error_line(capsys, "is a directory")
    assert main(["evaluate", str(tiny_run), "--json", str(a_dir)]) == 2
    _one_error_line(capsys, "is a directory")
    assert list(a_dir.iterdir()) == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # a special file (like /dev/null) is never replaced by the atomic rename
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["evaluate", str(tiny_run), "--json", str(fifo)]) == 2
    _one_error_line(capsys, "not a regular file")
    assert main(["sample", str(tiny_run), "-n", "4", "--out", str(fifo)]) == 2
    _one_error_line(capsys, "not a regular file")
    assert fifo.is_fifo()
    fifo.unlink()
    for args, needle in [(["--device", "gpu0"], "not a device"), (["--device", "cuda:7"], "cuda:7"),
                         (["--seed", "-1"], "--seed"), (["--seed", str(2**70)], "--seed"),
                         (["-n", str(10**9)], "at most"), (["--temperature", "inf"], "--temperature")]:
        assert main(["sample", str(tiny_run), *args, "--out", str(tmp_path / "s.png")]) == 2, args
        _one_error_line(capsys, needle)
    for override, needle in [("train.threads=100000", "train.threads"), ("train.seed=99999999999", "out of range"),
                             ("train.lr=inf", "finite"), ("train.beta=nan", "finite"),
                             ("model.conv_channels=[32, 99999999999]", "list of integers"),
                             ("data.image_size=3000", "at most 1024"), ("model.latent_dim=200000000", "at most"),
                             ("data.max_train=99999999999", "out of range")]:
        assert main(["train", "--set", override, "--out", str(tmp_path / "never")]) == 2, override
        _one_error_line(capsys, needle)
    assert not (tmp_path / "never").exists()
    assert main(["interpolate", str(tiny_run), "--pairs", "10000", "--steps", "10000"]) == 2
    _one_error_line(capsys, "--pairs x --steps")


def test_out_of_memory_is_one_line(tiny_run, monkeypatch, capsys):
    import vaelab.runs.load

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 900000000000 bytes.")

    monkeypatch.setattr(vaelab.runs.load.Run, "sample", no_memory)
    assert main(["sample", str(tiny_run), "-n", "4"]) == 2
    _one_error_line(capsys, "out of memory", "batch_size")
    monkeypatch.setattr(vaelab.runs.load.Run, "sample", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not disguised as user mistakes
        main(["sample", str(tiny_run), "-n", "4"])


def test_evaluate_on_data_of_another_shape_exits_2(tiny_run, tmp_path, capsys):
    import numpy as np

    from vaelab.data import write_idx

    images = np.zeros((20, 10, 10), np.uint8)
    for stem in ("train", "t10k"):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.zeros(20, np.uint8))
    assert main(["evaluate", str(tiny_run), "--data-dir", str(tmp_path)]) in (2,)
    _one_error_line(capsys, "shape 1x10x10", "1x28x28")


def test_existing_run_directory_is_refused(tiny_run, capsys):
    assert main(["train", *TINY, "--out", str(tiny_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_datasets_command(mnist10k_dir, capsys):
    assert main(["datasets", "--data-dir", str(mnist10k_dir), "mnist", "digits"]) == 0
    out = capsys.readouterr().out
    assert "10000" in out and "1797" in out and "found" in out and "carved" in out


def test_folder_of_rgb_images_trains_with_no_code_change(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "pics").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (70, 64, 3), dtype=np.uint8)).save(tmp_path / "pics" / f"{i}.png")
    out = tmp_path / "run"
    # a relative folder inside --data-dir, and the default validation size (10% of 32 training images)
    assert main(["train", "--data-dir", str(tmp_path), "--set", "data.dataset=folder:pics",
                 "--set", "data.image_size=64", "--set", "data.binarize=none", "--set", "model.likelihood=gaussian",
                 "--set", "train.epochs=1", "--set", "train.grid_size=4", "--set", "eval.nll_k=5",
                 "--set", "eval.nll_images=8", "--out", str(out)]) == 0
    meta = json.loads((out / "checkpoints/best/meta.json").read_text())
    assert meta["image_shape"] == [3, 64, 64]
    # usable from any directory: data_dir recorded absolute, the folder relative to it
    assert meta["config"]["data"]["dataset"] == "folder:pics"
    assert meta["config"]["data"]["data_dir"] == str(tmp_path.resolve())
    info = json.loads((out / "run.json").read_text())
    assert info["dataset"]["sizes"] == {"train": 29, "val": 3, "test": 8}
    assert Image.open(out / "images/samples.png").mode == "RGB"
    # the data moved to another machine / directory: --data-dir points the run at it
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "pics").rename(tmp_path / "elsewhere" / "pics")
    assert main(["evaluate", str(out), "--data-dir", str(tmp_path / "elsewhere"),
                 "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["splits"]["test"]["n"] == 8


def test_compare_vae_and_ae_generation_in_classifier_features(tiny_run, tmp_path, capsys):
    ae = tmp_path / "ae"
    assert main(["train", *TINY, "--set", "model.kind=ae", "--out", str(ae)]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_run), str(ae), "-n", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NOT in the Inception" in text  # says plainly which feature space this is
    result = json.loads((out / "compare.json").read_text())
    names = set(result["scores"])
    assert names == {"real training images (floor)", "tiny (vae) prior N(0,I)", "ae (ae) N(0,I)",
                     "ae (ae) fitted Gaussian"}
    for s in result["scores"].values():
        assert s["n"] == 200 and s["fd"] >= 0 and 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1
    floor = result["scores"]["real training images (floor)"]["fd"]
    assert all(s["fd"] > floor for name, s in result["scores"].items() if "floor" not in name)
    assert (out / "classifier.safetensors").is_file() and result["classifier_test_accuracy"] > 0.5
    # the saved classifier is reused: the same feature space, the same numbers
    assert main(["compare", str(tiny_run), str(ae), "-n", "200", "--classifier", str(out / "classifier.safetensors"),
                 "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "compare.json").read_text())
    assert again["scores"] == result["scores"]


def test_compare_refuses_runs_of_different_datasets(tiny_run, tmp_path, capsys):
    other = tmp_path / "digits"
    assert main(["train", "--set", "data.dataset=digits", "--set", "train.epochs=1", "--set", "train.grid_size=4",
                 "--set", "eval.nll_images=0", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["compare", str(tiny_run), str(other), "-n", "50"]) == 2
    assert "compare runs of one dataset" in capsys.readouterr().err
