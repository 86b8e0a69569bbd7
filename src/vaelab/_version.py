"""The version of vaelab (read by run.json, checkpoints and the CLI; the lowest module, imported by all)."""

__version__ = "0.1.0"
