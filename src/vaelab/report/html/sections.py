"""The sections of the page that come from the run's files: the summary, the config, the training curves,
the final evaluation, `vaelab evaluate`'s tables and plots, and the banner of a run that has not finished.

The model appears here only through the `Model` protocol (`describe`, `prior_description`); whether a
run has an ELBO is read from its evaluation (an autoencoder's "nelbo" is None), never from its kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaelab.config import to_toml
from vaelab.report.html.page import Picture, Section, esc, figure, fmt, markdown_to_html, note, plot_png, table
from vaelab.report.html.runfiles import RunFiles, best_epoch, config_dict
from vaelab.report.markdown import markdown, whole_split_lines
from vaelab.report import plots
from vaelab.runs import Run


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value:.0f} s ({value / 60:.1f} min)"


def _model_line(model_cfg: dict[str, Any], run: Run | None) -> str:
    """The model in one line: its own description when a checkpoint is loaded, else the config's kind."""
    if run is not None:
        m = run.model
        return f"{m.describe()}; {m.likelihood.name} likelihood; prior: {m.prior_description()}"
    return (f"{model_cfg.get('kind', '?')}, {model_cfg.get('likelihood', '?')} likelihood (no checkpoint yet to "
            "describe it: see model.* in the configuration)")


def summary_section(files: RunFiles, run: Run | None, checkpoint: str) -> Section:
    """What the run is and how it went, in one table: run.json's facts and the model's own description."""
    info = files.info or {}
    cfg = config_dict(files, run)
    train = cfg.get("train", {})
    data = info.get("dataset") if isinstance(info.get("dataset"), dict) else {}
    last = files.history[-1] if files.history else {}
    sizes = data.get("sizes", {}) if isinstance(data.get("sizes"), dict) else {}
    rows = [
        ("run", esc(files.root.resolve())),
        ("status", esc(files.status) + (f" ({esc(info['error'])})" if info.get("error") else "")),
        ("dataset", esc(f"{data.get('name', cfg.get('data', {}).get('dataset', '?'))} from {data.get('source', '?')}")),
        ("images", esc(" x ".join(map(str, data.get("image_shape", run.image_shape if run else [])))
                       + "; " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))),
        ("model", esc(_model_line(cfg.get("model", {}), run))),
        ("parameters", fmt(info.get("parameters"))),
        ("epochs", esc(f"{last.get('epoch', 0)} of {train.get('epochs', '?')}"
                       + (" (stopped early)" if info.get("stopped_early") else ""))),
        ("best epoch", fmt(best_epoch(files))),
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
    """The full config: config.toml as the run wrote it, else the copy in the checkpoint."""
    if files.config_text is not None:
        return Section("config", "Configuration", f"<p>config.toml, as the run resolved it (train again with "
                       f"<code>vaelab train --config config.toml</code>):</p><pre>{esc(files.config_text)}</pre>")
    if run is not None:
        return Section("config", "Configuration", "<p>The run directory has no config.toml; this is the config "
                       f"stored in the checkpoint:</p><pre>{esc(to_toml(run.config))}</pre>")
    return Section("config", "Configuration", missing="the run directory has no config.toml and no checkpoint")


def curves_section(files: RunFiles, run: Run | None) -> Section:
    """The training curves and the generalization gap per epoch, from metrics.jsonl (the epochs so far)."""
    if not files.history:
        return Section("curves", "Training curves", missing="no epoch has finished yet: metrics.jsonl has no records")
    info = files.info or {}
    stopped = files.history[-1]["epoch"] if info.get("stopped_early") else None
    cfg = config_dict(files, run)
    title = f"{str(cfg.get('model', {}).get('kind', '')).upper()} on {cfg.get('data', {}).get('dataset', '?')}"
    try:
        png = plot_png(plots.plot_training_curves, files.history, best_epoch=best_epoch(files), stopped_epoch=stopped,
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


def evaluation_section(files: RunFiles) -> Section:
    """The final evaluation training wrote (evaluation.json): loss terms per split, the gap, NLL (with the
    whole-split estimates), sample FD."""
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
    splits = ev.get("splits") if isinstance(ev.get("splits"), dict) else {}
    # an autoencoder has no ELBO: its evaluation says so with "nelbo": null (the loss is the reconstruction)
    ae = bool(splits) and all(isinstance(s, dict) and s.get("nelbo") is None for s in splits.values())
    parts = [f"<p>Weights of the best epoch ({fmt(ev.get('epoch'))}), evaluated on every split; "
             "nats per image, summed over pixels.</p>"]
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
        parts.append(markdown_to_html("\n".join(whole_split_lines(nll, heading="####")), lambda alt, target: "",
                                      heading_offset=0))
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


def _evaluate_body(result: dict[str, Any], plots_dir: Path) -> str:
    """One `vaelab evaluate` result as HTML, from the Markdown report it writes, its plots read from `plots_dir`."""
    absent: list[str] = []

    def image(alt: str, target: str) -> str:
        path = plots_dir / target
        if not (path.is_file() and path.suffix.lower() == ".png"):
            absent.append(target)
            return ""
        return figure(Picture(path.read_bytes(), alt, alt))

    shown = result.get("plots") if isinstance(result.get("plots"), dict) else {}
    body = markdown_to_html(markdown({k: v for k, v in result.items() if k != "curves"}, shown), image)
    if absent:
        body = note(f"{len(absent)} plot(s) of this evaluation are not in {esc(plots_dir)} "
                    f"({esc(', '.join(absent))}): it was written with --out elsewhere, or the files were moved.",
                    "warn") + body
    return body


def _evaluations_note(files: RunFiles, checkpoint: str) -> str:
    """Which evaluation the section shows, and every other one the run folder holds (shown below when it is of
    the same checkpoint; for another checkpoint, how to see it)."""
    shown = files.shown_evaluation
    others = [e for e in files.evaluations if e is not shown]
    text = f"This section shows <code>{esc(shown.describe())}</code>." if shown is not None else ""
    if others:
        items = "".join(f"<li><code>{esc(e.describe())}</code>: "
                        + ("shown below" if e.checkpoint == checkpoint else
                           f"<code>vaelab report {esc(files.root)} --checkpoint {esc(e.checkpoint)}</code> shows it")
                        + "</li>" for e in others)
        text += f" The run folder holds {len(others)} other evaluation(s):<ul class=small>{items}</ul>"
    else:
        text += " It is the only <code>vaelab evaluate</code> result in the run folder."
    text += (" The final evaluation of training (evaluation.json) is the section above; an evaluation written with "
             "--out outside the run folder is not found here.")
    return note(text)


def evaluate_section(files: RunFiles, checkpoint: str) -> Section:
    """The tables and plots of `vaelab evaluate` for this checkpoint, from the Markdown report it writes, with a
    note saying which result it shows and listing the others; the others of this checkpoint (written with --out
    into the run folder) follow, each folded."""
    title = "Evaluation (vaelab evaluate)"
    result = files.evaluate
    if result is None:
        others = (f" The run folder holds evaluation(s) of other checkpoints, "
                  f"{'; '.join(e.describe() for e in files.evaluations)}: pass --checkpoint to see those."
                  if files.evaluations else "")
        return Section("evaluate", title, note(
            f"<code>vaelab evaluate</code> has not been run for the {esc(checkpoint)} checkpoint (no "
            f"evaluation_{esc(checkpoint)}.json). <code>vaelab evaluate {esc(files.root)} --checkpoint "
            f"{esc(checkpoint)}</code> adds the importance-sampled NLL, inference gaps, active units and, with "
            f"--on, unseen datasets and out-of-distribution detection to this page.{esc(others)}"))
    body = _evaluations_note(files, checkpoint) + _evaluate_body(result, files.evaluate_dir)
    for e in files.evaluations:
        if e is not files.shown_evaluation and e.checkpoint == checkpoint:
            body += (f"<details><summary>{esc(e.describe())}</summary>"
                     f"{_evaluate_body(e.result, e.plots_dir)}</details>")
    return Section("evaluate", title, body)


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
