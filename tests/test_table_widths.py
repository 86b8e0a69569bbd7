"""The text tables are sized to their content: a long dataset or score name never runs into the next column,
and every row's columns start where the header's do."""

import types

from vaelab.demo import summary_table, summary_title
from vaelab.evaluation.elbo import format_table
from vaelab.evaluation.oodformat import interval_text
from vaelab.evaluation.unseen import format_dataset_tables

LONG = "folder:/data/my-images"  # 22 characters: wider than every fixed name column the tables had
SCORES = ["complexity-corrected", "-log p(x)", "Likelihood Regret"]


def _interval(v):
    return {"value": v, "low": v - 0.01, "high": v + 0.01}


def _nll(n):
    return {"n": n, "nll": 241.97, "stderr": 3.42, "nelbo": 246.8, "bits_per_dim": 0.4453, "ess": 12.5}


def _result(with_intervals=True):
    names = ["test", LONG, "mnist"]
    metrics = {"auroc": _interval(0.969), "auprc": _interval(0.951), "fpr_at_95_tpr": _interval(0.123), "n_in": 200}
    old = {"auroc": 0.969, "auprc": 0.951, "fpr_at_80_tpr": 0.05, "n_in": 200, "n_out": 200}
    result = {"k": 5, "datasets": {name: {"nll": _nll(200)} for name in names},
              "ood": {name: {score: old for score in SCORES} for name in names[1:]}, "score_notes": {}}
    if with_intervals:
        result |= {"ood_intervals": {name: {score: metrics for score in SCORES} for name in names[1:]},
                   "default_score": "complexity-corrected", "intervals_protocol": {"resamples": 100},
                   "typicality": {"rows": {5: {"test": {"alpha": 0.01}, "batches_in": 40, "fpr_in": 0.025,
                                               "sets": {name: {"batches": 40, "flagged": 0.5,
                                                               "auroc": _interval(0.8),
                                                               "fpr_at_95_tpr": _interval(0.4)}
                                                        for name in names[1:]}}}}}
    return result


def _rows(lines, head):
    """The header line of a table and its rows (up to the first blank or note line)."""
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(head))
    rows = []
    for line in lines[i + 2:]:
        if not line.strip() or line.startswith(("published", "DoSE", "note", "scores", "(")):
            break
        rows.append(line)
    assert lines[i + 1] == "-" * len(lines[i]) and rows
    return lines[i], rows


def _starts(header, row, column, cell):
    """`cell` starts in `row` where `column` starts in the header, after at least one space."""
    at = header.index(column)
    assert row[at:].startswith(cell) and row[at - 1] == " ", (column, header, row)


def test_the_nll_table_ends_every_number_under_its_header():
    lines = format_dataset_tables(_result(), "fashion-mnist").splitlines()
    header, rows = _rows(lines, "n ")
    assert [row.split()[0] for row in rows] == ["test", LONG, "mnist"]
    for column, cell in (("n", "200"), ("NLL", "241.97"), ("-ELBO", "246.80"), ("ESS", "12.5")):
        end = header.index(column) + len(column)
        for row in rows:
            assert row[:end].endswith(cell) and row[end - len(cell) - 1] == " ", (column, header, row)


def test_the_interval_table_starts_the_score_and_metrics_columns_at_the_same_offset():
    result = _result()
    lines = format_dataset_tables(result, "fashion-mnist").splitlines()
    header, rows = _rows(lines, "dataset")
    assert len(rows) == 2 * len(SCORES)
    for i, row in enumerate(rows):
        name, score = [LONG, "mnist"][i // len(SCORES)], SCORES[i % len(SCORES)]
        assert row[:header.index("score")].rstrip() == (name if i % len(SCORES) == 0 else "")
        _starts(header, row, "score", score + (" *" if score == "complexity-corrected" else ""))
        _starts(header, row, "AUROC", interval_text(_interval(0.969)))
        _starts(header, row, "AUPRC", interval_text(_interval(0.951)))
        _starts(header, row, "FPR@95", interval_text(_interval(0.123)))
    header, rows = _rows(lines, "M  dataset")  # the typicality test
    for row, name in zip(rows, ["test (in)", LONG, "mnist"]):
        _starts(header, row, "dataset", name)
        assert row[:header.index("batches") + len("batches")].endswith(" 40")


def test_the_table_of_an_evaluation_without_intervals_lines_up_too():
    lines = format_dataset_tables(_result(with_intervals=False), "fashion-mnist").splitlines()
    header, rows = _rows(lines, "score")
    for i, row in enumerate(rows):
        _starts(header, row, "score", SCORES[i % len(SCORES)])
        assert row[:header.index("AUROC") + len("AUROC")].endswith(" 0.969")


def test_the_elbo_table_fits_a_long_name():
    s = types.SimpleNamespace(n=200, nelbo=246.8, recon=220.0, kl=26.8, stderr=3.4, bits_per_dim=0.4541)
    header, rows = _rows(format_table([("test", s), (LONG, s)]).splitlines(), "n ")
    for row in rows:
        assert row[:header.index("-ELBO") + len("-ELBO")].endswith(" 246.80")


def test_the_demo_summary_says_what_it_compares_and_in_which_unit():
    def run(nelbo, kl):
        splits = {k: {"nelbo": nelbo, "recon": 123456.78, "kl": kl} for k in ("train", "val", "test")}
        return types.SimpleNamespace(evaluation={"splits": splits, "gap_test_minus_train": 1.5, "samples": {}})

    table = summary_table({"vae": run(250.1, 26.8), "ae": run(None, 0.0)})
    header, rows = _rows(table.splitlines(), "split")
    for row in rows[:3]:  # a recon too wide for the old 9 columns still ends under its header
        assert row[:header.index("recon") + len("recon")].endswith(" 123456.78")
        assert row.split()[4:6] == ["n/a", "123456.78"]
    title = summary_title("digits", [1, 28, 28], {"train": 1438, "val": 200, "test": 159})
    assert title.startswith("vaelab demo: the VAE") and "digits (1x28x28" in title and "nats per image" in title
