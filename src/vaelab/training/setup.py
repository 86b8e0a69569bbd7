"""What a training run is made of before its first step: the model (vaelab's or yours), the optimizer,
the views of the data that training and monitoring read, and the autoencoder's code fit."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab.config import RunConfig, TrainConfig
from vaelab.data import DatasetSplits, ImageSet, batches, binarize_once, eval_view, spread_index, train_view
from vaelab.models import Model, build_model, check_model, eval_mode

CODE_FIT_IMAGES = 10_000  # training images whose codes the autoencoder's sampling Gaussian is fitted to


def has_convolutions(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())


def make_model(config: RunConfig, image_shape: tuple[int, int, int], device: torch.device,
               model: torch.nn.Module | None = None) -> tuple[Model, torch.memory_format]:
    """vaelab's model as config.model says, or `model` (yours, checked against the Model protocol), on
    `device`; channels-last when it has convolutions and train.channels_last is on (faster on CPU, same numbers)."""
    if model is None:
        model = build_model(config.model, image_shape)
    else:
        check_model(model)
    fmt = (torch.channels_last if config.train.channels_last and has_convolutions(model)
           else torch.contiguous_format)
    return model.to(device, memory_format=fmt), fmt


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Adam, or AdamW with train.weight_decay; `fused` (the device-resident path): one kernel for all
    parameters, and the update skipped on the device when the optimizer's `found_inf` is set."""
    extra = {"fused": True} if fused else {}
    if cfg.weight_decay:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, **extra)


@dataclass(frozen=True)
class DataViews:
    """The images training reads (and whether it binarizes them dynamically), the validation split binarized
    once, and the monitor: fixed equal-size subsets of train and validation scored after every epoch."""

    train: ImageSet
    dynamic: bool
    val: ImageSet | None
    monitor: dict | None  # {"images": n, "train": ImageSet, "val": ImageSet}


def data_views(splits: DatasetSplits, config: RunConfig) -> DataViews:
    dc = config.data
    train, dynamic = train_view(splits.train, dc.binarize, dc.binarize_seed)
    val = eval_view(splits.val, "val", dc.binarize, dc.binarize_seed) if len(splits.val) else None
    return DataViews(train, dynamic, val, monitor_sets(splits, val, config) if val is not None else None)


def monitor_sets(splits: DatasetSplits, val: ImageSet, config: RunConfig) -> dict | None:
    """Fixed, equal-size subsets of train and validation, binarized once, scored after every epoch.

    The running training average mixes weights from the whole epoch (and dynamic binarization);
    these two subsets are scored by the same weights in the same way, so their difference is the
    generalization gap and nothing else.
    """
    tc, dc = config.train, config.data
    if tc.monitor_images == 0:
        return None
    n = min(tc.monitor_images or len(val), len(val), len(splits.train))
    # binarize the whole split once, then pick: the same bits as every other evaluation of these images
    # (and, with static binarization, the very bits the model trains on)
    train = eval_view(splits.train, "train", dc.binarize, dc.binarize_seed).subset(
        spread_index(len(splits.train), n, tc.seed + 5))
    picked = val if n == len(val) else val.subset(spread_index(len(val), n, tc.seed + 6))
    return {"images": n, "train": train, "val": picked}


def fit_codes(model: Model, train: ImageSet, dynamic: bool, config: RunConfig, device: torch.device,
              n: int | None = None) -> None:
    """For the autoencoder: fit its sampling Gaussian to codes of training images.

    A fixed random subset (training files may be grouped by class), seen the way training sees images:
    binarized once when training binarizes dynamically."""
    if model.variational:  # only the autoencoder samples through a Gaussian fitted to its codes
        return
    images = train.images
    if len(images) < 2:
        return
    images = images[spread_index(len(images), CODE_FIT_IMAGES if n is None else n, config.train.seed + 3)]
    if dynamic:
        images = binarize_once(images, config.data.binarize_seed + 7)
    with eval_mode(model):
        codes = torch.cat([model.code(x) for x in batches(images, config.train.eval_batch_size, device=device)])
    model.fit_codes(codes)


__all__ = ["CODE_FIT_IMAGES", "DataViews", "data_views", "fit_codes", "has_convolutions", "make_model",
           "make_optimizer", "monitor_sets"]
