"""Every figure vaelab draws with matplotlib, one module per topic:

- `curves`: the training curves of a run (the loss per epoch and the generalization gap);
- `evaluation`: `vaelab evaluate`'s score histograms, ROC curves, KL per latent unit, NLL against k;
- `latent`: the latent map and latent traversals (the HTML report);
- `sweep`: the objective of a hyperparameter sweep against each parameter and over the trials;
- `style`: what they share (size, colours, number format) and `render`, which writes the PNG.

Figures are `matplotlib.figure.Figure` objects rendered with the Agg canvas
into PNG bytes in memory; pyplot and the global backend are never touched, so
plotting works on headless machines and never disturbs a caller's own figures.
The PNG carries no software or date metadata: the same inputs give the same
bytes. Files are written with `fileio.atomic_write` (missing directories are
created, no temporary file is left behind).

Import the functions from here (`from vaelab.report.plots import plot_training_curves`).
"""

from vaelab.report.plots.curves import plot_training_curves
from vaelab.report.plots.evaluation import (DEFAULT_ACTIVE_KL, HIST_QUANTILES, plot_histograms,
                                            plot_kl_per_dimension, plot_nll_vs_k, plot_roc_curves)
from vaelab.report.plots.latent import MAP_MARKERS, plot_latent_map, plot_traversals
from vaelab.report.plots.style import COLORS, DPI, INACTIVE, LINESTYLES, MINUS, WIDTH
from vaelab.report.plots.sweep import plot_sweep_history, plot_sweep_parameter

__all__ = [
    "COLORS", "DEFAULT_ACTIVE_KL", "DPI", "HIST_QUANTILES", "INACTIVE", "LINESTYLES", "MAP_MARKERS", "MINUS",
    "WIDTH", "plot_histograms", "plot_kl_per_dimension", "plot_latent_map", "plot_nll_vs_k", "plot_roc_curves",
    "plot_sweep_history", "plot_sweep_parameter", "plot_training_curves", "plot_traversals",
]
