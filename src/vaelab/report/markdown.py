"""A Markdown report of an evaluation: every table, with the plots beside it.

`write_markdown(result, out_dir)` writes `report.md` next to the PNGs of the same evaluation, so
the folder can be opened on GitHub, in an editor or converted with pandoc as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaelab.evaluation.oodformat import FPR_KEY, format_timing, interval_rows, interval_text
from vaelab.fileio import atomic_write


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _anchor(a: dict[str, Any]) -> str:
    if a.get("auroc_interval"):
        return interval_text(a["auroc_interval"])
    return _f(a["auroc"], int(a.get("decimals", 3)))


def _ood_table(data: dict[str, Any]) -> list[str]:
    """Every score with its bootstrap intervals (an evaluation written before them: AUROC, AUPRC, FPR@80)."""
    if "ood_intervals" not in data:
        rows = [[name, score, _f(m.get("auroc"), 3), _f(m.get("auprc"), 3), _f(m.get("fpr_at_80_tpr"), 3),
                 m.get("n_in", "-")] for name, scores in data["ood"].items() for score, m in scores.items()]
        return _table(["dataset", "score", "AUROC", "AUPRC", "FPR@80%TPR", "n each"], rows)
    proto = data.get("intervals_protocol", {})
    default = data.get("default_score")
    rows = []
    for name, score, m in interval_rows(data):
        label = f"**{score}** (default)" if score == default else score
        if "error" in m:
            rows.append([name, label, m["error"], "", "", ""])
            continue
        rows.append([name, label, interval_text(m["auroc"]), interval_text(m["auprc"]),
                     interval_text(m[FPR_KEY]), m["n_in"]])
    return [f"Each metric with its 95% bootstrap interval ({proto.get('resamples', '?')} resamples); the default "
            f"score is **{default}**.", ""] + _table(["dataset", "score", "AUROC", "AUPRC", "FPR@95%TPR", "n each"],
                                                    rows)


def _ood_extras(data: dict[str, Any]) -> list[str]:
    """DoSE's fit and flags, the typicality test, the timing and the notes, as the terminal shows them."""
    lines: list[str] = []
    for key, title in (("typicality", "Typicality test (Nalisnick et al. 2019) for batches of M images: a batch is "
                                      "flagged when |mean NLL - H| exceeds its {level}% bootstrap quantile, both "
                                      "estimated from validation images only"),
                       ("dose_batches", "DoSE batch test for the same batches: its M images' DoSE scores among "
                                        "held-out scores of validation images, pooled two ways (mean -log tail "
                                        "p, Fisher; mean percentile, a rank test); a batch is flagged when -log "
                                        "of the smaller p-value exceeds its {level}% bootstrap quantile")):
        record = data.get(key) or {}
        if not record.get("rows"):
            continue
        alpha = next(iter(record["rows"].values()))["test"]["alpha"]
        lines += [title.format(level=f"{100 * (1 - alpha):.0f}") + "; *flagged* is the fraction of disjoint "
                  f"batches beyond it (on the test split: the false-positive rate, nominal {alpha}).", ""]
        rows = []
        for m, row in record["rows"].items():
            rows.append([m, "test (in)", row["batches_in"], _f(row["fpr_in"], 3), "-", "-"])
            rows += [[m, name, r["batches"], _f(r["flagged"], 3), interval_text(r["auroc"]),
                      interval_text(r[FPR_KEY])] for name, r in row["sets"].items()]
        lines += _table(["M", "dataset", "batches", "flagged", "AUROC over batches", "FPR@95%TPR"], rows)
    timing = format_timing(data)
    if timing:
        lines += [f"- {line}" for line in timing] + [""]
    d = data.get("dose")
    if d:
        flagged = ", ".join(f"{name} {100 * v:.1f}%" for name, v in d.get("flagged_at_99", {}).items())
        lines += [f"DoSE density: {d['density']}; chosen by held-out likelihood among {d['candidates']} candidates "
                  f"on {d['validation_images']} validation images only. Flagged at the 99th percentile of held-out "
                  f"validation scores: {flagged}.", ""]
    lines += [f"Note: {n}" for n in data.get("ood_notes", [])]
    return lines + ([""] if data.get("ood_notes") else [])


def whole_split_lines(nll: dict[str, Any], heading: str = "###") -> list[str]:
    """Each NLL subset against its whole split (`vaelab.evaluation.suite.whole_split_estimates`): the subset's and
    the whole split's -ELBO, the offset between them, the whole split's NLL estimated from the subset's, and the
    gap of those estimates. An evaluation written before they were computed gets a one-line note instead."""
    splits = nll.get("splits") if isinstance(nll.get("splits"), dict) else {}
    rows = {name: r for name, r in splits.items() if isinstance(r, dict) and "nll_whole_estimate" in r}
    if not rows:
        return ["Whole-split NLL estimates: not in this evaluation (written before vaelab computed them; "
                "`vaelab evaluate` adds them).", ""]
    if all(r["n"] >= r["whole_n"] for r in rows.values()):
        return ["The NLL above was measured on the whole splits: no subset to correct.", ""]
    lines = [f"{heading} Whole splits: the NLL of each subset carried over to its split", "",
             "The -ELBO is known for every image of a split, the NLL only for the subset: whole-split NLL = subset "
             "NLL - offset, where the offset is the subset's -ELBO minus the whole split's (± se: of NLL - (-ELBO) "
             "on the subset and of the whole split's -ELBO). Nats per image; bits/dim = nats / (pixels x ln 2).", ""]
    table = []
    for name, r in rows.items():
        per_nat = r["bits_per_dim"] / r["nll"] if r.get("bits_per_dim") is not None and r.get("nll") else None
        table.append([name, r["n"], _f(r["nelbo"]), r["whole_n"], _f(r["nelbo_whole"]), f"{r['subset_offset']:+.2f}",
                      _f(r["nll_whole_estimate"]), _f(r["nll_whole_estimate_stderr"]),
                      _f(r["nll_whole_estimate"] * per_nat, 4) if per_nat is not None else "-"])
    lines += _table(["split", "subset n", "subset -ELBO", "split n", "whole-split -ELBO", "offset",
                     "whole-split NLL", "± se", "bits/dim"], table)
    if "gap_whole_estimate" in nll:
        lines += [f"Generalization gap of the whole-split NLL estimates (test - train): "
                  f"**{_f(nll['gap_whole_estimate'])} ± {_f(nll.get('gap_whole_estimate_stderr'))}** nats.", ""]
    return lines


def _nll_lines(nll: dict[str, Any]) -> list[str]:
    """The importance-sampled NLL per split (a subset of each, or the whole), its gap, and the whole-split
    estimates."""
    lines = ["## Importance-sampled negative log-likelihood", "",
             f"k = {nll['k']} samples per image on {nll['images']} images per split; "
             f"{next(iter(nll['splits'].values()))['protocol'].get('pixel_likelihood', '')}.", ""]
    lines += _table(["split", "n", "NLL", "± se", "-ELBO (same samples)", "bits/dim", "mean ESS", "images/s"],
                    [[k, s["n"], _f(s["nll"]), _f(s["stderr"]), _f(s["nelbo"]), _f(s["bits_per_dim"], 4),
                      _f(s["ess"], 1), _f(s["images_per_s"])] for k, s in nll["splits"].items()])
    if nll.get("gap_test_minus_train") is not None:
        se = f" ± {_f(nll['gap_stderr'])}" if nll.get("gap_stderr") is not None else ""
        lines += [f"Generalization gap of the NLL (test - train): **{_f(nll['gap_test_minus_train'])}{se}** nats.", ""]
    return lines + whole_split_lines(nll)


def markdown(result: dict[str, Any], images: dict[str, str]) -> str:
    """The report as Markdown text; `images` maps plot names to file names in the same folder."""
    lines = [f"# vaelab evaluation: {result.get('run', '')}", ""]
    lines += [f"- model: {result.get('model')}, checkpoint `{result.get('checkpoint')}` (epoch {result.get('epoch')}), "
              f"trained on {result.get('dataset')}", "- units: nats per image, summed over pixels; bits/dim = nats / "
              "(pixels x ln 2)", ""]
    if result.get("curves"):
        lines += ["## Training curves", "", f"![training curves]({result['curves']})", ""]
    splits = result.get("splits", {})
    if splits:
        lines += ["## Negative ELBO per split", "", f"Protocol: {result.get('protocol', {}).get('estimator', '')}; "
                  f"evaluation images: {result.get('protocol', {}).get('eval_binarization', '')}.", ""]
        lines += _table(["split", "n", "-ELBO", "recon", "KL", "± se", "bits/dim"],
                        [[k, s["n"], _f(s["nelbo"]), _f(s["recon"]), _f(s["kl"]), _f(s["stderr"]),
                          _f(s["bits_per_dim"], 4)] for k, s in splits.items()])
        lines += [f"Generalization gap (test - train -ELBO): **{_f(result.get('gap_test_minus_train'))}** nats.", ""]
    if result.get("nll"):
        lines += _nll_lines(result["nll"])
    data = result.get("datasets_eval")
    if data:
        lines += ["## Unseen datasets", "", f"k = {data['k']}; at most {data['images_per_set']} images per dataset.", ""]
        lines += _table(["dataset", "source", "n", "NLL", "± se", "bits/dim", "-ELBO"],
                        [[name, r["source"], r["nll"]["n"], _f(r["nll"]["nll"]), _f(r["nll"]["stderr"]),
                          _f(r["nll"]["bits_per_dim"], 4), _f(r["nll"]["nelbo"])] for name, r in data["datasets"].items()])
        if "nll_histogram" in images:
            lines += [f"![NLL histograms]({images['nll_histogram']})", ""]
        if data["ood"]:
            lines += ["## Out-of-distribution detection", "",
                      "Test split (in) against each dataset (out, the positive class), balanced sizes. "
                      "Every score is higher for inputs it judges more out-of-distribution: an AUROC above 0.5 "
                      "means the score ranks the other dataset as more out-of-distribution than the test "
                      "images; below 0.5, the other way round (for -log p(x): the unseen data are *more* "
                      "likely).", ""]
            lines += _ood_table(data)
            lines += ["Scores: " + "; ".join(f"**{k}**: {v}" for k, v in data["score_notes"].items()) + ".", ""]
            lines += _ood_extras(data)
            if result.get("anchors"):
                lines += ["### Fashion-MNIST (in) vs MNIST (out), beside published figures", ""]
                lines += _table(["method", "AUROC"], [[a["method"], _anchor(a)] for a in result["anchors"]])
            for key, name in images.items():
                if key.startswith("roc_"):
                    lines += [f"![ROC {key[4:]}]({name})", ""]
            if "score_histogram" in images:
                lines += [f"![complexity-corrected score]({images['score_histogram']})", ""]
            if "default_score_histogram" in images:
                lines += [f"![{data.get('default_score')} score]({images['default_score_histogram']})", ""]
    inside = result.get("inside")
    if inside:
        lines += ["## Inside the model", ""]
        g = inside.get("gaps")
        if g:
            lines += [f"Inference gaps (Cremer et al. 2018) on {g['n']} test images; q(z|x) refined per image by "
                      f"{g.get('steps')} Adam steps (lr {g.get('lr')}).", ""]
            lines += _table(["ELBO amortized", "ELBO refined", "log p(x)", "amortization gap", "approximation gap"],
                            [[_f(g["elbo_amortized"]), _f(g["elbo_refined"]), _f(g["log_px"]),
                              _f(g["amortization_gap"]), _f(g["approximation_gap"])]])
        c = inside.get("collapse")
        if c:
            lines += [f"Posterior collapse: **{c['active_units']} of {c['latent_dim']}** latent units active "
                      f"(Cov_x E[z_d|x] > {c['threshold']}, Burda et al. 2015); total KL {_f(c['kl_total'])} nats.", ""]
            if "kl_per_dimension" in images:
                lines += [f"![KL per latent dimension]({images['kl_per_dimension']})", ""]
    fd = result.get("samples")
    if fd:
        lines += ["## Samples", "", f"Frechet distance of samples to test images: {_f(fd['fd_samples_test'])} "
                  f"(real training images: {_f(fd['fd_train_test'])}). {fd['protocol']}.", ""]
    return "\n".join(lines)


def write_markdown(result: dict[str, Any], out_dir: Path, images: dict[str, str]) -> Path:
    path = Path(out_dir) / "report.md"
    atomic_write(path, markdown(result, images).encode("utf-8"), "the evaluation report")
    return path
