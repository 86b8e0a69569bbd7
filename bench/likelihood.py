"""Importance-sampled test NLL of a trained run on the published protocol, its speed, and its convergence in k.

    python bench/likelihood.py RUN                      # full test split, k=1000 (~30 min on 2 cores)
    python bench/likelihood.py RUN --test-images 500    # quicker

What it measures, in one process, with the run's best checkpoint:

1. speed: images/s at k=1000 of vaelab's estimator (encoder once per image, decoder in chunks of
   4096 latent codes, channels-last) against a plain implementation that many examples use
   (each image repeated k times, encoder and decoder on all k copies, one image per step),
   alternating, on the same 64 test images (their estimates differ per image only by Monte-Carlo
   noise: the random draws differ; the mean difference is reported);
2. the test NLL with k importance samples on the (whole) test split, binarized once with the
   run's fixed seed (the usual published protocol), and the NLL of random subsets of train and
   validation of equal size for the gap;
3. convergence in k: the mean bound on a subset of test images for k = 1, 10, 100, 1000, 5000
   (and a plot), which also tells how far k=100 (the default for `evaluate --on`) is from k=1000.

It prints a table and writes JSON (and the plot) to bench/results/.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from vaelab import load_run
from vaelab.data import eval_view, load_dataset, spread_index
from vaelab.evaluation.likelihood import estimate_nll, importance_sampled
from vaelab.objectives import bernoulli_log_likelihood, log_normal_diag, log_standard_normal
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

PUBLISHED = [  # test NLL on dynamically binarized Fashion-MNIST, nats (Norouzi et al. 2020, Exemplar VAE, table)
    ("VAE, Gaussian prior", 228.70), ("VampPrior", 227.35), ("Exemplar VAE", 226.75),
    ("hierarchical VAE", 227.37), ("convolutional HVAE", 225.38),
]


@torch.no_grad()
def plain_iwae(model, images: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The textbook loop: per image, x repeated k times through encoder and decoder at once."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in images.float().div(255):
        xs = x.unsqueeze(0).expand(k, *x.shape).contiguous()
        mean, logvar = model.encoder(xs).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        logits = model.decoder(z)
        log_w = bernoulli_log_likelihood(xs, logits) + log_standard_normal(z) - log_normal_diag(z, mean, logvar)
        out.append(torch.logsumexp(log_w.double(), 0) - math.log(k))
    return torch.stack(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--test-images", default="all", help="test images for the NLL (all or a number)")
    ap.add_argument("--gap-images", type=int, default=2000, help="train and validation images for the gap")
    ap.add_argument("--k-sweep-images", type=int, default=200)
    ap.add_argument("--speed-images", type=int, default=64)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/likelihood.json")
    args = ap.parse_args()

    run = load_run(args.run)
    cfg = run.config
    dc = cfg.data
    model = run.model.to(memory_format=torch.channels_last)
    splits = load_dataset(dc)
    views = {name: eval_view(splits.split(name), name, dc.binarize, dc.binarize_seed) for name in ("train", "val", "test")}
    test = views["test"].images
    result: dict = {"run": str(run.path), "epoch": run.meta.get("epoch"), **provenance("bench/likelihood.py")}

    # 1. speed, alternating, same images; and agreement per image
    x = test[spread_index(len(test), args.speed_images, 1)]
    times = {"vaelab": [], "plain": []}
    for _ in range(args.speed_repeats):
        t0 = time.perf_counter()
        plain = plain_iwae(run.model, x, args.k, seed=0)
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = importance_sampled(model, x, k=args.k, seed=0).log_px
        times["vaelab"].append(time.perf_counter() - t0)
    per_s = {name: len(x) / statistics.median(t) for name, t in times.items()}
    signed = ours - plain
    diff = signed.abs()
    result["speed"] = {"k": args.k, "images": len(x), "repeats": args.speed_repeats,
                       "images_per_s": per_s, "ratio_vaelab_over_plain": per_s["vaelab"] / per_s["plain"],
                       "per_image_abs_difference": {"mean": float(diff.mean()), "max": float(diff.max())},
                       "mean_difference": float(signed.mean()),
                       "note": "different random draws: the difference is Monte-Carlo noise of L_k, not error"}
    print(f"speed at k={args.k}: vaelab {per_s['vaelab']:.2f} images/s, plain loop {per_s['plain']:.2f} images/s, "
          f"ratio {per_s['vaelab'] / per_s['plain']:.2f}x (median of {args.speed_repeats}); "
          f"|difference| per image mean {diff.mean():.3f}, max {diff.max():.3f} nats", flush=True)

    # 2. the NLL of the test split (published protocol) and of equal train / val subsets
    n_test = len(test) if args.test_images == "all" else min(int(args.test_images), len(test))
    subsets = {"test": test if n_test == len(test) else test[spread_index(len(test), n_test, 2)]}
    for i, name in enumerate(("train", "val")):
        imgs = views[name].images
        subsets[name] = imgs[spread_index(len(imgs), min(args.gap_images, len(imgs)), 3 + i)]
    nll = {}
    for name, imgs in subsets.items():
        last = [0.0]

        def progress(done, total, name=name, last=last):
            if time.perf_counter() - last[0] > 60:
                last[0] = time.perf_counter()
                print(f"  {name}: {done}/{total}", flush=True)

        summary, _ = estimate_nll(model, imgs, likelihood=cfg.model.likelihood, binarize=dc.binarize,
                                  binarize_seed=dc.binarize_seed, k=args.k, progress=progress)
        nll[name] = summary.as_dict()
        print(f"{name}: n={summary.n} NLL {summary.nll:.2f} ± {summary.stderr:.2f} nats "
              f"({summary.bits_per_dim:.4f} bits/dim), -ELBO {summary.nelbo:.2f}, ESS {summary.ess:.1f}, "
              f"{summary.images_per_s:.2f} images/s", flush=True)
    result["nll"] = nll
    result["gap_test_minus_train"] = nll["test"]["nll"] - nll["train"]["nll"]

    # 3. convergence in k
    ks = [1, 10, 100, 1000, 5000]
    sweep_x = test[spread_index(len(test), args.k_sweep_images, 4)]
    sweep = {}
    for k in ks:
        est = importance_sampled(model, sweep_x, k=k, seed=5)
        sweep[k] = {"nll": float(-est.log_px.mean()), "nelbo": float(-est.elbo.mean())}
        print(f"k={k}: mean NLL {sweep[k]['nll']:.2f} on {len(sweep_x)} test images", flush=True)
    result["k_sweep"] = {"images": len(sweep_x), "values": sweep}
    from vaelab.report.plots import plot_nll_vs_k

    plot = Path(args.out).with_suffix(".png")
    plot_nll_vs_k(ks, [sweep[k]["nll"] for k in ks], plot, elbo=sweep[1]["nelbo"])
    result["k_sweep"]["plot"] = str(plot)

    print("\ntest NLL, dynamically binarized Fashion-MNIST, nats per image (lower is better):")
    rows = [(f"vaelab default VAE (k={args.k}, {nll['test']['n']} test images)", nll["test"]["nll"])] + PUBLISHED
    for name, value in rows:
        print(f"  {name:<52}{value:8.2f}")
    print(f"generalization gap of the NLL (test - train, {nll['train']['n']} train images): "
          f"{result['gap_test_minus_train']:.2f} nats")
    write_result(args.out, result, indent=2)
    print(f"wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
