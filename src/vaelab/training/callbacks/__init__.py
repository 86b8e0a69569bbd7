"""vaelab.training.callbacks."""
