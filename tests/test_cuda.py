"""The same code on a CUDA device: training, checkpoints that move to the CPU, likelihoods, generation.

Skipped where there is no CUDA device (CI has none); run on a GPU machine with `pytest tests/test_cuda.py`.
TF32 convolutions make GPU numbers differ from the CPU's in the third or fourth digit: the tolerances
say how far apart the two may be, not that they are equal.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import load_config, load_run, train
from vaelab.config import ModelConfig
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DIGITS = ["data.dataset=digits", "data.val_size=200", "train.grid_every=0", "train.grid_size=4", "eval.nll_k=20",
          "eval.nll_images=50"]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    cfg = load_config(overrides=[*DIGITS, "train.epochs=3", "train.device=cuda"])
    result = train(cfg, root / "run", log=lambda m: None)
    return root / "run", result


def test_training_on_cuda_learns_and_records_the_device(cuda_run):
    path, result = cuda_run
    hist = result.history
    assert all(math.isfinite(r["train"]["loss"]) for r in hist)
    assert hist[-1]["train"]["loss"] < hist[0]["train"]["loss"]
    info = json.loads((path / "run.json").read_text())
    assert info["device"].startswith("cuda") and info["status"] == "finished"
    assert math.isfinite(result.evaluation["nll"]["splits"]["test"]["nll"])


def test_a_cuda_checkpoint_loads_on_the_cpu_and_decodes_the_same(cuda_run):
    path, _ = cuda_run
    on_gpu, on_cpu = load_run(path, device="cuda"), load_run(path, device="cpu")
    assert next(on_gpu.model.parameters()).is_cuda and not next(on_cpu.model.parameters()).is_cuda
    z = torch.randn(16, on_cpu.config.model.latent_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(on_gpu.decode(z).cpu(), on_cpu.decode(z), atol=2e-3, rtol=0)
    # the same seed draws the same prior codes on either device
    torch.testing.assert_close(on_gpu.sample(8, seed=5).cpu(), on_cpu.sample(8, seed=5), atol=2e-3, rtol=0)


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_importance_sampling_on_cuda_matches_the_cpu(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, latent_dim=8), (1, 28, 28)).eval()
    images = (torch.rand(12, 1, 28, 28) > 0.7).to(torch.uint8) * 255
    cpu = importance_sampled(model, images, k=300, batch_size=5, seed=3)
    gpu = importance_sampled(model.cuda(), images, k=300, batch_size=5, seed=3, device="cuda", noise="cpu")
    # the noise comes from one CPU generator: the two estimates use the same samples
    torch.testing.assert_close(gpu.log_px, cpu.log_px, atol=0.05, rtol=0)
    torch.testing.assert_close(gpu.elbo, cpu.elbo, atol=0.05, rtol=0)


def test_one_training_step_gives_the_cpu_gradients():
    # the fast paths (channels-last, the fold transposed convolution, in-place ReLUs) on the GPU
    from vaelab.objectives import bernoulli_log_likelihood

    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as on the CPU
    cpu_model = build_model(ModelConfig(latent_dim=8, conv_channels=(16, 32)), (1, 28, 28))
    gpu_model = build_model(ModelConfig(latent_dim=8, conv_channels=(16, 32)), (1, 28, 28))
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.cuda().to(memory_format=torch.channels_last)
    x = (torch.rand(32, 1, 28, 28) > 0.5).float()
    eps = torch.randn(32, 8)
    grads, losses = [], []
    for model, dev in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        xd = x.to(dev).contiguous(memory_format=torch.channels_last) if dev == "cuda" else x
        q = model.encode(xd)
        z = q.mean + eps.to(dev) * torch.exp(0.5 * q.logvar)
        loss = (q.kl_standard_normal() - bernoulli_log_likelihood(xd, model.decode(z))).mean()
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.detach().cpu() for n, p in model.named_parameters()})
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert abs(losses[0] - losses[1]) < 1e-4 * abs(losses[0])
    for name, g in grads[0].items():
        scale = g.abs().max().item() + 1e-8
        assert (grads[1][name] - g).abs().max().item() / scale < 1e-3, name


def _device_path_run(root, name, *extra, callbacks=()):
    cfg = load_config(overrides=[*DIGITS, "train.epochs=2", "train.device=cuda", "train.batch_size=100",
                                 "eval.nll_images=0", "train.grid_every=0", "train.checkpoint_steps=3", *extra])
    return train(cfg, root / name, log=lambda m: None, callbacks=callbacks)


def _stop_after(n):
    from vaelab.training import Callback

    class Stop(Callback):
        seen = 0

        def on_step_end(self, trainer, batch, of, stats):
            Stop.seen += 1
            if Stop.seen == n:
                raise KeyboardInterrupt("test")

    return Stop()


def test_the_device_resident_path_resumes_bit_identically_on_the_gpu(tmp_path):
    """train.device_data is on by default on CUDA: order, binarization and guard on the device. Stopped inside
    epoch 2 and resumed on the GPU, it ends with the weights of a straight run, bit for bit."""
    from vaelab import resume

    straight = _device_path_run(tmp_path, "straight")
    steps = straight.history[0]["step"]
    with pytest.raises(KeyboardInterrupt):
        _device_path_run(tmp_path, "pieces", callbacks=[_stop_after(steps + 4)])
    resume(tmp_path / "pieces", log=lambda m: None)
    a = load_run(tmp_path / "straight", checkpoint="last", device="cpu").model.state_dict()
    b = load_run(tmp_path / "pieces", checkpoint="last", device="cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "pieces" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["rng"]["device_data_on"] == "cuda"


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    from vaelab import resume

    with pytest.raises(KeyboardInterrupt):
        _device_path_run(tmp_path, "gpu", callbacks=[_stop_after(20)])
    messages = []
    result = resume(tmp_path / "gpu", log=messages.append, device="cpu")
    assert result.history[-1]["epoch"] == 2 and math.isfinite(result.history[-1]["val"]["loss"])
    assert any("drawn on cuda" in m for m in messages)  # the epoch's order could not be replayed on the CPU
    info = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert info["device"] == "cpu" and info["status"] == "finished"


def test_compiled_bf16_training_on_the_gpu_learns():
    torch.manual_seed(0)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = _device_path_run(Path(tmp), "c", "train.compile=true", "train.precision=bf16")
    assert result.history[-1]["train"]["loss"] < result.history[0]["train"]["loss"]
