"""Scorer kind -> scorer (`SCORERS`, each imported lazily): `build_scorers` turns a suite's `[[scorers]]` into
scorer objects; `score_completion` runs them on one answer (a scorer that raises fails that case, with the error);
`aggregate_metrics` gives the run-level metrics of the aggregating ones; `metric_info` what a metric means.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harness.providers.base import Completion
from harness.scoring.base import RATE, Metric, MetricInfo, Score, Scorer, parse_detail
from harness.suite.load import Case, Suite

if TYPE_CHECKING:
    import pandas as pd

# scorer kind (`kind` in suite.toml's [[scorers]]) -> "module:class"; the class makes itself from the entry
# (`from_spec`) and declares its run-level metrics (`METRICS`). Imported only when a suite uses the kind.
SCORERS: dict[str, str] = {
    "fields": "harness.scoring.builtin:FieldsScorer",
    "exact": "harness.scoring.builtin:ExactScorer",
    "python": "harness.scoring.builtin:PythonScorer",
    "label": "harness.scoring.labels:LabelScorer",
    "line_items": "harness.scoring.items:LineItemsScorer",
    "clauses": "harness.scoring.clauses:ClausesScorer",
    "agreement": "harness.scoring.agreement:AgreementScorer",
    "pairwise": "harness.scoring.judges:PairwiseScorer",
    "rubric": "harness.scoring.judges:RubricScorer",
    "reference": "harness.scoring.reference:ReferenceScorer",
}


def scorer_class(kind: str) -> type:
    """The scorer class of `kind` (one of `SCORERS`), imported on first use."""
    module, _, name = SCORERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def build_scorers(suite: Suite) -> list[Scorer]:
    """The scorers a suite names, in order. Raises SuiteError when a custom scorer cannot be loaded."""
    return [scorer_class(spec.kind).from_spec(spec, suite, number)
            for number, spec in enumerate(suite.spec.scorers, start=1)]


def aggregate_metrics(
    scorers: list[Scorer], scores: pd.DataFrame, responses: pd.DataFrame, cases: dict[str, Case]
) -> list[dict[str, Any]]:
    """Run-level metrics of every aggregating scorer, per provider, as rows for the store's `metrics` table.

    `scores` and `responses` are the run's stored rows (`detail` as JSON text); `cases` maps case id to Case
    (every case of the run). A provider's failed calls and the cases it has no answer for are passed to the
    scorer as unanswered cases."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    if responses.empty:
        return rows
    parsed = scores.assign(detail=scores["detail"].map(parse_detail)) if not scores.empty else scores
    for provider, group in responses.groupby("provider", sort=False):
        # failed calls, and cases an interrupted run never got to: misses, as in the pass rate
        answered = set(group[group["error"].isna()]["case_id"])
        unanswered = [case for case_id, case in cases.items() if case_id not in answered]
        for scorer in scorers:
            if not hasattr(scorer, "aggregate"):
                continue
            if len(parsed):
                mine = parsed[(parsed["provider"] == provider) & (parsed["scorer"] == scorer.name)]
            else:
                mine = pd.DataFrame(columns=["case_id", "metric", "value", "passed", "detail"])
            try:
                metrics = scorer.aggregate(mine, unanswered)
            except Exception as exc:  # a broken aggregate loses its metrics, never the run
                metrics = [Metric("aggregate_error", None, {"error": f"{type(exc).__name__}: {exc}"[:300]})]
            rows.extend(
                {"provider": provider, "scorer": scorer.name, "metric": m.name,
                 "value": None if m.value is None or m.value != m.value else float(m.value), "detail": m.detail}
                for m in metrics
            )
    return rows


def score_completion(scorers: list[Scorer], case: Case, completion: Completion) -> list[tuple[str, Score]]:
    """Every scorer's scores for one response, as (scorer name, score). A failed call gets no scores."""
    if completion.error is not None:
        return []
    out = []
    for scorer in scorers:
        try:
            out.extend((scorer.name, score) for score in scorer(case, completion))
        except Exception as exc:  # a scorer bug or odd output fails this case, never the run
            detail = {"scorer_error": f"{type(exc).__name__}: {exc}"[:300]}
            out.append((scorer.name, Score("case_pass", 0.0, False, detail)))
    return out


def metric_info(metric: str) -> MetricInfo:
    """The facts of a run-level metric, as the scorer that computes it declares them (`METRICS`); a rate where
    higher is better when no scorer declares it."""
    for kind in SCORERS:
        declared = getattr(scorer_class(kind), "METRICS", {})
        if metric in declared:
            return declared[metric]
    return RATE
