"""The end of a training run: the best weights, the run's images, the final evaluation (the same
`evaluate_run` as `vaelab evaluate`), evaluation.json, the training curves, and the log's tables."""

from __future__ import annotations

from typing import Any

from vaelab.evaluation.suite import evaluate_run, format_nll, format_samples, format_splits
from vaelab.report import plots
from vaelab.errors import VaelabError
from vaelab.runs import write_json
from vaelab.runs.checkpoint import load_checkpoint


def final_evaluation(trainer: Any) -> dict[str, Any]:
    """Load `best` into the model, write images/ and evaluation.json, log the tables; the evaluation record."""
    t = trainer
    best = load_checkpoint(t.paths.checkpoint("best"))
    t.model.load_state_dict(best.tensors["model"])
    t.write_images()
    r = evaluate_run(t.model, t.cfg, t.splits, t.device, log=t.log)  # the NLL's progress lines as it goes
    evaluation = {
        "checkpoint": "best", "epoch": t.best_epoch, "protocol": r.protocol, "splits": r.splits_dict(),
        "gap_test_minus_train": r.gap, "gap_stderr": r.gap_stderr, "samples": r.samples,
        "stopped_early": t.stopped_early, "epochs_trained": t.epoch,
    }
    if r.nll:
        evaluation["nll"] = r.nll
    write_json(t.paths.evaluation, evaluation)
    plot_curves(t)
    measure = "-ELBO" if t.model.variational else "reconstruction loss"
    lines = format_splits(r, f"evaluation of the best epoch ({t.best_epoch}), nats per image:", measure)
    for line in lines + format_nll(r) + format_samples(r):
        t.log(line)
    return evaluation


def plot_curves(trainer: Any) -> None:
    """images/curves.png; a run with nothing plottable gets a note, never an error (the run is done)."""
    t = trainer
    if not t.history:
        return
    try:
        plots.plot_training_curves(t.history, t.paths.images / "curves.png", best_epoch=t.best_epoch,
                             stopped_epoch=t.epoch if t.stopped_early else None,
                             title=f"{type(t.model).__name__ if t.own_model else t.cfg.model.kind.upper()} on "
                                   f"{t.splits.name}")
    except ValueError as exc:
        t.log(f"note: no training-curve plot ({exc})")


def report_failure(trainer: Any, exc: BaseException) -> None:
    """Say what is saved and how to continue; run.json says how the run ended."""
    trainer.callbacks.on_exception(trainer, exc)
    tc = trainer.cfg.train
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    where = (f"during epoch {trainer.state.saved_epoch + 1}"
             if trainer.state.saved_epoch < tc.epochs and not trainer.stopped_early else "after the last epoch")
    if trainer.paths.checkpoint("last").exists():
        message = (f"{status} {where}; {trainer.saved_at} is saved in {trainer.paths.checkpoint('last')}; "
                   f"continue with: vaelab train --resume {trainer.paths.root}")
    else:
        message = f"{status} {where}; no checkpoint was written yet, nothing was saved"
    # on a full disk these writes may fail too: the error that stopped the run is the one to report
    try:
        write_json(trainer.paths.info, trainer.info(status=status, epochs=trainer.state.saved_epoch,
                                                    error=str(exc) or type(exc).__name__))
    except (OSError, VaelabError):
        pass
    try:
        trainer.log(message)
    except OSError:
        pass
