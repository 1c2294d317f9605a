"""Pages: the run report, the comparison of two runs, and their charts (templates in harness/templates)."""
