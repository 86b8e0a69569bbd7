"""vaelab on one GPU: training and k=1000 evaluation images/s, eager and compiled, beside a plain PyTorch loop.

Issue 17, part 4. One run of at most ~8 minutes on one GPU (--budget-s, default 450 s after start-up) measures,
in the same process and on the same device:

- the GPU's matmul peak: TFLOP/s of a large torch.mm in bf16, in float32 with TF32 and in strict float32
  (cuBLAS's ceiling for the models' matrix multiplies and convolutions);
- for each model, the default VAE (RunConfig's defaults), configs/vae-long-vamp.toml (VampPrior) and a deep
  hierarchical VAE (model.kind=hvae, hvae_cell=bottleneck, hvae_stages=[2,4,4], ten 8-channel layers; or
  --hvae-config), at batch 128 and 1024:
  - training images/s of a plain PyTorch loop: the same model (vaelab.models.build_model) trained by a
    hand-written loop, the training images as one uint8 tensor on the device, torch.bernoulli per batch, the
    ELBO from model(x), torch.optim.Adam(lr=1e-3): what a user writes around the model;
  - training images/s of vaelab's Trainer (Trainer.train_epoch, the code `vaelab train` runs), eager and with
    train.compile=true; its other keys as the config gives them (train.device_data=auto: on for CUDA,
    train.tf32=true, train.precision=fp32; change any of them for all rows with --set);
  - importance-sampled evaluation images/s at k (vaelab.evaluation.likelihood.importance_sampled with that
    many images per batch), eager and with eval.compile=true;
  - and, once per model, the textbook evaluation: each image repeated k times through model.log_weights.

Timing: each measurement runs once untimed (compilation, cuDNN's algorithm search, the allocator), then a fixed
number of steps (training: one epoch of Sizes.steps batches) or images (evaluation: Sizes.eval_images), with
torch.cuda.synchronize() before the clock starts and before it stops. Every row starts from the backend switches
PyTorch had at the start (TF32 off for matmuls, on for cuDNN); the Trainer then sets train.tf32's, the plain loop
and the evaluation keep them (the JSON records each row's). The eager rows come first, the compiled ones while
the budget lasts; a row that does not fit, or whose model cannot be built (the deep HVAE before its code
exists), is reported as skipped with the reason. Prints a table; writes JSON (bench/results/gpu.json, or --out).

    python bench/gpu.py                                    # on a GPU: at most ~8 minutes
    python bench/gpu.py --set train.precision=bf16         # every vaelab row with bf16 autocast
    python bench/gpu.py --device cpu --quick --threads 1   # tiny sizes on a CPU (~2 minutes): the script works
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

import vaelab
from vaelab import load_config
from vaelab.config import RunConfig
from vaelab.data import eval_view, load_dataset
from vaelab.data.user import splits_from_images
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.models import build_model
from vaelab.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
# the layers before the stages: each override is checked as it is applied, and the stages must add up to them
HVAE_KEYS = ['model.kind="hvae"', 'model.hvae_cell="bottleneck"', f"model.hvae_latents=[{', '.join(['8'] * 10)}]",
             "model.hvae_stages=[2, 4, 4]"]


@dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]  # training and evaluation batch sizes
    steps: dict[int, int]  # timed training steps per batch size
    k: int  # importance samples per image
    eval_images: int  # images per timed evaluation (a multiple of every batch size)
    plain_eval_images: int  # images of the textbook evaluation, one at a time
    matmul_n: int
    synthetic_images: int  # training images when the dataset is not on the machine
    eager_guess_s: dict[str, float]  # what an eager row may take, to decide whether it still fits
    compile_guess_s: dict[str, float]  # the same for a compiled row (a compilation takes tens of seconds)
    compiled: tuple[tuple[str, int], ...]  # the (model, batch) pairs compiled (--quick: one; a CPU takes 20-60 s)


GPU = Sizes(batches=(128, 1024), steps={128: 200, 1024: 40}, k=1000, eval_images=2048, plain_eval_images=128,
            matmul_n=8192, synthetic_images=60000, eager_guess_s={"vae": 5, "vamp": 10, "hvae": 30},
            compile_guess_s={"vae": 60, "vamp": 60, "hvae": 150},
            compiled=tuple((m, b) for m in ("vae", "vamp", "hvae") for b in (128, 1024)))
QUICK = Sizes(batches=(8, 32), steps={8: 4, 32: 2}, k=50, eval_images=32, plain_eval_images=4, matmul_n=256,
              synthetic_images=1200, eager_guess_s={"vae": 3, "vamp": 5, "hvae": 10},
              compile_guess_s={"vae": 40, "vamp": 40, "hvae": 120}, compiled=(("vae", 8),))


# --------------------------------------------------------------------------- timing and budget


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    """Seconds of one call of fn, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


class Budget:
    """The run's time budget: whether a measurement that may take `seconds` still fits (None) or why not."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.left = lambda: self.end - time.monotonic()

    def refuse(self, seconds: float) -> str | None:
        left = self.left()
        return None if left >= seconds else f"time budget: needs about {seconds:.0f} s, {max(left, 0):.0f} s left"


def backend_flags() -> dict[str, Any]:
    """The global switches that change a GPU's speed (and its float32 rounding)."""
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def set_backend_flags(flags: dict[str, Any]) -> None:
    """Put the switches back (vaelab's Trainer sets some for its run: train.tf32), so that every row starts from
    PyTorch's defaults and sets what it sets itself; the plain loop keeps them."""
    torch.set_float32_matmul_precision(flags["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]


# --------------------------------------------------------------------------- the matmul peak


def matmul_peak(device: torch.device, n: int, repeats: int = 10) -> dict[str, float]:
    """TFLOP/s of an n x n torch.mm: bf16, float32 with TF32 allowed, and strict float32 (best of `repeats`)."""
    out = {}
    keep = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                                  ("fp32", torch.float32, False)):
            if device.type != "cuda" and name == "tf32":
                continue  # TF32 is a CUDA mode
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            torch.mm(a, b)
            inner = 5 if device.type == "cuda" else 1  # a few ms of work per synchronization on a GPU
            best = min(timed(device, lambda: [torch.mm(a, b) for _ in range(inner)]) for _ in range(repeats))
            out[name] = inner * 2 * n ** 3 / best / 1e12
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = keep
    return out


# --------------------------------------------------------------------------- the models and their data


def model_configs(args: argparse.Namespace) -> dict[str, tuple[str, RunConfig | None, str]]:
    """name -> (description, config or None, why not): the three models, with --set applied to each."""
    out: dict[str, tuple[str, RunConfig | None, str]] = {}
    hvae_path = args.hvae_config
    for name, path, keys, what in (
            ("vae", None, [], "default VAE (RunConfig defaults)"),
            ("vamp", ROOT / "configs" / "vae-long-vamp.toml", [], "configs/vae-long-vamp.toml"),
            ("hvae", hvae_path, [] if hvae_path else HVAE_KEYS,
             hvae_path or "deep HVAE (bottleneck cells, stages [2, 4, 4], 10 layers of 8)")):
        try:
            cfg = load_config(path, [*keys, *args.set])
            out[name] = (what, cfg, "")
        except Exception as error:  # noqa: BLE001 - a key not implemented yet: the row says so
            out[name] = (what, None, f"config: {first_line(error)}")
    return out


def load_splits(cfg: RunConfig, sizes: Sizes, data_dir: str | None):
    """The dataset of the config when it is on this machine, else synthetic binary 28 x 28 images (the
    throughput of these dense models does not depend on what the pixels show)."""
    dc = cfg.data if data_dir is None else replace(cfg.data, data_dir=data_dir)
    try:
        return load_dataset(dc, log=lambda m: None), f"{dc.dataset}"
    except Exception as error:  # noqa: BLE001 - no data here: synthetic images instead
        gen = torch.Generator().manual_seed(0)
        images = (torch.rand(sizes.synthetic_images, 1, 28, 28, generator=gen) < 0.3).to(torch.uint8) * 255
        return splits_from_images(images, dc), f"synthetic ({type(error).__name__}: {str(error)[:120]})"


def build(cfg: RunConfig, image_shape: tuple[int, int, int], device: torch.device):
    torch.manual_seed(0)
    return build_model(cfg.model, image_shape).to(device)


# --------------------------------------------------------------------------- training


def plain_training(cfg: RunConfig, splits, device: torch.device, batch: int, steps: int) -> float:
    """Images/s of a hand-written loop over the same model: device tensors, the ELBO, Adam."""
    model = build(cfg, splits.image_shape, device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = splits.train.images[:batch * steps].to(device)  # uint8 on the device

    def epoch() -> None:
        order = torch.randperm(len(images), device=device)
        for i in range(steps):
            x = torch.bernoulli(images[order[i * batch:(i + 1) * batch]].float() / 255)
            out = model(x)
            loss = (out.kl - model.likelihood.log_prob(x, out.x_params)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up: cuDNN's algorithm search, the allocator
    seconds = timed(device, epoch)
    del model, opt, images
    return batch * steps / seconds


def vaelab_training(cfg: RunConfig, splits, device: torch.device, batch: int, steps: int, compile: bool,
                    threads: int) -> float:
    """Images/s of vaelab's Trainer.train_epoch on batch * steps training images (one untimed epoch first)."""
    n = batch * steps
    cfg = cfg.replace(data={"max_train": n}, train={
        "device": str(device), "batch_size": batch, "compile": compile, "epochs": 1, "grid_every": 0,
        "snapshot_every": 0, "checkpoint_minutes": 0.0, "checkpoint_steps": 0, "threads": threads})
    sub = replace(splits, train=splits.train.subset(slice(0, n)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", splits=sub, log=lambda m: None, progress=False)
        try:
            trainer.train_epoch()  # warm-up: compilation, cuDNN, the allocator
            seconds = timed(device, trainer.train_epoch)
        finally:
            trainer.close()
    return n / seconds


# --------------------------------------------------------------------------- evaluation


def vaelab_evaluation(cfg: RunConfig, images: torch.Tensor, device: torch.device, batch: int, k: int,
                      compile: bool, max_decode: int | None) -> float:
    """Images/s of importance_sampled at k over `images` (uint8, on the CPU), `batch` images per batch."""
    model = build(cfg, tuple(images.shape[1:]), device)
    run = partial(importance_sampled, model, k=k, batch_size=batch, device=device, compile=compile,
                  max_decode=max_decode)
    run(images[:batch])  # warm-up: compilation (the same shapes as the timed pass), cuDNN, the allocator
    return len(images) / timed(device, lambda: run(images))


@torch.no_grad()
def plain_evaluation(cfg: RunConfig, images: torch.Tensor, device: torch.device, k: int) -> float:
    """Images/s of the textbook sampler: each image repeated k times through the model's log_weights at once."""
    model = build(cfg, tuple(images.shape[1:]), device).eval()
    x_all = images.to(device).float() / 255

    def run(xs: torch.Tensor) -> None:
        for x in xs:
            torch.logsumexp(model.log_weights(x.unsqueeze(0), k), 0)  # log-weights (k, 1): L_k of one image

    run(x_all[:1])
    return len(x_all) / timed(device, lambda: run(x_all))


# --------------------------------------------------------------------------- the run


@dataclass
class Row:
    model: str
    what: str  # train / eval
    mode: str  # plain / eager / compiled
    batch: int | None
    images_per_s: float | None = None
    skipped: str = ""
    seconds: float = 0.0  # the whole measurement, warm-up and compilation included
    extra: dict[str, Any] = field(default_factory=dict)  # flags_after (backend switches); CUDA: peak_gib


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def measure(row: Row, budget: Budget, guess_s: float, device: torch.device, fn: Callable[[], float],
            flags: dict[str, Any]) -> Row:
    """Fill `row` by calling fn (images/s), unless the budget refuses; errors become a skip with the reason.
    `flags`: the backend switches every row starts from (PyTorch's defaults as the run found them)."""
    why = budget.refuse(guess_s)
    if why:
        row.skipped = why
    else:
        set_backend_flags(flags)
        t0 = time.monotonic()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            row.images_per_s = fn()
        except Exception as error:  # noqa: BLE001 - one row fails (out of memory, a model not built yet)
            row.skipped = first_line(error)
        row.seconds = time.monotonic() - t0
        row.extra["flags_after"] = backend_flags()  # what the row ran with (the Trainer sets train.tf32's)
        gc.collect()
        if device.type == "cuda":
            row.extra["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            torch.cuda.empty_cache()
    state = f"{row.images_per_s:,.0f} images/s" if row.images_per_s else f"skipped ({row.skipped})"
    print(f"  [{budget.left():5.0f} s left] {row.model:<5} {row.what:<5} {row.mode:<8} batch {row.batch}: "
          f"{state} ({row.seconds:.1f} s)", flush=True)
    return row


def model_rows(name: str, cfg: RunConfig | None, why: str, splits, test: torch.Tensor, sizes: Sizes,
               device: torch.device, args: argparse.Namespace, budget: Budget, compiled: bool,
               flags: dict[str, Any]) -> list[Row]:
    """The eager rows of one model (plain and vaelab, training and evaluation), or its compiled rows."""
    rows: list[Row] = []
    guess = (sizes.compile_guess_s if compiled else sizes.eager_guess_s)[name]
    if cfg is not None and not why:
        try:  # a model whose code is not there yet: one reason for all its rows
            build(cfg, splits.image_shape, torch.device("cpu"))
        except Exception as error:  # noqa: BLE001
            why = f"model: {first_line(error)}"
    batches = [b for b in sizes.batches if not compiled or (name, b) in sizes.compiled]

    def row(what: str, mode: str, batch: int | None, fn: Callable[[], float]) -> None:
        r = Row(name, what, mode, batch)
        if why:
            r.skipped = why
            print(f"  {name:<5} {what:<5} {mode:<8} batch {batch}: skipped ({why})", flush=True)
            rows.append(r)
            return
        if compiled:
            torch._dynamo.reset()  # a fresh cache per row: no model's graphs count against another's limit
        rows.append(measure(r, budget, guess, device, fn, flags))

    mode = "compiled" if compiled else "eager"
    for b in batches:
        if not compiled:
            row("train", "plain", b, lambda b=b: plain_training(cfg, splits, device, b, sizes.steps[b]))
        row("train", mode, b, lambda b=b: vaelab_training(cfg, splits, device, b, sizes.steps[b], compiled,
                                                          args.threads))
    for b in batches:
        row("eval", mode, b, lambda b=b: vaelab_evaluation(cfg, test, device, b, sizes.k, compiled,
                                                           args.max_decode))
    if not compiled:
        row("eval", "plain", 1, lambda: plain_evaluation(cfg, test[:sizes.plain_eval_images], device, sizes.k))
    return rows


def table(rows: list[Row], configs: dict, k: int, compiled_only: str | None = None) -> str:
    """Images/s per model and batch: training (plain loop, vaelab eager, compiled), evaluation at k."""
    get = {(r.model, r.what, r.mode, r.batch): r for r in rows}

    def cell(key) -> str:
        r = get.get(key)
        return f"{r.images_per_s:>10,.0f}" if r is not None and r.images_per_s else f"{'-':>10}"

    head = (f"{'model':<8}{'batch':>6} | {'train plain':>11}{'eager':>10}{'compiled':>10} | "
            f"{'eval eager':>10}{'compiled':>10}   (images/s; evaluation at k={k})")
    lines = [head, "-" * len(head)]
    batches = sorted({r.batch for r in rows if r.batch and r.batch > 1})
    for name in configs:
        for b in batches:
            lines.append(f"{name:<8}{b:>6} | {cell((name, 'train', 'plain', b)):>11}"
                         f"{cell((name, 'train', 'eager', b))}{cell((name, 'train', 'compiled', b))} | "
                         f"{cell((name, 'eval', 'eager', b))}{cell((name, 'eval', 'compiled', b))}")
    plain = [f"{name} {cell((name, 'eval', 'plain', 1)).strip()}" for name in configs]
    lines.append(f"textbook evaluation (each image repeated k times, one image at a time): {', '.join(plain)}")
    lines += [f"  {name}: {what}" for name, (what, _, _) in configs.items()]
    if compiled_only is not None:
        lines.append(f"compiled rows measured for: {compiled_only}")
    skipped: dict[tuple[str, str], list[str]] = {}  # (model, reason) -> the rows skipped for it
    for r in rows:
        if r.skipped:
            skipped.setdefault((r.model, r.skipped), []).append(f"{r.what} {r.mode} {r.batch}")
    if skipped:
        lines.append("skipped:")
        lines += [f"  {name} ({', '.join(which)}): {why}" for (name, why), which in skipped.items()]
    return "\n".join(lines)


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "torch": torch.__version__, "vaelab": vaelab.__version__,
                            "python": platform.python_version(), "device": str(device),
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    add("--quick", action="store_true", help="tiny sizes (a check of the script, not a measurement)")
    add("--budget-s", type=float, default=None, help="seconds for all measurements (default 450; --quick 110)")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for every vaelab row, e.g. train.precision=bf16 (repeatable)")
    add("--hvae-config", default=None, help="a TOML config for the HVAE rows (default: the deep HVAE above)")
    add("--data-dir", default=None, help="where the dataset is (not found: synthetic images)")
    add("--max-decode", type=int, default=None, help="decoder inputs per evaluation call (default: the sampler's)")
    add("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add("--out", default=None, help="JSON file (default bench/results/gpu.json; --quick: gpu-quick.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --quick to check the script")
    sizes = QUICK if args.quick else GPU
    budget = Budget(args.budget_s if args.budget_s is not None else (110 if args.quick else 450))
    out_path = Path(args.out or ROOT / "bench" / "results" / ("gpu-quick.json" if args.quick else "gpu.json"))
    configs = model_configs(args)
    base = next((c for _, c, _ in configs.values() if c is not None), RunConfig())
    splits, source = load_splits(base, sizes, args.data_dir)
    test = eval_view(splits.test, "test", "dynamic", 0).images
    test = test.repeat(-(-sizes.eval_images // len(test)), 1, 1, 1)[:sizes.eval_images]  # binary, uint8
    print(f"{machine(device).get('gpu', 'cpu')}: data {source}, {len(splits.train)} training images; "
          f"budget {budget.left():.0f} s", flush=True)
    peak = matmul_peak(device, sizes.matmul_n)
    print("matmul peak, TFLOP/s: " + ", ".join(f"{k} {v:.3g}" for k, v in peak.items()), flush=True)
    flags = backend_flags()  # PyTorch's defaults, before any row changed them
    rows: list[Row] = []
    for compiled in (False, True):  # every eager number first; the compiled rows while the budget lasts
        for name, (what, cfg, why) in configs.items():
            rows += model_rows(name, cfg, why, splits, test, sizes, device, args, budget, compiled, flags)
    result = {"benchmark": "gpu", "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python " + " ".join(["bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(device), "data": source, "quick": args.quick, "k": sizes.k,
              "steps": sizes.steps, "eval_images": sizes.eval_images, "overrides": args.set,
              "models": {name: what for name, (what, _, _) in configs.items()},
              "matmul_tflops": peak, "backend_flags_at_start": flags, "rows": [r.__dict__ for r in rows],
              "wall_s": round(time.monotonic() - t_start, 1)}
    every = len(sizes.compiled) == len(configs) * len(sizes.batches)
    some = None if every else ", ".join(f"{m} at batch {b}" for m, b in sizes.compiled)
    print("\n" + table(rows, configs, sizes.k, some))
    print(f"matmul peak on {result['machine'].get('gpu', 'this CPU')}: "
          + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peak.items()) + f"; wall {result['wall_s']:.0f} s")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
