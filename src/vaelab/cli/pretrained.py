"""`vaelab pretrained`: the trained models shipped with vaelab, with their measured numbers; `vaelab pretrained
add RUN NAME` ships a finished run as one of them (for maintainers, in a clone).

The models themselves (where they live, how NAME resolves) are `vaelab.runs.pretrained`'s business; this
module lists them and adds one, which needs the evaluation layer for the reproduction check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from vaelab.cli.common import _formatter, _Parser
from vaelab.config import apply_mapping, to_dict
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluation.suite import nll_on_splits
from vaelab.log import say
from vaelab.runs import load_run, load_run_data
from vaelab.runs import pretrained as shipped

CHECK_K, CHECK_IMAGES = 100, 200  # the reproduction check: test NLL at k=100 on 200 test images


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pretrained` command (list; add) to the parser."""
    p = sub.add_parser("pretrained", help="the trained models shipped with vaelab, with their numbers",
                       formatter_class=_formatter,
                       description="List the trained models that come with vaelab, with the numbers measured at "
                                   "the end of their training (evaluation.json). Use one by name anywhere a run "
                                   "directory goes: vaelab evaluate pretrained:NAME, vaelab sample "
                                   "pretrained:NAME, or load_run('pretrained:NAME') in Python.")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    add = actions.add_parser("add", formatter_class=_formatter, help="ship a finished run as NAME (maintainers)",
                             description="Copy a finished run (config, run.json, metrics, evaluation.json and its "
                                         "best checkpoint, no optimizer state) into pretrained/NAME/, measure its "
                                         f"test NLL at k={CHECK_K} on {CHECK_IMAGES} test images (the check "
                                         "tests/test_pretrained.py repeats) and record its files' SHA-256 in "
                                         "pretrained/registry.json. Needs the run's dataset.")
    add.add_argument("run", help="run directory written by `vaelab train`")
    add.add_argument("name", help="the model's name, e.g. fashion-mnist-vae")
    add.add_argument("--into", metavar="DIR",
                     help="the pretrained/ folder to add to (default: the one of the clone vaelab runs from)")
    add.add_argument("--description", metavar="TEXT", help="one line saying what the model is (default: from "
                                                          "its config)")
    add.add_argument("--url", metavar="URL",
                     help="for a model too large for the wheel: where its files will be served (URL/NAME-relative "
                          "paths); upload pretrained/NAME/ there and keep it out of the repository")
    add.add_argument("--data-dir", metavar="DIR", help="where the run's dataset lives on this machine")
    add.set_defaults(func=cmd_add)


# --------------------------------------------------------------------------- listing


def _number(value: Any, stderr: Any = None, digits: int = 2) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {stderr:.{digits}f}" if isinstance(stderr, (int, float)) else text


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_listing(rows: list[dict[str, Any]]) -> list[str]:
    """The table `vaelab pretrained` prints, its columns sized to their content."""
    if not rows:
        return ["no trained models are shipped with this vaelab"]
    table = [("name", "model", "dataset", "epochs", "test -ELBO (nats)", "test NLL (nats)", "bits/dim", "size",
              "where")]
    for r in rows:
        s, nll = r["summary"], r["summary"].get("test_nll") or {}
        protocol = f" (k={nll['k']}, {nll['images']} images)" if nll.get("k") else ""
        table.append((r["name"], r["description"], str(s.get("dataset") or "-"), str(s.get("epochs") or "-"),
                      _number(s.get("test_nelbo"), s.get("test_nelbo_stderr")),
                      _number(nll.get("nll"), nll.get("stderr")) + protocol,
                      _number(nll.get("bits_per_dim"), digits=4), _megabytes(r["bytes"]), r["where"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines += ["", "use one by name: vaelab evaluate pretrained:NAME, vaelab sample pretrained:NAME, "
                  "load_run('pretrained:NAME') in Python"]
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    for line in format_listing(shipped.listing()):
        print(line)
    return 0


# --------------------------------------------------------------------------- adding one


def reproduction_check(run, data_dir: str | None = None, log: Callable[[str], None] = say) -> dict[str, Any]:
    """The test NLL of a loaded run at k=100 on 200 test images, as `vaelab evaluate RUN --k 100 --nll-images
    200` computes it (the same subsets, seeds and binarization): {split, k, images, nll, stderr, bits_per_dim}."""
    cfg = apply_mapping(run.config, {"eval": {"nll_k": CHECK_K, "nll_images": CHECK_IMAGES}},
                        origin="the reproduction check")
    splits = load_run_data(run, data_dir)
    record = nll_on_splits(run.model, cfg, splits, run.device, log)
    if record is None or "test" not in record["splits"]:
        raise ConfigError(f"{run.path} has no test NLL to check (an autoencoder, or no likelihood); ship a VAE")
    test = record["splits"]["test"]
    return {"split": "test", "k": record["k"], "images": record["images"], "nll": test["nll"],
            "stderr": test["stderr"], "bits_per_dim": test["bits_per_dim"],
            "command": f"vaelab evaluate RUN --k {CHECK_K} --nll-images {CHECK_IMAGES}"}


def _default_into() -> Path:
    root = shipped.source_root() or (Path.cwd() / "pretrained" if (Path.cwd() / "pyproject.toml").is_file() else None)
    if root is None:
        raise ConfigError("vaelab is not running from a clone: pass --into DIR, the pretrained/ folder to add to")
    return root


def add_model(run_dir: str | Path, name: str, into: str | Path | None = None, *, description: str | None = None,
              url: str | None = None, data_dir: str | None = None, log: Callable[[str], None] = say) -> Path:
    """Ship the finished run `run_dir` as pretrained model `name`: copy it into `into/name/` (the clone's
    pretrained/ folder by default), measure the reproduction check and record everything in
    `into/registry.json`. Returns the model's folder."""
    shipped.check_model_name(name)
    if url is not None and not url.startswith("https://"):
        raise ConfigError(f"--url must be an https:// URL, got {url!r}")
    root = Path(into) if into is not None else _default_into()
    run = load_run(run_dir)  # checks the checkpoint (sizes, SHA-256) before anything is copied
    log(f"measuring the reproduction check: test NLL at k={CHECK_K} on {CHECK_IMAGES} images ...")
    check = reproduction_check(run, data_dir, log)
    evaluation = _read_json(Path(run_dir) / "evaluation.json")
    config = to_dict(run.config)
    root.mkdir(parents=True, exist_ok=True)
    registry = shipped.read_registry(root)
    files = shipped.copy_run(Path(run_dir), root / name)
    m = config["model"]
    entry = {"description": description or f"{m['arch']} {m['kind'].upper()}, latent {m['latent_dim']}",
             "files": files, "summary": shipped.summarize(evaluation, config), "check": check,
             "checkpoint": shipped.CHECKPOINT}
    if url is not None:
        entry["url"] = url
    registry["models"][name] = entry
    shipped.write_registry(root, registry)
    size = sum(f["bytes"] for f in files.values())
    log(f"added {name} ({_megabytes(size)}) to {root}: test NLL {check['nll']:.2f} ± {check['stderr']:.2f} at "
        f"k={CHECK_K} on {check['images']} images")
    return root / name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VaelabError(f"cannot read {path} ({exc}); pass a finished run directory") from None


def cmd_add(args: argparse.Namespace) -> int:
    add_model(args.run, args.name, args.into, description=args.description, url=args.url, data_dir=args.data_dir)
    return 0
