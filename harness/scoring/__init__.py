"""Judging one answer: Score and Metric, parsing of amounts, dates and JSON, the built-in scorer kinds, and the
registry that builds a suite's scorers."""
