"""What the explorer's verdict says of uploads: test images (false alarms) and images from elsewhere.

    python bench/explorer_verdicts.py RUN [--images 300] [--on mnist@../shared/data/mnist-10k digits noise flipped]

`vaelab serve` calls an uploaded image "unusual" when any of its numbers (DoSE score, complexity-corrected
OOD score, NLL, reconstruction error) stands at or above the 99.5th percentile of validation images
(vaelab.serve.reference). This benchmark builds the explorer (`ExplorerApp`, no HTTP), uploads --images
test images and --images of each --on set as PNG files, exactly as the page sends them, and counts the
verdicts: the share of test images called unusual (the false-alarm rate users see) and the share of each
other set (what it catches), with the check that named each verdict. The images are drawn with the same
seeds as `vaelab evaluate --on` (unbinarized: the explorer binarizes an upload itself). Writes JSON
(bench/results/explorer_verdicts.json by default).
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from vaelab import load_run
from vaelab.evaluation.unseen import load_eval_set
from vaelab.runs.load import load_run_data
from vaelab.serve.app import ExplorerApp
from vaelab.serve.reference import UNUSUAL
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def png(image: torch.Tensor) -> bytes:
    """One uint8 (C, H, W) image as the PNG bytes a browser would upload."""
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def verdicts(app: ExplorerApp, images: torch.Tensor) -> dict:
    """Upload each image; the share called unusual and which check named the verdict."""
    named: Counter = Counter()
    unusual = 0
    for image in images:
        r = app.score_upload(png(image))
        if r["verdict"] == UNUSUAL:
            unusual += 1
            named[max((c for c in r["checks"] if c["flagged"]), key=lambda c: c["percentile"])["measure"]] += 1
    return {"uploads": len(images), "unusual": unusual, "share": unusual / max(len(images), 1),
            "named_by": dict(named)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=300, help="uploads per set")
    ap.add_argument("--on", nargs="*", default=[f"mnist@{ROOT.parent / 'shared' / 'data' / 'mnist-10k'}",
                                                "digits", "noise", "flipped"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "explorer_verdicts.json"))
    args = ap.parse_args()

    run = load_run(args.run)
    splits = load_run_data(run)
    t0 = time.perf_counter()
    app = ExplorerApp(run, splits, log=lambda m: print(m, flush=True))
    print(f"explorer ready in {time.perf_counter() - t0:.1f} s", flush=True)
    raw = run.config.replace(data={"binarize": "none"})  # uploads are the images themselves
    ec = run.config.eval
    rows = {}
    for i, spec in enumerate(["test", *args.on]):
        s = load_eval_set(spec, raw, splits, args.images, ec.seed + 10 + i)
        t0 = time.perf_counter()
        rows[s.name] = verdicts(app, s.images) | {"seconds": round(time.perf_counter() - t0, 1)}
        r = rows[s.name]
        print(f"{s.name:<14}{r['uploads']:>8} uploads  unusual {r['unusual']:>4} ({100 * r['share']:5.1f}%)  "
              f"named by: {', '.join(f'{k} {v}' for k, v in sorted(r['named_by'].items())) or '-'}", flush=True)
    result = {"run": str(args.run), **provenance("bench/explorer_verdicts.py"), "rows": rows,
              "dose_transforms": app.dose.info.get("orientation") if app.dose is not None else None}
    out = write_result(args.out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
