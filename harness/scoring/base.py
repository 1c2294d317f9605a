"""The scorer interface: `Score` (one row per case and metric), `Metric` (one run-level aggregate), the
`Scorer` and `Aggregating` protocols, and reading a stored score's detail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.providers.base import Completion
from harness.suite.load import Case

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Score:
    """One measurement of one response. `passed` is None for metrics with no pass/fail meaning."""

    metric: str
    value: float
    passed: bool | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One aggregate over a provider's answers (e.g. macro-F1, item recall); `value` None when undefined."""

    name: str
    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricInfo:
    """What a run-level metric means, declared by the scorer that computes it (its `METRICS`): which way is
    better (`higher`, `lower` or `neither`), whether it is a count shown as a whole number rather than a rate, and
    whether it is a headline figure (printed after a run). An undeclared metric is a rate where higher is better."""

    better: str = "higher"
    count: bool = False
    headline: bool = False


RATE = MetricInfo()


class Scorer(Protocol):
    """Scores a completed, error-free response to a case. The class of a scorer kind also makes itself from a
    suite's `[[scorers]]` entry (`from_spec(spec, suite, number)`; see `scoring.registry.SCORERS`)."""

    name: str

    def __call__(self, case: Case, completion: Completion) -> list[Score]: ...


class Aggregating(Protocol):
    """A scorer that also computes run-level metrics from its own score rows.

    `scores`: this scorer's rows for one provider (columns case_id, metric, value, passed, detail; `detail`
    parsed into a dict). `unanswered`: the cases this provider has no answer for (failed calls), which
    count as misses (false negatives) wherever recall is computed.
    """

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]: ...


SEVERAL_VALUES = "several values"  # a field's outcome when the answer names more than one candidate value




def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def parse_detail(value: Any) -> dict[str, Any]:
    """A score's `detail` as a dict, whether stored JSON text or already parsed; {} when it is neither."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
