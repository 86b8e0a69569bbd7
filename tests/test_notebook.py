"""notebooks/quickstart.ipynb is kept without outputs and runs from top to bottom (nbclient, a real Jupyter
kernel). Running it trains a small model and evaluates it: a few minutes, so it runs where CI=true (CI runs
it) or with --runslow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), \
        "strip the outputs before committing (Jupyter: Edit > Clear All Outputs)"


@pytest.mark.ci
def test_the_quickstart_runs_top_to_bottom(request, tmp_path, fashion_mnist_dir):
    if not (os.environ.get("CI", "").lower() in ("1", "true") or request.config.getoption("--runslow")):
        pytest.skip("trains and evaluates a model (a few minutes): runs where CI=true, or with --runslow")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    for expected in ("test -ELBO", "importance-sampled NLL", "out-of-distribution detection", "digits",
                     "fashion-mnist-vae", "quickstart done"):
        assert expected in text, f"{expected!r} not printed:\n{text[-3000:]}"
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2  # the two figures
    assert (tmp_path / "runs" / "quickstart" / "report.html").stat().st_size > 100_000
