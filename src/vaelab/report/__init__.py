"""vaelab.report.markdown."""
