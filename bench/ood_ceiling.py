"""How separable is each OOD set at all? A supervised yardstick for the OOD tables.

    python bench/ood_ceiling.py RUN --on flipped digits --images 1000 --epochs 5
    python bench/ood_ceiling.py RUN --blind 4 --sets DIR    # the blind check's sets (bench/ood_blind.py)

vaelab's scores are fitted on in-distribution images only. This script cheats on purpose: for each set it
trains a small CNN to tell the run's training images from *labelled examples of that very set* (made from
the run's training split for the shifts, drawn from images of the dataset that the evaluation does not
use for the others), then scores the images `vaelab evaluate RUN --on ...` scores (the same seeded choice
of the test split and of the set, prepared alike: binarized once when the run binarizes) and reports
AUROC, AUPRC and FPR at 95% TPR with the evaluation's bootstrap intervals, beside the run's own DoSE row
when RUN/eval-best/evaluation.json holds one.

A classifier that has seen the outliers is no detector to ship, and it is no proof of a bound either (a
better classifier might do better). It says what one image tells apart when you know what to look for:
where even it stays short of a target, no single-image score fitted on in-distribution images only
should be expected to reach it; where it reaches the target, the set can be told apart from one image.

`--blind B --sets DIR` scores the blind check's batch B as `bench/ood_blind.py` wrote it in DIR (its
folders, read as `vaelab evaluate --on folder:DIR/NAME` reads them), and trains on the same kinds of image
made anew by the blind check's own functions with another seed, the test-image kinds from the run's
*training* images. Writes JSON (bench/results/ood_ceiling.json by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab.data.shifts import SHIFTS
from vaelab.data.splits import binarize_once, spread_index
from vaelab.evaluation.intervals import detection_intervals
from vaelab.evaluation.unseen import load_eval_set
from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

SEED = 20261207
MAX_PER_CLASS = 20000  # classifier training images of each class (in, out), at most


def classifier(channels: int, size: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, 1))


def as_input(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def train_classifier(inside: torch.Tensor, outside: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """A CNN trained (Adam, batch 128, `epochs` epochs, seeded) to give outside images the higher logit."""
    torch.manual_seed(seed)
    x = torch.cat([inside, outside])
    y = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))])
    net = classifier(x.shape[1], x.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            loss = nn.functional.binary_cross_entropy_with_logits(net(as_input(x[idx])).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def logits(net: nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.cat([net(as_input(b)).squeeze(1) for b in images.split(512)]).double().numpy()


def training_examples(spec: str, cfg, splits, eval_n: int, eval_seed: int, n: int) -> torch.Tensor:
    """Labelled examples of a set that the evaluation's images do not include: a shift made from the run's
    training split, or the dataset's images left out of the evaluation's seeded choice."""
    name = spec.split("@", 1)[0]
    if name in SHIFTS:
        from_train = dataclasses.replace(splits, test=splits.train)
        return load_eval_set(spec, cfg, from_train, n, SEED + 1).images
    every = load_eval_set(spec, cfg, splits, 10 ** 9, eval_seed)  # all of them, in order
    used = spread_index(every.available, eval_n, eval_seed)
    keep = np.setdiff1d(np.arange(len(every.images)), used.numpy())
    if not len(keep):
        raise SystemExit(f"bench/ood_ceiling.py: {spec} has no images beyond the {eval_n} the evaluation scores")
    return every.images[torch.from_numpy(keep[spread_index(len(keep), n, SEED).numpy()])]


def blind_examples(name: str, cfg, splits, n: int, folder: Path) -> torch.Tensor:
    """n new images of the blind check's kind `name` (another seed; test-image kinds from the training
    split), written as PNG to folder/name and read back as `vaelab evaluate` reads a folder."""
    import ood_blind  # bench/ is on sys.path when run as a script

    rng = np.random.default_rng(SEED + 1)
    train = splits.train.images[:, 0].numpy().astype(np.uint8)
    make = getattr(ood_blind, name)
    images = make(rng, n, train) if name in ood_blind.FROM_TEST else make(rng, n, train.shape[-1])
    where = folder / name
    where.mkdir(parents=True, exist_ok=True)
    for j, image in enumerate(images):
        image.save(where / f"{j:05d}.png")
    return load_eval_set(f"folder:{where}", cfg, splits, n, 0).images


def dose_row(run_dir: Path, spec: str, evaluation: Path | None = None) -> dict | None:
    path = evaluation or run_dir / "eval-best" / "evaluation.json"
    if not path.is_file():
        return None
    intervals = json.loads(path.read_text()).get("datasets_eval", {}).get("ood_intervals", {})
    row = (intervals.get(spec) or intervals.get(spec.split("@", 1)[0]) or {}).get("DoSE")  # mnist@DIR is "mnist"
    return {"auroc": row["auroc"]["value"], "fpr_at_95_tpr": row["fpr_at_95_tpr"]["value"]} if row else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory or pretrained:NAME")
    ap.add_argument("--on", nargs="+", default=[], help="datasets, as for `vaelab evaluate --on`")
    ap.add_argument("--blind", type=int, default=None, help="a batch of bench/ood_blind.py, read from --sets")
    ap.add_argument("--sets", default="bench/results/blind-sets", help="where bench/ood_blind.py wrote the batch")
    ap.add_argument("--blind-images", type=int, default=5000, help="new images of each blind kind to train on")
    ap.add_argument("--images", type=int, default=1000, help="images per set (the test split's too)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="bench/results/ood_ceiling.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = load_run(args.run)
    splits = load_run_data(run)
    cfg = run.config.replace(eval={"ood_images": args.images})
    blind_names: tuple[str, ...] = ()
    blind_eval = None
    if args.blind is not None:
        import ood_blind  # bench/ is on sys.path when run as a script

        sets_dir = Path(args.sets).resolve()
        blind_names = ood_blind.BATCHES[args.blind]
        args.on = [*args.on, *(f"folder:{sets_dir / name}" for name in blind_names)]
        blind_eval = ood_blind.default_eval_out(args.run, sets_dir) / "evaluation.json"
    if not args.on:
        raise SystemExit("bench/ood_ceiling.py: name the sets (--on) or a blind batch (--blind)")
    t0 = time.perf_counter()
    inside_all = splits.train.images
    if cfg.data.binarize != "none":
        inside_all = binarize_once(inside_all, SEED)
    test = load_eval_set("test", cfg, splits, args.images, cfg.eval.seed + 10).images
    rows = []
    print(f"{'set':<34} {'n train':>8} {'AUROC':>22} {'FPR@95':>7} {'DoSE AUROC':>11} {'DoSE FPR':>9}")
    for place, spec in enumerate(args.on, start=1):  # the seed `vaelab evaluate --on` gives the set's place
        seed = cfg.eval.seed + 10 + place
        scored = load_eval_set(spec, cfg, splits, args.images, seed).images
        name = spec.rsplit("/", 1)[-1]
        if spec.startswith("folder:") and name in blind_names:
            with tempfile.TemporaryDirectory() as tmp:
                outside = blind_examples(name, cfg, splits, args.blind_images, Path(tmp))
        else:
            outside = training_examples(spec, cfg, splits, args.images, seed, MAX_PER_CLASS)
        inside = inside_all[spread_index(len(inside_all), len(outside), SEED + place)]
        net = train_classifier(inside, outside, args.epochs, SEED + place)
        iv = detection_intervals(logits(net, test), logits(net, scored))
        row = {"set": spec, "n_train_per_class": len(outside), **iv.as_dict(),
               "dose": dose_row(Path(run.path), spec, blind_eval if name in blind_names else None)}
        rows.append(row)
        d = row["dose"] or {}
        shown, nan = name if name in blind_names else spec, float("nan")
        print(f"{shown:<34} {len(outside):>8} {iv.auroc.value:>7.3f} [{iv.auroc.low:.3f}, {iv.auroc.high:.3f}] "
              f"{iv.fpr.value:>7.3f} {d.get('auroc', nan):>11.3f} {d.get('fpr_at_95_tpr', nan):>9.3f}", flush=True)
    result = {**provenance("bench/ood_ceiling.py", argv), "run": args.run, "images": args.images,
              "epochs": args.epochs, "classifier": "2 conv layers (32, 64) + 128 hidden, Adam 1e-3, batch 128",
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
