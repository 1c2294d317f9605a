"""Whole shadow runs against local servers speaking the OpenAI and Anthropic wire formats: injected faults,
the response cache, kill -9 and resume, production-log replay as the incumbent, and pricing."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from anthropic_server import AnthropicReply, AnthropicServer
from conftest import ROOT, copy_invoices, gold_of
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.pricing import load_pricing

FAULT_KINDS = {"http_429", "http_500", "http_503", "http_529", "timeout", "truncated", "stream_error", "bad_response"}


@pytest.fixture
def suite30(tmp_path: Path) -> Path:
    """The invoices suite with its first 30 cases."""
    return copy_invoices(tmp_path, 30)


def _set_providers(suite_dir: Path, providers: str) -> None:
    toml = (suite_dir / "suite.toml").read_text()
    toml = toml[: toml.index("[[providers]]")] + providers
    (suite_dir / "suite.toml").write_text(toml)


def _case_texts(suite_dir: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]
    return {row["id"]: row["text"] for row in rows}


def _case_of(body: dict, texts: dict[str, str]) -> str:
    prompt = body["messages"][-1]["content"]
    prompt = prompt if isinstance(prompt, str) else "".join(block["text"] for block in prompt)
    return next(case_id for case_id, text in texts.items() if text in prompt)


def _gold_answer(suite_dir: Path):
    gold, texts = gold_of(suite_dir), _case_texts(suite_dir)
    return lambda body: json.dumps(gold[_case_of(body, texts)])


def _run(args: list[str]) -> int:
    return main(["run", *args, "--no-progress"])


def _faulty(answer, rng: random.Random, lock: threading.Lock, overload_status: int):
    """Right answers, except that one request in five fails in one of the ways real APIs fail."""

    def respond(body: dict) -> Reply:
        with lock:
            roll, pick = rng.random(), rng.randrange(7)
        reply = AnthropicReply if overload_status == 529 else Reply
        if roll >= 0.2:
            return reply(text=answer(body), chunks=3)
        return [
            reply(status=429, headers={"retry-after-ms": "50"}, error_message="rate limited"),
            reply(status=500, error_message="internal error"),
            reply(status=overload_status, error_message="overloaded"),
            reply(text=answer(body), chunks=4, truncate=True),
            reply(text=answer(body), chunks=4, error_event=True),
            reply(text=answer(body), chunks=4, stall_s=3),  # past the 1 s request timeout
            reply(text=answer(body), chunks=4, break_stream=True),
        ][pick]

    return respond


def test_a_run_with_20_percent_faults_stores_every_case_once(suite30, tmp_path, monkeypatch, capsys):
    _set_providers(suite30, """
[[providers]]
id = "anthropic:claude-haiku-4-5"
role = "incumbent"
timeout = 1.0

[[providers]]
id = "local:smollm2-135m"
role = "candidate"
concurrency = 4
timeout = 1.0
""")
    answer, lock = _gold_answer(suite30), threading.Lock()
    texts = _case_texts(suite30)
    db = tmp_path / "s.duckdb"
    with (
        AnthropicServer(_faulty(answer, random.Random(7), lock, 529)) as anthropic_server,
        OpenAIServer(_faulty(answer, random.Random(8), lock, 503)) as openai_server,
    ):
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
        code = _run([str(suite30), "--db", str(db), "--reports", str(tmp_path / "r"),
                     "--base-url", openai_server.base_url])
    assert code == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT case_id, provider, error, error_kind, attempts FROM responses").fetchall()
    assert len(rows) == 60 and len({(r[0], r[1]) for r in rows}) == 60
    scored = {(c, p) for c, p in con.execute("SELECT case_id, provider FROM scores WHERE metric = 'case_pass'")
              .fetchall()}
    for case_id, provider, error, kind, attempts in rows:
        assert (case_id, provider) in scored or (error and kind in FAULT_KINDS), (case_id, provider, kind)
        assert 1 <= attempts <= 4
    assert sum(r[4] for r in rows) > 60  # faults were retried
    for server in (anthropic_server, openai_server):
        per_case = Counter(_case_of(body, texts) for body in server.requests if body.get("messages"))
        assert set(per_case) == set(texts) and max(per_case.values()) <= 4  # retries bounded
    stats = dict(con.execute("SELECT provider, stats FROM run_providers").fetchall())
    # every request the server saw was counted (a call can also fail before the server reads it: a reused
    # keep-alive connection that the server closed at the same moment)
    assert len(anthropic_server.requests) <= json.loads(stats["anthropic:claude-haiku-4-5"])["calls"] <= 4 * 30
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "completed"


def test_replay_mode_makes_no_calls_the_second_time(mini_suite, tmp_path, monkeypatch, capsys):
    db = tmp_path / "s.duckdb"
    answer = _gold_answer(mini_suite)
    with OpenAIServer(lambda body: Reply(text=answer(body))) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-1")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = [str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url]
        assert _run(args) == 0
        first_calls = len(server.requests)
        capsys.readouterr()
        assert _run(args) == 0
        second = capsys.readouterr().out
        assert len(server.requests) == first_calls == 12
        assert main(["cache", "explain", "--db", str(db)]) == 0
        assert "12 of 12 answers came from the cache" in capsys.readouterr().out

        assert _run([*args, "--cache", "fresh"]) == 0
        assert len(server.requests) == 24

        toml = (mini_suite / "suite.toml").read_text()
        (mini_suite / "suite.toml").write_text(toml.replace("temperature = 0.0", "temperature = 0.5"))
        assert _run(args) == 0
        assert len(server.requests) == 36
    assert "cached 6" in second
    con = duckdb.connect(str(db), read_only=True)
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    sources = con.execute(
        "SELECT source, count(*), bool_and(cached), count(cached_from) FROM responses WHERE run_id = ? GROUP BY 1",
        [runs[1]],
    ).fetchall()
    assert sources == [("cache", 12, True, 12)]
    con.close()
    capsys.readouterr()
    assert main(["cache", "explain", runs[3], "--db", str(db), "--provider", "openai:gpt-4o-mini"]) == 0
    out = capsys.readouterr().out
    assert "0 of 6 answers came from the cache" in out
    assert "generation parameters (temperature 0.0 → 0.5)" in out


def test_cache_off_records_no_keys_and_explain_says_so(mini_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        args = [str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url]
        assert _run([*args, "--cache", "off"]) == 0
        assert _run(args) == 0
        assert len(server.requests) == 12
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(cache_key) FROM responses").fetchone()[0] == 6
    con.close()
    capsys.readouterr()
    assert main(["cache", "explain", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "no earlier answer from this provider for this case" in out


def test_kill_9_then_resume_calls_only_what_is_missing(suite30, tmp_path, monkeypatch, capsys):
    """The run is killed while two requests hang; the resume calls each remaining case once, never one
    that had been answered in full, and leaves exactly one stored answer per case and provider."""
    answer = _gold_answer(suite30)
    texts = _case_texts(suite30)
    gate, lock = threading.Event(), threading.Lock()
    answered_before_kill: list[tuple[str, str]] = []

    def respond(body):
        with lock:
            closed = len(answered_before_kill) >= 12 and not gate.is_set()
        if closed:
            gate.wait(30)  # hangs until the process that asked is dead
        time.sleep(0.02)
        return Reply(text=answer(body))

    db = tmp_path / "s.duckdb"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-key-2"}
    with OpenAIServer(respond) as server:
        env["OPENAI_BASE_URL"] = server.base_url
        cmd = [sys.executable, "-m", "harness.cli", "run", str(suite30), "--db", str(db), "--no-progress",
               "--reports", str(tmp_path / "r"), "--candidate", "vllm:test-model", "--base-url", server.base_url]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                answered_before_kill[:] = [(b["model"], _case_of(b, texts)) for b in server.completed]
            if len(answered_before_kill) >= 12 and len(server.requests) > len(server.completed):
                break
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with lock:
            answered_before_kill[:] = [(b["model"], _case_of(b, texts)) for b in server.completed]
        gate.set()
        # the killed run is shown as interrupted, not running
        capsys.readouterr()
        assert main(["runs", "--db", str(db)]) == 0
        listed = capsys.readouterr().out
        assert " interrupted " in listed and "its process stopped without finishing" in listed
        assert "running" not in listed
        assert main(["report", "--db", str(db), "--reports", str(tmp_path / "r")]) == 0
        page = Path(capsys.readouterr().out.strip()).read_text()
        assert 'data-status="interrupted"' in page and "--resume" in page
        requests_before = len(server.requests)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-2")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code = _run(["--resume", "last", "--db", str(db), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url])
        resumed_requests = [(b["model"], _case_of(b, texts)) for b in server.requests[requests_before:]]
    assert code == 0, capsys.readouterr().err
    assert 12 <= len(answered_before_kill) < 60 and requests_before > len(answered_before_kill)  # killed mid-call
    assert not set(resumed_requests) & set(answered_before_kill)  # nothing paid twice
    assert len(resumed_requests) == len(set(resumed_requests))
    assert len(answered_before_kill) + len(resumed_requests) == 60
    con = duckdb.connect(str(db), read_only=True)
    pairs = con.execute("SELECT case_id, provider FROM responses").fetchall()
    assert len(pairs) == 60 and len(set(pairs)) == 60
    assert con.execute("SELECT count(*) FROM scores WHERE metric = 'case_pass'").fetchone()[0] == 60
    assert con.execute("SELECT status, resumed FROM runs").fetchone() == ("completed", 1)
    assert not any((db.parent / "s.journal").glob("*.jsonl"))


def test_a_resumed_runs_counts_are_summed_over_every_invocation(mini_suite, tmp_path, monkeypatch, capsys):
    """The candidate's server answers 503 to everything, then recovers; the resume calls again for the failed
    answers. The report's summary, its line on calls and the terminal agree with what the server saw (they said
    "46 retries" and "163 calls, 29 retries", the resumed part only), and `harness runs` shows the failed run."""
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 1\nmax_attempts = 2"))
    answer = _gold_answer(mini_suite)
    down = threading.Event()
    down.set()

    def respond(body: dict) -> Reply:
        if body["model"] != "gpt-4o-mini" and down.is_set():
            return Reply(status=503, error_message="overloaded", headers={"Retry-After": "0"})
        return Reply(text=answer(body))

    db, reports = tmp_path / "s.duckdb", tmp_path / "r"
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with OpenAIServer(respond) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = ["--db", str(db), "--reports", str(reports), "--base-url", server.base_url]
        assert _run([str(mini_suite), *args, "--cache", "off"]) == 1
        capsys.readouterr()
        assert main(["runs", "--db", str(db)]) == 0
        assert " failed " in capsys.readouterr().out
        down.clear()
        assert _run(["--resume", "last", *args]) == 0
        seen = sum(1 for body in server.requests if body["model"] != "gpt-4o-mini")
    out = capsys.readouterr().out
    assert seen == 6 * 2 + 6  # two attempts for each of 6 cases, then one each
    candidate = next(line for line in out.splitlines() if line.strip().startswith("local:smollm2-135m"))
    assert "retries 6" in candidate
    html = next(reports.rglob("index.html")).read_text()
    assert "18 calls, 6 retries over 2 invocations" in html
    row = re.search(r'<tr data-provider="local:smollm2-135m">(.*?)</tr>', html, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[-2].strip() == "6"  # the retries column


def _openai_log_line(case_id: str | None, messages: list[dict], text: str, latency: float) -> dict:
    line = {
        "request": {"model": "gpt-4o-mini", "messages": messages, "temperature": 0},
        "response": {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1763800000, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440},
        },
        "latency_ms": latency,
    }
    if case_id:
        line["case_id"] = case_id
    return line


def _anthropic_log_line(messages: list[dict], text: str) -> dict:
    system = next(m["content"] for m in messages if m["role"] == "system")
    user = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
            for m in messages if m["role"] != "system"]
    return {
        "request": {"model": "claude-haiku-4-5", "max_tokens": 200, "system": system, "messages": user},
        "response": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 380, "output_tokens": 35},
        },
        "duration_ms": 900,
    }


def test_production_logs_replace_the_incumbent_without_any_key(mini_suite, tmp_path, monkeypatch, capsys):
    from harness.suite.load import load_suite

    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    suite = load_suite(mini_suite)
    gold = gold_of(mini_suite)
    cases = suite.cases
    lines = [_openai_log_line(c.id, c.messages, json.dumps(gold[c.id]), 700.0 + i) for i, c in enumerate(cases[:3])]
    lines += [_anthropic_log_line(c.messages, json.dumps(gold[c.id])) for c in cases[3:5]]
    lines.append(_openai_log_line(None, [{"role": "user", "content": "an unrelated prompt"}], "{}", 5.0))
    log = tmp_path / "prod.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    db, reports = tmp_path / "s.duckdb", tmp_path / "r"
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        code = _run([str(mini_suite), "--incumbent", f"log:{log}", "--db", str(db), "--reports", str(reports),
                     "--base-url", server.base_url])
        assert all(body["model"] == "test-model" for body in server.requests)
    out = capsys.readouterr().out
    assert code == 0
    assert "5 of 6 cases matched (3 by id, 2 by input)" in out
    assert "1 log line matched no case (line 6)" in out
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        f"SELECT case_id, source, error_kind, latency_ms, model, cost_usd FROM responses "
        f"WHERE provider = 'log:{log}' ORDER BY case_id"
    ).fetchall()
    by_case = {r[0]: r for r in rows}
    assert len(rows) == 6
    assert by_case[cases[5].id][2] == "not_in_log"
    assert by_case[cases[0].id][1:5] == ("log", None, 700.0, "gpt-4o-mini-2024-07-18")
    assert by_case[cases[3].id][3] == 900.0
    assert by_case[cases[0].id][5] == pytest.approx(load_pricing().lookup("gpt-4o-mini").cost(400, 40))
    passes = con.execute(
        f"SELECT count(*) FROM scores WHERE provider = 'log:{log}' AND metric = 'case_pass' AND passed"
    ).fetchone()[0]
    assert passes == 5
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    html = (reports / "invoices" / run_id / "index.html").read_text()
    assert f"log:{log}" in html
    assert "5 of 6 cases matched (3 by id, 2 by input)" in html


def test_a_missing_log_file_is_a_one_line_error(mini_suite, tmp_path, capsys):
    code = _run([str(mini_suite), "--incumbent", "log:nowhere.jsonl", "--db", str(tmp_path / "s.duckdb")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: provider 'log:nowhere.jsonl': no log file nowhere.jsonl")
    assert not (tmp_path / "s.duckdb").exists()


def test_cost_per_response_from_the_pricing_table_and_overrides(mini_suite, tmp_path, monkeypatch, capsys):
    db = tmp_path / "s.duckdb"
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."test-model"]\ninput = 1.0\noutput = 2.0\n')
    with OpenAIServer(lambda body: Reply(text="{}", chunks=5)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-3")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = [str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url]
        assert _run([*args, "--cache", "off"]) == 0
        out_without = capsys.readouterr().out
        assert _run([*args, "--cache", "off", "--pricing", str(prices)]) == 0
    con = duckdb.connect(str(db), read_only=True)
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    price = load_pricing().lookup("gpt-4o-mini")
    for input_tokens, output_tokens, cost in con.execute(
        "SELECT input_tokens, output_tokens, cost_usd FROM responses WHERE provider = 'openai:gpt-4o-mini'"
    ).fetchall():
        assert cost == pytest.approx(price.cost(input_tokens, output_tokens))
    unknown = con.execute(
        "SELECT count(*), count(cost_usd) FROM responses WHERE provider = 'local:smollm2-135m' AND run_id = ?",
        [runs[0]],
    ).fetchone()
    assert unknown == (6, 0)  # a self-hosted model has no API price: unknown, not zero
    costs = con.execute(
        "SELECT input_tokens, output_tokens, cost_usd FROM responses WHERE provider = 'local:smollm2-135m' "
        "AND run_id = ?", [runs[1]],
    ).fetchall()
    assert all(cost == pytest.approx((i * 1.0 + o * 2.0) / 1e6) for i, o, cost in costs)
    version = con.execute("SELECT pricing_version FROM runs WHERE run_id = ?", [runs[1]]).fetchone()[0]
    assert version.endswith("+prices.toml")
    assert "cost unknown" in out_without


def test_keys_of_every_provider_stay_out_of_storage_reports_and_output(mini_suite, tmp_path, monkeypatch, capsys):
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-api03-NEVER-STORE-1", "AZURE_OPENAI_API_KEY": "azkey0NEVERSTORE0000002"}
    _set_providers(mini_suite, """
[[providers]]
id = "anthropic:claude-haiku-4-5"
role = "incumbent"
max_attempts = 1

[[providers]]
id = "azure:prod-deployment"
role = "candidate"
max_attempts = 1
""")

    def echo_key(reply_type):
        calls = Counter()

        def respond(body):  # a careless server that echoes the key it was sent in an error, every other call
            calls["n"] += 1
            if calls["n"] % 2:
                return reply_type(status=401, error_message=f"invalid key {secrets['ANTHROPIC_API_KEY']} "
                                                            f"{secrets['AZURE_OPENAI_API_KEY']}")
            return reply_type(text="{}")
        return respond

    db, reports = tmp_path / "s.duckdb", tmp_path / "r"
    with AnthropicServer(echo_key(AnthropicReply)) as a_server, OpenAIServer(echo_key(Reply)) as o_server:
        for name, value in secrets.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", a_server.base_url)
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", o_server.base_url.removesuffix("/v1"))
        code = _run([str(mini_suite), "--db", str(db), "--reports", str(reports)])
        assert len(a_server.requests) == 6 and len(o_server.requests) == 6
    captured = capsys.readouterr()
    assert code == 0
    con = duckdb.connect(str(db), read_only=True)
    errors = con.execute("SELECT provider, count(*) FROM responses WHERE error_kind = 'http_401' GROUP BY 1").fetchall()
    con.close()
    assert {provider for provider, _ in errors} == {"anthropic:claude-haiku-4-5", "azure:prod-deployment"}
    blobs = [db.read_bytes().decode("latin-1"), captured.out, captured.err]
    blobs += [p.read_text() for p in reports.rglob("*") if p.is_file()]
    for secret in secrets.values():
        assert not any(secret in blob for blob in blobs)


def test_the_cache_never_answers_for_another_endpoint(mini_suite, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as a, OpenAIServer(lambda body: Reply(text="{}")) as b:
        for server in (a, b, a):
            assert _run([str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"),
                         "--base-url", server.base_url]) == 0
        assert (len(a.requests), len(b.requests)) == (6, 6)  # the third run was answered from a's answers


def test_resume_refuses_another_endpoint_and_fills_in_only_the_missing(mini_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as a, OpenAIServer(lambda body: Reply(text="{}")) as b:
        args = ["--db", str(db), "--reports", str(tmp_path / "r")]
        assert _run([str(mini_suite), *args, "--base-url", a.base_url, "--cache", "off"]) == 0
        con = duckdb.connect(str(db))
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
        con.execute("UPDATE runs SET status = 'interrupted'")
        con.execute("DELETE FROM scores WHERE case_id IN (SELECT case_id FROM cases ORDER BY position LIMIT 2)")
        con.execute("DELETE FROM responses WHERE case_id IN (SELECT case_id FROM cases ORDER BY position LIMIT 2)")
        con.close()
        capsys.readouterr()
        assert _run(["--resume", run_id, *args, "--base-url", b.base_url]) == 2
        err = capsys.readouterr().err
        assert f"run {run_id} called local:smollm2-135m at {a.base_url}; resuming would call {b.base_url}" in err
        assert _run([str(mini_suite), *args, "--base-url", a.base_url, "--resume", "last"]) == 0
        assert (len(a.requests), len(b.requests)) == (8, 0)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT case_id) FROM responses").fetchone() == (6, 6)
    assert con.execute("SELECT status, resumed FROM runs").fetchone() == ("completed", 1)


def test_a_failed_final_write_marks_the_run_failed(mini_suite, tmp_path, monkeypatch, capsys):
    from harness.errors import StoreError
    from harness.store.db import BatchWriter

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    original = BatchWriter.close

    def failing_close(self):
        original(self)
        raise StoreError("writing results failed: disk full")

    monkeypatch.setattr(BatchWriter, "close", failing_close)
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        code = _run([str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url])
    assert code == 2 and "disk full" in capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "failed"


def test_a_run_stopped_while_storing_its_cases_is_not_resumed_with_some(mini_suite, tmp_path):
    """A large run's cases are stored a batch at a time (harness.store.Store.insert_large): a run killed before
    the last batch has only some, and resuming it would quietly drop the rest."""
    from harness.errors import StoreError
    from harness.run.runner import _case_row, provenance, resumable_cases
    from harness.store.db import Store
    from harness.suite.load import load_suite

    suite = load_suite(mini_suite)
    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run(provenance(suite, None, len(suite.cases)))
        store.insert("cases", [_case_row(run_id, i, case) for i, case in enumerate(suite.cases[:4])])
        with pytest.raises(StoreError, match=r"stopped while its cases were being stored \(4 of 6\)"):
            resumable_cases(store, run_id, suite)
        store.insert("cases", [_case_row(run_id, i, case) for i, case in enumerate(suite.cases) if i >= 4])
        assert [case.id for case in resumable_cases(store, run_id, suite)] == [case.id for case in suite.cases]
