"""vae-long with a VampPrior in a time budget (written for a lent GPU): calibrate, train, score the whole test split.

    PYTHONPATH=src python3 bench/gpu_vae_long_vamp.py DATA_DIR OUT_DIR DEADLINE_S [KEY=VALUE overrides...]

1. Two calibration epochs (configs/vae-long.toml + model.prior=vamp) time an epoch, and 300 test images
   time the k=1000 importance sampler.
2. As many epochs as fit before DEADLINE_S seconds (or $EPOCHS) train the real run, with its final evaluation.
3. The whole test split (10,000 images) is scored at k=1000, the published protocol.
Prints every step with timestamps and writes OUT_DIR/summary.json (bench/results/h100-vae-long-vamp/ holds
the H100 runs of 2026-11-26; BENCHMARKS.md quotes them). Run it from the repository root.
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

T0 = time.monotonic()
data_dir, out_dir, deadline = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
extra = sys.argv[4:]
out_dir.mkdir(parents=True, exist_ok=True)


def left() -> float:
    return deadline - (time.monotonic() - T0)


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


from vaelab import load_config  # noqa: E402
from vaelab.data import load_dataset  # noqa: E402
from vaelab.data.splits import eval_view  # noqa: E402
from vaelab.evaluation.likelihood import estimate_nll  # noqa: E402
from vaelab.training.loop import Trainer  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
base = ["model.prior=vamp", f"data.data_dir={json.dumps(data_dir)}", f"train.device={device}",
        "train.grid_every=0", "eval.nll_images=1000", *extra]
cfg = load_config("configs/vae-long.toml", base)
splits = load_dataset(cfg.data)
say(f"data {splits.name}: train {len(splits.train)} val {len(splits.val)} test {len(splits.test)}; device {device}")
summary: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                 "torch": torch.__version__, "overrides": base}

# 1. calibration: two epochs (the second one timed), and the k=1000 NLL speed on 300 test images
cal = cfg.replace(train={"epochs": 2, "lr_schedule": "constant", "snapshot_every": 0})
t = time.monotonic()
res = Trainer(cal, out_dir / "calib", splits=splits, log=lambda m: None, progress=False).run(evaluate=False)
cal_wall = time.monotonic() - t
epoch_s = res.history[-1]["epoch_time_s"]
wall = time.monotonic() - T0
say(f"calibration: epoch {epoch_s:.2f}s train ({res.history[-1]['images_per_s']:.0f} img/s), "
    f"val loss {res.history[-1]['val']['loss']:.2f}")
test = eval_view(splits.test, "test", cfg.data.binarize, cfg.data.binarize_seed)
n_cal = min(300, len(test.images))
t = time.monotonic()
s300, _ = estimate_nll(res.model.eval(), test.images[:n_cal], likelihood=cfg.model.likelihood, binarize=cfg.data.binarize,
                       binarize_seed=cfg.data.binarize_seed, k=1000, batch_size=64, seed=cfg.eval.seed, device=device)
nll_rate = n_cal / (time.monotonic() - t)
say(f"NLL k=1000: {nll_rate:.1f} images/s ({s300.nll:.2f} after 2 epochs)")
summary["calibration"] = {"epoch_train_s": epoch_s, "train_images_per_s": res.history[-1]["images_per_s"],
                          "nll_k1000_images_per_s": nll_rate, "calib_wall_s": wall}

# 2. the long run: as many epochs as fit, leaving room for the final evaluation and the whole-test NLL
per_epoch = max(epoch_s * 1.2, cal_wall / 2)  # with validation, monitor, checkpoints (and start-up: conservative)
n_sub = min(cfg.eval.nll_images, len(splits.val), len(splits.test))
reserve = (len(splits.test) + 3 * n_sub) / nll_rate + 40  # whole test + finish()'s 1000 x3 + the rest
epochs = int(os.environ.get("EPOCHS") or (left() - reserve) / per_epoch)
say(f"time left {left():.0f}s, reserve {reserve:.0f}s, per epoch ~{per_epoch:.2f}s -> {epochs} epochs")
if epochs < 5:
    say("not enough time for a long run")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    sys.exit(0)
long_cfg = cfg.replace(train={"epochs": epochs, "snapshot_every": 0})
t = time.monotonic()
result = Trainer(long_cfg, out_dir / "run", splits=splits, log=lambda m: None, progress=False).run()
say(f"trained {epochs} epochs in {time.monotonic() - t:.0f}s; best epoch {result.best_epoch}")
ev = result.evaluation
summary["run"] = {"epochs": epochs, "seconds": time.monotonic() - t, "best_epoch": result.best_epoch,
                  "splits": ev["splits"], "gap": ev["gap_test_minus_train"], "nll_subsets": ev.get("nll")}
for name, s in ev["splits"].items():
    say(f"  {name}: -ELBO {s['nelbo']:.2f}")

# 3. the whole test split at k=1000, the published protocol (the best checkpoint, EMA weights)
t = time.monotonic()
whole, _ = estimate_nll(result.model.eval(), test.images, likelihood=cfg.model.likelihood, binarize=cfg.data.binarize,
                        binarize_seed=cfg.data.binarize_seed, k=1000, batch_size=64, seed=cfg.eval.seed,
                        device=device)
summary["whole_test_nll"] = whole.as_dict()
say(f"whole test split ({len(test.images)} images) NLL k=1000: {whole.nll:.2f} ± {whole.stderr:.2f} "
    f"({time.monotonic() - t:.0f}s)")
(out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
say("done")
