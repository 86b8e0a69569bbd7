"""The README's examples run as they are written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(marker)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_the_your_own_model_example_runs(tmp_path, monkeypatch, one_thread):
    code = _block_after("<!-- the block below is executed by tests/test_readme.py -->")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(code, str(README) + ":your-own-model", "exec"), namespace)
    run = namespace["run"]
    assert type(run.model).__name__ == "MyVAE" and run.meta["epoch"] >= 3
    assert (tmp_path / "runs" / "my-vae" / "report.html").is_file()
    history = namespace["result"].history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # trained 3 epochs, resumed for a 4th
