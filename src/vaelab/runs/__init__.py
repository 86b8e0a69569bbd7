"""vaelab.runs.load."""
