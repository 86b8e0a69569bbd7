"""MLflow tracking for a training run: `vaelab.train(config, run_dir, callbacks=[MlflowCallback()])`.

Needs the `mlflow` package (`pip install 'vaelab[mlflow]'`); vaelab itself never imports it: the callback
does, when it is built, so `import vaelab` stays cheap and a missing package is one clear line before
training starts.

Where it logs: `tracking_uri` when given; else, for a resumed run, the store its first process used (kept in
RUN/mlflow.json, so a resume continues the same MLflow run from any working directory); else MLflow's
own choice, `mlflow.get_tracking_uri()`: $MLFLOW_TRACKING_URI, or what the program set with
`mlflow.set_tracking_uri`, or MLflow's default (in MLflow 3.17: `sqlite:///mlflow.db` in the working
directory). vaelab does not invent a store of its own: runs of one experiment should sit side by side in one
MLflow UI. A local `file:` store works too, though MLflow 3.17 refuses it unless MLFLOW_ALLOW_FILE_STORE=true.

All calls go through an `MlflowClient` for that URI and the run's id, never through `mlflow.start_run` and
the process-wide active run: a caller's own MLflow run (a notebook, a sweep script) is left alone, and two
vaelab runs in one process do not mix.

What is logged, on the process that writes the run (rank 0 under torchrun):

- at the start: a run named after the run directory (or `run_name`) in experiment `experiment` (created if
  missing), tagged `vaelab.run_dir`; params = the resolved config flattened to dotted keys ("model.latent_dim",
  "train.lr", ...; none and lists as text, as in TensorBoard's hparams);
- per epoch: every number of the epoch's metrics.jsonl record, flattened by `flat_metrics`, at step = the
  epoch. Names keep their "/" ("train/loss", "val/kl", "monitor/gap"): MLflow accepts "/" in metric names
  (the file store nests folders by it), so the names are the same as in W&B and TensorBoard;
- at the end: the final evaluation's main numbers (the `final/...` scalars TensorBoard gets) at the last
  epoch's step, and the run ends FINISHED; an error ends it FAILED, an interruption (Ctrl-C, SIGTERM) KILLED.

Resuming: RUN/mlflow.json holds the tracking URI and the run id; a resumed vaelab run sets that MLflow run
RUNNING again and logs into it. Params are immutable in MLflow: a resume that changes one (a raised
train.epochs) keeps the first value there and says so in the log.

Failures: MLflow problems at the start (a bad URI, a deleted experiment) raise before the first epoch. Later
ones (a tracking server gone away) never end the run: the first is reported once through the run's log, MLflow
logging stops, training goes on, and metrics.jsonl keeps every number.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from vaelab.config import to_dict
from vaelab.errors import ConfigError
from vaelab.training.callbacks.base import Callback, flat_metrics, read_state, write_state
from vaelab.training.callbacks.tensorboard import final_scalars, hparam_values

STATE_FILE = "mlflow.json"  # in the run directory: the tracking URI and run id a resumed vaelab run continues
# MLflow's limits per log_batch call (https://mlflow.org/docs/latest/rest-api.html#log-batch)
MAX_PARAMS, MAX_METRICS = 100, 1000


def import_mlflow() -> Any:
    """The mlflow module, or a one-line ConfigError that says how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("MlflowCallback needs the mlflow package, which is not installed: "
                          "pip install 'vaelab[mlflow]'") from None
    return mlflow


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class MlflowCallback(Callback):
    """Log a vaelab run to MLflow (see the module's docstring for where, what and when)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "vaelab",
                 run_name: str | None = None) -> None:
        import_mlflow()  # fail here, before any training, when the package is missing
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.client: Any = None  # the MlflowClient while training; None on other ranks and after the end
        self.run_id: str | None = None
        self._note: Callable[[str], None] = lambda text: None

    def on_train_start(self, trainer: Any) -> None:
        if not trainer.is_main:  # under torchrun only rank 0 writes the run, and so only it logs
            return
        mlflow = import_mlflow()
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        root = Path(trainer.paths.root)
        self._note = trainer.log
        state = read_state(root, STATE_FILE)
        uri = self.tracking_uri or state.get("tracking_uri") or mlflow.get_tracking_uri()
        client = MlflowClient(tracking_uri=uri)
        run = None
        if state.get("run_id") and state.get("tracking_uri") == uri:
            try:
                run = client.get_run(state["run_id"])
            except MlflowException:  # the store was replaced or purged: a new MLflow run rather than no training
                pass
            if run is None or run.info.lifecycle_stage == "deleted":
                run = None
                trainer.log(f"note: MLflow run {state['run_id']} is gone from {uri}; logging to a new run")
        if run is None:
            run = client.create_run(self._experiment_id(client), run_name=self.run_name or root.name,
                                    tags={"vaelab.run_dir": str(root.resolve())})
            write_state(root, STATE_FILE, {"tracking_uri": uri, "run_id": run.info.run_id,
                                           "experiment_id": run.info.experiment_id}, "the MLflow run id")
        else:
            client.update_run(run.info.run_id, status="RUNNING")  # a resumed run: FAILED / KILLED until now
        self.client, self.run_id = client, run.info.run_id
        self._log_params(trainer, run.data.params)

    def _experiment_id(self, client: Any) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return client.create_experiment(self.experiment)
        if experiment.lifecycle_stage == "deleted":  # MLflow keeps the name taken until it is purged
            raise ConfigError(f"MLflow experiment {self.experiment!r} is deleted: restore it "
                              f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                              "or pass another experiment name to MlflowCallback")
        return experiment.experiment_id

    def _log_params(self, trainer: Any, logged: dict[str, str]) -> None:
        """The flattened config as params; on a resume only the ones the run lacks (MLflow refuses to change
        a param, and an error here would end the training for a bookkeeping detail)."""
        from mlflow.entities import Param

        params = {key: str(value) for key, value in hparam_values(to_dict(trainer.config)).items()}
        changed = sorted(key for key, value in params.items() if key in logged and logged[key] != value)
        if changed:
            trainer.log("note: MLflow params cannot change; the MLflow run keeps its first "
                        + ", ".join(f"{key}={logged[key]} (now {params[key]})" for key in changed))
        new = [Param(key, value) for key, value in params.items() if key not in logged]
        for chunk in _chunks(new, MAX_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)

    def _guard(self, what: str, action: Callable[[], Any]) -> None:
        """Run one call to the tracking store; on any error report it once and stop logging (the run goes on,
        as with TensorBoard: metrics.jsonl holds every number, and a resume can continue the MLflow run)."""
        if self.client is None:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests' errors, OSError of a file store...
            self.client = None
            self._note(f"note: MLflow logging stopped ({what} failed: {exc}); training goes on and "
                       "metrics.jsonl keeps every number")

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        self._guard(f"logging epoch {epoch}", lambda: self._log_metrics(flat_metrics(record), epoch))

    def on_train_end(self, trainer: Any, evaluation: dict[str, Any] | None) -> None:
        if evaluation:
            self._guard("logging the final evaluation", lambda: self._log_metrics(final_scalars(evaluation),
                                                                                   int(trainer.epoch)))
        self._end("FINISHED")

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        # vaelab turns SIGTERM into KeyboardInterrupt too: both are a run stopped from outside, not a failure
        self._end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def _end(self, status: str) -> None:
        client, run_id = self.client, self.run_id
        self._guard(f"ending the run ({status})", lambda: client.set_terminated(run_id, status))
        self.client = None
