"""After each epoch: the validation loss, the monitor's gap on equal fixed subsets, the metrics record
and the epoch's log line."""

from __future__ import annotations

import math
from typing import Any

import torch

from vaelab.config import TrainConfig
from vaelab.data import ImageSet
from vaelab.evaluation.elbo import LossSummary, evaluate_images, gap_stderr, generalization_gap
from vaelab.models import Model
from vaelab.training.guard import TrainingDiverged


def validate(model: Model, val_images: ImageSet | None, monitor: dict | None, cfg: TrainConfig,
             device: torch.device, epoch: int) -> tuple[LossSummary | None, dict[str, Any] | None]:
    """The validation split's loss terms (None without one) and the monitor's record (with the weights the
    caller put in place: the average with train.ema)."""
    val = None
    if val_images is not None:
        val = evaluate_images(model, val_images, beta=cfg.beta, batch_size=cfg.eval_batch_size, device=device)
    record = monitor_record(model, monitor, val, val_images, cfg, device)
    if val is not None and not math.isfinite(val.loss):
        raise TrainingDiverged(
            f"the validation loss after epoch {epoch} is {val.loss} (NaN or infinite): the weights "
            "diverged; lower train.lr or check the data"
        )
    return val, record


def monitor_record(model: Model, monitor: dict | None, val: LossSummary | None, val_images: ImageSet | None,
                   cfg: TrainConfig, device: torch.device) -> dict[str, Any] | None:
    """-ELBO (reconstruction loss for the AE) of the fixed train and validation subsets, and their gap."""
    if monitor is None:
        return None
    scores = {}
    for name in ("train", "val"):
        images = monitor[name]
        if name == "val" and val is not None and images is val_images:
            scores[name] = val  # the same images, weights and seed: the same numbers
        else:
            scores[name] = evaluate_images(model, images, beta=cfg.beta, batch_size=cfg.eval_batch_size,
                                           device=device)
    return {"images": monitor["images"], "train": scores["train"].as_dict(),
            "val": scores["val"].as_dict(), "gap": generalization_gap(scores["train"], scores["val"]),
            "gap_stderr": gap_stderr(scores["train"], scores["val"])}


def epoch_record(trainer: Any, train_terms: dict[str, float], epoch_time: float, val: LossSummary | None,
                 monitor: dict[str, Any] | None, improved: bool) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl."""
    st = trainer.state
    return {
        "epoch": st.epoch, "step": st.step, "epoch_time_s": round(epoch_time, 3),
        "train_time_s": round(st.train_time, 3),
        "images_per_s": round(train_terms["images"] / max(epoch_time, 1e-9), 1),
        "lr": float(trainer.optimizer.param_groups[0]["lr"]), "beta": st.beta, "skipped_steps": trainer.bad.total,
        "restores": trainer.bad.restores, "clipped_steps": st.clipped, "skipped_large": st.skipped_large,
        "train": {k: v for k, v in train_terms.items() if k != "images"},
        "val": val.as_dict() if val is not None else None, "best": improved,
        "monitor": monitor,
    }


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The epoch's line in the log."""
    val, train = record["val"], record["train"]
    val_text = (f"val loss {val['loss']:.2f} (recon {val['recon']:.2f}, KL {val['kl']:.2f})"
                if val is not None else "no validation split")
    if record["monitor"] is not None:
        val_text += f"  gap {record['monitor']['gap']:+.2f}"
    return (f"epoch {record['epoch']}/{epochs}  train loss {train['loss']:.2f} "
            f"(recon {train['recon']:.2f}, KL {train['kl']:.2f})  {val_text}"
            f"{'  *best' if record['best'] else ''}  {record['images_per_s']:.0f} img/s")
