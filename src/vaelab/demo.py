"""The demo behind `make demo`: the default VAE against the plain autoencoder.

Trains both with the same encoder/decoder and settings on Fashion-MNIST (or,
when Fashion-MNIST is not available and cannot be downloaded, on
scikit-learn's digits at 28x28, saying so), writes each run directory, a
side-by-side picture of their samples, and prints one summary table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from vaelab.log import say
from vaelab.config import RunConfig
from vaelab.data import load_dataset
from vaelab.evaluation.generators import compare_generators
from vaelab.errors import ConfigError, DataError, DatasetNotFoundError
from vaelab.fileio import atomic_write
from vaelab.report.images import labelled_side_by_side, save_png, square_grid
from vaelab.models.generate import sample
from vaelab.runs import write_json
from vaelab.training import TrainResult, train

FALLBACK = {"dataset": "digits", "image_size": 28, "val_size": 200}
FALLBACK_EPOCHS = 50  # digits has 1,438 training images: 10 epochs are too few steps
DEMO_NLL_IMAGES = 200  # per split, k = eval.nll_k: keeps the demo within its time budget
FIDELITY_IMAGES = 10_000
SAMPLE_IMAGES = 64  # per side of samples_vae_vs_ae.png


def summary_title(dataset: str, image_shape: Any, sizes: dict[str, int]) -> str:
    """The first lines of summary.txt: what was compared on which data, and the units."""
    shape = "x".join(str(d) for d in image_shape)
    return (f"vaelab demo: the VAE (run vae/) against the plain autoencoder (run ae/), both trained on {dataset} "
            f"({shape}; {sizes['train']} train, {sizes['val']} validation, {sizes['test']} test images)\n"
            "units: -ELBO, recon, KL, gap and NLL in nats per image, summed over all pixels and channels "
            "(bits/dim = nats / (D ln 2), D = channels x height x width); each run's best validation epoch")


def summary_table(results: dict[str, TrainResult]) -> str:
    """VAE against AE: loss terms per split and the gap, nats per image; each column as wide as its cells."""
    head = ["split"] + [h for k in results for h in (f"{k.upper()} -ELBO", "recon", "KL")]
    rows: list[tuple[list[str], str]] = []
    for split in ("train", "val", "test"):
        row = [split]
        for r in results.values():
            s = r.evaluation["splits"].get(split)
            if s is None:
                row += ["-", "-", "-"]
            elif s["nelbo"] is None:  # an autoencoder: no ELBO, no KL
                row += ["n/a", f"{s['recon']:.2f}", "-"]
            else:
                row += [f"{s['nelbo']:.2f}", f"{s['recon']:.2f}", f"{s['kl']:.2f}"]
        rows.append((row, ""))
    rows.append((["gap"] + [c for r in results.values()
                            for c in (f"{r.evaluation['gap_test_minus_train']:.2f}", "", "")], "   (test - train)"))
    fids = [r.evaluation.get("samples") or {} for r in results.values()]
    if all(fids):
        rows.append((["FD"] + [c for f in fids for c in (f"{f['fd_samples_test']:.2f}", "", "")],
                     f"   samples vs test, PCA-{fids[0]['pca_dims']} (real images: {fids[0]['fd_train_test']:.2f}; "
                     "lower is better)"))
    widths = [max(len(cell) + 2 for cell in column) for column in zip(head, *(row for row, _ in rows))]
    widths = [max(w, least) for w, least in zip(widths, [8] + [12, 9, 8] * len(results))]

    def line(cells: list[str]) -> str:
        return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))

    lines = [line(head), "-" * len(line(head))] + [line(row) + note for row, note in rows]
    vae = results.get("vae")
    nll = vae.evaluation.get("nll") if vae is not None else None
    if nll:
        parts = ", ".join(f"{name} {s['nll']:.2f} ± {s['stderr']:.2f}" for name, s in nll["splits"].items())
        lines.append(f"VAE importance-sampled NLL (k={nll['k']}, {nll['images']} images per split), nats per image: "
                     f"{parts}; gap {nll['gap_test_minus_train']:.2f}")
        whole = {name: s for name, s in nll["splits"].items() if "nll_whole_estimate" in s and s["n"] < s["whole_n"]}
        if whole:  # the subsets' offsets to their whole splits, carried by the -ELBO of every image
            parts = ", ".join(f"{name} {s['nll_whole_estimate']:.2f} ± {s['nll_whole_estimate_stderr']:.2f} "
                              f"(subset offset {s['subset_offset']:+.2f})" for name, s in whole.items())
            gap = f"; gap {nll['gap_whole_estimate']:.2f}" if "gap_whole_estimate" in nll else ""
            lines.append(f"the same, estimated for the whole splits: {parts}{gap}")
    return "\n".join(lines)


def samples_picture(results: dict[str, TrainResult], seed: int, n: int = SAMPLE_IMAGES):
    """samples_vae_vs_ae.png: n samples of each run from the same draws, enlarged, each side under its title."""
    grids = {kind: square_grid(sample(r.model, n, 1.0, _generator(seed))) for kind, r in results.items()}
    return labelled_side_by_side(
        grids["vae"], grids["ae"],
        ["VAE (run vae/)", f"{n} samples: z from its prior"],
        ["AE, plain autoencoder (run ae/)", f"{n} samples: z from the Gaussian fitted to its codes"])


def run_demo(cfg: RunConfig, out: Path, allow_fallback: bool = True,
             log: Callable[[str], None] = say) -> dict[str, Any]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out for the demo")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"demo directory {out} is not empty; choose another --out")
    t0 = time.perf_counter()
    cfg = cfg.replace(eval={"nll_images": min(cfg.eval.nll_images, DEMO_NLL_IMAGES)})
    try:
        splits = load_dataset(cfg.data, log=log)
    except DatasetNotFoundError as exc:
        if not allow_fallback:
            raise
        log(f"note: {exc}")
        log(f"note: falling back to scikit-learn's digits at 28x28 ({FALLBACK_EPOCHS} epochs): "
            "install Fashion-MNIST (apt-get install dataset-fashion-mnist) for the real demo")
        cfg = cfg.replace(data=FALLBACK, train={"epochs": max(cfg.train.epochs, FALLBACK_EPOCHS)})
        splits = load_dataset(cfg.data, log=log)
    results: dict[str, TrainResult] = {}
    for kind in ("vae", "ae"):
        log(f"\n=== {kind.upper()} ===")
        results[kind] = train(cfg.replace(model={"kind": kind}), out / kind, splits=splits, log=log)
    picture = save_png(samples_picture(results, cfg.train.seed), out / "samples_vae_vs_ae.png")
    log("\n=== generation: VAE against AE in a classifier's feature space ===")
    try:
        fidelity = compare_generators({"VAE": results["vae"].model, "AE": results["ae"].model}, splits,
                                      out / "fidelity", n=FIDELITY_IMAGES, seed=cfg.train.seed, log=log)
    except DataError as exc:  # e.g. a folder with one class: no classifier to define a feature space
        log(f"note: no classifier-feature comparison: {exc}")
        fidelity = {"table": f"(no classifier-feature comparison: {exc})"}
    table = summary_table(results) + "\n\n" + fidelity["table"]
    elapsed = time.perf_counter() - t0
    summary = {
        "dataset": splits.name, "source": splits.source, "image_shape": list(splits.image_shape),
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "runs": {k: str(r.run_dir) for k, r in results.items()},
        "evaluation": {k: r.evaluation for k, r in results.items()},
        "fidelity": {k: v for k, v in fidelity.items() if k != "table"},
        "wall_time_s": round(elapsed, 1),
    }
    write_json(out / "summary.json", summary)
    title = summary_title(splits.name, splits.image_shape, summary["sizes"])
    atomic_write(out / "summary.txt", (title + "\n\n" + table + "\n").encode("utf-8"), "the demo summary")
    log(f"\n=== summary: {splits.name} {splits.image_shape}, nats per image "
        f"(best validation epoch; eval splits binarized once) ===")
    log(table)
    vae_test = results["vae"].evaluation["splits"]["test"]
    bpd = f" = {vae_test['bits_per_dim']:.4f} bits/dim" if vae_test.get("bits_per_dim") is not None else ""
    log(f"VAE test -ELBO {vae_test['nelbo']:.2f} nats{bpd}. "
        "The AE reconstructs without paying for KL but has no ELBO; FD (Frechet distance of samples to "
        f"test images) measures generation: see {picture} (left VAE, right AE).")
    for kind, r in results.items():
        log(f"{kind.upper()} run: {r.run_dir} (images in {r.run_dir / 'images'})")
    log(f"demo finished in {elapsed / 60:.1f} min; summary in {out / 'summary.txt'}")
    return summary


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed + 2)
