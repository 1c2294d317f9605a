"""Generate once, score many: re-score a stored run's outputs with the suite's current scorers.

`rescore(store, run_id)` reads the answers a run stored, scores them with the scorers the suite names now
(gold answers from the suite as it is now, so a corrected gold label counts), recomputes the run-level
metrics, and swaps the run's scores for the new ones in one transaction. No model is called.
`store_metrics` is the last step of every run: the aggregates (F1, confusion matrix...) from the stored scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.summary import case_passes
from harness.errors import SuiteError
from harness.providers.base import Completion
from harness.scoring.base import Scorer
from harness.scoring.registry import aggregate_metrics, build_scorers, score_completion
from harness.store.db import Store
from harness.suite.load import Case, Suite, load_suite


@dataclass
class RescoreResult:
    """What `rescore` did: answers scored, gold values that changed, pass rates before and after."""

    run_id: str
    suite: Suite
    scored: int
    failed_calls: int
    gold_changed: list[str] = field(default_factory=list)
    missing_from_suite: list[str] = field(default_factory=list)
    pass_rates: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # provider: (before, after)


def stored_cases(store: Store, run_id: str) -> list[Case]:
    """The cases of a run as it stored them (what the models were shown), in run order."""
    rows = store.table("cases", run_id).sort_values("position")
    cases = []
    for row in rows.to_dict("records"):
        context = row.get("context")
        cases.append(Case(
            id=row["case_id"],
            input=json.loads(row["input"]) if row["input"] else {},
            gold=json.loads(row["gold"]) if row["gold"] is not None else None,
            line=row["source_line"],
            messages=json.loads(row["messages"]) if row["messages"] else [],
            context=json.loads(context) if isinstance(context, str) else None,
        ))
    return cases


def store_metrics(store: Store, run_id: str, suite: Suite, scorers: list[Scorer]) -> list[dict[str, Any]]:
    """Compute the run-level metrics of `run_id` from its stored scores and store them (replacing any)."""
    cases = {case.id: case for case in stored_cases(store, run_id)}
    rows = aggregate_metrics(scorers, store.table("scores", run_id), store.table("responses", run_id), cases)
    store.put_metrics(run_id, rows)
    return rows


def rescore(store: Store, run_id: str, suite_path: str | Path | None = None) -> RescoreResult:
    """Re-score every stored answer of `run_id` with the current scorers of its suite (or of the suite at
    `suite_path`). Raises StoreError for an unknown run, SuiteError when the suite cannot be loaded or is
    another suite."""
    run = store.run(run_id)
    if run.get("reference") == "incumbent":
        raise SuiteError(f"run {run_id} is a proxy run: its answers were judged against the incumbent's as they "
                         "arrived and are not re-scored; `harness proxy export` makes a suite of them to run")
    path = Path(suite_path or run["suite_path"])
    if not suite_path and not (path / "suite.toml").is_file():
        raise SuiteError(f"{path}: the suite of run {run_id} is no longer there; pass --suite FOLDER")
    suite = load_suite(path)
    if suite.name != run["suite"]:
        raise SuiteError(f"{path}: this is suite '{suite.name}', but run {run_id} is of suite '{run['suite']}'")
    scorers = build_scorers(suite)
    current = {case.id: case for case in suite.cases}
    result = RescoreResult(run_id=run_id, suite=suite, scored=0, failed_calls=0)
    cases: dict[str, Case] = {}
    gold_updates: dict[str, Any] = {}
    for case in stored_cases(store, run_id):
        now = current.get(case.id)
        if now is None:
            result.missing_from_suite.append(case.id)
        elif now.gold != case.gold:
            result.gold_changed.append(case.id)
            gold_updates[case.id] = now.gold
            case = Case(id=case.id, input=case.input, gold=now.gold, line=case.line, messages=case.messages,
                        context=case.context)
        cases[case.id] = case

    responses = store.table("responses", run_id)
    before = store.table("scores", run_id)
    rows: list[dict[str, Any]] = []
    for response in responses.to_dict("records"):
        case = cases.get(response["case_id"])
        if case is None:
            continue
        if response["error"] is not None and not pd.isna(response["error"]):
            result.failed_calls += 1
            continue
        completion = Completion(text=response["text"] or "", model=response["model"], input_tokens=None,
                                output_tokens=None, ttft_ms=None, latency_ms=None,
                                finish_reason=response["finish_reason"])
        result.scored += 1
        rows.extend(
            {"run_id": run_id, "case_id": case.id, "provider": response["provider"], "scorer": scorer,
             "metric": score.metric, "value": score.value, "passed": score.passed, "detail": score.detail}
            for scorer, score in score_completion(scorers, case, completion)
        )
    after = pd.DataFrame(rows, columns=["run_id", "case_id", "provider", "scorer", "metric", "value", "passed",
                                        "detail"])
    metrics = aggregate_metrics(scorers, after, responses, cases)
    for provider in responses["provider"].unique():
        n = len(cases)
        result.pass_rates[provider] = (_pass_rate(before, provider, n), _pass_rate(after, provider, n))
    specs = [spec.model_dump(exclude_defaults=True) for spec in suite.spec.scorers]
    store.replace_scores(run_id, rows, metrics, specs, gold_updates)
    return result


def judging_cases(store: Store, run_id: str, suite: Suite) -> list[Case]:
    """The cases of `run_id` for its judges: as the models were shown them (stored), with the suite's current
    fields, reference and `judge_labels` where the suite still has the case."""
    current = {case.id: case for case in suite.cases}
    out = []
    for case in stored_cases(store, run_id):
        now = current.get(case.id)
        if now is not None:
            case = Case(id=case.id, input=now.input, gold=now.gold, line=case.line, messages=case.messages,
                        context=case.context)
        out.append(case)
    return out


def rescored_pass_rates(
    store: Store, run_id: str, rates: dict[str, tuple[float | None, float | None]]
) -> dict[str, tuple[float | None, float | None]]:
    """`rates` (provider: (before, after)) with each `after` read again from the stored scores (after judging)."""
    scores = store.table("scores", run_id)
    n = len(store.table("cases", run_id))
    return {provider: (before, _pass_rate(scores, provider, n)) for provider, (before, _) in rates.items()}


def _pass_rate(scores: pd.DataFrame, provider: str, n_cases: int) -> float | None:
    if scores.empty or not n_cases:
        return None
    passes = case_passes(scores[scores["provider"] == provider])
    return float(passes.sum()) / n_cases
