"""Where a suite's own scorer (`kind = "python"`) found `Score` before the package had sub-packages: kept so that
such suites keep working. New code imports `from harness import Score` (or `harness.scoring.base`)."""

from harness.scoring.base import Metric, Score

__all__ = ["Metric", "Score"]
