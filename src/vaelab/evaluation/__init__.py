"""vaelab.evaluation."""
