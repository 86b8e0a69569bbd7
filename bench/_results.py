"""What every benchmark writes beside its numbers: the command, the date and the machine.

Each script in bench/ prints a table and writes one JSON file. A number quoted in BENCHMARKS.md must be
traceable to how it was made, so every file carries the same three entries, built here once:

    result = {**provenance("bench/ood_llr.py", argv), "rows": rows}
    write_result(args.out, result)

The scripts run as `python bench/NAME.py`, which puts this folder on sys.path; `import _results` needs
nothing else.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import vaelab
from vaelab.fileio import atomic_write


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run: `python SCRIPT ARGS` (ARGS: argv, else this process's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *args])


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, threads and the versions that change timings."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "torch": torch.__version__, "vaelab": vaelab.__version__}


def provenance(script: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The entries every result file starts with: command, date (local time, to the minute) and machine."""
    return {"command": command(script, argv), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}


def write_result(path: str | os.PathLike[str], result: dict[str, Any], indent: int = 1) -> Path:
    """Write RESULT as JSON to PATH (its folder made if needed) and return the path.

    vaelab's atomic write: a benchmark stopped while writing leaves the previous complete file, never
    half of a new one (several scripts rewrite their file after each part, to keep what they measured).
    """
    text = json.dumps(result, indent=indent, default=str) + "\n"
    return atomic_write(Path(path), text.encode(), what="the benchmark's result")
