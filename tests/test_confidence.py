"""Confidence signals captured during a run: token log-probabilities and the agreement of extra samples.

Real HTTP against tests/openai_server.py, which streams OpenAI-format `logprobs` objects when asked for them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import duckdb
import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.providers.base import Request
from harness.providers.openai_client import OpenAICompatible
from harness.run.cache import explain
from harness.store.db import Store
from harness.suite.load import load_suite

# Per token: [its logprob, the logprobs of its alternatives...]. The server sends the two likeliest as top_logprobs.
TOKENS = [
    [-0.1, -2.5],  # chosen is the likeliest: margin 2.4
    [-1.2, -0.4],  # an alternative was likelier: margin -0.4 - -1.2 = 0.8
    [-0.05],  # no alternative: no margin
    [-2.0, -0.3, -1.0, -4.0],  # top two are -0.3 and -1.0: margin 0.7
]
MEAN = (-0.1 - 1.2 - 0.05 - 2.0) / 4  # -0.8375
LOWEST = -2.0
MARGIN = (2.4 + 0.8 + 0.7) / 3  # 1.3


def _complete(server: OpenAIServer, logprobs: bool):
    request = Request(messages=[{"role": "user", "content": "total?"}], params={"temperature": 0.0, "max_tokens": 20},
                      logprobs=logprobs)

    async def go():
        provider = OpenAICompatible("local:test", "test-model", server.base_url)
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()
    return asyncio.run(go())


def test_logprob_figures_from_the_stream_match_the_hand_computed_ones():
    # four tokens over two chunks: two entries a chunk, as vLLM sends when it batches tokens
    with OpenAIServer(lambda body: Reply(text='{"total": "9.00"}', chunks=2, logprobs=TOKENS)) as server:
        completion = _complete(server, logprobs=True)
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert completion.error is None and completion.text == '{"total": "9.00"}'
    assert completion.logprob_tokens == 4
    assert completion.logprob_mean == pytest.approx(MEAN)
    assert completion.logprob_min == LOWEST
    assert completion.margin_mean == pytest.approx(MARGIN)


def test_no_logprobs_when_not_asked_or_not_given():
    with OpenAIServer(lambda body: Reply(text="ok", logprobs=TOKENS)) as server:
        completion = _complete(server, logprobs=False)
    assert "logprobs" not in server.requests[0] and "top_logprobs" not in server.requests[0]
    assert (completion.logprob_mean, completion.logprob_min, completion.margin_mean, completion.logprob_tokens) == (
        None, None, None, None)
    with OpenAIServer(lambda body: Reply(text="ok")) as server:  # a server that ignores the request for them
        completion = _complete(server, logprobs=True)
    assert completion.error is None and completion.logprob_tokens is None and completion.logprob_mean is None


def _gold(suite_dir: Path) -> list[tuple[str, str, dict]]:
    rows = [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]
    return [(row["id"], row["text"], row["gold"]) for row in rows]


def _case_of(cases: list[tuple[str, str, dict]], body: dict) -> int:
    prompt = body["messages"][-1]["content"]
    return next(i for i, (_, text, _) in enumerate(cases) if text in prompt)


def _query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_run_stores_logprobs_of_candidates_only_and_replays_them(tmp_path, monkeypatch):
    suite = copy_invoices(tmp_path, 3)
    cases = _gold(suite)
    db = tmp_path / "shadow.duckdb"

    def responder(body: dict) -> Reply:
        gold = cases[_case_of(cases, body)][2]
        return Reply(text=json.dumps(gold), chunks=2, logprobs=TOKENS)

    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123456")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = ["run", str(suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url,
                "--no-progress", "--candidate", "vllm:test-model"]
        assert main(args) == 0
        first = list(server.requests)
        assert main(args) == 0  # replayed from the cache
        assert len(server.requests) == len(first)

    incumbent = [body for body in first if body["model"] == "gpt-4o-mini"]
    candidate = [body for body in first if body["model"] == "test-model"]
    assert len(incumbent) == len(candidate) == 3
    assert all(body["logprobs"] is True and body["top_logprobs"] == 2 for body in candidate)
    assert not any("logprobs" in body or "top_logprobs" in body for body in incumbent)

    rows = _query(db, "SELECT r.run_id, provider, source, logprob_mean, logprob_min, margin_mean, logprob_tokens "
                      "FROM responses r JOIN runs USING (run_id) ORDER BY runs.started_at, provider, case_id")
    assert len(rows) == 12
    for run_id, provider, source, mean, lowest, margin, tokens in rows:
        assert source == ("call" if run_id == rows[0][0] else "cache")
        if provider == "vllm:test-model":
            assert (mean, lowest, margin, tokens) == (pytest.approx(MEAN), LOWEST, pytest.approx(MARGIN), 4)
        else:
            assert (mean, lowest, margin, tokens) == (None, None, None, None)


def test_logprobs_follow_the_provider_entry(mini_suite: Path, capsys):
    config = mini_suite / "suite.toml"
    text = config.read_text()
    config.write_text(text.replace('role = "incumbent"', 'role = "incumbent"\nlogprobs = true')
                      .replace('role = "candidate"', 'role = "candidate"\nlogprobs = false'))
    incumbent, candidate = load_suite(mini_suite).spec.providers
    assert incumbent.wants_logprobs and not candidate.wants_logprobs

    config.write_text(text.replace('id = "openai:gpt-4o-mini"', 'id = "anthropic:claude-haiku-4-5"')
                      .replace('role = "incumbent"', 'role = "incumbent"\nlogprobs = true'))
    assert main(["run", str(mini_suite), "--db", str(mini_suite / "x.duckdb"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {config}: providers[1]: provider 'anthropic:claude-haiku-4-5' cannot give token "
                   "log-probabilities (the Anthropic Messages API returns none); remove logprobs = true\n")
    assert not (mini_suite / "x.duckdb").exists()


def _sampled_suite(tmp_path: Path) -> Path:
    suite = copy_invoices(tmp_path, 4)
    config = suite / "suite.toml"
    text = config.read_text()
    assert text.rstrip().endswith("concurrency = 1")
    config.write_text(text.rstrip().removesuffix("concurrency = 1")
                      + "concurrency = 2\nsamples = 3\nsample_temperature = 0.9\n")
    (tmp_path / "prices.toml").write_text('[models."local:smollm2-135m"]\ninput = 1.0\noutput = 2.0\n')
    return suite


def test_extra_samples_measure_agreement_and_are_replayed_with_their_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = _sampled_suite(tmp_path)
    cases = _gold(suite)
    db = tmp_path / "shadow.duckdb"
    lock, in_flight, most = threading.Lock(), [0], [0]

    def answer(index: int, temperature: float, seed: int) -> Reply:
        gold = cases[index][2]
        if temperature == 0.0:  # the main answer
            return Reply(status=400, error_message="bad request") if index == 3 else Reply(text=json.dumps(gold))
        if (index, seed) == (0, 1):  # the same answer, written differently: agrees after normalisation
            return Reply(text=json.dumps({k: str(v).upper() for k, v in reversed(gold.items())}, indent=2))
        if (index, seed) == (0, 2):
            return Reply(text=json.dumps({**gold, "total": "12345.67"}))
        if (index, seed) == (2, 1):
            return Reply(status=400, error_message="sample refused")
        return Reply(text=json.dumps(gold))

    def responder(body: dict) -> Reply:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.03)
        with lock:
            in_flight[0] -= 1
        return answer(_case_of(cases, body), body["temperature"], body["seed"])

    with OpenAIServer(responder) as server:
        args = ["run", str(suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url,
                "--pricing", str(tmp_path / "prices.toml"), "--no-progress"]
        assert main(args) == 0
        first = list(server.requests)
        assert main(args) == 0
        second = server.requests[len(first):]

    main_calls = [b for b in first if b["temperature"] == 0.0]
    extra = [b for b in first if b["temperature"] != 0.0]
    assert len(main_calls) == 4 and all(b["seed"] == 0 and "logprobs" not in b for b in main_calls)
    # two extra samples per answered case (none after the failed answer of case 3), seeds 1 and 2
    assert sorted((_case_of(cases, b), b["temperature"], b["seed"]) for b in extra) == [
        (i, 0.9, seed) for i in range(3) for seed in (1, 2)]
    assert not any("logprobs" in b for b in extra)
    assert most[0] <= 2  # the extra calls count against the provider's concurrency

    ids = [case_id for case_id, _, _ in cases]
    run1, run2 = (r[0] for r in _query(db, "SELECT run_id FROM runs ORDER BY started_at"))
    stored = dict(((r[0], r[1]), r[2:]) for r in _query(
        db, "SELECT run_id, case_id, samples, agreement, source FROM responses"))
    assert [stored[(run1, i)][:2] for i in ids] == [(2, 0.5), (2, 1.0), (2, 0.5), (0, None)]

    samples = _query(db, "SELECT case_id, sample, agrees, error, input_tokens, output_tokens, cost_usd FROM samples "
                         "WHERE run_id = ? ORDER BY case_id, sample", [run1])
    by_case = {(case_id, n): (agrees, error) for case_id, n, agrees, error, *_ in samples}
    assert by_case == {
        (ids[0], 1): (True, None), (ids[0], 2): (False, None),
        (ids[1], 1): (True, None), (ids[1], 2): (True, None),
        (ids[2], 1): (False, "HTTP 400: sample refused"), (ids[2], 2): (True, None),
    }
    for *_, error, tokens_in, tokens_out, cost in samples:  # priced like the main answer: $1 and $2 per 1M tokens
        assert cost == (None if error else pytest.approx((tokens_in * 1.0 + tokens_out * 2.0) / 1e6))

    # the second run reuses the three answers with their samples; only the failed answer is asked again
    assert [(_case_of(cases, b), b["temperature"]) for b in second] == [(3, 0.0)]
    assert [stored[(run2, i)] for i in ids[:3]] == [(2, 0.5, "cache"), (2, 1.0, "cache"), (2, 0.5, "cache")]
    replayed = _query(db, "SELECT case_id, sample, agrees, error, text FROM samples WHERE run_id = ? "
                          "ORDER BY case_id, sample", [run2])
    assert replayed == _query(db, "SELECT case_id, sample, agrees, error, text FROM samples WHERE run_id = ? "
                                  "ORDER BY case_id, sample", [run1])


def test_samples_settings_are_checked(mini_suite: Path, capsys):
    config = mini_suite / "suite.toml"
    text = config.read_text()
    config.write_text(text.replace('role = "candidate"', 'role = "candidate"\nsamples = 21'))
    assert main(["validate", str(mini_suite)]) == 2
    assert "providers[2].samples: Input should be less than or equal to 20" in capsys.readouterr().err


def test_an_answer_stored_without_the_signals_is_not_replayed_for_a_run_that_wants_them(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    suite = copy_invoices(tmp_path, 2)
    cases = _gold(suite)
    config = suite / "suite.toml"
    original = config.read_text()
    db = tmp_path / "shadow.duckdb"

    def responder(body: dict) -> Reply:
        return Reply(text=json.dumps(cases[_case_of(cases, body)][2]), chunks=2, logprobs=TOKENS)

    with OpenAIServer(responder) as server:
        args = ["run", str(suite), "--db", str(db), "--reports", str(tmp_path / "r"), "--base-url", server.base_url,
                "--no-progress"]
        wanted = original.replace('role = "candidate"', 'role = "candidate"\nlogprobs = true')
        assert main(args) == 0  # no logprobs (off by default for a local candidate)
        config.write_text(wanted)
        assert main(args) == 0  # logprobs on: asked again
        config.write_text(wanted.replace('role = "candidate"', 'role = "candidate"\nsamples = 2'))
        assert main(args) == 0  # samples wanted: asked again, with one extra sample each
        config.write_text(wanted)
        assert main(args) == 0  # as the second run: replayed
    assert len(server.requests) == 2 + 2 + 2 * 2

    runs = [r[0] for r in _query(db, "SELECT run_id FROM runs ORDER BY started_at")]
    with Store(db, read_only=True) as store:
        why = {e.reason for e in explain(store, runs[1])}
    assert why == {f"differs from run {runs[0]} in whether token log-probabilities were asked for"}
    stored = [_query(db, "SELECT source, logprob_tokens, samples FROM responses WHERE run_id = ? ORDER BY case_id",
                     [run]) for run in runs]
    assert stored == [
        [("call", None, None)] * 2,
        [("call", 4, None)] * 2,
        [("call", 4, 1)] * 2,
        [("cache", 4, None)] * 2,  # replays the second run's answers (the newest with the same key)
    ]


def test_malformed_logprob_entries_cost_the_signal_not_the_answer():
    from harness.providers.openai_client import LogprobTally

    tally = LogprobTally()
    tally.add([
        {"token": "a", "logprob": -1.0, "top_logprobs": [{"logprob": -1.0}, {"logprob": None}]},  # no margin
        {"token": "b", "logprob": None},  # skipped
        {"token": "c"},  # skipped
        "junk",  # skipped
        {"token": "d", "logprob": -3.0, "top_logprobs": [{"logprob": -4.0}, {"x": 1}, {"logprob": -3.0}]},  # 1.0
    ])
    assert (tally.count, tally.total, tally.lowest) == (2, -4.0, -3.0)
    assert (tally.margins, tally.margin_total) == (1, 1.0)
