"""Callbacks: what observes training (see `base` for the hooks and what they may read). vaelab's own are
the metrics file, the sample grids, the progress bar, the checkpoint clock and TensorBoard; Weights &
Biases and MLflow come as extras (`vaelab[wandb]`, `vaelab[mlflow]`)."""

from vaelab.training.callbacks.base import Callback, CallbackList, flat_metrics

__all__ = ["Callback", "CallbackList", "flat_metrics"]
