"""Training throughput (and optionally quality) of vaelab against a plain PyTorch loop.

The plain loop is what a user would write from the classic examples for the
same design: float images in a TensorDataset, a shuffling DataLoader,
torch.bernoulli per batch, a sigmoid decoder with F.binary_cross_entropy
(reduction="sum") plus the closed-form KL, Adam at 1e-3, batch 128. vaelab
runs its real training code (`Trainer.train_epoch`) on the same images.

Both are timed in the same process, alternating (plain, vaelab, plain, ...)
so that machine noise hits both alike; the table quotes medians and their
ratio. With --quality, both also train 10 epochs on the full training split
and their test -ELBO is measured under the same protocol (test binarized once
with a fixed seed, one posterior sample per image).

    python bench/train_throughput.py                 # throughput only (~1 min)
    python bench/train_throughput.py --quality       # + 10-epoch quality of both (~6 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import load_config
from vaelab.data import eval_view, load_dataset
from vaelab.evaluation.elbo import evaluate_images
from vaelab.training.loop import Trainer
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


# --------------------------------------------------------------------------- the plain PyTorch baseline


class PlainVAE(nn.Module):
    """Two stride-2 convs of 32 and 64 channels and a linear layer; the mirror image to decode."""

    def __init__(self, latent: int = 20) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                 nn.Flatten())
        self.fc_mu = nn.Linear(64 * 7 * 7, latent)
        self.fc_logvar = nn.Linear(64 * 7 * 7, latent)
        self.fc_dec = nn.Linear(latent, 64 * 7 * 7)
        self.dec = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1),
                                 nn.Sigmoid())

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.dec(F.relu(self.fc_dec(z)).view(-1, 64, 7, 7)), mu, logvar


def plain_loss(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.size(0)


def plain_epoch(model, opt, loader) -> int:
    model.train()
    n = 0
    for (x,) in loader:
        x = torch.bernoulli(x)
        recon, mu, logvar = model(x)
        loss = plain_loss(recon, x, mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    return n


@torch.no_grad()
def plain_test_nelbo(model, images_u8) -> float:
    """-ELBO per image on already-binarized uint8 images, one posterior sample each (fixed seed)."""
    model.eval()
    torch.manual_seed(2024)
    total = 0.0
    for i in range(0, len(images_u8), 1000):
        x = images_u8[i:i + 1000].float() / 255
        recon, mu, logvar = model(x)
        total += plain_loss(recon, x, mu, logvar).item() * len(x)
    return total / len(images_u8)


def make_loader(images_u8, batch_size=128):
    ds = torch.utils.data.TensorDataset(images_u8.float() / 255)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True)


# --------------------------------------------------------------------------- measurements


def throughput(splits, n_images: int, repeats: int) -> dict:
    subset = splits.train.images[:n_images]
    torch.manual_seed(0)
    plain = PlainVAE()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    loader = make_loader(subset)
    cfg = load_config(overrides=[f"data.max_train={n_images}", "train.grid_every=0"])
    from dataclasses import replace

    sub_splits = replace(splits, train=splits.train.subset(slice(0, n_images)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", splits=sub_splits, log=lambda m: None, progress=False)
        # warm-up of both (allocator, first-call overheads)
        plain_epoch(plain, plain_opt, make_loader(subset[:2048]))
        trainer.train_epoch()
        times = {"plain": [], "vaelab": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = plain_epoch(plain, plain_opt, loader)
            times["plain"].append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n = trainer.train_epoch()["images"]
            times["vaelab"].append(n / (time.perf_counter() - t0))
        trainer.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    # each vaelab epoch against the plain epoch just before it: robust to slow drifts of the machine's load
    pair_ratios = [v / p for p, v in zip(times["plain"], times["vaelab"])]
    return {"images_per_epoch": n_images, "repeats": repeats, "images_per_s": times, "median_images_per_s": med,
            "pair_ratios": pair_ratios, "ratio_vaelab_over_plain": statistics.median(pair_ratios)}


def quality(splits, epochs: int) -> dict:
    cfg = load_config(overrides=[f"train.epochs={epochs}", "train.grid_every=0"])
    test_view = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed)
    torch.manual_seed(0)
    plain = PlainVAE()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    # the plain loop trains on all 60,000 training images (no validation split), as such scripts do
    train_all = torch.cat([splits.train.images, splits.val.images])
    loader = make_loader(train_all)
    t0 = time.perf_counter()
    for _ in range(epochs):
        plain_epoch(plain, opt, loader)
    plain_time = time.perf_counter() - t0
    plain_nelbo = plain_test_nelbo(plain, test_view.images)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", splits=splits, log=lambda m: None, progress=False)
        result = trainer.run()
        vaelab_time = time.perf_counter() - t0
    vaelab_eval = result.evaluation["splits"]["test"]
    same_protocol = evaluate_images(result.model, test_view)  # the same view the plain model saw
    return {
        "epochs": epochs,
        "plain": {"test_nelbo": plain_nelbo, "train_images": len(train_all), "wall_s": plain_time},
        "vaelab": {"test_nelbo": vaelab_eval["nelbo"], "test_nelbo_recomputed": same_protocol.nelbo,
                   "stderr": vaelab_eval["stderr"], "train_images": len(splits.train), "best_epoch": result.best_epoch,
                   "wall_s_including_eval_and_images": vaelab_time},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="images per timed epoch (default 10000)")
    parser.add_argument("--repeats", type=int, default=11, help="timed epochs per implementation (default 11)")
    parser.add_argument("--quality", action="store_true", help="also train both for --epochs and compare test -ELBO")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_dataset(load_config().data)
    result = {
        "benchmark": "train_throughput", **provenance("bench/train_throughput.py", argv),
        "throughput": throughput(splits, args.images, args.repeats),
    }
    tp = result["throughput"]
    print(f"training throughput, conv VAE (32-64, latent 20), batch 128, {args.images} Fashion-MNIST images per epoch,"
          f" median of {args.repeats} alternating epochs, {torch.get_num_threads()} threads")
    print(f"{'implementation':<22}{'images/s':>10}{'ratio':>8}")
    for name in ("plain", "vaelab"):
        med = tp["median_images_per_s"][name]
        ratio = 1.0 if name == "plain" else tp["ratio_vaelab_over_plain"]
        print(f"{'plain PyTorch loop' if name == 'plain' else 'vaelab':<22}{med:>10.0f}{ratio:>8.2f}")
    print("(ratio: median over pairs of consecutive epochs; per-pair ratios "
          f"{min(tp['pair_ratios']):.2f}..{max(tp['pair_ratios']):.2f})")
    if args.quality:
        result["quality"] = q = quality(splits, args.epochs)
        print(f"\ntest -ELBO after {args.epochs} epochs (nats per image; test binarized once, seed "
              f"{load_config().data.binarize_seed + 2000}):")
        print(f"  plain PyTorch loop (60,000 training images): {q['plain']['test_nelbo']:.2f}")
        print(f"  vaelab defaults (55,000 + 5,000 validation, best epoch {q['vaelab']['best_epoch']}): "
              f"{q['vaelab']['test_nelbo']:.2f} ± {q['vaelab']['stderr']:.2f}")
    out = write_result(args.out, result, indent=2)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
