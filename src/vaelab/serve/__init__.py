"""vaelab.serve.app."""
