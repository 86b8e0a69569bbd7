"""The files of an evaluation: evaluation.json, report.md, the plots and the per-image scores.

`vaelab evaluate` computes with `vaelab.evaluation.suite.evaluate_run` and writes with `write_evaluation`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.fileio import atomic_write
from vaelab.report import plots
from vaelab.report.markdown import write_markdown
from vaelab.runs import write_json


def per_image_csv(per_image: dict[str, dict[str, Any]]) -> bytes:
    """One row per image: dataset, index, and each per-image score."""
    buf = io.StringIO()
    names = list(next(iter(per_image.values())).keys())
    buf.write("dataset,index," + ",".join(n.replace(",", ";") for n in names) + "\n")
    for dataset, scores in per_image.items():
        for i in range(len(scores[names[0]])):
            buf.write(f"{dataset},{i}," + ",".join(f"{float(scores[n][i]):.6g}" for n in names) + "\n")
    return buf.getvalue().encode("utf-8")


def write_plots(result: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Histograms of the NLL per dataset, ROC curves per OOD dataset, KL per latent dimension."""
    written: dict[str, str] = {}
    data = result.get("datasets_eval")
    if data:
        per = data["per_image"]
        written["nll_histogram"] = plots.plot_histograms(
            {name: v["bits/dim"] for name, v in per.items()}, out_dir / "nll_histogram.png",
            xlabel="NLL (bits/dim; lower = more likely)", title=f"log-likelihood per dataset (k={data['k']})").name
        written["score_histogram"] = plots.plot_histograms(
            {name: v["complexity-corrected"] for name, v in per.items()}, out_dir / "complexity_score_histogram.png",
            xlabel="-log2 p(x) - L(x) (bits; higher = more out-of-distribution)",
            title="complexity-corrected score (Serra et al. 2020)").name
        default = data.get("default_score")
        if default and default != "complexity-corrected" and all(default in v for v in per.values()):
            written["default_score_histogram"] = plots.plot_histograms(
                {name: v[default] for name, v in per.items()},
                out_dir / "default_score_histogram.png", xlabel=f"{default} (higher = more out-of-distribution)",
                title=f"{default}, the default score").name
        for name, scores in data["ood"].items():
            curves = {s: (np.asarray(m["roc"]["fpr"]), np.asarray(m["roc"]["tpr"]), m["auroc"])
                      for s, m in scores.items() if "roc" in m}
            extra = data.get("ood_intervals", {}).get(name, {})  # DoSE, Likelihood Regret
            curves |= {s: (np.asarray(m["roc"]["fpr"]), np.asarray(m["roc"]["tpr"]), m["auroc"]["value"])
                       for s, m in extra.items() if "roc" in m and s not in curves}
            if curves:
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
                written[f"roc_{name}"] = plots.plot_roc_curves(curves, out_dir / f"roc_{safe}.png",
                                                               title=f"test split (in) vs {name} (out)").name
    c = result.get("inside", {}).get("collapse")
    if c:
        written["kl_per_dimension"] = plots.plot_kl_per_dimension(
            np.asarray(c["kl_per_dim"]), out_dir / "kl_per_dimension.png", active=np.asarray(c["variance"]) > c["threshold"],
            threshold_note=f"active: Cov_x E[z|x] > {c['threshold']}").name
    return written


def write_evaluation(result: dict[str, Any], out_dir: Path, json_path: Path | None,
                     per_image: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the plots, the per-image CSV, evaluation.json and report.md into out_dir (and the JSON to
    json_path too); `result` gains the names of the plots under "plots". Returns the report's path."""
    plot_input = dict(result)
    if per_image is not None:
        plot_input["datasets_eval"] = {**result["datasets_eval"], "per_image": per_image}
    images = write_plots(plot_input, out_dir)
    result["plots"] = images
    if per_image is not None:
        atomic_write(out_dir / "per_image_scores.csv", per_image_csv(per_image), "the per-image scores")
    write_json(out_dir / "evaluation.json", result)
    report = write_markdown(result, out_dir, images)
    if json_path is not None:
        write_json(json_path, result)
    return report
