"""Intervals, the per-case outcome table and paired outcomes, with numbers checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.analysis.intervals import wilson_interval
from harness.analysis.outcomes import RunProviders, agreement, outcome_table, paired_category, run_providers
from harness.errors import RunError
from harness.store.cases import page_records
from harness.store.db import Store


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)  # never below 0, and not a zero-width interval at 0%
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) is None


def _run(store: Store) -> str:
    """Four cases: c0 both pass, c1 a regression (the candidate's value is wrong), c2 the candidate's call
    failed on a dead connection, c3 the candidate has no answer stored and the incumbent's call failed (HTTP 400);
    a second candidate was skipped."""
    run_id = store.start_run({"suite": "s", "n_cases": 4})
    store.insert("run_providers", [
        {"run_id": run_id, "provider": "cand", "role": "candidate", "status": "ready"},
        {"run_id": run_id, "provider": "inc", "role": "incumbent", "status": "ready"},
        {"run_id": run_id, "provider": "other", "role": "candidate", "status": "skipped",
         "reason": "OTHER_KEY is not set"},
    ])
    store.insert("cases", [{"run_id": run_id, "case_id": f"c{i}", "position": i, "source_line": i + 1,
                            "gold": {"total": "5"}, "messages": [{"role": "user", "content": f"case {i}"}]}
                           for i in range(4)])
    answers = [("c0", "inc", "5"), ("c0", "cand", "5"), ("c1", "inc", "5"), ("c1", "cand", "6"),
               ("c2", "inc", "5"), ("c2", "cand", None), ("c3", "inc", None)]
    store.insert("responses", [
        {"run_id": run_id, "case_id": c, "provider": p, "text": None if t is None else f'{{"total": "{t}"}}',
         "error": None if t else ("connection refused" if p == "cand" else "HTTP 400: bad request"),
         "error_kind": None if t else ("connection" if p == "cand" else "http_400"), "latency_ms": 10.0}
        for c, p, t in answers])
    store.insert("scores", [
        {"run_id": run_id, "case_id": c, "provider": p, "scorer": "fields", "metric": metric,
         "value": float(t == "5"), "passed": t == "5",
         "detail": {"gold": "5", "pred": t, "outcome": "correct" if t == "5" else "wrong"} if metric != "case_pass"
         else {}}
        for c, p, t in answers if t is not None for metric in ("field.total", "case_pass")])
    store.finish_run(run_id, "completed")
    return run_id


def test_the_outcome_table_says_pass_fail_error_and_no_answer(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        table = outcome_table(store, _run(store))
    assert table.providers.ready == ("inc", "cand")  # incumbent first
    assert table.statuses().to_dict("index") == {
        "c0": {"inc": "pass", "cand": "pass"}, "c1": {"inc": "pass", "cand": "fail"},
        "c2": {"inc": "pass", "cand": "error"}, "c3": {"inc": "error", "cand": "no answer"}}
    assert table.paired_counts("inc", "cand") == {"regression": 2, "win": 0, "both_fail": 1, "both_pass": 1}
    # infrastructure failures (a dead connection, no answer at all) apart from a refused request
    assert table.failures("cand") == {"c2": "connection", "c3": "no answer"}
    assert table.failures("inc") == {} and table.failures("inc", every_error=True) == {"c3": "http_400"}
    wrong = next(row for row in table.rows("cand") if row.case_id == "c1")
    assert (wrong.status, wrong.passed, wrong.places) == ("fail", False, ("total",))
    assert table.taxonomy()["cand"]["kinds"]["no answer"] == 1


def test_run_providers_name_the_candidate_and_incumbent_or_say_why_not(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        providers = run_providers(store, _run(store))
    assert providers.candidate() == "cand" and providers.incumbent() == "inc"
    assert providers.skipped == {"other": "OTHER_KEY is not set"}
    with pytest.raises(RunError, match=r"has no answers of 'other' \(it was skipped: OTHER_KEY is not set\)"):
        providers.candidate("other")
    with pytest.raises(RunError, match=r"has no answers of 'openai:x' \(ran: inc, cand\)"):
        providers.candidate("openai:x")
    alone = RunProviders(run_id="r", roles={"inc": "incumbent", "c": "candidate"}, ready=("c",),
                         skipped={"inc": "OPENAI_API_KEY is not set"})
    with pytest.raises(RunError, match=r"no incumbent answers .*\(inc was skipped: OPENAI_API_KEY is not set\); "
                                       r"pass --baseline"):
        alone.incumbent(instead="pass --baseline")


def test_page_records_come_in_the_order_asked_with_a_field_table_only_where_a_case_failed(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _run(store)
        records = [json.loads(r) for r in page_records(
            store, run_id, ["c1", "c3", "c0"], order=["inc", "cand"], incumbent="inc", names=["total"],
            items_key="line_items", limits={"text": 50, "passing_text": 3, "cell": 50, "input": 50,
                                            "passing_input": 2})]
    assert [r["id"] for r in records] == ["c1", "c3", "c0"]
    c1, c3, c0 = records
    assert c1["st"] == {"inc": "pass", "cand": "fail"} and c1["cat"] == {"cand": "regression"}
    assert c1["rows"] == [["total", "5", [["5", True, "correct"], ["6", False, "wrong"]]]]
    assert c3["rows"][0][2] == [[None, False, "error"], [None, False, "no answer"]]
    assert c3["e"] == {"inc": "HTTP 400: bad request"} and c3["k"]["cand"] == ["no answer"]
    assert c0["rows"] is None and c0["in"].startswith("ca") and "more characters" in c0["in"]


def test_paired_category_names_each_pair():
    assert paired_category(True, False) == "regression" and paired_category(False, True) == "win"
    assert paired_category(False, False) == "both_fail" and paired_category(True, True) == "both_pass"


def test_agreement_counts_only_cases_both_answered():
    a = {"x": "Yes", "y": "no", "z": "maybe"}
    b = {"x": "yes", "y": "yes"}
    assert agreement(a, b, lambda p, q: p.lower() == q.lower()) == (1, 2)
