"""`harness run` end to end against a local OpenAI-compatible HTTP server: rows in DuckDB, report, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import gold_of
from openai_server import OpenAIServer, Reply

from harness.cli import main

PAYLOAD = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def _cases(suite_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]


def make_responder(suite_dir: Path):
    """Answers each case by position: 0, 2, 4 right; 1 wrong total; 3 script payload; 5 an HTTP 500."""
    cases = _cases(suite_dir)

    def responder(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        index = next(i for i, case in enumerate(cases) if case["text"] in prompt)
        gold = dict(cases[index]["gold"])
        if index == 1:
            gold["total"] = "999.99"
        if index == 3:
            gold["company"] = PAYLOAD
        if index == 5:
            return Reply(status=500, error_message="upstream overloaded")
        return Reply(text=json.dumps(gold), chunks=3)

    return responder


def _run(args: list[str]) -> int:
    return main(["run", *args, "--no-progress"])


def test_run_stores_every_response_and_writes_a_safe_report(mini_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db, reports = tmp_path / "runs" / "shadow.duckdb", tmp_path / "reports"
    with OpenAIServer(make_responder(mini_suite)) as server:
        code = _run([str(mini_suite), "--db", str(db), "--reports", str(reports), "--base-url", server.base_url])
    out = capsys.readouterr().out
    assert code == 0
    con = duckdb.connect(str(db), read_only=True)
    run_id, status, reason, n_cases = con.execute("SELECT run_id, status, status_reason, n_cases FROM runs").fetchone()
    # one answer in six failed with HTTP 500: above the 5% a run may lose to infrastructure and still be `completed`
    assert (status, n_cases) == ("degraded", 6)
    assert reason == "local:smollm2-135m: 1 of 6 answers failed for infrastructure reasons (http_500 1)"
    assert f"run {run_id}: degraded: {reason}" in out
    responses = con.execute(
        "SELECT case_id, provider, error_kind, output_tokens, ttft_ms FROM responses ORDER BY case_id"
    ).fetchall()
    assert len(responses) == 6 and {r[1] for r in responses} == {"local:smollm2-135m"}
    assert [r[2] for r in responses].count("http_500") == 1
    passed = dict(con.execute(
        "SELECT case_id, passed FROM scores WHERE metric = 'case_pass'"
    ).fetchall())
    ids = list(gold_of(mini_suite))
    assert passed == {ids[0]: True, ids[1]: False, ids[2]: True, ids[3]: False, ids[4]: True}
    skipped = con.execute("SELECT status, reason FROM run_providers WHERE role = 'incumbent'").fetchone()
    assert skipped == ("skipped", "OPENAI_API_KEY is not set")
    con.close()

    report = reports / "invoices" / run_id / "index.html"
    assert f"Report:  {report}" in out and f"DuckDB:  {db}" in out
    assert "skipped: OPENAI_API_KEY is not set" in out
    html = report.read_text()
    assert "OPENAI_API_KEY is not set" in html
    assert "<script>alert" not in html and "onerror=\"alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for case_id in (ids[1], ids[3], ids[5]):
        assert f'id="case-{case_id}"' in html
    assert f'id="case-{ids[0]}"' not in html
    assert "upstream overloaded" in html
    assert "999.99" in html


def test_second_run_is_added_beside_the_first(mini_suite, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "shadow.duckdb"
    with OpenAIServer(make_responder(mini_suite)) as server:
        args = [str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url]
        assert _run([*args, "--limit", "2"]) == 0
        assert _run([*args, "--limit", "3"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    counts = con.execute(
        "SELECT r.case_limit, count(s.case_id) FROM runs r JOIN responses s USING (run_id) "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert counts == [(2, 2), (3, 3)]


def test_api_keys_never_reach_duckdb_report_or_output(mini_suite, tmp_path, capsys, monkeypatch):
    secret = "sk-proj-NEVER-STORE-THIS-4242"
    db, reports = tmp_path / "shadow.duckdb", tmp_path / "reports"
    with OpenAIServer(make_responder(mini_suite)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_API_KEY", secret + "-vllm")
        code = _run([str(mini_suite), "--db", str(db), "--reports", str(reports), "--base-url", server.base_url])
        assert all(h["authorization"].startswith("Bearer " + secret) for h in server.headers)
    captured = capsys.readouterr()
    assert code == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM responses WHERE provider = 'openai:gpt-4o-mini'").fetchone()[0] == 6
    for table in ("runs", "run_providers", "cases", "responses", "scores"):
        for row in con.execute(f"SELECT * FROM {table}").fetchall():
            assert secret not in json.dumps(row, default=str)
    con.close()
    assert secret.encode() not in db.read_bytes()
    for path in reports.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text()
    assert secret not in captured.out + captured.err


def test_regressions_come_first_when_the_incumbent_answers(mini_suite, tmp_path, monkeypatch):
    """Incumbent always right; candidate as in make_responder: its failures are regressions, listed first."""
    cases = _cases(mini_suite)
    candidate = make_responder(mini_suite)

    def responder(body):
        if body["model"] == "gpt-4o-mini":
            prompt = body["messages"][-1]["content"]
            return Reply(text=json.dumps(next(c["gold"] for c in cases if c["text"] in prompt)))
        return candidate(body)

    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code = _run([str(mini_suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url])
    assert code == 0
    html = next((tmp_path / "r").rglob("index.html")).read_text()
    assert "was skipped" not in html
    ids = [c["id"] for c in cases]
    positions = [html.index(f'id="case-{ids[i]}"') for i in (1, 3, 5)]
    assert positions == sorted(positions)
    assert html.count("openai:gpt-4o-mini: pass") == 3


def test_bad_suite_exits_2_and_leaves_stored_runs_intact(mini_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "shadow.duckdb"
    with OpenAIServer(make_responder(mini_suite)) as server:
        args = ["--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url]
        assert _run([str(mini_suite), *args, "--limit", "2"]) == 0
        (mini_suite / "prompt.j2").write_text("{{ text }} {{ missing_thing }}")
        capsys.readouterr()
        assert _run([str(mini_suite), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing field 'missing_thing'" in err and "line 1" in err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), min(status) FROM runs").fetchone() == (1, "completed")
    assert con.execute("SELECT count(*) FROM responses").fetchone()[0] == 2


def test_no_runnable_provider_exits_2(mini_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = _run([str(mini_suite), "--db", str(tmp_path / "s.duckdb"), "--candidate", "openai:gpt-4o"])
    assert code == 2
    assert "no provider can run" in capsys.readouterr().err
    assert not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("limit", ["-1", "0", "ten"])
def test_bad_limit_is_a_usage_error(mini_suite, limit):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(mini_suite), "--limit", limit])
    assert exit_info.value.code == 2


def test_sigterm_interrupts_cleanly(mini_suite, tmp_path):
    """SIGTERM (a CI cancel) stops the run like Ctrl-C: rows kept, run marked interrupted, exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}", delay_s=0.4)) as server:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(mini_suite), "--db", str(db), "--reports",
             str(tmp_path / "r"), "--base-url", server.base_url, "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        while len(server.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    con = duckdb.connect(str(db), read_only=True)
    status, kept = con.execute("SELECT status, (SELECT count(*) FROM responses) FROM runs").fetchone()
    assert status == "interrupted"
    assert f"kept {kept} responses" in err and 1 <= kept < 6
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    report = tmp_path / "r" / "invoices" / run_id / "index.html"
    assert f"Report of what was kept: {report}" in err
    assert "Status <b>interrupted</b>" in report.read_text()


def test_two_scorers_on_one_suite(mini_suite, tmp_path, monkeypatch):
    """Each scorer gives its own case_pass; a case passes when all do."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = mini_suite / "suite.toml"
    extra = '[[scorers]]\nkind = "fields"\nname = "total_verbatim"\n[scorers.fields]\ntotal = "exact"\n\n'
    config.write_text(config.read_text().replace("[params]", extra + "[params]"))
    with OpenAIServer(make_responder(mini_suite)) as server:
        code = _run([str(mini_suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url])
    assert code == 0
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    per_scorer = con.execute(
        "SELECT scorer, count(*) FROM scores WHERE metric = 'case_pass' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert per_scorer == [("fields", 5), ("total_verbatim", 5)]  # the HTTP 500 case has no scores


def test_scorers_need_distinct_names(mini_suite, capsys):
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace(
        "[params]", '[[scorers]]\nkind = "fields"\n[scorers.fields]\ntotal = "exact"\n\n[params]'))
    assert main(["validate", str(mini_suite)]) == 2
    assert "scorers: two scorers are named 'fields'; give the second one name" in capsys.readouterr().err


def test_classification_suite_with_text_labels(tmp_path, capsys, monkeypatch):
    """Gold labels are plain strings (and one number): stored as JSON, read back as themselves."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = tmp_path / "tickets"
    suite.mkdir()
    (suite / "suite.toml").write_text(
        'name = "tickets"\ntask = "classification"\n[output]\nformat = "text"\n'
        '[[scorers]]\nkind = "exact"\n[[providers]]\nid = "local:m"\nrole = "candidate"\n'
    )
    (suite / "prompt.j2").write_text("Label this: {{ text }}")
    rows = [("t1", "my card has not arrived", "card_arrival"), ("t2", "what is 2+3", 5),
            ("t3", "<script>x</script>", "spam")]
    (suite / "cases.jsonl").write_text("".join(
        json.dumps({"id": i, "text": t, "gold": g}) + "\n" for i, t, g in rows))
    answers = {"my card has not arrived": "card_arrival", "what is 2+3": "5", "<script>x</script>": "ham"}

    def responder(body):
        return Reply(text=answers[body["messages"][-1]["content"].removeprefix("Label this: ")])

    db = tmp_path / "s.duckdb"
    with OpenAIServer(responder) as server:
        code = _run([str(suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url])
    assert code == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    gold = dict(con.execute("SELECT case_id, gold FROM cases").fetchall())
    passed = dict(con.execute("SELECT case_id, passed FROM scores WHERE metric = 'case_pass'").fetchall())
    assert gold == {"t1": '"card_arrival"', "t2": "5", "t3": '"spam"'}
    assert passed == {"t1": True, "t2": True, "t3": False}
    html = next((tmp_path / "r").rglob("index.html")).read_text()
    assert 'id="case-t3"' in html and "&lt;script&gt;x&lt;/script&gt;" in html
