"""`vaelab report`: one self-contained HTML page of a run, to read or send without the run directory.

The page shows what a run is and how it went: the run summary and the full config, the training
curves with the generalization gap, the final evaluation, samples, reconstructions, interpolations,
latent traversals, a 2-D map of the latent space coloured by label, and the tables and plots of
`vaelab evaluate` when it has run. Every image is a `data:image/png;base64,...` URI and the CSS is
inline: the file opens offline, with no scripts, fonts or requests elsewhere.

What needs what:

- run.json, config.toml, metrics.jsonl, evaluation.json: the summary, config, curves and final
  evaluation; a run still training shows the epochs so far and says so;
- the checkpoint: samples;
- the checkpoint and the run's dataset: reconstructions, interpolations, traversals and the map.
  When the dataset cannot be found on this machine the page is still written, and says which
  sections are missing and how to get them (`--data-dir`).

The figures are those of `vaelab.report.figures`, the ones the run's images/ folder holds: with the
default seed 0 the page shows the same samples and test images. The same run, checkpoint and seed give
the same page, byte for byte.

Modules, each importing only those above it:

- `page`: HTML pieces (tables, figures, notes, Markdown), the CSS and the page around the sections;
- `runfiles`: reading the run directory, loading the checkpoint and the dataset;
- `sections`: the sections from the run's files (summary, config, curves, evaluations);
- `pictures`: the sections drawn by the model (samples ... latent map);
- `writer`: `write_html_report`.
"""

from vaelab.report.figures import LatentMap, latent_map
from vaelab.report.html.page import Picture, Section, markdown_to_html
from vaelab.report.html.pictures import map_images, model_sections, run_latent_map, sample_pictures
from vaelab.report.html.runfiles import RunFiles, read_metrics, read_run_files
from vaelab.report.html.writer import MAX_SEED, write_html_report

__all__ = ["LatentMap", "MAX_SEED", "Picture", "RunFiles", "Section", "latent_map", "map_images",
           "markdown_to_html", "model_sections", "read_metrics", "read_run_files", "run_latent_map",
           "sample_pictures", "write_html_report"]
