"""`harness cost` and `harness decide` on real stored runs (OpenAI wire-format server, real DuckDB), with a
profile and prices chosen so that every figure can be checked by hand, and the report's cost section.

The gate's score test by hand (`harness.paired`): with no case where the candidate beats the incumbent and b cases
where it loses, on n cases at margin m, the restricted estimate puts mass m on -1, so Z = (n m - b - 0.5) /
sqrt(n m (1 - m)) (while n m - b > 0.5), and the verdict is pass above 1.645 (95%), fail below -1.645. At the
margin of 0.1 used here: 50 cases that all agree give 4.5 / 2.121 = 2.12, pass; 40 give 3.5 / 1.897 = 1.85, pass;
32 (the training part of 5 folds of 40) give 2.7 / 1.697 = 1.59 and 20 give 1.5 / 1.342 = 1.12, inconclusive.
10 losses of 50 give -4.5 / 2.121 = -2.12, fail; 3 of 50 give 1.5 / 2.121 = 0.71, inconclusive."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.analysis import paired
from harness.analysis.intervals import wilson_interval
from harness.cli import main

N_CASES = 50
MARGIN = 0.1
WRONG = {3, 8, 12, 17, 21, 26, 30, 35, 41, 46}  # the candidate's wrong answers: 10 of 50

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
           profile: str = "", candidate: str = "", n_cases: int = N_CASES, refused: set[int] = frozenset()) -> Path:
    """A stored run of the first `n_cases` invoices: the API answers every case right; the candidate gets `wrong`
    wrong (and is unsure exactly there), and its server refuses `refused` with HTTP 401 (an infrastructure
    failure)."""
    suite = copy_invoices(tmp_path, n_cases)
    with (suite / "suite.toml").open("a") as f:
        f.write(f"\n[gate]\nmargin = {MARGIN}\n" + gate)
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
        if i in refused:
            return Reply(status=401, error_message="invalid API key")
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
    assert data["gate"]["verdict"] == "fail"  # 40 of 50 against 50 of 50: Z = -2.12
    pick = data["cascade"]["recommended"]
    assert data["cascade"]["signal"] == "logprob_mean"
    # routing answers below the sure -0.1 sends exactly the 10 unsure (and wrong) ones: quality 1.0
    assert pick["routed_share"] == pytest.approx(10 / 50) and pick["verdict"] == "pass"
    assert pick["quality"] == pytest.approx(1.0)
    assert pick["api_cost_per_case"] == pytest.approx(10 / 50 * 0.001)
    # cross-fitted: each fold's other 40 cases hold wrong answers, so each picks the same threshold, and every
    # case is routed as on all cases: 10 of 50 routed, the hybrid agrees with the API on all 50 (Z = 2.12, pass)
    cross = data["cascade"]["crossfit"]
    assert cross["folds"] == 5 and cross["folds_without_threshold"] == 0 and cross["holds"]
    assert cross["thresholds"] == [pytest.approx(-0.1)] * 5 and cross["fold_rules"] == ["< -0.1"] * 5
    assert (cross["routed_count"], cross["quality"], cross["verdict"]) == (10, 1.0, "pass")
    assert (cross["routed_low"], cross["routed_high"]) == pytest.approx(wilson_interval(10, 50))
    assert cross["quality_low"] == pytest.approx(50 / (50 + 1.959964**2))  # Wilson at 50 of 50
    # the API spend: 0.001 on each routed case; its interval is the score test's on the routed indicator, 97.5%
    # one-sided at each end
    low, high = paired.bounds(np.r_[np.ones(10), np.zeros(40)], 0.975)
    assert (cross["api_cost_low"], cross["api_cost_high"]) == pytest.approx((low * 0.001, high * 0.001))
    assert (cross["savings"], cross["savings_low"], cross["savings_high"]) == pytest.approx((0.8, 1 - high, 1 - low))
    # hybrid: $2,460 self-hosted + 5,000,000 x $0.0002 = $3,460, below the API's $5,000
    assert data["costs"]["monthly"]["hybrid"] == pytest.approx(3460.0)
    assert data["cascade"]["hybrid_monthly_interval"] == pytest.approx([2460 + 5000 * low, 2460 + 5000 * high])
    assert data["decision"] == "hybrid"
    assert "cross-fitted, 5 folds: 20% [11%, 33%] of cases routed to the API" in data["reason"]
    assert "recommendation: HYBRID" in out
    assert "recommended: * route to the API when logprob_mean < -0.1 (threshold chosen on all 50 cases)" in out
    assert "cross-fitted (5 folds): 20.0% routed [11.2%, 33.0%], quality 1.000 [0.929, 1.000]" in out
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
    assert '<div id="crossfit" data-verdict="pass" data-folds="5" data-holds="1" data-thin="0">' in page
    share = re.search(r'data-figure="routed_share">.*?data-value="([^"]+)"', page, re.S)
    assert float(share.group(1)) == pytest.approx(0.2)
    assert "cross-fitted (5 folds, seed 0)" in page and "cross-fitted: 20% routed" in page  # table and chart


def test_an_inconclusive_gate_is_undecided_and_never_migrates(tmp_path, monkeypatch, capsys):
    # 20 cases that all agree: Z = 1.12 at the 0.1 margin, so the gate cannot vouch, although self-hosting is
    # cheaper (the factors lean open): no migration on that evidence, and no stay either
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000, n_cases=20)
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["verdict"] == "inconclusive"
    needed = data["gate"]["stats"]["cases_needed"]
    assert needed == paired.cases_needed(np.zeros(20), MARGIN, 0.95) and needed > 20
    assert data["decision"] == "undecided" and "recommendation: UNDECIDED" in out
    assert f"about {needed:,} paired cases would show it" in data["reason"]
    # nor does a hybrid settle it: on 20 cases not even the API alone is shown within 0.1 of itself
    assert "no hybrid settles it: no threshold keeps quality within the margin" in data["reason"]
    factor = next(f for f in data["factors"] if f["name"] == "task complexity")
    assert factor["leans"] == "neutral" and factor["weight"] == 0
    page = next((tmp_path / "r").rglob("index.html")).read_text()
    assert 'id="recommendation" data-decision="undecided"' in page


def test_an_invalid_run_is_undecided_with_the_gates_reason(tmp_path, monkeypatch, capsys):
    # the candidate's server refuses 5 of 50 cases (10%, above the 5% allowed): the run measured the server
    suite = _setup(tmp_path, monkeypatch, wrong=set(), volume=5_000_000, refused={0, 1, 2, 3, 4})
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["verdict"] == "invalid"
    assert data["decision"] == "undecided" and data["reason"] == data["gate"]["reason"]
    assert "failed 5 of 50 cases for infrastructure reasons" in data["reason"]
    assert "recommendation: UNDECIDED" in out
    factor = next(f for f in data["factors"] if f["name"] == "task complexity")
    assert (factor["value"], factor["leans"]) == ("invalid run", "neutral")


def test_a_hybrid_that_holds_only_in_sample_is_not_recommended(tmp_path, monkeypatch, capsys):
    # 10 wrong of 40: the gate fails. Routing the 10 unsure ones agrees with the API on all 40 cases (Z = 1.85,
    # pass), but a fold's threshold is picked on its other 32 cases, where the same agreement gives Z = 1.59: no
    # fold finds a threshold, so cross-fitted there is no hybrid, only the API. Too thin: undecided, not hybrid.
    wrong = {3, 8, 12, 17, 21, 26, 30, 35, 37, 39}
    suite = _setup(tmp_path, monkeypatch, wrong=wrong, volume=5_000_000, n_cases=40)
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["verdict"] == "fail"
    pick = data["cascade"]["recommended"]
    assert pick["routed_share"] == pytest.approx(0.25) and pick["verdict"] == "pass"
    cross = data["cascade"]["crossfit"]
    assert cross["folds_without_threshold"] == 5 and cross["thresholds"] == [None] * 5
    assert cross["routed_share"] == 1.0 and not cross["holds"]
    # each fold's 32 cases would need to be cases_needed(40 agreeing) x 5/4 cases in all
    assert cross["cases_needed"] == math.ceil(paired.cases_needed(np.zeros(40), MARGIN, 0.95) * 5 / 4)
    assert data["decision"] == "undecided"
    assert "the evidence is too thin to recommend it: in 5 of 5 folds no threshold" in data["reason"]
    assert f"about {cross['cases_needed']:,} cases would let each fold find one" in data["reason"]
    assert "too thin to recommend a threshold: in 5 of 5 folds" in out
    assert "5 of 5 folds found no threshold within the margin on their other folds' cases" in out


def test_an_inconclusive_gate_goes_hybrid_when_the_cross_fitted_hybrid_passes(tmp_path, monkeypatch, capsys):
    # 3 wrong of 50: Z = 0.71, the gate is inconclusive. Routing the 3 unsure ones agrees with the API on all 50,
    # and cross-fitted too (every fold's other 40 cases hold a wrong answer): Z = 2.12, pass. The hybrid is
    # shown within the margin where the candidate alone is not: hybrid, at $2,460 + 5,000,000 x 0.06 x $0.001.
    suite = _setup(tmp_path, monkeypatch, wrong={3, 20, 41}, volume=5_000_000)
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["verdict"] == "inconclusive"
    cross = data["cascade"]["crossfit"]
    assert (cross["verdict"], cross["routed_count"], cross["holds"]) == ("pass", 3, True)
    assert data["costs"]["monthly"]["hybrid"] == pytest.approx(2760.0)
    assert data["decision"] == "hybrid"
    assert data["reason"].startswith("the gate cannot vouch for the candidate alone (non-inferiority: ")


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
    # 40 of 50 against 50 of 50 fails a 0.1 margin; a looser margin for the hybrid must not make it migrate
    suite = _setup(tmp_path, monkeypatch, wrong=WRONG, volume=5_000_000, profile="[cascade]\nmargin = 0.5\n")
    capsys.readouterr()
    assert _cli(tmp_path, "decide", suite) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["gate"]["verdict"] == "fail" and data["gate"]["stats"]["margin"] == MARGIN
    assert data["cascade"]["crossfit"]["margin"] == 0.5
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
