"""Time to quality: training wall-clock until a fixed test NLL, vaelab against the plain PyTorch loop.

Each contender trains the same conv VAE design on Fashion-MNIST, epoch by epoch. After every epoch its
weights are scored on one fixed subset of the test split (binarized once with vaelab's seed) with the
same importance sampler, k samples and seed for everyone (vaelab.evaluation.likelihood.importance_sampled; the plain
model's weights are copied into vaelab's identical network for this), and that scoring is NOT counted
as training time. The target is the test NLL the plain loop reaches after --target-epochs epochs (the
plain loop's own 10-epoch result by default); the table gives, for each contender, the training time at
which it first scores at or below the target, and its ratio to the plain loop's.

Contenders:
- plain: bench/train_throughput.py's loop (60,000 images per epoch, batch 128, Adam 1e-3);
- vaelab: its Trainer with its defaults (55,000 training images; 5,000 go to validation), and with the
  overrides of each --vaelab option (e.g. a larger learning rate). Its clock is its training epochs
  (train_time_s), like the plain loop's: per-epoch validation and checkpoints are left out.

    python bench/time_to_nll.py                                   # plain, vaelab defaults (~40 min)
    python bench/time_to_nll.py --vaelab "train.lr=2e-3" --vaelab "train.lr=3e-3,train.batch_size=256"
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import PlainVAE, make_loader, plain_epoch  # noqa: E402

from vaelab import load_config  # noqa: E402
from vaelab.data import eval_view, load_dataset, spread_index  # noqa: E402
from vaelab.evaluation.likelihood import importance_sampled  # noqa: E402
from vaelab.models import build_model  # noqa: E402
from vaelab.training.loop import Trainer  # noqa: E402
from _results import provenance, write_result  # noqa: E402 (bench/ is on sys.path)


def plain_into_vaelab(plain: PlainVAE, vae) -> None:
    """The inverse of speed.copy_into_plain: the plain network's weights into vaelab's identical one."""
    enc, dec = vae.encoder.net, vae.decoder.net
    with torch.no_grad():
        enc[0].load_state_dict(plain.enc[0].state_dict())
        enc[2].load_state_dict(plain.enc[2].state_dict())
        enc[5].weight.copy_(torch.cat([plain.fc_mu.weight, plain.fc_logvar.weight]))
        enc[5].bias.copy_(torch.cat([plain.fc_mu.bias, plain.fc_logvar.bias]))
        dec[0].load_state_dict(plain.fc_dec.state_dict())
        dec[3].load_state_dict(plain.dec[0].state_dict())
        dec[5].load_state_dict(plain.dec[2].state_dict())


def score(model, images, k: int) -> float:
    return float(-importance_sampled(model, images, k=k, seed=11).log_px.mean())


def run_plain(splits, test, epochs: int, k: int) -> list[dict]:
    torch.manual_seed(0)
    plain = PlainVAE()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    loader = make_loader(torch.cat([splits.train.images, splits.val.images]))
    scorer = build_model(load_config().model, splits.image_shape)
    curve, clock = [], 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        plain_epoch(plain, opt, loader)
        clock += time.perf_counter() - t0
        plain_into_vaelab(plain, scorer)
        curve.append({"epoch": epoch, "train_s": clock, "nll": score(scorer, test, k)})
        print(f"  plain  epoch {epoch:3d}  {clock:7.1f} s  test NLL {curve[-1]['nll']:.2f}", flush=True)
    return curve


def run_vaelab(splits, test, epochs: int, k: int, overrides: list[str], target: float | None,
               label: str) -> list[dict]:
    cfg = load_config(overrides=[f"train.epochs={epochs}", "train.grid_every=0", "eval.nll_images=0",
                                 "eval.gap_images=0", *overrides])
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", splits=splits, log=lambda m: None, progress=False)
        try:
            for _ in range(epochs):
                terms = trainer.train_epoch()
                trainer.end_epoch(terms, terms.pop("time_s"))  # validation, checkpoints: not on its clock
                with trainer.eval_weights() as model:
                    nll = score(model, test, k)
                curve.append({"epoch": trainer.epoch, "train_s": trainer.state.train_time, "nll": nll})
                print(f"  {label:<6} epoch {trainer.epoch:3d}  {trainer.state.train_time:7.1f} s  test NLL {nll:.2f}",
                      flush=True)
                if target is not None and nll <= target:
                    break
        finally:
            trainer.close()
    return curve


def first_at(curve: list[dict], target: float) -> float | None:
    return next((c["train_s"] for c in curve if c["nll"] <= target), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-epochs", type=int, default=10, help="the plain loop's epochs that set the target")
    parser.add_argument("--max-epochs", type=int, default=12, help="vaelab's limit when it does not get there")
    parser.add_argument("--nll-images", type=int, default=300, help="test images scored after every epoch")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--vaelab", action="append", default=[],
                        help="comma-separated overrides of one more vaelab contender (besides its defaults)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="bench/results/time_to_nll.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config()
    splits = load_dataset(cfg.data, log=lambda m: None)
    test_all = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed).images
    test = test_all[spread_index(len(test_all), args.nll_images, 41)]
    print(f"plain loop, {args.target_epochs} epochs:", flush=True)
    plain = run_plain(splits, test, args.target_epochs, args.k)
    target = min(c["nll"] for c in plain)
    contenders = {"plain": plain}
    for i, spec in enumerate(["", *args.vaelab]):
        overrides = [o for o in spec.split(",") if o]
        label = "vaelab" if not overrides else f"v{i}"
        print(f"vaelab {' '.join(overrides) or '(defaults)'}, until test NLL <= {target:.2f}:", flush=True)
        contenders[" ".join(overrides) or "vaelab defaults"] = run_vaelab(splits, test, args.max_epochs, args.k,
                                                                          overrides, target, label)
    t_plain = first_at(plain, target)
    print(f"\ntime to test NLL <= {target:.2f} ({args.nll_images} test images, k={args.k}; "
          f"{torch.get_num_threads()} threads)")
    print(f"{'contender':<44}{'epochs':>7}{'train s':>9}{'x plain':>9}")
    rows = []
    for name, curve in contenders.items():
        t = first_at(curve, target)
        epochs = next((c["epoch"] for c in curve if c["nll"] <= target), None)
        rows.append({"contender": name, "curve": curve, "time_to_target_s": t, "epochs_to_target": epochs,
                     "ratio_to_plain": None if t is None else t / t_plain})
        print(f"{name:<44}{epochs if epochs else '-':>7}{t if t else float('nan'):>9.0f}"
              f"{(t / t_plain) if t else float('nan'):>9.2f}")
    out = {"benchmark": "time_to_nll", **provenance("bench/time_to_nll.py", argv),
           "target_nll": target, "nll_images": args.nll_images, "k": args.k, "rows": rows}
    write_result(args.out, out, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
