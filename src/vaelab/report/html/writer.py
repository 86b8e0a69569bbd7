"""`write_html_report`: read the run, make every section (or say why it is missing), write the page."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from vaelab._version import __version__
from vaelab.data import DatasetSplits
from vaelab.errors import ConfigError
from vaelab.fileio import atomic_write, output_file
from vaelab.log import say
from vaelab.report.html.page import esc, missing_by_reason, missing_note, render_page
from vaelab.report.html.pictures import model_sections
from vaelab.report.html.runfiles import config_dict, load_data, load_model, read_run_files
from vaelab.report.html.sections import (config_section, curves_section, evaluate_section, evaluation_section,
                                         status_note, summary_section)

MAX_SEED = 2**63 - 1


def write_html_report(run_path: str | Path, out: str | Path | None = None, *, checkpoint: str = "best",
                      data_dir: str | Path | None = None, seed: int = 0, device: str | torch.device = "cpu",
                      log: Callable[[str], None] = say, model: torch.nn.Module | None = None,
                      splits: DatasetSplits | None = None) -> Path:
    """Write one self-contained HTML page of a run (default RUN/report.html) and return its path.

    `seed` 0 shows the samples and test images of the run's images/ folder; another seed, other ones.
    Sections that need what is not there (the dataset, a checkpoint, the final evaluation) are
    replaced by a note saying why, and `log` reports them. CheckpointError when `run_path` is not a
    run directory or the checkpoint cannot be loaded. A run of a model of your own: pass a freshly built
    one as `model`; data of your own: its `splits` (vaelab.data.splits_from_images).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer between 0 and 2**63-1, got {seed!r}")
    files = read_run_files(run_path, checkpoint)
    target = output_file(Path(out) if out is not None else files.root / "report.html", "the HTML report")
    run, problem = load_model(files, checkpoint, device, model)
    data_problem = None
    if splits is None:
        splits, data_problem = load_data(run, data_dir) if run is not None else (None, None)
    sections = [summary_section(files, run, checkpoint), config_section(files, run), curves_section(files, run),
                evaluation_section(files), *model_sections(run, problem, splits, data_problem, seed),
                evaluate_section(files, checkpoint)]
    cfg = config_dict(files, run)
    kind = str(cfg.get("model", {}).get("kind", "?"))  # a name for the subtitle, as the config gives it
    dataset = (files.info or {}).get("dataset", {}).get("name") or cfg.get("data", {}).get("dataset", "?")
    title = f"vaelab report: {files.root.name}"
    subtitle = (f"{kind.upper()} on {dataset}; status {files.status}; checkpoint {checkpoint}"
                + (f" (epoch {run.meta.get('epoch')})" if run is not None else ""))
    footer = (f"Written by vaelab {esc(__version__)} from {esc(files.root)} (checkpoint {esc(checkpoint)}, seed "
              f"{seed}); the same run, checkpoint and seed give the same page. Units: nats per image, summed "
              "over pixels; bits/dim = nats / (pixels × ln 2).")
    page = render_page(title, subtitle, sections, status_note(files) + missing_note(sections), footer)
    atomic_write(target, page.encode("utf-8"), "the HTML report")
    for why, titles in missing_by_reason(sections).items():
        log(f"note: missing {', '.join(t.lower() for t in titles)}: {why}")
    log(f"wrote {target} ({len(page) / 1e6:.1f} MB, {sum(s.missing is None for s in sections)} of {len(sections)} "
        "sections)")
    return target
