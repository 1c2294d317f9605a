"""`harness compare` end to end: two real runs of a suite against a local OpenAI-compatible server, with answers
that flip both ways between them, compared in the library, on the terminal and in the HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_suite
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.errors import HarnessError, StoreError
from harness.report.compare import compare_runs, render_comparison
from harness.store.db import Store

PAYLOAD = '<script>alert(1)</script><img src=x onerror="alert(2)">'
PROVIDER = "local:smollm2-135m"


def _cases(suite_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]


def _responder(suite_dir: Path, plan: dict[int, str]):
    """Answers case i with its gold object, except: 'total' a wrong total, 'script' a script payload as the
    company, 'http_400' a failed call (not retried). Cases not in the suite copy are matched by text too."""
    cases = _cases(suite_dir)

    def responder(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        index = next(i for i, case in enumerate(cases) if case["text"] in prompt)
        gold = dict(cases[index]["gold"])
        action = plan.get(index)
        if action == "total":
            gold["total"] = "999.99"
        elif action == "script":
            gold["company"] = PAYLOAD
        elif action == "http_400":
            return Reply(status=400, error_message="context length exceeded")
        return Reply(text=json.dumps(gold), chunks=2)

    return responder


# A: cases 2 and 3 wrong. B: 1 wrong (script payload), 2 fixed, 3 still wrong, 4 a failed call.
PLAN_A = {2: "total", 3: "total"}
PLAN_B = {1: "script", 3: "total", 4: "http_400"}


def _run(suite_dir: Path, tmp_path: Path, plan: dict[int, str], *extra: str) -> str:
    db = tmp_path / "runs" / "shadow.duckdb"
    with OpenAIServer(_responder(suite_dir, plan)) as server:
        code = main(["run", str(suite_dir), "--db", str(db), "--reports", str(tmp_path / "reports"),
                     "--base-url", server.base_url, "--no-progress", "--cache", "fresh", *extra])
    assert code == 0
    with Store(db, read_only=True) as store:
        return store.latest_run()


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch) -> tuple[Path, str, str, list[str]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the incumbent is skipped in both runs
    suite = copy_suite(tmp_path, "invoices", 6)
    run_a = _run(suite, tmp_path, PLAN_A)
    run_b = _run(suite, tmp_path, PLAN_B)
    return suite, run_a, run_b, [case["id"] for case in _cases(suite)]


def _db(tmp_path: Path) -> str:
    return str(tmp_path / "runs" / "shadow.duckdb")


def test_compare_runs_sorts_every_case_by_what_changed(two_runs, tmp_path):
    _, run_a, run_b, ids = two_runs
    with Store(_db(tmp_path), read_only=True) as store:
        c = compare_runs(store, run_a, run_b)
    assert (c.suite, c.run_a, c.run_b, c.same_hash, c.warnings) == ("invoices", run_a, run_b, True, [])
    assert c.shared_cases == ids and c.only_in_a == [] and c.only_in_b == []
    assert c.added == [] and c.removed == []  # the incumbent was skipped in both: in neither
    [p] = c.providers
    assert p.provider == PROVIDER and p.n_shared == 6
    assert p.new_failures == [ids[1], ids[4]]
    assert p.fixed == [ids[2]]
    assert p.still_failing == [ids[3]]
    assert p.still_passing == [ids[0], ids[5]]
    assert (p.passed_a, p.passed_b) == (4, 3)
    assert p.pass_rate_a == pytest.approx(4 / 6) and p.pass_rate_b == pytest.approx(3 / 6)
    assert p.pass_rate_delta == pytest.approx(-1 / 6)
    assert p.outcome_b[ids[4]] == "error" and p.outcome_b[ids[1]] == "fail" and p.outcome_a[ids[2]] == "fail"
    # which fields flipped: the company of case 1, the total of case 2, every field of the failed call
    assert p.changed_fields == {ids[1]: ["company"], ids[2]: ["total"],
                                ids[4]: ["company", "date", "address", "total"]}
    fields = {d.name: d for d in p.field_deltas}
    # company: right in all 6 in A; in B wrong in case 1 and missing in case 4 (failed call)
    assert (fields["field.company"].a, fields["field.company"].b) == pytest.approx((1.0, 4 / 6))
    assert fields["field.company"].worse is True
    # total: wrong in 2 and 3 in A; in B wrong in 3 and missing in 4: same accuracy
    assert (fields["field.total"].a, fields["field.total"].b, fields["field.total"].delta) == pytest.approx(
        (4 / 6, 4 / 6, 0.0))
    assert p.metric_deltas == []  # the fields scorer stores no run-level metrics
    assert p.top_changes()[0].name == "field.company"


def test_cli_prints_a_summary_and_writes_a_safe_page_with_new_failures_first(two_runs, tmp_path, capsys):
    _, run_a, run_b, ids = two_runs
    capsys.readouterr()
    reports = tmp_path / "reports"
    assert main(["compare", run_a, run_b, "--db", _db(tmp_path), "--reports", str(reports)]) == 0
    out = capsys.readouterr().out
    page = reports / "invoices" / f"compare-{run_a}-vs-{run_b}.html"
    assert f"Report:  {page}" in out
    assert "6 shared cases  pass rate 67% -> 50% (-17 pts)  +1 fixed  -2 new failures  (1 still failing)" in out
    assert f"new failures: {ids[1]}, {ids[4]}" in out
    assert "field.company 100.0% -> 66.7% (-33.3 pts, worse)" in out
    assert "warning" not in out
    assert len(out.splitlines()) <= 10  # one screen

    html = page.read_text()
    new_1 = html.index(f'id="new-failure-{PROVIDER}-{ids[1]}"')
    new_4 = html.index(f'id="new-failure-{PROVIDER}-{ids[4]}"')
    fixed_2 = html.index(f'id="fixed-{PROVIDER}-{ids[2]}"')
    deltas = html.index("Metric deltas")
    assert new_1 < new_4 < fixed_2 < deltas
    for case_id in (ids[0], ids[3], ids[5]):  # still passing or still failing: not listed
        assert f"-{case_id}\"" not in html
    assert "<script>alert" not in html and 'onerror="alert' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "error: HTTP 400: context length exceeded" in html  # B's failed call, beside A's answer
    assert "<details><summary>Input" in html
    assert "changed: company, date, address, total" in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched


def test_listed_cases_are_capped_per_section_with_a_count(two_runs, tmp_path, monkeypatch):
    _, run_a, run_b, ids = two_runs
    monkeypatch.setattr("harness.report.compare.MAX_LISTED_CASES", 1)
    with Store(_db(tmp_path), read_only=True) as store:
        html = render_comparison(store, compare_runs(store, run_a, run_b), tmp_path / "capped").read_text()
    assert f"{PROVIDER}: 2 cases (the first 1 shown)" in html
    assert f'-{ids[1]}"' in html and f'-{ids[4]}"' not in html
    assert f'id="fixed-{PROVIDER}-{ids[2]}"' in html


def test_provider_filter_and_providers_only_in_one_run(two_runs, tmp_path, capsys):
    suite, run_a, run_b, _ = two_runs
    run_c = _run(suite, tmp_path, PLAN_A, "--candidate", PROVIDER, "--candidate", "local:other-model")
    with Store(_db(tmp_path), read_only=True) as store:
        c = compare_runs(store, run_a, run_c)
        assert [p.provider for p in c.providers] == [PROVIDER] and c.added == ["local:other-model"]
        assert c.providers[0].new_failures == [] and c.providers[0].fixed == []
        back = compare_runs(store, run_c, run_a)
        assert back.removed == ["local:other-model"] and back.added == []
        assert [p.provider for p in compare_runs(store, run_a, run_b, provider=PROVIDER).providers] == [PROVIDER]
        with pytest.raises(HarnessError, match="provider 'local:other-model' is not in both runs"):
            compare_runs(store, run_a, run_c, provider="local:other-model")
    capsys.readouterr()
    assert main(["compare", run_a, run_c, "--db", _db(tmp_path), "--reports", str(tmp_path / "reports")]) == 0
    assert "local:other-model            only in B" in capsys.readouterr().out
    assert main(["compare", run_a, run_b, "--db", _db(tmp_path), "--provider", "openai:gpt-4o-mini"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in both runs" in err


def test_runs_of_different_suites_and_unknown_runs_exit_2_with_one_line(two_runs, tmp_path, capsys):
    _, run_a, _, _ = two_runs
    tickets = copy_suite(tmp_path, "tickets", 3)
    db = tmp_path / "runs" / "shadow.duckdb"
    with OpenAIServer(lambda body: Reply(text='{"label": "card_arrival"}')) as server:
        assert main(["run", str(tickets), "--db", str(db), "--reports", str(tmp_path / "reports"),
                     "--base-url", server.base_url, "--no-progress"]) == 0
    with Store(db, read_only=True) as store:
        run_t = store.latest_run("tickets")
    capsys.readouterr()
    assert main(["compare", run_a, run_t, "--db", str(db), "--reports", str(tmp_path / "reports")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert "'invoices'" in captured.err and "'tickets'" in captured.err and run_t in captured.err
    assert main(["compare", run_a, "nope", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run 'nope'" in err
    assert main(["compare", run_a, run_t, "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with Store(db, read_only=True) as store, pytest.raises(StoreError, match="no run 'nope'"):
        compare_runs(store, "nope", run_a)
    assert not list((tmp_path / "reports").glob("*/compare-*"))


def test_a_changed_suite_hash_is_warned_about_and_the_shared_cases_compared(two_runs, tmp_path, capsys):
    _, run_a, _, ids = two_runs
    # the suite edited: the last case dropped and the prompt's system line reworded
    edited = copy_suite(tmp_path / "v2", "invoices", 5)
    config = edited / "suite.toml"
    config.write_text(config.read_text().replace("and nothing else.", "and nothing else, please."))
    run_e = _run(edited, tmp_path, {0: "total"})
    with Store(_db(tmp_path), read_only=True) as store:
        c = compare_runs(store, run_a, run_e)
        assert not c.same_hash and c.only_in_a == [ids[5]] and c.shared_cases == ids[:5]
        [p] = c.providers
        assert p.n_shared == 5 and p.new_failures == [ids[0]] and p.fixed == [ids[2], ids[3]]
        path = render_comparison(store, c, tmp_path / "reports")
    assert "it differs from A" in path.read_text()  # the prompt changed: both are shown
    capsys.readouterr()
    assert main(["compare", run_a, run_e, "--db", _db(tmp_path), "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "warning: suite hash differs" in out and "comparing the 5 case(s) both runs have (1 only in A" in out
    assert "5 shared cases  pass rate 60% -> 80%" in out


def test_run_level_metrics_are_compared(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tickets = copy_suite(tmp_path, "tickets", 4)
    rows = _cases(tickets)
    db = tmp_path / "runs" / "shadow.duckdb"
    run_ids = []
    for right in ({0, 1}, {0, 1, 2, 3}):
        def responder(body: dict, right: set[int] = right) -> Reply:
            prompt = body["messages"][-1]["content"]
            i = next(k for k, row in enumerate(rows) if f"Message: {row['text']}" in prompt)
            return Reply(text=json.dumps({"label": rows[i]["label"] if i in right else "not_an_intent"}))

        with OpenAIServer(responder) as server:
            assert main(["run", str(tickets), "--db", str(db), "--reports", str(tmp_path / "reports"),
                         "--base-url", server.base_url, "--no-progress", "--cache", "fresh"]) == 0
        with Store(db, read_only=True) as store:
            run_ids.append(store.latest_run())
    with Store(db, read_only=True) as store:
        c = compare_runs(store, *run_ids)
        path = render_comparison(store, c, tmp_path / "reports")
    [p] = c.providers
    metrics = {d.name: d for d in p.metric_deltas}
    assert metrics["label · accuracy"].a == pytest.approx(0.5) and metrics["label · accuracy"].b == pytest.approx(1.0)
    assert metrics["label · accuracy"].delta == pytest.approx(0.5) and metrics["label · accuracy"].worse is False
    invalid = metrics["label · invalid_label_rate"]
    assert invalid.lower_is_better and invalid.delta == pytest.approx(-0.5) and invalid.worse is False
    assert p.fixed == [rows[2]["id"], rows[3]["id"]] and p.new_failures == []
    html = path.read_text()
    assert "label · accuracy" in html and "+0.500" in html


def test_a_hallucinated_clause_quote_counts_as_wrong_in_the_per_clause_accuracy(tmp_path):
    """A clause row passes on presence alone; its quote being made up must still make it wrong here."""
    from harness.report.compare import _RunData

    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "s", "n_cases": 2})
        store.insert("run_providers", [{"run_id": run_id, "provider": "p", "role": "candidate", "status": "ready"}])
        store.insert("cases", [{"run_id": run_id, "case_id": c, "position": i, "gold": {}, "messages": []}
                               for i, c in enumerate(["c1", "c2"])])
        store.insert("responses", [{"run_id": run_id, "case_id": c, "provider": "p", "text": "{}"}
                                   for c in ["c1", "c2"]])
        store.insert("scores", [
            {"run_id": run_id, "case_id": c, "provider": "p", "scorer": "clauses", "metric": "clause.Governing Law",
             "value": 1.0, "passed": True, "detail": {"grounded": grounded, "outcome": "tp", "pred_present": True}}
            for c, grounded in [("c1", True), ("c2", False)]])
        data = _RunData(store, run_id)
    assert data.field_accuracy("p", ["c1", "c2"]) == {"clause.Governing Law": 0.5}
