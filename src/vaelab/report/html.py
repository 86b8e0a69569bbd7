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

The same run, checkpoint and seed give the same page, byte for byte.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vaelab._version import __version__
from vaelab.errors import CheckpointError, ConfigError, DataError
from vaelab.fileio import atomic_write, output_file
from vaelab.runs.load import Run, RunPaths, load_run, load_run_data

MAX_SEED = 2**63 - 1
SAMPLE_TEMPERATURES = (1.0, 0.7)
SAMPLES = 64
RECONSTRUCTIONS = 32
PAIRS = 4  # interpolation pairs
STEPS = 10  # images per interpolation path
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = tuple(float(v) for v in np.linspace(-3.0, 3.0, 9))  # in prior standard deviations
MAP_IMAGES = 2000  # test images on the latent map
GRID_WIDTH = 640  # CSS pixels an image grid is enlarged to, at most (by an integer factor: crisp pixels)


# --------------------------------------------------------------------------- page parts


@dataclass(frozen=True)
class Picture:
    """One image of the page: PNG bytes, its caption, and whether it is a pixel grid (shown enlarged, crisp)."""

    png: bytes
    caption: str
    alt: str
    grid: bool = False


@dataclass(frozen=True)
class Section:
    """One section of the page; `missing` says why its content could not be made (shown instead of it)."""

    id: str
    title: str
    body: str = ""
    missing: str | None = None


@dataclass(frozen=True)
class RunFiles:
    """What the run directory holds besides the checkpoints (None where a file is absent or unreadable)."""

    root: Path
    info: dict[str, Any] | None
    config_text: str | None
    history: list[dict[str, Any]]
    bad_metric_lines: int
    evaluation: dict[str, Any] | None
    evaluate: dict[str, Any] | None  # `vaelab evaluate` for the report's checkpoint: evaluation_<ckpt>.json
    evaluate_dir: Path
    other_evaluations: tuple[str, ...]  # checkpoints `vaelab evaluate` ran for, besides this one

    @property
    def status(self) -> str:
        return str((self.info or {}).get("status", "unknown"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The per-epoch records of metrics.jsonl, and how many lines could not be read (a line being written
    while training runs, or damage)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), (int, float)):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_run_files(root: str | Path, checkpoint: str = "best") -> RunFiles:
    """Read a run directory's result files; CheckpointError when `root` is not a run directory."""
    root = Path(root)
    paths = RunPaths(root)
    if not root.exists():
        raise CheckpointError(f"run directory {root} does not exist; pass the directory `vaelab train` wrote")
    if not root.is_dir() or not (paths.info.is_file() or paths.checkpoints.is_dir()):
        raise CheckpointError(f"{root} is not a vaelab run directory (no run.json or checkpoints/ inside); "
                              "pass the directory `vaelab train` wrote")
    history, bad = read_metrics(paths.metrics)
    config_text = paths.config.read_text(encoding="utf-8", errors="replace") if paths.config.is_file() else None
    others = tuple(sorted(p.stem[len("evaluation_"):] for p in root.glob("evaluation_*.json")
                          if p.stem != f"evaluation_{checkpoint}"))
    return RunFiles(root=root, info=_read_json(paths.info), config_text=config_text, history=history,
                    bad_metric_lines=bad, evaluation=_read_json(paths.evaluation),
                    evaluate=_read_json(root / f"evaluation_{checkpoint}.json"),
                    evaluate_dir=root / f"eval-{checkpoint}", other_evaluations=others)


# --------------------------------------------------------------------------- the latent map


@dataclass(frozen=True)
class LatentMap:
    """2-D coordinates of latent codes: the codes themselves when they are 2-D, else their top two principal
    components."""

    xy: np.ndarray  # (N, 2) float64
    method: str  # "latent", "pca" or "latent-1d"
    explained: tuple[float, float] | None  # PCA: the fraction of the codes' variance along each axis
    axis_labels: tuple[str, str]


def latent_map(codes: torch.Tensor | np.ndarray) -> LatentMap:
    """Where each code (N, D) goes on the map.

    D == 2: the codes as they are (the plot is the latent space itself); D == 1: the code against 0;
    D > 2: the projection onto the top two principal components of the centred codes (exact SVD,
    float64), each component's sign fixed so that its largest entry is positive: the same codes always
    give the same picture.
    """
    z = np.asarray(codes.detach().cpu().numpy() if hasattr(codes, "detach") else codes, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"latent_map needs codes of shape (N, D), got {z.shape}")
    d = z.shape[1]
    if d == 2:
        return LatentMap(z.copy(), "latent", None, ("z[0]", "z[1]"))
    if d == 1:
        return LatentMap(np.stack([z[:, 0], np.zeros(len(z))], 1), "latent-1d", None, ("z[0]", "(none: 1-D latent)"))
    if len(z) < 2:
        raise ValueError("a principal-component map needs the codes of at least 2 images")
    centred = z - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(N, D), D), rows by decreasing variance
    components = vt[:2]
    flip = np.sign(components[np.arange(2), np.abs(components).argmax(1)])
    components = components * np.where(flip == 0, 1.0, flip)[:, None]
    total = float((s ** 2).sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in s[:2] ** 2]
    return LatentMap(centred @ components.T, "pca", (explained[0], explained[1]),
                     (f"PC 1 ({100 * explained[0]:.0f}% of the variance)",
                      f"PC 2 ({100 * explained[1]:.0f}% of the variance)"))


# --------------------------------------------------------------------------- pictures from the model


def _grid_png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _plot_png(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> bytes:
    """Run one of `vaelab.report.plots`' functions into a temporary file and return its PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="vaelab-report-") as tmp:
        path = plot(*args, Path(tmp) / "plot.png", **kwargs)
        return Path(path).read_bytes()


def _float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.float().div(255).to(device)


def _codes(run: Run, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The deterministic codes (posterior means; the AE's codes; the HVAE's top layer) of uint8 images, on CPU."""
    from vaelab.models import eval_mode

    out = []
    with eval_mode(run.model):
        for chunk in images.split(batch):
            out.append(run.model.code(_float_images(chunk, run.device)).float().cpu())
    return torch.cat(out)


def _pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def _what_code(run: Run, plural: bool = False) -> str:
    """What the model's deterministic code of an image is called, for captions."""
    name = {"ae": "code", "hvae": "top-layer posterior mean"}.get(run.config.model.kind, "posterior mean")
    return name + ("s" if plural else "")


def _decoding(run: Run) -> str:
    """How a code becomes an image, where it is not plain (the HVAE decodes its top layer alone)."""
    if run.config.model.kind == "hvae":
        return (f" (the top layer z_L has {run.model.latent_dim} values; the layers below are set to their "
                "conditional prior means)")
    return ""


def sample_pictures(run: Run, seed: int) -> list[Picture]:
    from vaelab.report.images import square_grid

    kind = run.config.model.kind
    source = {"ae": "codes drawn from the Gaussian fitted to the training codes (an autoencoder has no prior)",
              "hvae": "every layer drawn from its (conditional) prior",
              }.get(kind, "z drawn from the prior" + (" (the VampPrior)" if run.config.model.prior == "vamp" else ""))
    pictures = []
    for i, t in enumerate(SAMPLE_TEMPERATURES):
        images = run.sample(SAMPLES, temperature=t, seed=seed + i).cpu()
        pictures.append(Picture(_grid_png(square_grid(images)), f"{SAMPLES} samples at temperature {t:g}: {source}, "
                                f"its standard deviation scaled by {t:g}; decoded means",
                                f"samples at temperature {t:g}", grid=True))
    return pictures


def reconstruction_picture(run: Run, test, seed: int) -> Picture:
    from vaelab.report.images import pairs_grid

    idx = _pick(len(test), min(RECONSTRUCTIONS, len(test)), seed)
    x = _float_images(test.images[idx], run.device)
    grid = pairs_grid(x.cpu(), run.reconstruct(x).cpu())
    return Picture(_grid_png(grid), f"{len(idx)} test images (left of each pair) and their reconstructions (right): "
                   f"the decoded {_what_code(run)}{_decoding(run)}", "test images beside their reconstructions",
                   grid=True)


def interpolation_pictures(run: Run, test, seed: int) -> list[Picture]:
    from vaelab.report.images import make_grid

    n_pairs = min(PAIRS, len(test) // 2)
    idx = _pick(len(test), 2 * n_pairs, seed + 1).tolist()
    pairs = list(zip(idx[0::2], idx[1::2]))
    pictures = []
    for method, name in (("lerp", "linear (lerp)"), ("slerp", "spherical (slerp)")):
        rows = [run.interpolate(test.images[i].float() / 255, test.images[j].float() / 255, steps=STEPS,
                                method=method).cpu() for i, j in pairs]
        pictures.append(Picture(
            _grid_png(make_grid(torch.cat(rows), nrow=STEPS)),
            f"{name} paths between the {_what_code(run, True)} of {n_pairs} pairs of test images, one pair per "
            f"row, {STEPS} steps; the end points are the two images' reconstructions{_decoding(run)}",
            f"{method} interpolations", grid=True))
    return pictures


def traversal_ranges(run: Run, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Centre and scale of each latent dimension's traversal (`generate.latent_frame`, shared with the
    explorer), and a phrase saying which."""
    from vaelab.models.generate import latent_frame

    frame = latent_frame(run.model, codes)
    return frame.loc.cpu(), frame.scale.cpu(), f"the centre ± k {frame.units}"


def traversal_picture(run: Run, test, seed: int) -> Picture:
    """Decode one test image's code with each of its most varying dimensions moved across -3..3."""
    from vaelab.models import eval_mode
    from vaelab.report.plots import plot_traversals

    codes = _codes(run, test.images[_pick(len(test), min(MAP_IMAGES, len(test)), seed + 2)])
    variance = codes.var(0) if len(codes) > 1 else torch.zeros(codes.shape[1])
    order = torch.argsort(variance, descending=True, stable=True)[:min(TRAVERSAL_DIMS, codes.shape[1])]
    loc, scale, how = traversal_ranges(run, codes)
    base = codes[0]
    values = torch.tensor(TRAVERSAL_VALUES)
    rows = []
    with eval_mode(run.model):
        for d in order.tolist():
            z = base.repeat(len(values), 1)
            z[:, d] = loc[d] + values * scale[d]
            rows.append(run.model.decode_mean(z.to(run.device)).float().cpu())
    labels = [f"z[{d}] (var {variance[d]:.2g})" for d in order.tolist()]
    png = _plot_png(plot_traversals, torch.stack(rows), row_labels=labels, values=TRAVERSAL_VALUES,
                    xlabel="k: the dimension set to centre + k × scale",
                    title=f"latent traversals of one test image ({len(order)} of {codes.shape[1]} dimensions)")
    return Picture(png, f"The {_what_code(run)} of one test image, decoded with one dimension at a time moved "
                   f"across {TRAVERSAL_VALUES[0]:g}..{TRAVERSAL_VALUES[-1]:g}, the others kept{_decoding(run)}. "
                   f"Rows: the {len(order)} "
                   f"dimensions whose codes vary most across {len(codes)} test images (var: that variance, the "
                   f"activity statistic of Burda et al. 2015), largest first. Centre and scale: {how}.",
                   "latent traversals")


def map_images(test, seed: int) -> torch.Tensor:
    """Which test images go on the latent map: up to MAP_IMAGES, a seeded random choice, in split order."""
    return _pick(len(test), min(MAP_IMAGES, len(test)), seed + 3).sort().values


def run_latent_map(run: Run, images: torch.Tensor) -> LatentMap:
    """The map of uint8 images (N, C, H, W): their deterministic codes (the posterior means of a VAE, the
    codes of an AE, the top layer's posterior means of an HVAE) placed by `latent_map`."""
    return latent_map(_codes(run, images))


def latent_map_picture(run: Run, test, classes: Sequence[str], seed: int) -> Picture:
    from vaelab.report.plots import plot_latent_map

    idx = map_images(test, seed)
    m = run_latent_map(run, test.images[idx])
    labels = test.labels[idx].numpy()
    how = {"latent": f"the latent space itself: the {_what_code(run)} of each image (latent_dim = 2)",
           "latent-1d": f"the one latent dimension's {_what_code(run)} of each image along x (latent_dim = 1)",
           "pca": f"the top two principal components of the {_what_code(run, True)} ({m.xy.shape[0]} codes of "
                  f"{run.model.latent_dim} dimensions; together {100 * sum(m.explained or (0, 0)):.0f}% of their "
                  "variance): a linear projection, distances are shrunk"}[m.method]
    png = _plot_png(plot_latent_map, m.xy, labels, class_names=tuple(classes), xlabel=m.axis_labels[0],
                    ylabel=m.axis_labels[1],
                    title=f"{len(idx)} test images in the latent space" + (" (PCA)" if m.method == "pca" else ""))
    return Picture(png, f"{len(idx)} test images, coloured by label; coordinates: {how}.", "latent map")


# --------------------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table cell (escaped text otherwise); an en dash for None."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return esc(value)


_NUMERIC = re.compile(r"[−+-]?[\d.,]+(e[+-]?\d+)?( ± [\d.,]+)?|–|-")


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from cells that are HTML already; cells that read as numbers are right-aligned."""
    def cell(tag: str, text: str) -> str:
        attr = ' class="num"' if tag == "td" and _NUMERIC.fullmatch(text) is not None else ""
        return f"<{tag}{attr}>{text}</{tag}>"

    head = "".join(cell("th", h) for h in header)
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: Sequence[int] | None = None) -> str:
    """A table of values: numbers formatted (`digits` per column, default 2), text escaped."""
    digits = digits or [2] * len(header)
    return table_html([esc(h) for h in header], [[fmt(v, d) for v, d in zip(row, digits)] for row in rows])


def figure(picture: Picture) -> str:
    """A <figure> with the PNG inlined as a data URI; grids are enlarged by an integer factor (crisp pixels)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(picture.png)) as im:
        width, height = im.size
    scale = max(1, GRID_WIDTH // width) if picture.grid else 1
    data = base64.b64encode(picture.png).decode("ascii")
    return (f'<figure class="{"grid" if picture.grid else "plot"}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(picture.alt)}" width="{width * scale}" height="{height * scale}">'
            f"<figcaption>{esc(picture.caption)}</figcaption></figure>")


def note(text_html: str, kind: str = "info") -> str:
    """A boxed note: kind "info" (neutral) or "warn" (something is missing or unfinished)."""
    return f'<div class="note {kind}">{text_html}</div>'


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(text: str, image: Callable[[str, str], str], heading_offset: int = 2) -> str:
    """HTML of the Markdown that `vaelab.report.markdown` writes: headings (shifted down by `heading_offset`
    levels), paragraphs, '- ' lists, pipe tables, images alone on a line (`image(alt, target)` gives
    their HTML), **bold** and `code`. Anything else is kept as paragraph text."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        if rows:
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append(table_html([_inline(c) for c in rows[0]], [[_inline(c) for c in r] for r in body]))
        para.clear(), items.clear(), rows.clear()

    for line in text.splitlines():
        s = line.strip()
        heading = re.fullmatch(r"(#{1,6})\s+(.*)", s)
        picture = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", s)
        kind = ("blank" if not s else "heading" if heading else "image" if picture else
                "row" if s.startswith("|") else "item" if s.startswith("- ") else "text")
        current = "row" if rows else "item" if items else "text" if para else None
        if current is not None and kind != current:
            flush()
        if heading:
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif picture:
            out.append(image(picture.group(1), picture.group(2)))
        elif kind == "row":
            rows.append([c.strip() for c in s.strip("|").split("|")])
        elif kind == "item":
            items.append(s[2:])
        elif kind == "text":
            para.append(s)
    flush()
    return "\n".join(out)


# --------------------------------------------------------------------------- sections


def _best_epoch(files: RunFiles) -> int | None:
    info = files.info or {}
    if isinstance(info.get("best_epoch"), int):
        return info["best_epoch"]
    best = [rec["epoch"] for rec in files.history if rec.get("best")]
    return int(best[-1]) if best else None


def _config(files: RunFiles, run: Run | None) -> dict[str, Any]:
    """The run's config as a dict: run.json's copy, else the checkpoint's."""
    from vaelab.config import to_dict

    cfg = (files.info or {}).get("config")
    if isinstance(cfg, dict):
        return cfg
    return to_dict(run.config) if run is not None else {}


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value:.0f} s ({value / 60:.1f} min)"


def summary_section(files: RunFiles, run: Run | None, checkpoint: str) -> Section:
    info = files.info or {}
    cfg = _config(files, run)
    model, train = cfg.get("model", {}), cfg.get("train", {})
    data = info.get("dataset") if isinstance(info.get("dataset"), dict) else {}
    last = files.history[-1] if files.history else {}
    kind = model.get("kind", "?")
    if kind == "hvae":
        shape = f"hierarchical VAE, latents {model.get('hvae_latents')} channels per layer, " \
                f"{model.get('hvae_channels')} channels"
    else:
        shape = f"{model.get('arch', '?')} encoder/decoder, latent_dim {model.get('latent_dim', '?')}"
    prior = f", prior {model.get('prior')}" if kind == "vae" else ""
    sizes = data.get("sizes", {}) if isinstance(data.get("sizes"), dict) else {}
    rows = [
        ("run", esc(files.root.resolve())),
        ("status", esc(files.status) + (f" ({esc(info['error'])})" if info.get("error") else "")),
        ("dataset", esc(f"{data.get('name', cfg.get('data', {}).get('dataset', '?'))} from {data.get('source', '?')}")),
        ("images", esc(" x ".join(map(str, data.get("image_shape", run.image_shape if run else [])))
                       + "; " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))),
        ("model", esc(f"{kind}: {shape}, {model.get('likelihood', '?')} likelihood{prior}")),
        ("parameters", fmt(info.get("parameters"))),
        ("epochs", esc(f"{last.get('epoch', 0)} of {train.get('epochs', '?')}"
                       + (" (stopped early)" if info.get("stopped_early") else ""))),
        ("best epoch", fmt(_best_epoch(files))),
        ("training time", esc(_seconds(info.get("train_time_s", last.get("train_time_s"))))),
        ("speed (last epoch)", esc(f"{last['images_per_s']:,.0f} images/s") if isinstance(
            last.get("images_per_s"), (int, float)) else "–"),
        ("checkpoint shown", esc(f"{checkpoint} (epoch {run.meta.get('epoch')})") if run else "none"),
        ("hardware", esc(f"{info.get('device', '?')}, {info.get('threads', '?')} thread(s), "
                         f"{info.get('processes', 1)} process(es)")),
        ("versions", esc(f"vaelab {info.get('vaelab_version', '?')}, torch {info.get('torch_version', '?')}, "
                         f"Python {info.get('python_version', '?')}")),
    ]
    body = '<table class="kv"><tbody>' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) \
        + "</tbody></table>"
    for text in data.get("notes", []) if isinstance(data.get("notes"), list) else []:
        body += f"<p class=small>{esc(text)}</p>"
    return Section("summary", "Run summary", body)


def config_section(files: RunFiles, run: Run | None) -> Section:
    from vaelab.config import to_toml

    if files.config_text is not None:
        return Section("config", "Configuration", f"<p>config.toml, as the run resolved it (train again with "
                       f"<code>vaelab train --config config.toml</code>):</p><pre>{esc(files.config_text)}</pre>")
    if run is not None:
        return Section("config", "Configuration", "<p>The run directory has no config.toml; this is the config "
                       f"stored in the checkpoint:</p><pre>{esc(to_toml(run.config))}</pre>")
    return Section("config", "Configuration", missing="the run directory has no config.toml and no checkpoint")


def curves_section(files: RunFiles, run: Run | None) -> Section:
    from vaelab.report.plots import plot_training_curves

    if not files.history:
        return Section("curves", "Training curves", missing="no epoch has finished yet: metrics.jsonl has no records")
    info = files.info or {}
    stopped = files.history[-1]["epoch"] if info.get("stopped_early") else None
    cfg = _config(files, run)
    title = f"{str(cfg.get('model', {}).get('kind', '')).upper()} on {cfg.get('data', {}).get('dataset', '?')}"
    try:
        png = _plot_png(plot_training_curves, files.history, best_epoch=_best_epoch(files), stopped_epoch=stopped,
                        title=title)
    except ValueError as exc:
        return Section("curves", "Training curves", missing=f"nothing to plot ({exc})")
    monitored = any(isinstance(rec.get("monitor"), dict) for rec in files.history)
    caption = ("Top: the loss per epoch (nats per image) on fixed subsets of the training and validation images, "
               "and the running training average. Bottom: the generalization gap, validation minus training on "
               "the fixed subsets (positive: worse on unseen images)." if monitored else
               "The loss per epoch (nats per image): the running training average, and the validation split's "
               "when there is one. No gap panel: the run scored no fixed subsets (train.monitor_images = 0 or no "
               "validation split).")
    body = figure(Picture(png, caption, "training curves"))
    if files.bad_metric_lines:
        body += note(f"{files.bad_metric_lines} line(s) of metrics.jsonl could not be read and are left out "
                     "(a record being written while training runs, or damage).")
    return Section("curves", "Training curves", body)


def evaluation_section(files: RunFiles, kind: str) -> Section:
    """The final evaluation training wrote (evaluation.json): loss terms per split, the gap, NLL, sample FD."""
    ev = files.evaluation
    if ev is None:
        if files.status != "finished":
            why = "the run has not finished: training writes evaluation.json after its last epoch"
        elif (files.info or {}).get("evaluated") is False:
            why = ("the run was trained without its final evaluation (a sweep trial, say): "
                   f"vaelab evaluate {files.root} scores it")
        else:
            why = "the run directory has no readable evaluation.json"
        return Section("evaluation", "Final evaluation", missing=why)
    ae = kind == "ae"
    parts = [f"<p>Weights of the best epoch ({fmt(ev.get('epoch'))}), evaluated on every split; "
             "nats per image, summed over pixels.</p>"]
    splits = ev.get("splits") if isinstance(ev.get("splits"), dict) else {}
    if splits:
        measure = "reconstruction loss" if ae else "−ELBO"
        parts.append(table(["split", "images", measure, "recon", "KL", "± se", "bits/dim"],
                           [[k, s.get("n"), s.get("loss") if ae else s.get("nelbo"), s.get("recon"),
                             None if ae else s.get("kl"), s.get("stderr"), s.get("bits_per_dim")]
                            for k, s in splits.items()], digits=[2, 0, 2, 2, 2, 2, 4]))
    if isinstance(ev.get("gap_test_minus_train"), (int, float)):
        parts.append(f"<p>Generalization gap (test − train {'reconstruction loss' if ae else '−ELBO'}): "
                     f"<strong>{fmt(ev['gap_test_minus_train'])} ± {fmt(ev.get('gap_stderr'))}</strong> nats "
                     "per image.</p>")
    nll = ev.get("nll")
    if isinstance(nll, dict) and isinstance(nll.get("splits"), dict):
        parts.append(f"<h3>Importance-sampled negative log-likelihood</h3><p>k = {fmt(nll.get('k'))} samples per "
                     f"image; {esc(nll.get('subsets', ''))}.</p>")
        parts.append(table(["split", "images", "NLL", "± se", "−ELBO (same samples)", "bits/dim", "mean ESS"],
                           [[k, s.get("n"), s.get("nll"), s.get("stderr"), s.get("nelbo"), s.get("bits_per_dim"),
                             s.get("ess")] for k, s in nll["splits"].items()], digits=[2, 0, 2, 2, 2, 4, 1]))
        if isinstance(nll.get("gap_test_minus_train"), (int, float)):
            parts.append(f"<p>Generalization gap of the NLL (test − train): <strong>"
                         f"{fmt(nll['gap_test_minus_train'])} ± {fmt(nll.get('gap_stderr'))}</strong> nats.</p>")
    fd = ev.get("samples")
    if isinstance(fd, dict) and "fd_samples_test" in fd:
        parts.append(f"<h3>Sample fidelity</h3><p>Fréchet distance of samples to the test images: <strong>"
                     f"{fmt(fd['fd_samples_test'])}</strong> (real training images: {fmt(fd.get('fd_train_test'))}; "
                     f"lower is better). <span class=small>{esc(fd.get('protocol', ''))}.</span></p>")
    protocol = ev.get("protocol")
    if isinstance(protocol, dict):
        parts.append("<ul class=small>" + "".join(f"<li>{esc(k.replace('_', ' '))}: {esc(v)}</li>"
                                                 for k, v in protocol.items()) + "</ul>")
    return Section("evaluation", "Final evaluation", "\n".join(parts))


def evaluate_section(files: RunFiles, checkpoint: str) -> Section:
    """The tables and plots of `vaelab evaluate` for this checkpoint, from the Markdown report it writes."""
    from vaelab.report.markdown import markdown

    title = "Evaluation (vaelab evaluate)"
    result = files.evaluate
    if result is None:
        others = (f" It has run for checkpoint(s) {', '.join(files.other_evaluations)}: pass --checkpoint to see "
                  "those." if files.other_evaluations else "")
        return Section("evaluate", title, note(
            f"<code>vaelab evaluate</code> has not been run for the {esc(checkpoint)} checkpoint (no "
            f"evaluation_{esc(checkpoint)}.json). <code>vaelab evaluate {esc(files.root)} --checkpoint "
            f"{esc(checkpoint)}</code> adds the importance-sampled NLL, inference gaps, active units and, with "
            f"--on, unseen datasets and out-of-distribution detection to this page.{esc(others)}"))
    absent: list[str] = []

    def image(alt: str, target: str) -> str:
        path = files.evaluate_dir / target
        if not (path.is_file() and path.suffix.lower() == ".png"):
            absent.append(target)
            return ""
        return figure(Picture(path.read_bytes(), alt, alt))

    plots = result.get("plots") if isinstance(result.get("plots"), dict) else {}
    body = markdown_to_html(markdown({k: v for k, v in result.items() if k != "curves"}, plots), image)
    if absent:
        body = note(f"{len(absent)} plot(s) of this evaluation are not in {esc(files.evaluate_dir)} "
                    f"({esc(', '.join(absent))}): it was written with --out elsewhere, or the files were moved.",
                    "warn") + body
    return Section("evaluate", title, body)


def model_sections(run: Run | None, problem: str | None, splits, data_problem: str | None,
                   seed: int) -> list[Section]:
    """Samples (the checkpoint alone), then reconstructions, interpolations, traversals and the latent map
    (the checkpoint and the test split)."""
    titles = [("samples", "Samples"), ("reconstructions", "Reconstructions"), ("interpolations", "Interpolations"),
              ("traversals", "Latent traversals"), ("latent-map", "Latent map")]
    if run is None:
        return [Section(i, t, missing=problem) for i, t in titles]
    out = [Section("samples", "Samples", '<div class="row">' + "".join(
        figure(p) for p in sample_pictures(run, seed)) + "</div>")]
    test = splits.test if splits is not None else None
    if test is not None and len(test) < 2:
        data_problem = f"the test split has {len(test)} image(s); these sections need at least 2"
    if data_problem is not None:
        return out + [Section(i, t, missing=data_problem) for i, t in titles[1:]]
    out.append(Section("reconstructions", "Reconstructions", figure(reconstruction_picture(run, test, seed))))
    out.append(Section("interpolations", "Interpolations", '<div class="row">' + "".join(
        figure(p) for p in interpolation_pictures(run, test, seed)) + "</div>"))
    out.append(Section("traversals", "Latent traversals", figure(traversal_picture(run, test, seed))))
    out.append(Section("latent-map", "Latent map", figure(latent_map_picture(run, test, splits.classes, seed))))
    return out


# --------------------------------------------------------------------------- the page


CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #d9dee5; --soft: #f5f7fa; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--soft); border-bottom: 1px solid var(--line); padding: 1.4rem 0 1rem; }
header > div, main, footer { max-width: 1000px; margin: 0 auto; padding: 0 1.25rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .8rem; padding-bottom: .3rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
h4, h5, h6 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.subtitle, .small, figcaption { color: var(--muted); }
.small { font-size: .85rem; }
nav { margin: 1.2rem 0; padding: .8rem 1.2rem; background: var(--soft); border: 1px solid var(--line);
      border-radius: 6px; }
nav h2 { font-size: 1rem; margin: 0 0 .3rem; border: 0; padding: 0; }
nav ol { margin: 0; padding-left: 1.4rem; columns: 2; }
nav .missing { color: var(--muted); }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); }
table.kv th { font-weight: 600; padding-right: 2rem; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem;
      overflow: auto; max-height: 36rem; font-size: .82rem; line-height: 1.4; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
figure { margin: .8rem 0 1.4rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figure.grid img { image-rendering: pixelated; image-rendering: crisp-edges; }
figcaption { font-size: .85rem; margin-top: .35rem; max-width: 640px; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.row figure { flex: 0 1 auto; max-width: 100%; }
.note { border-left: 4px solid var(--accent); background: #eef4fb; padding: .6rem .9rem; margin: .8rem 0;
        border-radius: 0 6px 6px 0; }
.note.warn { border-color: #c77700; background: #fff5e5; }
footer { margin-top: 3rem; padding-top: 1rem; padding-bottom: 2rem; border-top: 1px solid var(--line);
         color: var(--muted); font-size: .85rem; }
"""


def status_note(files: RunFiles) -> str:
    """A warning at the top of the page for a run that has not finished (empty for a finished one)."""
    info, status = files.info or {}, files.status
    done = files.history[-1]["epoch"] if files.history else 0
    planned = (info.get("config") or {}).get("train", {}).get("epochs", "?")
    if status == "finished":
        return ""
    if status == "running":
        text = (f"This run was still training when the page was written (status <em>running</em> in run.json: "
                f"{done} of {planned} epochs so far; or it was killed without a chance to record it). The page "
                "shows what is there; write it again later for the rest.")
    elif status in ("interrupted", "failed"):
        text = (f"This run {status} after {done} of {planned} epochs"
                + (f" ({esc(info['error'])})" if info.get("error") else "")
                + f". The page shows what is there; continue it with <code>vaelab train --resume "
                  f"{esc(files.root)}</code>.")
    else:
        text = f"run.json is missing or unreadable, so the run's status is unknown; {done} epoch(s) are recorded."
    return note(text, "warn")


def _missing_by_reason(sections: Sequence[Section]) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for s in sections:
        if s.missing is not None:
            reasons.setdefault(s.missing, []).append(s.title)
    return reasons


def missing_note(sections: Sequence[Section]) -> str:
    """One warning listing the sections that could not be made, grouped by reason."""
    reasons = _missing_by_reason(sections)
    if not reasons:
        return ""
    items = "".join(f"<li><strong>{esc(', '.join(titles))}</strong>: {esc(why)}</li>"
                    for why, titles in reasons.items())
    return note(f"Some sections are missing:<ul>{items}</ul>", "warn")


def render_page(title: str, subtitle: str, sections: Sequence[Section], top: str, footer: str) -> str:
    """The whole page: header, warnings, contents, sections, footer. No scripts, no external resources."""
    contents = "".join(
        f'<li><a href="#{s.id}">{esc(s.title)}</a>{" <span class=missing>(missing)</span>" if s.missing else ""}</li>'
        for s in sections)
    body = "\n".join(
        f'<section id="{s.id}"><h2>{esc(s.title)}</h2>\n'
        + (note(f"Missing: {esc(s.missing)}", "warn") if s.missing is not None else s.body) + "\n</section>"
        for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f'<header><div><h1>{esc(title)}</h1><div class="subtitle">{esc(subtitle)}</div></div></header>\n'
            f"<main>\n{top}\n<nav><h2>Contents</h2><ol>{contents}</ol></nav>\n{body}\n</main>\n"
            f"<footer>{footer}</footer>\n</body>\n</html>\n")


# --------------------------------------------------------------------------- the report


def _load_model(files: RunFiles, checkpoint: str, device: str | torch.device) -> tuple[Run | None, str | None]:
    """The run's model, or (None, why) for a run that has written no checkpoint yet.

    A checkpoint that exists but cannot be loaded, or a name that is not among those present, is an
    error (CheckpointError), as in every other command."""
    try:
        return load_run(files.root, checkpoint=checkpoint, device=device), None
    except CheckpointError:
        root = RunPaths(files.root).checkpoints
        written = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
        if written or files.info is None:
            raise
        return None, ("the run has written no checkpoint yet (the first epoch has not finished), so there is no "
                      "model to draw from; write the report again later")


def write_html_report(run_path: str | Path, out: str | Path | None = None, *, checkpoint: str = "best",
                      data_dir: str | Path | None = None, seed: int = 0, device: str | torch.device = "cpu",
                      log: Callable[[str], None] = print) -> Path:
    """Write one self-contained HTML page of a run (default RUN/report.html) and return its path.

    Sections that need what is not there (the dataset, a checkpoint, the final evaluation) are
    replaced by a note saying why, and `log` reports them. CheckpointError when `run_path` is not a
    run directory or the checkpoint cannot be loaded.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer between 0 and 2**63-1, got {seed!r}")
    files = read_run_files(run_path, checkpoint)
    target = output_file(Path(out) if out is not None else files.root / "report.html", "the HTML report")
    run, problem = _load_model(files, checkpoint, device)
    splits = data_problem = None
    if run is not None:
        try:
            splits = load_run_data(run, data_dir, download=False)  # a report never waits on a download
        except DataError as exc:
            name = run.config.data.dataset
            data_problem = (f"they need the run's dataset ({name}), which was not found here ({str(exc).rstrip('.')}); "
                            "write the report again with --data-dir DIR, the directory holding the dataset's files "
                            "(for a folder: dataset, the directory holding the folder)")
    kind = run.config.model.kind if run is not None else str(_config(files, None).get("model", {}).get("kind", "vae"))
    sections = [summary_section(files, run, checkpoint), config_section(files, run), curves_section(files, run),
                evaluation_section(files, kind),
                *model_sections(run, problem, splits, data_problem, seed), evaluate_section(files, checkpoint)]
    cfg = _config(files, run)
    dataset = (files.info or {}).get("dataset", {}).get("name") or cfg.get("data", {}).get("dataset", "?")
    title = f"vaelab report: {files.root.name}"
    subtitle = (f"{kind.upper()} on {dataset}; status {files.status}; checkpoint {checkpoint}"
                + (f" (epoch {run.meta.get('epoch')})" if run is not None else ""))
    footer = (f"Written by vaelab {esc(__version__)} from {esc(files.root)} (checkpoint {esc(checkpoint)}, seed "
              f"{seed}); the same run, checkpoint and seed give the same page. Units: nats per image, summed "
              "over pixels; bits/dim = nats / (pixels × ln 2).")
    page = render_page(title, subtitle, sections, status_note(files) + missing_note(sections), footer)
    atomic_write(target, page.encode("utf-8"), "the HTML report")
    for why, titles in _missing_by_reason(sections).items():
        log(f"note: missing {', '.join(t.lower() for t in titles)}: {why}")
    log(f"wrote {target} ({len(page) / 1e6:.1f} MB, {sum(s.missing is None for s in sections)} of {len(sections)} "
        "sections)")
    return target


__all__ = ["LatentMap", "RunFiles", "Section", "latent_map", "map_images", "markdown_to_html",
           "read_run_files", "run_latent_map", "write_html_report"]
