"""`vaelab train`: train a model into a run directory, or continue one (`--resume`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from vaelab.cli.common import CONVENTIONS, _add_config_args, _config_from_args, _formatter, _stamp
from vaelab.config import describe_keys, parse_override
from vaelab.errors import VaelabError
from vaelab.training import resume, train


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` command to the parser."""
    p = sub.add_parser("train", help="train a VAE or autoencoder, writing a run directory",
                       formatter_class=_formatter,
                       description="Train a model and write a run directory: config.toml, metrics.jsonl, "
                                   "checkpoints (best and last), image grids, evaluation.json.",
                       epilog=CONVENTIONS + "\n\nconfig keys (TOML [section] key = value, or --set section.key=value):\n"
                       + describe_keys())
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory to create (default: runs/<dataset>-<model>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint, exactly where it stopped "
                                                   "(only --set train.epochs=N and train.device=D may change)")
    p.set_defaults(func=cmd_train)


def _default_run_name(dataset: str, kind: str, arch: str) -> str:
    """One plain path component under runs/: a dataset spec's '/', '..' or '@DIR' never leads elsewhere."""
    name = dataset if not dataset.startswith("folder:") else "folder-" + Path(dataset[7:]).name
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{name}-{kind}-{arch}").strip("_") or "run"
    return f"{name}-{_stamp()}"


def _resume_changes(args: argparse.Namespace) -> dict[str, object]:
    """What `--resume RUN --set ...` may change: train.epochs=N (more epochs) and train.device (a GPU run
    continued on a CPU, or the other way); nothing else."""
    if args.config or args.out or args.data_dir:
        raise VaelabError("--resume continues a run with its own config and directory; leave out --config, "
                          "--out and --data-dir")
    changes: dict[str, object] = {}
    for text in args.overrides:
        section, key, value = parse_override(text)
        if (section, key) == ("train", "epochs") and isinstance(value, int) and not isinstance(value, bool):
            changes["epochs"] = value
        elif (section, key) == ("train", "device") and isinstance(value, str):
            changes["device"] = value
        else:
            raise VaelabError(f"--resume takes only --set train.epochs=N (more epochs) and --set train.device=D, "
                              f"got {text!r}")
    return changes


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        resume(args.resume, **_resume_changes(args))
        return 0
    cfg = _config_from_args(args)
    out = args.out or str(Path("runs") / _default_run_name(cfg.data.dataset, cfg.model.kind, cfg.model.arch))
    train(cfg, out)
    return 0
