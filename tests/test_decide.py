"""`harness cost` and `harness decide` on real stored runs (OpenAI wire-format server, real DuckDB), with a
profile and prices chosen so that every figure can be checked by hand, and the report's cost section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.cli import main

N_CASES = 20
WRONG = {3, 8, 12, 17}  # the candidate's wrong answers: 4 of 20

# API: $1,000 per 1M output tokens, nothing for input; the test server streams 1 token a chunk and each answer
# is one chunk, so every API answer costs 1 x 1000 / 1e6 = $0.001.
PRICES = '[models."gpt-4o-mini"]\ninput = 0.0\noutput = 1000.0\n'

# R = 1 x 730 h = $730 a replica-month; C = 2 x 0.5 x 3600 x 730 = 2,628,000 cases; F = 0.1 x 120,000 / 12 = $1,000.
PROFILE = """
[volume]
cases_per_month = {volume}

[self_hosted]
gpu_hour_usd = 1.0
throughput_cases_per_s = 2.0
target_utilization = 0.5
storage_usd_month = 0
networking_usd_month = 0
engineering_fte = 0.1
fte_usd_year = 120000

[requirements]
team = "{team}"
"""


def _setup(tmp_path: Path, monkeypatch, *, wrong: set[int], volume: float, team: str = "some", gate: str = "",
           profile: str = "", candidate: str = "") -> Path:
    suite = copy_invoices(tmp_path, N_CASES)
    with (suite / "suite.toml").open("a") as f:
        f.write("\n[gate]\nmargin = 0.05\n" + gate)
    (suite / "profile.toml").write_text(PROFILE.format(volume=volume, team=team) + profile)
    (tmp_path / "prices.toml").write_text(PRICES)
    config = suite / "suite.toml"
    local = 'id = "local:smollm2-135m"'
    config.write_text(config.read_text().replace(local, local + '\nlogprobs = true\n' + candidate))
    rows = [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines()]

    def responder(body: dict) -> Reply:
        i = next(k for k, r in enumerate(rows) if r["text"] in body["messages"][-1]["content"])
        answer = dict(rows[i]["gold"])
        if body["model"].startswith("gpt"):
            return Reply(text=json.dumps(answer), chunks=1)
        if i in wrong:
            answer["total"] = "999.99"
        # the candidate is unsure (mean logprob -2.0) exactly where it is wrong, sure (-0.1) elsewhere
        confidence = -2.0 if i in wrong else -0.1
        return Reply(text=json.dumps(answer), chunks=1, logprobs=[(confidence, confidence - 1.0)])

    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code = main(["run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url, "--no-progress", "--cache", "off",
                     "--pricing", str(tmp_path / "prices.toml")])
    assert code == 0
    return suite


def _cli(tmp_path: Path, command: str, suite: Path, *args: str) -> int:
    return main([command, str(suite), "--db", str(tmp_path / "s.duckdb"), "--json", str(tmp_path / "out.json"),
                 *args])


def test_cost_prints_the_hand_computed_figures(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=1_000_000)
    capsys.readouterr()
    assert _cli(tmp_path, "cost", suite) == 0
    out = capsys.readouterr().out
    # 1,000,000 cases x $0.001 = $1,000 on the API; one replica: $1,000 + $730 = $1,730 self-hosted
    assert re.search(r"api\s+\$\s*1,000\.00/month\s+\$\s*1\.0000 per 1,000 cases\s+<- cheapest", out)
    assert re.search(r"self-hosted\s+\$\s*1,730\.00/month", out)
    # break-even: one replica carries 2,628,000 cases, so $1,730 / $0.001 = 1,730,000 cases a month
    assert "break-even: 1,730,000 cases/month" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["break_even_cases_per_month"] == pytest.approx(1_730_000)
    assert data["measured"]["api_cost_per_case"] == pytest.approx(0.001)
    assert data["measured"]["throughput_source"].startswith("entered")
    # --volume overrides the profile: 5,000,000 cases need ceil(5,000,000 / 2,628,000) = 2 replicas: $2,460
    assert _cli(tmp_path, "cost", suite, "--volume", "5000000") == 0
    out = capsys.readouterr().out
    assert re.search(r"self-hosted\s+\$\s*2,460\.00/month.*<- cheapest", out)


def test_a_candidate_that_passes_the_gate_migrates_when_it_is_cheaper(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000)
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    assert "recommendation: MIGRATE" in out
    data = json.loads((tmp_path / "out.json").read_text())
    volume = next(f for f in data["factors"] if f["name"] == "token volume")
    assert volume["leans"] == "open" and volume["weight"] == 1  # $2,460 vs $5,000: cheaper, but not 3x
    assert next(f for f in data["factors"] if f["name"] == "task complexity")["leans"] == "open"


def test_nobody_to_run_gpus_keeps_it_on_the_api(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000, team="none")
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    # volume leans open (+1), team "none" leans API (x2): -1, so the candidate passes the gate but stays
    assert "recommendation: STAY" in out
    assert "lean to the API (score -1)" in out


def test_a_weaker_candidate_goes_hybrid_on_its_logprobs(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=WRONG, volume=5_000_000)
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["passed"] is False  # 16 of 20 against 20 of 20 is far outside a 0.05 margin
    pick = data["cascade"]["recommended"]
    assert data["cascade"]["signal"] == "logprob_mean"
    # routing answers below the sure -0.1 sends exactly the 4 unsure (and wrong) ones: quality 1.0
    assert pick["routed_share"] == pytest.approx(4 / 20)
    assert pick["quality"] == pytest.approx(1.0)
    assert pick["api_cost_per_case"] == pytest.approx(4 / 20 * 0.001)
    # hybrid: $2,460 self-hosted + 5,000,000 x $0.0002 = $3,460, below the API's $5,000
    assert data["costs"]["monthly"]["hybrid"] == pytest.approx(3460.0)
    assert data["decision"] == "hybrid"
    assert "recommendation: HYBRID" in out
    # at 1,000,000 cases the hybrid ($1,730 + $200) costs more than the API ($1,000): stay
    assert _cli(tmp_path, "decide", suite, "--volume", "1000000") == 0
    assert "recommendation: STAY" in capsys.readouterr().out


def test_the_report_shows_the_same_decision(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch, wrong=WRONG, volume=5_000_000)
    page = next((tmp_path / "r").rglob("index.html")).read_text()
    assert 'id="recommendation" data-decision="hybrid"' in page
    assert float(re.search(r'id="break-even" data-value="([^"]+)"', page).group(1)) == pytest.approx(1_730_000)
    assert 'id="chart-cost"' in page and 'id="chart-cascade"' in page
    hybrid = re.search(r'data-option="hybrid">.*?data-metric="monthly" data-value="([^"]+)"', page, re.S)
    assert float(hybrid.group(1)) == pytest.approx(3460.0)
    assert page.count('data-picked="1"') == 1
    assert 'data-factor="team capability" data-leans="neutral"' in page


def test_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=1000)
    capsys.readouterr()
    (suite / "profile.toml").write_text("[volume]\ncases_per_month = 10\n[self_hosted]\ngpu_hourly = 1\n")
    assert _cli(tmp_path, "cost", suite) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'self_hosted.gpu_hourly'" in err and "profile.toml" in err
    (suite / "profile.toml").unlink()
    assert _cli(tmp_path, "decide", suite) == 2
    assert "no such profile" in capsys.readouterr().err
    assert main(["cost", str(suite), "--db", str(tmp_path / "none.duckdb"), "--profile",
                 str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such profile" in capsys.readouterr().err


def test_a_load_test_feeds_the_cost_model_and_the_report(tmp_path, monkeypatch, capsys):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=1_000_000)
    # no throughput in the profile: the cost model takes the candidate's latest `harness load`
    text = (suite / "profile.toml").read_text().replace("throughput_cases_per_s = 2.0\n", "")
    (suite / "profile.toml").write_text(text)
    rows = [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines()]

    def responder(body: dict) -> Reply:
        i = next(k for k, r in enumerate(rows) if r["text"] in body["messages"][-1]["content"])
        return Reply(text=json.dumps(rows[i]["gold"]), chunks=3, delay_s=0.05)

    with OpenAIServer(responder) as server:
        capsys.readouterr()
        code = main(["load", str(suite), "--db", str(tmp_path / "s.duckdb"), "--base-url", server.base_url,
                     "--concurrency", "2", "--duration", "30", "--max-requests", "12", "--no-progress"])
        assert code == 0
        assert len(server.completed) == 12 + 2  # the measured requests and 2 warm-up ones, none from a cache
    out = capsys.readouterr().out
    assert "requests    12, errors 0" in out
    load_id = re.search(r"load_id = '([^']+)'", out).group(1)
    assert _cli(tmp_path, "cost", suite) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["measured"]["throughput_source"].startswith(f"measured: load test {load_id} at concurrency 2")
    rate = data["measured"]["throughput_cases_per_s"]
    assert 5 < rate <= 2 / 0.05  # two in flight, each at least 50 ms
    assert "throughput was measured on a host with no GPU" in out
    # the gate's latency ceilings read the load test (what a deployment sees), not the quiet shadow run
    assert main(["gate", "--db", str(tmp_path / "s.duckdb"), "--suite", str(suite), "--out", str(tmp_path / "g"),
                 "--max-latency-p95-ms", "1"]) == 1
    checks = json.loads((tmp_path / "g" / "gate.json").read_text())["checks"]
    latency = next(c for c in checks if c["name"] == "max latency p95 (ms)")
    assert f"load test {load_id} at concurrency 2" in latency["detail"] and latency["value"] >= 50
    # the report of a run made after the load test lists it
    assert main(["report", "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r2")]) == 0
    page = next((tmp_path / "r2").rglob("index.html")).read_text()
    assert 'id="load-tests"' in page and f"<code>{load_id}</code>" in page


def test_without_the_api_in_the_run_its_cost_is_estimated_from_the_candidates_tokens(tmp_path, monkeypatch, capsys):
    suite = copy_invoices(tmp_path, 4)
    (suite / "profile.toml").write_text(PROFILE.format(volume=1_000_000, team="some"))
    (tmp_path / "prices.toml").write_text(PRICES)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIServer(lambda body: Reply(text='{"total": "1"}', chunks=1)) as server:
        assert main(["run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url, "--no-progress"]) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite, "--pricing", str(tmp_path / "prices.toml")) == 0
    out = capsys.readouterr().out
    # the candidate's answers are 1 output token each, priced at gpt-4o-mini's override rate: $0.001 a case
    assert "warning: openai:gpt-4o-mini was skipped in this run: its cost per case is estimated" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["measured"]["api_cost_per_case"] == pytest.approx(0.001)
    assert data["costs"]["monthly"]["api"] == pytest.approx(1000.0)
    # with no incumbent answers there is no gate verdict and no cascade: it stays, and says why
    assert data["decision"] == "stay" and "no incumbent answers" in data["gate_error"]
    assert "recommendation: STAY" in out


def test_the_cascade_margin_does_not_loosen_the_gate(tmp_path, monkeypatch, capsys):
    # 16 of 20 against 20 of 20 fails a 0.05 margin; a looser margin for the hybrid must not make it migrate
    suite = _setup(tmp_path, monkeypatch, wrong=WRONG, volume=5_000_000, profile="[cascade]\nmargin = 0.5\n")
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["passed"] is False and data["gate"]["stats"]["margin"] == 0.05
    assert data["decision"] != "migrate"


def test_a_tie_stays(tmp_path, monkeypatch, capsys):
    # volume leans open (+1: $2,460 vs $5,000), weekly iteration leans API (-1): balanced, so no migration
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000)
    (suite / "profile.toml").write_text((suite / "profile.toml").read_text() + 'iteration = "weekly"\n')
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    assert "recommendation: STAY" in out and "the other factors are balanced (score +0)" in out


def test_a_latency_ceiling_is_not_mended_by_a_hybrid(tmp_path, monkeypatch, capsys):
    # equal quality, but a p95 ceiling of 0.001 ms no server meets: routing cannot help, so it stays
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000, gate="max_latency_p95_ms = 0.001\n")
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["decision"] == "stay"
    assert "fails the gate on max latency p95 (ms), which routing some cases to the API cannot mend" in data["reason"]


def test_extra_samples_cost_only_the_hybrid_that_routes_on_them(tmp_path, monkeypatch, capsys):
    # 2 extra samples a case: 3 calls. The migrated deployment serves 1 call a case: $1,730 at 1,000,000 cases
    # (one replica) whatever the samples; a hybrid routing on agreement would serve 3.
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=1_000_000, candidate="samples = 3\n")
    capsys.readouterr()
    assert _cli(tmp_path, "cost", suite) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["measured"]["calls_per_case"] == pytest.approx(3.0)
    assert data["costs"]["monthly"]["self_hosted"] == pytest.approx(1730.0)
    assert data["cascade"]["signal"] == "logprob_mean"


@pytest.mark.parametrize("volume", ["nan", "inf", "0", "-5"])
def test_a_volume_that_is_not_a_positive_number_is_refused(tmp_path, monkeypatch, capsys, volume):
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=1000)
    capsys.readouterr()
    assert _cli(tmp_path, "cost", suite, "--volume", volume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "volume must be a number of cases a month above 0" in err
