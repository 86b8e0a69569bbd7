"""Speed of vaelab against a plain PyTorch loop and pythae, on the same model, in one run.

The model is the classic small conv VAE (vaelab's default): two stride-2 convs of 32 and 64 channels, a
linear layer to a 20-dimensional Gaussian code, the mirror image to decode, Bernoulli pixels. All three
implementations get the same architecture and start from the SAME weights:

- plain: what a user writes from the classic examples (bench/train_throughput.py's PlainVAE): float
  images in a TensorDataset, a shuffling DataLoader, torch.bernoulli per batch, a sigmoid decoder with
  F.binary_cross_entropy(reduction="sum") plus the closed-form KL, Adam 1e-3, batch 128. Its NLL is the
  textbook importance sampler: the image repeated k times through encoder and decoder.
- pythae (https://github.com/clementchadebec/benchmark_VAE, from PyPI): its VAE with our encoder and
  decoder as its BaseEncoder / BaseDecoder, trained by its BaseTrainer's own epoch loop (train_step) on
  images binarized once (pythae has no dynamic binarization), and scored by its VAE.get_nll.
- vaelab: its real training code (Trainer.train_epoch) and its importance sampler (likelihood.importance_sampled).

Measured, alternating the implementations so that machine noise hits all alike: training images/s
(median of --repeats epochs of --images images), importance-sampled evaluation images/s at k (median of
--eval-repeats passes over --eval-images test images), peak memory (the resident memory of a child process,
sampled every millisecond, above its level before one training epoch, and before one evaluation), FLOPs per image (torch.utils.flop_counter)
and the achieved fraction of this machine's float32 matrix-multiply peak (measured here with torch.mm).
Before any timing, the bench checks that the implementations compute the same numbers: the same loss and
gradients from the same weights, batch and noise (vaelab's channels-last fast path against its plain
path and against the plain loop), and the same log-weights for the importance sampler.

pythae must be installed in the benchmark's own environment (`make bench-env`), never with vaelab;
without it the pythae columns are left out and the JSON says so.

    .bench-venv/bin/python bench/speed.py                 # everything (~10 min on 2 cores)
    .bench-venv/bin/python bench/speed.py --repeats 3 --eval-repeats 1 --eval-images 8   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import PlainVAE, make_loader, plain_epoch, plain_loss  # noqa: E402

from vaelab import load_config  # noqa: E402
from vaelab.data import eval_view, load_dataset  # noqa: E402
from vaelab.evaluation.likelihood import importance_sampled  # noqa: E402
from vaelab.training.loss import training_loss  # noqa: E402
from vaelab.models import build_model  # noqa: E402
from vaelab.training.loop import Trainer  # noqa: E402
from _results import provenance, write_result  # noqa: E402 (bench/ is on sys.path)

IMPLS = ("plain", "pythae", "vaelab")


# --------------------------------------------------------------------------- one architecture, three homes


def copy_into_plain(vae, plain: PlainVAE) -> None:
    """vaelab's default VAE and PlainVAE are the same network; copy vaelab's weights into the plain one."""
    enc, dec = vae.encoder.net, vae.decoder.net
    plain.enc[0].load_state_dict(enc[0].state_dict())
    plain.enc[2].load_state_dict(enc[2].state_dict())
    head = enc[5]  # Linear(3136, 2 * latent): the mean's rows, then the log-variance's
    d = vae.latent_dim
    with torch.no_grad():
        plain.fc_mu.weight.copy_(head.weight[:d]); plain.fc_mu.bias.copy_(head.bias[:d])
        plain.fc_logvar.weight.copy_(head.weight[d:]); plain.fc_logvar.bias.copy_(head.bias[d:])
    plain.fc_dec.load_state_dict(dec[0].state_dict())
    plain.dec[0].load_state_dict(dec[3].state_dict())
    plain.dec[2].load_state_dict(dec[5].state_dict())


def pythae_model(plain: PlainVAE):
    """pythae's VAE around copies of the plain network's encoder and decoder (the same weights)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.fc_mu, self.fc_logvar = (copy.deepcopy(plain.enc), copy.deepcopy(plain.fc_mu),
                                                    copy.deepcopy(plain.fc_logvar))

        def forward(self, x):
            h = self.enc(x)
            return ModelOutput(embedding=self.fc_mu(h), log_covariance=self.fc_logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.fc_dec, self.dec = copy.deepcopy(plain.fc_dec), copy.deepcopy(plain.dec)

        def forward(self, z):
            return ModelOutput(reconstruction=self.dec(F.relu(self.fc_dec(z)).view(-1, 64, 7, 7)))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=plain.fc_mu.out_features, reconstruction_loss="bce")
    return VAE(config, encoder=Encoder(), decoder=Decoder())


def pythae_trainer(plain: PlainVAE, images_u8: torch.Tensor, out_dir: Path):
    """pythae's BaseTrainer (Adam 1e-3, batch 128) on the images binarized once (pythae has no dynamic
    binarization), set up as its train() does before the epochs but without the progress bar and
    console printer (vaelab is timed without its progress bar too), so that its train_step can be timed."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import CallbackHandler, TrainingCallback

    noise = torch.rand(images_u8.shape, generator=torch.Generator().manual_seed(5))
    static = (images_u8.float() / 255 > noise).float()
    trainer = BaseTrainer(pythae_model(plain), BaseDataset(static, torch.zeros(len(images_u8))),
                          training_config=BaseTrainerConfig(output_dir=str(out_dir), num_epochs=1, learning_rate=1e-3,
                                                            per_device_train_batch_size=128, no_cuda=True))
    trainer.prepare_training()  # its optimizer (Adam at the configured rate), output folder and callbacks
    trainer.callback_handler = CallbackHandler(callbacks=[TrainingCallback()], model=trainer.model)
    return trainer


def have_pythae() -> bool:
    try:
        import pythae  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return False
    return True


# --------------------------------------------------------------------------- the textbook importance sampler


@torch.no_grad()
def plain_nll(model: PlainVAE, images_u8: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x) per image, the textbook way: each image repeated k times through encoder and decoder."""
    model.eval()
    out = []
    for img in images_u8:
        x = img.float().div(255).unsqueeze(0).expand(k, -1, -1, -1)
        h = model.enc(x)
        mu, logvar = model.fc_mu(h), model.fc_logvar(h)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(mu)
        recon = model.dec(F.relu(model.fc_dec(z)).view(-1, 64, 7, 7))
        log_px_z = -F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(1)
        log_pz = -0.5 * (z ** 2).sum(1)
        log_qz = -0.5 * (logvar + (z - mu) ** 2 / logvar.exp()).sum(1)
        lw = log_px_z + log_pz - log_qz
        out.append(torch.logsumexp(lw, 0) - torch.log(torch.tensor(float(k))))
    return torch.stack(out)


# --------------------------------------------------------------------------- checks before timing


def check_same_numbers(splits) -> dict:
    """The fast paths compute what the plain ones do: same loss and gradients from the same weights, batch
    and noise; the same importance log-weights with and without the channels-last fast path."""
    cfg = load_config()
    torch.manual_seed(0)
    vae = build_model(cfg.model, splits.image_shape)
    plain = PlainVAE(vae.latent_dim)
    copy_into_plain(vae, plain)
    x = (splits.test.images[:128].float() / 255 > 0.5).float()
    results = {}

    def vaelab_loss(model, xb):
        torch.manual_seed(1)
        loss = training_loss(model, xb, cfg.train, 1.0).loss
        model.zero_grad()
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss_plain_path, g_plain_path = vaelab_loss(vae, x)  # contiguous: vaelab's plain path
    torch.manual_seed(1)
    recon, mu, logvar = plain(x)
    ref = plain_loss(recon, x, mu, logvar)
    vae_cl = build_model(cfg.model, splits.image_shape)
    vae_cl.load_state_dict(vae.state_dict())
    vae_cl.to(memory_format=torch.channels_last)
    loss_fast, g_fast = vaelab_loss(vae_cl, x.contiguous(memory_format=torch.channels_last))
    results["train_loss"] = {"plain_loop": ref.item(), "vaelab_plain_path": loss_plain_path,
                             "vaelab_fast_path": loss_fast}
    results["train_grad_max_rel_diff"] = float((g_fast - g_plain_path).abs().max() / g_plain_path.abs().max())
    rel = abs(loss_fast - ref.item()) / abs(ref.item())
    results["train_loss_rel_diff_vs_plain_loop"] = rel
    # the importance sampler (channels-last, chunked decoding) against the model's log-weights computed
    # directly on the contiguous model in one call, with the same generator and so the same noise
    xs = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images[:16]
    k = 200
    with torch.no_grad():
        vae.eval()
        lw = vae.log_weights(xs.float() / 255, k, torch.Generator().manual_seed(3), discrete=True)
        ref_nll = torch.logsumexp(lw, 0) - torch.log(torch.tensor(float(k), dtype=torch.float64))
    fast = importance_sampled(copy.deepcopy(vae), xs, k=k, seed=3, batch_size=16, max_decode=k * 16).log_px
    results["nll_max_abs_diff_fast_vs_plain_path"] = float((fast - ref_nll).abs().max())
    ok = (rel < 1e-5 and results["train_grad_max_rel_diff"] < 1e-4
          and results["nll_max_abs_diff_fast_vs_plain_path"] < 1e-3
          and abs(loss_plain_path - loss_fast) / abs(loss_fast) < 1e-5)
    results["ok"] = ok
    if not ok:
        raise SystemExit(f"the fast path does not compute the plain path's numbers: {results}")
    return results


# --------------------------------------------------------------------------- FLOPs and the machine's peak


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """float32 GFLOP/s of torch.mm on n x n matrices with this process's threads: the best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_image(splits, k: int) -> dict:
    cfg = load_config()
    torch.manual_seed(0)
    vae = build_model(cfg.model, splits.image_shape)
    plain = PlainVAE(vae.latent_dim)
    x = (splits.test.images[:128].float() / 255 > 0.5).float()

    def plain_step():
        recon, mu, logvar = plain(x)
        plain_loss(recon, x, mu, logvar).backward()

    def vaelab_step():
        training_loss(vae, x, cfg.train, 1.0).loss.backward()

    xs = (splits.test.images[:1] > 127).to(torch.uint8) * 255
    return {
        "train_plain": count_flops(plain_step) / len(x),
        "train_vaelab": count_flops(vaelab_step) / len(x),
        "eval_plain": count_flops(lambda: plain_nll(plain, xs, k)),
        "eval_vaelab": count_flops(lambda: importance_sampled(vae, xs, k=k)),
    }


# --------------------------------------------------------------------------- timing


def time_training(splits, n_images: int, repeats: int, use_pythae: bool) -> dict:
    cfg = load_config(overrides=[f"data.max_train={n_images}", "train.grid_every=0"])
    sub = replace(splits, train=splits.train.subset(slice(0, n_images)))
    images = sub.train.images
    rates: dict[str, list[float]] = {name: [] for name in IMPLS if use_pythae or name != "pythae"}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", splits=sub, log=lambda m: None, progress=False)
        torch.manual_seed(0)
        plain = PlainVAE(trainer.model.latent_dim)
        copy_into_plain(trainer.model, plain)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        loader = make_loader(images)
        runners = {"plain": lambda: plain_epoch(plain, plain_opt, loader),
                   "vaelab": lambda: trainer.train_epoch()["images"]}
        if use_pythae:
            pt_trainer = pythae_trainer(plain, images, Path(tmp) / "pythae")
            runners["pythae"] = lambda: (pt_trainer.train_step(1), len(images))[1]
        for run in runners.values():  # warm-up: allocator, first-call overheads
            run()
        for _ in range(repeats):
            for name in rates:
                t0 = time.perf_counter()
                n = runners[name]()
                rates[name].append(n / (time.perf_counter() - t0))
        trainer.close()
    return summarize(rates, "plain")


def time_eval(splits, n_images: int, repeats: int, k: int, use_pythae: bool) -> dict:
    cfg = load_config()
    torch.manual_seed(0)
    vae = build_model(cfg.model, splits.image_shape)
    plain = PlainVAE(vae.latent_dim)
    copy_into_plain(vae, plain)
    xs = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images[:n_images]
    runners = {"plain": lambda: plain_nll(plain, xs, k),
               "vaelab": lambda: importance_sampled(vae, xs, k=k)}
    if use_pythae:
        pt = pythae_model(plain).eval()
        xf = xs.float() / 255
        runners["pythae"] = lambda: torch.no_grad()(pt.get_nll)(xf, n_samples=k, batch_size=k)
    rates: dict[str, list[float]] = {name: [] for name in IMPLS if name in runners}
    nll = {}
    for name in rates:  # warm-up on 2 images
        (runners[name] if name != "vaelab" else (lambda: importance_sampled(vae, xs[:2], k=k)))()
    for _ in range(repeats):
        for name in rates:
            t0 = time.perf_counter()
            out = runners[name]()
            rates[name].append(len(xs) / (time.perf_counter() - t0))
            nll[name] = float(-out.log_px.mean()) if name == "vaelab" else (
                -float(out) if name == "pythae" else float(-out.mean()))
    result = summarize(rates, "plain")
    result["nll_same_weights"] = nll  # an untrained model; the three should agree within noise
    return result


def summarize(rates: dict[str, list[float]], base: str) -> dict:
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {}
    for name, values in rates.items():
        pair = [v / b for v, b in zip(values, rates[base])]  # each against the baseline of the same round
        ratios[name] = {"median": statistics.median(pair), "min": min(pair), "max": max(pair)}
    return {"images_per_s": rates, "median_images_per_s": med, "ratio_to_plain": ratios}


# --------------------------------------------------------------------------- memory, in child processes


class PeakRSS:
    """The process's resident memory, sampled every millisecond by a thread: the peak above a baseline.

    ru_maxrss cannot do this: it is a high-water mark over the whole process, which loading the dataset
    may already have set higher than what the task needs."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.base = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def child_memory(impl: str, n_images: int, k: int, eval_images: int) -> None:
    """Run in a child: one training epoch and one evaluation of `impl`; print their peak RSS growth in MiB."""
    splits = load_dataset(load_config().data, log=lambda m: None)
    with PeakRSS() as train_mem:
        time_training_one(impl, splits, n_images)
    cfg = load_config()
    torch.manual_seed(0)
    vae = build_model(cfg.model, splits.image_shape)
    plain = PlainVAE(vae.latent_dim)
    xs = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images[:eval_images]
    with PeakRSS() as eval_mem:
        if impl == "plain":
            plain_nll(plain, xs, k)
        elif impl == "pythae":
            with torch.no_grad():
                pythae_model(plain).eval().get_nll(xs.float() / 255, n_samples=k, batch_size=k)
        else:
            importance_sampled(vae, xs, k=k)
    print(json.dumps({"train_mib": train_mem.mib, "eval_mib": eval_mem.mib}))


def time_training_one(impl: str, splits, n_images: int) -> None:
    images = splits.train.images[:n_images]
    torch.manual_seed(0)
    if impl == "vaelab":
        cfg = load_config(overrides=[f"data.max_train={n_images}", "train.grid_every=0"])
        sub = replace(splits, train=splits.train.subset(slice(0, n_images)))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, Path(tmp) / "run", splits=sub, log=lambda m: None, progress=False)
            trainer.train_epoch()
            trainer.close()
        return
    plain = PlainVAE()
    if impl == "plain":
        plain_epoch(plain, torch.optim.Adam(plain.parameters(), lr=1e-3), make_loader(images))
        return
    with tempfile.TemporaryDirectory() as tmp:
        pythae_trainer(plain, images, Path(tmp)).train_step(1)


def memory(impls, n_images: int, k: int, eval_images: int, threads: int) -> dict:
    out = {}
    for impl in impls:
        cmd = [sys.executable, __file__, "--_memory-child", impl, "--images", str(n_images), "--k", str(k),
               "--eval-images", str(eval_images), "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[impl] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="training images per timed epoch")
    parser.add_argument("--repeats", type=int, default=7, help="timed training epochs per implementation")
    parser.add_argument("--eval-images", type=int, default=32, help="test images per timed evaluation")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-pythae", action="store_true", help="leave pythae out even when installed")
    parser.add_argument("--out", default="bench/results/speed.json")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        child_memory(args.memory_child, args.images, args.k, args.eval_images)
        return 0
    use_pythae = not args.no_pythae and have_pythae()
    splits = load_dataset(load_config().data, log=lambda m: None)
    t_start = time.perf_counter()
    result: dict = {
        "benchmark": "speed", **provenance("bench/speed.py", argv),
        "pythae": None,
    }
    if use_pythae:
        from importlib.metadata import version

        result["pythae"] = version("pythae")
    print("checking that the fast paths compute the plain paths' numbers ...", flush=True)
    result["same_numbers"] = check_same_numbers(splits)
    print(f"  ok: training loss {result['same_numbers']['train_loss']}")
    result["matmul_peak_gflops"] = peak = matmul_peak()
    result["flops_per_image"] = flops = flops_per_image(splits, args.k)
    print(f"float32 matmul peak here: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    print("timing training ...", flush=True)
    result["train"] = tr = time_training(splits, args.images, args.repeats, use_pythae)
    print("timing evaluation ...", flush=True)
    result["eval"] = ev = time_eval(splits, args.eval_images, args.eval_repeats, args.k, use_pythae)
    print("measuring memory ...", flush=True)
    result["memory_mib"] = mem = memory(list(tr["median_images_per_s"]), args.images, args.k, 8, args.threads)
    result["bench_wall_s"] = time.perf_counter() - t_start

    def flop_of(task, name):  # pythae runs the plain network and the textbook sampler's FLOPs
        return flops[f"{task}_{'vaelab' if name == 'vaelab' else 'plain'}"]

    print(f"\nconv VAE (32-64, latent 20), Fashion-MNIST, {torch.get_num_threads()} threads; medians, ratios to "
          f"the plain loop paired by round")
    print(f"{'':<8}{'train img/s':>12}{'x plain':>9}{'% peak':>8}{'eval img/s':>12}{'x plain':>9}{'% peak':>8}"
          f"{'train MiB':>11}{'eval MiB':>10}")
    for name in tr["median_images_per_s"]:
        t, e = tr["median_images_per_s"][name], ev["median_images_per_s"][name]
        t_frac = t * flop_of("train", name) / (peak * 1e9)
        e_frac = e * flop_of("eval", name) / (peak * 1e9)
        result.setdefault("peak_fraction", {})[name] = {"train": t_frac, "eval": e_frac}
        print(f"{name:<8}{t:>12.0f}{tr['ratio_to_plain'][name]['median']:>9.2f}{100 * t_frac:>8.1f}"
              f"{e:>12.2f}{ev['ratio_to_plain'][name]['median']:>9.2f}{100 * e_frac:>8.1f}"
              f"{mem[name]['train_mib']:>11.0f}{mem[name]['eval_mib']:>10.0f}")
    print(f"(FLOPs per image: training {flops['train_plain'] / 1e6:.1f} M plain and pythae, "
          f"{flops['train_vaelab'] / 1e6:.1f} M vaelab; evaluation at k={args.k}: "
          f"{flops['eval_plain'] / 1e9:.2f} G textbook, {flops['eval_vaelab'] / 1e9:.2f} G vaelab)")
    out = write_result(args.out, result, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
