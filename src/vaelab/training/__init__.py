"""Training: the loop (`loop.Trainer`), one step (`step`), the state a checkpoint keeps (`state`), the
callbacks that observe it (`callbacks`), and the Python API (`train`, `resume`)."""

from vaelab.training.api import resume, train
from vaelab.training.callbacks.base import Callback
from vaelab.training.guard import TrainingDiverged
from vaelab.training.loop import Trainer, TrainResult

__all__ = ["Callback", "Trainer", "TrainResult", "TrainingDiverged", "resume", "train"]
