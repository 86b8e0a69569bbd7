"""What several commands of the command line share: the parser class, the help layout, the common options,
loading a run and its data, and the checks of numbers a user gives.

Every command module imports from here (never from `vaelab.cli`, which imports the command modules).
"""

from __future__ import annotations

import argparse
import json
import time

from vaelab.config import RunConfig, load_config, load_toml, parse_override
from vaelab.data import DatasetSplits, recommended
from vaelab.log import say
from vaelab.errors import VaelabError
from vaelab.runs import Run, load_run, load_run_data

CONVENTIONS = """\
loss conventions (the same everywhere in vaelab):
  every number is per image, in nats, summed over all pixels (and channels)
  and over all latent dimensions; a batch or split reports its mean.
    loss  = recon + beta * KL     what Adam minimises (beta: train.beta, default 1)
    recon = -log p(x|z)           Bernoulli: binary cross-entropy summed over pixels;
                                  Gaussian: SSE/(2 sigma^2) + D log(sigma sqrt(2 pi)),
                                  sigma fixed (model.gaussian_std, default 0.1)
    KL    = KL(q(z|x) || N(0,I))  closed form, summed over latent dimensions
    -ELBO = recon + KL            independent of beta; 0 KL for the plain autoencoder
  gap = test -ELBO minus train -ELBO (positive: worse on unseen images)."""

MAX_IMAGES = 10_000  # images in one grid
MAX_SEED = 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


# --------------------------------------------------------------------------- options


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file ([data], [model], [train], [eval] tables)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset's files (= data.data_dir)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `vaelab train`")
    p.add_argument("--checkpoint", default="best", metavar="NAME",
                   help="which weights: best, last, or a snapshot such as epoch-0010 (default: best)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config of --config, --set and --data-dir (see `_add_config_args`), with the dataset's recommended
    settings (cifar10: 8-bit pixels and the logistic mixture, ...) where neither the file nor --set gave them."""
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    cfg = load_config(args.config, overrides)
    given = {".".join(parse_override(text)[:2]) for text in overrides}
    if args.config:
        given |= {f"{section}.{key}" for section, keys in load_toml(args.config).items() for key in keys}
    extra = [f"{key}={value}" for key, value in recommended(cfg.data.dataset.split("@")[0]).items()
             if key not in given]
    if not extra:
        return cfg
    say(f"note: {cfg.data.dataset.split('@')[0]} is trained with {', '.join(extra)} unless you say otherwise "
        "(--set or the config file)")
    return load_config(args.config, [*extra, *overrides])


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- runs and their data


def _load(args: argparse.Namespace) -> Run:
    """The run of `_add_run_args`' options."""
    return load_run(args.run, checkpoint=args.checkpoint, device=args.device)


def _run_data(run: Run, data_dir: str | None) -> DatasetSplits:
    """The run's own dataset and splits, loaded as in training (grey values)."""
    return load_run_data(run, data_dir)


# --------------------------------------------------------------------------- checks


def _positive(value: int, flag: str, most: int | None = None) -> None:
    if value <= 0:
        raise VaelabError(f"{flag} must be a positive integer, got {value}")
    if most is not None and value > most:
        raise VaelabError(f"{flag} must be at most {most:,} (one PNG grid), got {value:,}")


def _seed(value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise VaelabError(f"--seed must lie between 0 and 2**63-1, got {value}")
