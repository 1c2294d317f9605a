"""Spend you control: the estimate before a run, the hard ceiling (`--max-cost`), billed failed attempts, and
`--until-decided`, against the local wire-format servers with the built-in pricing table."""

from __future__ import annotations

import asyncio
import json

import pytest
from anthropic_server import AnthropicReply, AnthropicServer
from conftest import ROOT, copy_invoices, gold_of
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.pricing import load_pricing
from harness.providers.base import Request
from harness.providers.plan import plan_provider, resolve_served_models
from harness.providers.registry import build_provider
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.providers.spend import Ledger, Spend, count_input_tokens, worst_input_tokens
from harness.run.estimate import estimate_run
from harness.run.targets import provider_specs
from harness.store.db import Store
from harness.suite.load import load_suite
from harness.suite.spec import ProviderSpec

INCUMBENT = "openai:gpt-4o-mini"


def _gold_server(suite, wrong_candidate: bool = False) -> OpenAIServer:
    """Answers each invoice with its gold (the incumbent, model gpt-4o-mini) and, with `wrong_candidate`, a wrong
    total for anything else (the local candidate, which sends the served model's name)."""
    gold = gold_of(suite)
    texts = {json.loads(line)["text"]: case for case, line in zip(gold, (suite / "cases.jsonl").read_text()
                                                                  .splitlines(), strict=True)}

    def respond(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        case = next((c for text, c in texts.items() if text[:200] in prompt), None)
        if wrong_candidate and body.get("model") != "gpt-4o-mini":
            return Reply(text=json.dumps({"total": "0.01"}))
        return Reply(text=json.dumps(gold[case] if case else {"total": "1.00"}))

    return OpenAIServer(respond)


@pytest.fixture
def paid(tmp_path, monkeypatch):
    suite = copy_invoices(tmp_path, 40)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("SHADOW_NO_TIKTOKEN", "1")  # offline: tiktoken cannot fetch its vocabulary here
    return suite


def _run(server, suite, *extra: str) -> int:
    return main(["run", str(suite), "--db", "s.duckdb", "--reports", "r", "--base-url", server.base_url,
                 "--no-progress", *extra])


def _billed(run_id: str, provider: str = INCUMBENT) -> float:
    with Store("s.duckdb", read_only=True) as store:
        return float(store.query("SELECT coalesce(sum(cost_usd), 0) AS c FROM responses WHERE run_id = ? AND "
                                 "provider = ? AND NOT cached", [run_id, provider])["c"].iloc[0])


def _latest() -> dict:
    with Store("s.duckdb", read_only=True) as store:
        return store.run(store.latest_run())


def test_the_estimate_is_within_ten_percent_of_the_bill_that_follows(paid, monkeypatch, capsys):
    with _gold_server(paid) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert _run(server, paid, "--limit", "10") == 0  # earlier answers: output lengths, billed input tokens
        suite = load_suite(paid)
        plans = [plan_provider(spec, base_url=server.base_url, suite_dir=suite.path)
                 for spec in provider_specs(suite, None, None)]
        resolve_served_models(plans)
        with Store("s.duckdb") as store:
            estimate = estimate_run(suite, plans, suite.cases, load_pricing(), store)
        mine = next(p for p in estimate.providers if p.provider == INCUMBENT)
        assert (mine.calls, mine.cached, mine.input_method) == (30, 10, "calibrated")
        assert mine.low <= mine.expected <= mine.high <= mine.worst
        capsys.readouterr()
        assert _run(server, paid, "--limit", "40", "--estimate") == 0
        printed = capsys.readouterr().out
        assert "estimate (nothing is called)" in printed and "30 calls (10 from the cache)" in printed
        assert _latest()["n_cases"] == 10  # --estimate stored no run
        assert _run(server, paid, "--limit", "40") == 0
        assert "estimate before the run" in capsys.readouterr().out  # a paid run says its estimate first
    billed = _billed(_latest()["run_id"])
    assert billed > 0
    assert abs(mine.expected - billed) / billed <= 0.10, (mine.expected, billed)


def test_a_ceiling_stops_the_run_below_it_and_a_higher_one_resumes_it(paid, monkeypatch, capsys):
    with _gold_server(paid) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert _run(server, paid, "--limit", "40", "--max-cost", "0.003", "--cache", "off") == 0
        run = _latest()
        assert run["status"] == "budget", run["status_reason"]
        assert "resume with a higher --max-cost" in run["status_reason"]
        spend = json.loads(run["spend"])
        billed = _billed(run["run_id"])
        assert spend["reached"] and billed <= 0.003 and abs(spend["spent"] - billed) < 1e-9
        with Store("s.duckdb", read_only=True) as store:
            answered = len(store.query("SELECT * FROM responses WHERE run_id = ? AND provider = ?",
                                       [run["run_id"], INCUMBENT]))
        assert 0 < answered < 40
        assert main(["gate", run["run_id"], "--db", "s.duckdb", "--out", "g"]) == 3  # not a sample to vouch on
        report = (paid.parent / "r" / "invoices" / run["run_id"] / "index.html").read_text()
        assert 'data-status="budget"' in report and "stopped at the $0.003 spending ceiling" in report
        assert "spending ceiling" in capsys.readouterr().out
        assert main(["run", "--resume", run["run_id"], "--db", "s.duckdb", "--reports", "r", "--base-url",
                     server.base_url, "--no-progress", "--max-cost", "5"]) == 0
    run = _latest()
    assert run["status"] == "completed"
    with Store("s.duckdb", read_only=True) as store:
        assert len(store.query("SELECT * FROM responses WHERE run_id = ?", [run["run_id"]])) == 80


@pytest.mark.parametrize(("args", "message"), [
    (["--max-cost", "-1"], "--max-cost must be 0 or more USD"),
    (["--max-cost", "lots"], "--max-cost must be an amount in USD"),
    (["--max-cost", "0.00001"], "is below the worst case of one call to openai:gpt-4o-mini"),
    (["--max-cost", "1", "--incumbent", "openai:gpt-unpriced-9"], "has no price in the pricing table"),
])
def test_a_ceiling_that_cannot_be_kept_is_refused_before_anything_is_stored(paid, monkeypatch, capsys, args,
                                                                            message):
    with _gold_server(paid) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        try:
            status = _run(server, paid, "--limit", "5", *args)
        except SystemExit as exc:  # argparse's own exit for a bad value
            status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1]  # one line (argparse prints its usage above its own)
    if not (paid.parent / "s.duckdb").exists():
        return
    with Store("s.duckdb", read_only=True) as store:
        assert store.latest_run() is None


def test_allow_unpriced_runs_a_provider_the_ceiling_cannot_count(paid, monkeypatch):
    with _gold_server(paid) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert _run(server, paid, "--limit", "3", "--max-cost", "1", "--allow-unpriced",
                    "--incumbent", "openai:gpt-unpriced-9") == 0
    assert _latest()["status"] == "completed"


def test_until_decided_stops_early_on_a_clearly_worse_candidate_and_the_gate_uses_its_test(tmp_path, monkeypatch,
                                                                                          capsys):
    suite = copy_invoices(tmp_path, 300)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with _gold_server(suite, wrong_candidate=True) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert _run(server, suite, "--limit", "all", "--until-decided", "--cache", "off") == 0
    run = _latest()
    assert run["status"] == "decided", run["status_reason"]
    rule = json.loads(run["stop_rule"])
    verdict = next(iter(rule["verdicts"].values()))
    assert verdict["verdict"] == "fail" and rule["decided_at"] < 150
    with Store("s.duckdb", read_only=True) as store:
        asked = len(store.query("SELECT * FROM responses WHERE run_id = ?", [run["run_id"]]))
        positions = store.query("SELECT case_id FROM cases WHERE run_id = ? ORDER BY position",
                                [run["run_id"]])["case_id"].tolist()
    assert asked < 2 * 300 / 2
    assert positions != sorted(positions, key=list(gold_of(suite)).index)  # seeded random order
    out = capsys.readouterr().out
    assert "answers not asked for" in out
    report = (tmp_path / "r" / "invoices" / run["run_id"] / "index.html").read_text()
    assert 'data-status="decided"' in report and "decided after" in report
    assert main(["gate", run["run_id"], "--db", "s.duckdb", "--out", "g"]) == 1
    gate = json.loads((tmp_path / "g" / "gate.json").read_text())
    check = next(c for c in gate["checks"] if c["name"] == "non-inferiority")
    assert "anytime-valid" in check["detail"] and gate["verdict"] == "fail"
    assert next(c for c in gate["checks"] if c["name"] == "valid run")["passed"]  # unsent cases are not failures


def test_a_billed_attempt_that_failed_counts_towards_spend_and_the_answers_cost():
    replies = [AnthropicReply(text="half an answer that is cut", truncate=True), AnthropicReply(text="whole")]
    with AnthropicServer(lambda body: replies.pop(0)) as server:
        env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": server.base_url}
        plan = plan_provider(ProviderSpec(id="anthropic:claude-3-5-haiku", role="incumbent"), env=env)
        price = load_pricing().lookup("claude-3-5-haiku")
        ledger = Ledger(ceiling=1.0)
        request = Request(messages=[{"role": "user", "content": "one two three four"}], params={"max_tokens": 64})

        async def go():
            provider = Resilient(build_provider(plan), RetryPolicy(max_attempts=3, base_delay_s=0.01, timeout_s=5),
                                 AdaptiveLimiter(2), spend=Spend(ledger, price, 64))
            try:
                return await provider.complete(request)
            finally:
                await provider.aclose()

        c = asyncio.run(go())
    assert c.error is None and c.attempts == 2
    assert c.failed_input_tokens > 0  # the cut stream's usage, reported in message_start
    answer = price.cost(c.input_tokens, c.output_tokens)
    earlier = price.cost(c.failed_input_tokens, c.failed_output_tokens)
    assert ledger.spent == pytest.approx(answer + earlier) and ledger.in_flight == pytest.approx(0)


def test_token_counts_say_how_they_were_counted_and_the_bound_holds():
    messages = [{"role": "system", "content": "Extract the total."}, {"role": "user", "content": "Tötal: 12,50 €"}]
    approx = count_input_tokens("anthropic", "claude-x", messages)
    assert approx.method == "approximate" and not approx.exact
    assert count_input_tokens("openai", "gpt-4o", messages, tokens_per_char=0.5).method in (
        "calibrated", "tiktoken o200k_base")
    assert worst_input_tokens(messages) >= len("Extract the total.Tötal: 12,50 €".encode())
    ledger = Ledger(ceiling=1.0, spent=0.5)
    assert ledger.reserve(0.4) and not ledger.reserve(0.2) and ledger.reached and not ledger.reserve(0.01)
    ledger.settle(0.4, 0.1)
    assert ledger.spent == pytest.approx(0.6) and ledger.in_flight == 0


def test_the_estimate_prices_each_judge_scorers_calls(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")  # the replies suite's first judge choice can run
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing is called
    assert main(["run", str(ROOT / "suites" / "replies"), "--estimate", "--db", "s.duckdb", "--limit", "4"]) == 0
    judged = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("judge anthropic")]
    pairwise = next(line for line in judged if "(pairwise)" in line)
    rubric = next(line for line in judged if "(rubric)" in line)
    assert "judge prompts with answers of the expected length" in pairwise and "$" in pairwise
    candidates = 1  # replies: one candidate; pairwise asks both orders of each of its answers
    assert f"{2 * candidates * 4} calls" in pairwise and "$" in rubric
