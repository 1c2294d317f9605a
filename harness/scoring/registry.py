"""Scorer kind -> scorer: `build_scorers` turns a suite's `[[scorers]]` into scorer objects; `score_completion`
runs them on one answer (a scorer that raises fails that case, with the error); `aggregate_metrics` gives the
run-level metrics of the aggregating ones.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.providers.base import Completion
from harness.scoring.base import RATE, Metric, MetricInfo, Score, Scorer, parse_detail
from harness.scoring.builtin import ExactScorer, FieldsScorer, PythonScorer, load_function
from harness.scoring.clauses import ClausesScorer
from harness.scoring.items import LineItemsScorer
from harness.scoring.labels import LabelScorer
from harness.suite.load import Case, Suite, clause_categories


def build_scorers(suite: Suite) -> list[Scorer]:
    """The scorers a suite names, in order. Raises SuiteError when a custom scorer cannot be loaded."""
    built: list[Scorer] = []
    for number, spec in enumerate(suite.spec.scorers, start=1):
        name = spec.name or spec.kind
        if spec.kind == "fields":
            built.append(FieldsScorer(dict(spec.fields), dayfirst=spec.dayfirst, name=name,
                                      gold_in_input_field=spec.gold_in_input_field))
        elif spec.kind == "label":
            from harness.scoring.labels import LabelScorer

            built.append(LabelScorer(suite.labels or [], label_key=suite.spec.output.label_key, name=name))
        elif spec.kind == "line_items":
            from harness.scoring.items import LineItemsScorer

            built.append(LineItemsScorer(key=spec.key, item_fields=dict(spec.item_fields),
                                         min_similarity=spec.min_similarity, dayfirst=spec.dayfirst, name=name))
        elif spec.kind == "clauses":
            from harness.scoring.clauses import ClausesScorer

            categories = clause_categories(suite.spec, spec)
            built.append(ClausesScorer(categories=categories, text_field=spec.text_field, name=name))
        elif spec.kind == "python":
            where = f"{suite.path / 'suite.toml'}: scorers[{number}].function"
            function = load_function(spec.function or "", suite.path, where)
            built.append(PythonScorer(function, name=name, threshold=spec.threshold, options=dict(spec.options)))
        else:
            built.append(ExactScorer(name=name))
    return built


def aggregate_metrics(
    scorers: list[Scorer], scores: pd.DataFrame, responses: pd.DataFrame, cases: dict[str, Case]
) -> list[dict[str, Any]]:
    """Run-level metrics of every aggregating scorer, per provider, as rows for the store's `metrics` table.

    `scores` and `responses` are the run's stored rows (`detail` as JSON text); `cases` maps case id to Case
    (every case of the run). A provider's failed calls and the cases it has no answer for are passed to the
    scorer as unanswered cases."""
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
    for kind in (LabelScorer, LineItemsScorer, ClausesScorer):
        if metric in kind.METRICS:
            return kind.METRICS[metric]
    return RATE
