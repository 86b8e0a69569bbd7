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

Import the functions from here (`from vaelab.report.plots import plot_training_curves`). The submodules,
and matplotlib with them (about a second on the 2-core machine), load on first use: modules that only
sometimes draw (training, the HTML report, evaluate, sweeps) hold the package and call `plots.plot_...`, so
`import vaelab` and `vaelab --help` do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {  # name -> the submodule that defines it
    "plot_training_curves": "curves",
    **dict.fromkeys(("DEFAULT_ACTIVE_KL", "HIST_QUANTILES", "plot_histograms", "plot_kl_per_dimension",
                     "plot_nll_vs_k", "plot_roc_curves"), "evaluation"),
    **dict.fromkeys(("MAP_MARKERS", "plot_latent_map", "plot_traversals"), "latent"),
    **dict.fromkeys(("COLORS", "DPI", "INACTIVE", "LINESTYLES", "MINUS", "WIDTH"), "style"),
    **dict.fromkeys(("plot_sweep_history", "plot_sweep_parameter"), "sweep"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:  # PEP 562: the submodule is imported when one of its names is first used
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
