"""Run directories: their layout (paths), checkpoints, the lifecycle of a training process's directory
(lifecycle), and loading a trained run for inference (load)."""

from vaelab.runs.load import Run, find_checkpoint, load_run, load_run_data, model_from_checkpoint
from vaelab.runs.paths import RunPaths, json_safe, resolve_device, write_json

__all__ = ["Run", "RunPaths", "find_checkpoint", "json_safe", "load_run", "load_run_data", "model_from_checkpoint",
           "resolve_device", "write_json"]
