"""The workload suites end to end against a local OpenAI-compatible server: classification metrics stored,
re-scoring without calls, custom scorers, default samples and long-input cuts recorded per case."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from conftest import ROOT, copy_suite
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.store.db import Store


def _rows(suite_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]


def _run(suite_dir: Path, tmp_path: Path, server: OpenAIServer, *extra: str) -> int:
    return main(["run", str(suite_dir), "--db", str(tmp_path / "shadow.duckdb"), "--reports", str(tmp_path / "rep"),
                 "--base-url", server.base_url, "--no-progress", *extra])


def _query(tmp_path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(tmp_path / "shadow.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _tickets_responder(rows: list[dict]):
    """Case 0 and 5 right; 1 right but spelled 'Card Arrival' style; 2 answers case 3's label; 3 a label
    outside the set; 4 an HTTP 500."""

    def responder(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        i = next(k for k, row in enumerate(rows) if f"Message: {row['text']}" in prompt)
        label = {0: rows[0]["label"], 1: rows[1]["label"].replace("_", " ").title(), 2: rows[3]["label"],
                 3: "not_an_intent", 5: rows[5]["label"]}.get(i)
        if label is None:
            return Reply(status=500, error_message="overloaded")
        return Reply(text=json.dumps({"label": label}))

    return responder


@pytest.fixture
def tickets(tmp_path: Path) -> Path:
    return copy_suite(tmp_path, "tickets", 6)


def test_tickets_stores_sklearn_metrics_and_the_confusion_matrix(tickets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = _rows(tickets)
    assert len({row["label"] for row in rows}) == 6  # round-robin order: the first cases are 6 intents
    config = tickets / "suite.toml"  # constrained output, as for a vLLM candidate
    config.write_text(config.read_text().replace('structured_output = "json"', ""))
    with OpenAIServer(_tickets_responder(rows)) as server:
        assert _run(tickets, tmp_path, server) == 0
    # the label set reached the server as a JSON schema enum
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == json.loads((tickets / "labels.json").read_text())
    metrics = {m: (v, json.loads(d)) for m, v, d in _query(tmp_path, "SELECT metric, value, detail FROM metrics")}
    # by hand: 3 of 6 right (case 1 folds to its label; the failed call counts as a miss); classes g0..g5 have
    # F1 1, 1, 0, 0, 0, 1 -> macro and weighted (one case each) 0.5
    assert metrics["accuracy"][0] == pytest.approx(3 / 6)
    assert metrics["macro_f1"][0] == pytest.approx(0.5)
    assert metrics["weighted_f1"][0] == pytest.approx(0.5)
    assert metrics["invalid_label_rate"][0] == pytest.approx(1 / 5)  # of the 5 answers
    pairs = {(p["gold"], p["pred"]) for p in metrics["confused_pairs"][1]["pairs"]}
    assert pairs == {(rows[2]["label"], rows[3]["label"]), (rows[3]["label"], "(invalid)"),
                     (rows[4]["label"], "(no answer)")}
    matrix = metrics["confusion_matrix"][1]
    assert sum(map(sum, matrix["matrix"])) == 6 and "(no answer)" in matrix["labels"]
    assert metrics["per_class"][1][rows[0]["label"]]["f1"] == 1.0
    out = capsys.readouterr().out
    assert "accuracy 0.5" in out and "macro_f1 0.5" in out
    assert "invalid output 20%" in out  # 1 label outside the set of 5 answers (the failed call has none)


def test_score_rescores_stored_answers_without_calling_a_model(tickets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = _rows(tickets)
    with OpenAIServer(_tickets_responder(rows)) as server:
        assert _run(tickets, tmp_path, server) == 0
    calls = len(server.requests)
    # a reviewer decides case 2's gold label was wrong: the model's answer (case 3's label) is right after all
    rows[2]["label"] = rows[3]["label"]
    (tickets / "cases.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    capsys.readouterr()
    assert main(["score", "--db", str(tmp_path / "shadow.duckdb"), "--reports", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "re-scored 5 answers" in out and "1 failed calls" in out and "no model called" in out
    assert "gold changed since the run for 1 case(s): " + rows[2]["id"] in out
    assert "pass rate 50% -> 67%" in out
    assert len(server.requests) == calls  # the server is closed anyway: nothing was asked
    passed = dict(_query(tmp_path, "SELECT case_id, passed FROM scores WHERE metric = 'case_pass'"))
    assert passed[rows[2]["id"]] is True and len(passed) == 5
    (accuracy,) = _query(tmp_path, "SELECT value FROM metrics WHERE metric = 'accuracy'")[0]
    assert accuracy == pytest.approx(4 / 6)
    (gold,) = _query(tmp_path, f"SELECT gold FROM cases WHERE case_id = '{rows[2]['id']}'")[0]
    assert json.loads(gold) == rows[3]["label"]
    (rescored, scorers) = _query(tmp_path, "SELECT rescored, scorers FROM runs")[0]
    assert rescored == 1 and json.loads(scorers) == [{"kind": "label", "name": "label"}]


def test_score_refuses_another_suite_and_an_unknown_run(tickets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIServer(_tickets_responder(_rows(tickets))) as server:
        assert _run(tickets, tmp_path, server) == 0
    db = str(tmp_path / "shadow.duckdb")
    before = _query(tmp_path, "SELECT count(*) FROM scores")
    capsys.readouterr()
    invoices = str(copy_suite(tmp_path, "invoices", 2))
    # without a run id, --suite takes that suite's latest run: there is none
    assert main(["score", "--db", db, "--suite", invoices]) == 2
    err = capsys.readouterr().err
    assert "no runs of suite invoices yet" in err and err.count("\n") == 1
    # a run of another suite, named
    with Store(db, read_only=True) as store:
        run_id = store.latest_run()
    assert main(["score", run_id, "--db", db, "--suite", invoices]) == 2
    err = capsys.readouterr().err
    assert "this is suite 'invoices', but run" in err and err.count("\n") == 1
    assert main(["score", "nope", "--db", db]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert _query(tmp_path, "SELECT count(*) FROM scores") == before


CHECKS = '''
import json


def total_at_least(case, output, minimum=0):
    """Passes when the answer's total is a number of at least `minimum`."""
    try:
        return float(json.loads(output)["total"]) >= minimum
    except (ValueError, KeyError, TypeError):
        return False


def company_share(case, output):
    """The share of the gold company name's words found in the answer."""
    words = case.gold["company"].lower().split()
    return sum(word in output.lower() for word in words) / len(words)
'''


def _with_custom_scorers(suite_dir: Path, function: str = "checks:total_at_least") -> None:
    (suite_dir / "checks.py").write_text(CHECKS)
    with (suite_dir / "suite.toml").open("a") as f:
        f.write(f'\n[[scorers]]\nkind = "python"\nname = "total_floor"\nfunction = "{function}"\n'
                'options = {minimum = 20}\n'
                '\n[[scorers]]\nkind = "python"\nname = "company_words"\nfunction = "checks:company_share"\n'
                'threshold = 0.99\n')


def test_custom_python_scorers_from_the_suite_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "invoices", 4)
    _with_custom_scorers(suite)
    rows = _rows(suite)

    def responder(body: dict) -> Reply:
        i = next(k for k, row in enumerate(rows) if row["text"] in body["messages"][-1]["content"])
        gold = dict(rows[i]["gold"])
        if i == 1:
            gold["company"] = gold["company"].split()[0]  # half the name
        return Reply(text=json.dumps(gold))

    with OpenAIServer(responder) as server:
        assert _run(suite, tmp_path, server) == 0
    got = {(c, s, m): (v, p) for c, s, m, v, p in _query(
        tmp_path, "SELECT case_id, scorer, metric, value, passed FROM scores WHERE scorer <> 'fields'")}
    for row in rows:
        expected = float(row["gold"]["total"].replace(",", "")) >= 20
        assert got[(row["id"], "total_floor", "case_pass")][1] is expected
    share = got[(rows[1]["id"], "company_words", "value")][0]
    assert 0 < share < 1 and got[(rows[1]["id"], "company_words", "case_pass")][1] is False
    assert got[(rows[0]["id"], "company_words", "case_pass")][1] is True


def test_a_custom_scorer_that_cannot_load_stops_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "invoices", 2)
    _with_custom_scorers(suite, function="checks:no_such_function")
    with OpenAIServer() as server:
        assert _run(suite, tmp_path, server) == 2
    err = capsys.readouterr().err
    assert "scorers[2].function: module 'checks' has no function 'no_such_function'" in err
    assert err.count("\n") == 1 and server.requests == []
    assert main(["validate", str(suite)]) == 2
    assert "no_such_function" in capsys.readouterr().err


def test_default_limit_all_and_limit(tickets, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tickets / "suite.toml"
    config.write_text(config.read_text().replace("default_limit = 20", "default_limit = 2"))
    with OpenAIServer(lambda body: Reply(text='{"label": "age_limit"}')) as server:
        for extra in ((), ("--all",), ("--limit", "all"), ("--limit", "3")):
            assert _run(tickets, tmp_path, server, "--cache", "off", *extra) == 0
    counts = [n for (n,) in _query(tmp_path, "SELECT n_cases FROM runs ORDER BY started_at")]
    assert counts == [2, 6, 6, 3]
    # the suite's local candidate asks for JSON mode only (structured_output = "json"): no 77-value enum
    assert {json.dumps(body["response_format"]) for body in server.requests} == {'{"type": "json_object"}'}


def test_contracts_are_cut_to_the_context_budget_and_the_cut_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "contracts", 2)
    config = suite / "suite.toml"
    config.write_text(config.read_text().replace("max_chars = 6000", "max_chars = 1000"))
    rows = _rows(suite)
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        assert _run(suite, tmp_path, server) == 0
    prompts = [body["messages"][-1]["content"] for body in server.requests]
    contexts = {c: json.loads(x) for c, x in _query(tmp_path, "SELECT case_id, context FROM cases")}
    for row in rows:
        prompt = next(p for p in prompts if row["text"][:200] in p)
        record = contexts[row["id"]]
        assert record == {"field": "text", "chars": len(row["text"]), "strategy": "head", "truncated": True,
                          "kept": [[0, 1000]]}
        assert row["text"][:1000] in prompt and row["text"][1000:1100] not in prompt
        assert f"[... {len(row['text']) - 1000} more characters not shown ...]" in prompt


def test_a_refused_cut_names_the_line_and_the_fix(tmp_path, capsys):
    suite = copy_suite(tmp_path, "contracts", 2)
    config = suite / "suite.toml"
    config.write_text(config.read_text().replace('strategy = "head"', 'strategy = "fail"'))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "cases.jsonl line 2: 'text' has " in err and "over context.max_chars = 6000" in err
    assert err.count("\n") == 1


def test_contracts_count_a_hallucinated_clause_quote_in_duckdb_and_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "contracts", 1)
    row = _rows(suite)[0]
    parties = row["gold"]["Parties"]["spans"][0]["text"]
    answer = {
        # a real clause with its line breaks and spacing changed: grounded
        "Parties": {"present": True, "quote": "  " + parties.replace(" ", "\n  "), "answer": None},
        # an invented governing-law clause: a hallucinated clause reference
        "Governing Law": {"present": True, "quote": "This Agreement is governed by the laws of Atlantis.",
                          "answer": "Atlantis"},
    }
    with OpenAIServer(lambda body: Reply(text=json.dumps(answer))) as server:
        assert _run(suite, tmp_path, server) == 0
    details = {m: json.loads(d) for m, d in _query(tmp_path, "SELECT metric, detail FROM scores")}
    assert details["clause.Parties"]["grounded"] is True
    assert details["clause.Governing Law"]["grounded"] is False
    assert details["hallucinated_quotes"]["quotes"] == ["This Agreement is governed by the laws of Atlantis."]
    metrics = dict(_query(tmp_path, "SELECT metric, value FROM metrics"))
    assert metrics["quotes.hallucinated"] == 1
    run_id = _query(tmp_path, "SELECT run_id FROM runs")[0][0]
    html = (tmp_path / "rep" / "contracts" / run_id / "index.html").read_text()
    assert "hallucinated quote" in html and "Per clause type" in html and "laws of Atlantis" in html
    assert "quotes.hallucinated" in html


def test_receipts_line_items_scored_and_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "receipts", 2)
    rows = _rows(suite)

    def responder(body: dict) -> Reply:
        i = next(k for k, r in enumerate(rows) if r["text"] in body["messages"][-1]["content"])
        gold = rows[i]["gold"]
        answer = {k: (v[0] if isinstance(v, list) and v and k != "line_items" else v) for k, v in gold.items()}
        answer = {k: (None if v == [] else v) for k, v in answer.items()}
        if i == 1:  # drop one item and invent another
            answer["line_items"] = [*gold["line_items"][1:], {"name": "UNICORN STEAK", "quantity": "1", "price": "99"}]
        return Reply(text=json.dumps(answer))

    with OpenAIServer(responder) as server:
        assert _run(suite, tmp_path, server) == 0
    f1 = dict(_query(tmp_path, "SELECT case_id, value FROM scores WHERE metric = 'items.f1'"))
    n = len(rows[1]["gold"]["line_items"])
    assert f1[rows[0]["id"]] == 1.0
    assert f1[rows[1]["id"]] == pytest.approx(2 * (n - 1) / (2 * n))
    metrics = dict(_query(tmp_path, "SELECT metric, value FROM metrics WHERE scorer = 'line_items'"))
    n0 = len(rows[0]["gold"]["line_items"])
    assert metrics["items.micro_recall"] == pytest.approx((n0 + n - 1) / (n0 + n))
    run_id = _query(tmp_path, "SELECT run_id FROM runs")[0][0]
    html = (tmp_path / "rep" / "receipts" / run_id / "index.html").read_text()
    assert "UNICORN STEAK" in html and "line items" in html


def test_invoices_report_fields_whose_gold_is_not_in_the_text_apart(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = [json.loads(line) for line in (ROOT / "suites" / "invoices" / "cases.jsonl").read_text().splitlines()]
    slip = next(r for r in rows if not r["gold_found_in_text"]["address"])
    clean = [r for r in rows if all(r["gold_found_in_text"].values())][:2]
    suite = copy_suite(tmp_path, "invoices", 1)
    (suite / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*clean, slip]))

    def responder(body: dict) -> Reply:
        row = next(r for r in (*clean, slip) if r["text"] in body["messages"][-1]["content"])
        answer = dict(row["gold"])
        if row is slip:  # what the receipt says, not the slipped gold: wrong by the gold
            answer["address"] = "an address printed on the receipt"
        return Reply(text=json.dumps(answer))

    with OpenAIServer(responder) as server:
        assert _run(suite, tmp_path, server) == 0
    details = {c: json.loads(d) for c, d in _query(tmp_path, "SELECT case_id, detail FROM scores "
                                                             "WHERE metric = 'field.address'")}
    assert details[slip["id"]]["gold_in_input"] is False and details[clean[0]["id"]]["gold_in_input"] is True
    run_id = _query(tmp_path, "SELECT run_id FROM runs")[0][0]
    html = (tmp_path / "rep" / "invoices" / run_id / "index.html").read_text()
    # address: 2 of 3 right overall; 2 of 2 where the gold value is in the text
    assert "100.0% where gold is in the input (1 gold values are not)" in html


@pytest.mark.parametrize(("suite_name", "edit", "message"), [
    ("contracts", ('text_field = "text"', 'text_field = "body"'),
     "line 1: no text field 'body', which scorers[1].text_field names"),
    ("contracts", ('"Governing Law" = "which', '"Governing Lore" = "which'),
     "scorers[1].categories: no case's gold has 'Governing Lore'"),
    ("receipts", ('key = "line_items"', 'key = "lineitems"'),
     "line 1: gold has no 'lineitems', which scorers[2].key names"),
])
def test_misspelt_scorer_fields_are_refused(tmp_path, capsys, suite_name, edit, message):
    suite = copy_suite(tmp_path, suite_name, 2)
    config = suite / "suite.toml"
    assert edit[0] in config.read_text()
    config.write_text(config.read_text().replace(*edit))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_scorer_that_raises_fails_its_cases_visibly_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "invoices", 2)
    (suite / "checks.py").write_text(
        "from harness.scorers import Score\n\n"
        "def twice(case, output):\n    return [Score('x', 1.0, True), Score('x', 0.0, False)]\n"
    )
    with (suite / "suite.toml").open("a") as f:
        f.write('\n[[scorers]]\nkind = "python"\nname = "twice"\nfunction = "checks:twice"\n')
    rows = _rows(suite)
    with OpenAIServer(lambda body: Reply(text=json.dumps(
        next(r["gold"] for r in rows if r["text"] in body["messages"][-1]["content"])
    ))) as server:
        assert _run(suite, tmp_path, server) == 0
    out = capsys.readouterr().out
    assert "scorer 'twice' raised on 2 answer(s), which fail: TypeError: returned two Scores named 'x'" in out
    assert _query(tmp_path, "SELECT count(*) FROM responses")[0][0] == 2
    run_id = _query(tmp_path, "SELECT run_id FROM runs")[0][0]
    html = (tmp_path / "rep" / "invoices" / run_id / "index.html").read_text()
    assert "scorer twice" in html and "returned two Scores named" in html


def test_metrics_of_an_interrupted_run_count_cases_never_answered(tmp_path):
    from harness.scoring.labels import LabelScorer
    from harness.scoring.registry import aggregate_metrics
    from harness.suite.load import Case

    cases = {f"c{i}": Case(id=f"c{i}", input={}, gold="a", line=i) for i in range(4)}
    responses = pd.DataFrame({"provider": ["p", "p"], "case_id": ["c0", "c1"], "error": [None, "boom"]})
    scores = pd.DataFrame({"provider": ["p"], "scorer": ["label"], "case_id": ["c0"], "metric": ["case_pass"],
                           "value": [1.0], "passed": [True], "detail": ['{"gold": "a", "pred": "a"}']})
    rows = aggregate_metrics([LabelScorer(["a", "b"])], scores, responses, cases)
    accuracy = next(r for r in rows if r["metric"] == "accuracy")
    assert accuracy["value"] == pytest.approx(1 / 4) and accuracy["detail"] == {"n": 4}


def test_score_on_a_missing_database_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nothere.duckdb"
    assert main(["score", "--db", str(db)]) == 2
    assert "no such DuckDB file" in capsys.readouterr().err and not db.exists()


def test_a_lone_surrogate_in_model_output_is_made_storable_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_suite(tmp_path, "tickets", 2)
    # the JSON escape \ud800 decodes to a lone surrogate, which UTF-8 (and so DuckDB) cannot hold
    with OpenAIServer(lambda body: Reply(text='{"label": "lone \\ud800 surrogate"}')) as server:
        assert _run(suite, tmp_path, server) == 0
    texts = [t for (t,) in _query(tmp_path, "SELECT text FROM responses")]
    assert texts == ['{"label": "lone \\ud800 surrogate"}'] * 2  # the answer as sent
    raws = [json.loads(d)["raw"] for (d,) in _query(tmp_path, "SELECT detail FROM scores WHERE metric = 'case_pass'")]
    assert raws == ["lone \ufffd surrogate"] * 2  # the label read from it, made storable
