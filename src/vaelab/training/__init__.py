"""vaelab.training."""
