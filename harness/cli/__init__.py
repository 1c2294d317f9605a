"""The `harness` command line: a thin layer over the library (see `harness.cli.main`)."""

from harness.cli.main import main

__all__ = ["main"]
