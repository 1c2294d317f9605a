"""The report from stored rows, including incomplete runs."""

from __future__ import annotations

import json
from pathlib import Path

from harness.report.html import render_report, report_data
from harness.store.db import Store


def _interrupted_run(store: Store) -> str:
    run_id = store.start_run({"suite": "invoices", "n_cases": 2})
    store.insert("run_providers", [
        {"run_id": run_id, "provider": "openai:gpt-4o-mini", "role": "incumbent", "status": "ready"},
        {"run_id": run_id, "provider": "local:m", "role": "candidate", "status": "ready"},
    ])
    gold = {"total": "5.00"}
    store.insert("cases", [
        {"run_id": run_id, "case_id": f"c{i}", "position": i, "source_line": i + 1, "input": {"text": "t"},
         "gold": gold, "messages": [{"role": "user", "content": f"receipt {i} <b>bold</b>"}]}
        for i in range(2)
    ])
    # only the candidate answered, and only the first case, before the run was stopped
    store.insert("responses", [{"run_id": run_id, "case_id": "c0", "provider": "local:m", "text": '{"total": "6"}',
                                "latency_ms": 10.0, "cached": False}])
    store.insert("scores", [
        {"run_id": run_id, "case_id": "c0", "provider": "local:m", "scorer": "fields", "metric": metric,
         "value": 0.0, "passed": False, "detail": detail}
        for metric, detail in [("field.total", {"gold": "5.00", "pred": "6", "outcome": "wrong"}),
                               ("case_pass", {}), ("valid_json", {})]
    ])
    store.finish_run(run_id, "interrupted")
    return run_id


def test_report_of_an_interrupted_run_with_missing_answers(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _interrupted_run(store)
        data = report_data(store, run_id)
        path = render_report(store, run_id, tmp_path / "reports")
    assert [c["case_id"] for c in data["failed"]] == ["c0", "c1"]
    assert data["failed"][1]["outcomes"] == {"openai:gpt-4o-mini": None, "local:m": None}
    summary = {row["provider"]: row for row in data["summary"]}
    assert summary["openai:gpt-4o-mini"]["answered"] == 0
    assert summary["local:m"]["passed"] == 0 and summary["local:m"]["pass_rate"] == 0.0
    html = path.read_text()
    assert "Status <b>interrupted</b>" in html
    assert "(no answer recorded)" in html
    assert "receipt 0 &lt;b&gt;bold&lt;/b&gt;" in html
    assert json.dumps(data["failed"][0]["gold"]) == '{"total": "5.00"}'


def test_a_provider_with_no_stored_answer_fails_every_case_in_summary_and_taxonomy(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _interrupted_run(store)
        data = report_data(store, run_id)
    incumbent = next(row for row in data["summary"] if row["provider"] == "openai:gpt-4o-mini")
    assert (incumbent["passed"], incumbent["pass_rate"]) == (0, 0.0)
    low, high = incumbent["pass_rate_ci"]
    assert low == 0.0 and round(high, 3) == 0.658  # 0 of 2: z²/(n + z²) = 3.84 / 5.84
    kinds = {row["name"]: row["cells"] for row in data["taxonomy"]["kinds"]}
    assert kinds["no answer"] == [2, 1]  # the incumbent has no answer at all, the candidate lacks one


def test_a_hedged_value_and_a_quote_under_an_absent_clause_are_shown_as_such(tmp_path: Path):
    """A field naming several values is the failure kind `several values` (not "several values value"), and a
    clause marked absent with an invented quote shows the quote, not just "absent"."""
    from harness.analysis.outcomes import outcome_table
    from harness.store.cases import case_fields

    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "s", "n_cases": 1})
        store.insert("run_providers", [{"run_id": run_id, "provider": "p", "role": "candidate", "status": "ready"}])
        store.insert("cases", [{"run_id": run_id, "case_id": "c1", "position": 0, "gold": {}, "messages": []}])
        store.insert("responses", [{"run_id": run_id, "case_id": "c1", "provider": "p", "text": "{}",
                                    "latency_ms": 1.0}])
        store.insert("scores", [{"run_id": run_id, "case_id": "c1", "provider": "p", **row} for row in [
            {"scorer": "fields", "metric": "field.total", "value": 0.0, "passed": False,
             "detail": {"gold": "9.00", "pred": "9.00 or 10.00", "outcome": "several values",
                        "values": ["9.00", "10.00"]}},
            {"scorer": "clauses", "metric": "clause.Governing Law", "value": 1.0, "passed": True,
             "detail": {"outcome": "tn", "pred_present": False, "quote": "2019-8-31", "grounded": False}},
            {"scorer": "fields", "metric": "case_pass", "value": 0.0, "passed": False, "detail": None},
        ]])
        entry = next(outcome_table(store, run_id).rows())
        cells = case_fields(store, run_id).set_index("name")
    assert entry.status == "fail"
    assert "several values" in entry.kinds and "several values value" not in entry.kinds
    assert json.loads(cells.loc["clause: Governing Law", "pred"]) == "absent, yet quoted: 2019-8-31"
    assert cells.loc["clause: Governing Law", "outcome"] == "hallucinated quote"
    assert "hallucinated clause quote" in entry.kinds
    assert set(entry.places) == {"total", "Governing Law"}


def test_the_report_says_how_many_inputs_were_cut_to_fit_the_context(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _interrupted_run(store)
        assert report_data(store, run_id)["context_note"] is None
        cut = {"truncated": True, "field": "text", "kept": [[0, 1000], [5000, 5500]], "strategy": "head and tail"}
        store.con.execute("UPDATE cases SET context = ? WHERE run_id = ? AND case_id = 'c1'",
                          [json.dumps(cut), run_id])
        note = report_data(store, run_id)["context_note"]
    assert note.startswith("1 of 2 inputs were cut to fit the context: 'text' to 1,500 characters (head and tail)")
