"""SIGKILL a real training process at random moments, resume it, compare with an uninterrupted run.

One reference run trains to the end undisturbed. Each trial starts the same command in a new
directory, kills it with SIGKILL after a random delay (uniform over the reference's wall time), and
resumes it with `vaelab train --resume`; a resumed process is itself killed again with probability
--rekill, so some trials see several kills. When a trial finishes, its `best` and `last` weights must
be bit-identical to the reference's and metrics.jsonl must hold each epoch once. The table says
where each kill landed (inside an epoch, inside a checkpoint write, in the final evaluation) as far
as the files on disk tell.

    python bench/kill_resume.py --trials 20       # about 20 minutes on a 2-core machine

Run it from a checkout nobody edits meanwhile: a process resumed while the source changes under it
imports the new code.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from vaelab import load_run
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

ARGS = ["--set", "data.dataset=digits", "--set", "data.image_size=16", "--set", "train.epochs=6",
        "--set", "train.grid_every=0", "--set", "train.grid_size=4", "--set", "eval.nll_images=0",
        "--set", "train.checkpoint_steps=3"]


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaelab", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})


def _phase(out: Path, epochs: int) -> str:
    """Where the kill landed, read off the run directory."""
    ckpts = out / "checkpoints"
    if not (out / "config.toml").exists():
        return "start-up (before the run directory was written)"
    if ckpts.exists() and any(p.name.startswith(".") and ".tmp-" in p.name for p in ckpts.iterdir()):
        return "checkpoint write"
    if (ckpts / "last.old").exists():
        return "checkpoint write"
    metrics = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    if _finished(out):
        return "exit (after the run was complete)"
    if len(metrics) >= epochs:
        return "final evaluation"
    return "training (steps, validation, grids)"


def _finished(out: Path) -> bool:
    try:
        return json.loads((out / "run.json").read_text())["status"] == "finished"
    except (OSError, ValueError, KeyError):
        return False


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rekill", type=float, default=0.5, help="chance that a resumed process is killed again")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checkpoint-steps", type=int, default=3,
                        help="train.checkpoint_steps of the runs: 1 writes `last` after every step, so that many "
                             "kills land inside checkpoint writes")
    parser.add_argument("--out", default="bench/results/kill_resume.json")
    args = parser.parse_args()
    ARGS[-1] = f"train.checkpoint_steps={args.checkpoint_steps}"
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vaelab-kill-"))
    ref = work / "reference"
    t0 = time.perf_counter()
    ref_proc = _run([*ARGS, "--out", str(ref)])
    while ref_proc.poll() is None and not (ref / "config.toml").exists():
        time.sleep(0.05)
    startup = time.perf_counter() - t0  # imports and data loading: kills there only test a restart
    assert ref_proc.communicate()[1] is not None and ref_proc.returncode == 0
    wall = time.perf_counter() - t0
    ref_w = {n: load_run(ref, checkpoint=n).model.state_dict() for n in ("best", "last")}
    phases, rows, kills = Counter(), [], 0
    for trial in range(args.trials):
        out = work / f"trial{trial}"
        cmd = [*ARGS, "--out", str(out)]
        trial_kills = 0
        while True:
            proc = _run(cmd)
            if trial_kills == 0 or rng.random() < args.rekill:
                time.sleep(rng.uniform(0.8 * startup, wall))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    trial_kills += 1
                    phases[_phase(out, 6)] += 1
                    if _finished(out):  # killed while exiting, after the run was complete
                        break
                    cmd = ["--resume", str(out)] if (out / "config.toml").exists() else cmd
                    continue
            _, err = proc.communicate()
            if proc.returncode == 0:
                break
            raise SystemExit(f"trial {trial}: vaelab exited with {proc.returncode}:\n{err}")
        kills += trial_kills
        identical = all(_same(load_run(out, checkpoint=n).model.state_dict(), ref_w[n]) for n in ("best", "last"))
        lines = (out / "metrics.jsonl").read_text().splitlines()
        leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name not in ("best", "last")]
        rows.append({"trial": trial, "kills": trial_kills, "identical": identical, "epochs_in_metrics": len(lines),
                     "leftover_checkpoint_dirs": leftovers})
        print(f"trial {trial:2d}: {trial_kills} kill(s)  identical={identical}  metrics lines={len(lines)}"
              f"  leftovers={leftovers or '-'}", flush=True)
    result = {
        **provenance("bench/kill_resume.py"),
        "checkpoint_steps": args.checkpoint_steps, "reference_wall_s": round(wall, 1),
        "reference_startup_s": round(startup, 1), "trials": args.trials, "kills": kills, "phases": dict(phases),
        "all_identical": all(r["identical"] for r in rows),
        "all_metrics_complete": all(r["epochs_in_metrics"] == 6 for r in rows), "rows": rows,
    }
    print(f"\n{kills} SIGKILLs in {args.trials} trials; where they landed:")
    for phase, n in phases.most_common():
        print(f"  {n:3d}  {phase}")
    print(f"final weights bit-identical to the uninterrupted run in {sum(r['identical'] for r in rows)}"
          f"/{len(rows)} trials")
    write_result(args.out, result, indent=2)


if __name__ == "__main__":
    main()
