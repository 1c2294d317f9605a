"""`harness gate`: the verdict on real stored runs (pass, fail on the margin, fail on a floor, errors), its
outputs, and a simulation that checks the gate's error rate and power with the gate's own bootstrap."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.gate import lower_bounds, mcnemar_exact

N_CASES = 40


def _suite(tmp_path: Path, gate: str = "") -> Path:
    suite = copy_invoices(tmp_path, N_CASES)
    with (suite / "suite.toml").open("a") as f:
        f.write("\n[gate]\nmargin = 0.05\n" + gate)
    return suite


def _run(tmp_path: Path, suite: Path, candidate_wrong: set[int], incumbent_wrong: set[int], monkeypatch) -> int:
    rows = [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines()]

    def responder(body: dict) -> Reply:
        i = next(k for k, r in enumerate(rows) if r["text"] in body["messages"][-1]["content"])
        answer = dict(rows[i]["gold"])
        wrong = incumbent_wrong if body["model"].startswith("gpt") else candidate_wrong
        if i in wrong:
            answer["total"] = "999.99"
        return Reply(text=json.dumps(answer), chunks=1)

    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        return main(["run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url, "--no-progress", "--cache", "off"])


def _gate(tmp_path: Path, *args: str) -> int:
    return main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "gate"), *args])


def test_an_equal_candidate_passes_and_the_outputs_are_written(tmp_path, monkeypatch, capsys):
    suite = _suite(tmp_path)
    assert _run(tmp_path, suite, candidate_wrong={3}, incumbent_wrong={3}, monkeypatch=monkeypatch) == 0
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    capsys.readouterr()
    assert _gate(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.startswith("gate PASSED: local:smollm2-135m against openai:gpt-4o-mini")
    assert "PASS  non-inferiority: local:smollm2-135m - openai:gpt-4o-mini = +0.000 on 40 paired cases" in out
    verdict = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert verdict["verdict"] == "pass" and verdict["stats"]["lower_bound"] == 0.0
    assert verdict["stats"]["regressions"] == 0 and verdict["stats"]["mcnemar_p"] == 1.0
    junit = ElementTree.parse(tmp_path / "gate" / "junit.xml").getroot()
    assert junit.get("tests") == "1" and junit.get("failures") == "0"
    assert "Shadow gate: ✅ pass" in summary.read_text()


def test_a_worse_candidate_fails_on_the_margin(tmp_path, monkeypatch, capsys):
    suite = _suite(tmp_path)
    wrong = set(range(0, N_CASES, 4))  # 10 of 40 worse: 25 points below the incumbent
    assert _run(tmp_path, suite, candidate_wrong=wrong, incumbent_wrong=set(), monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert _gate(tmp_path) == 1
    out = capsys.readouterr().out
    assert "FAIL  non-inferiority" in out and "= -0.250 on 40 paired cases" in out
    assert "McNemar exact: 10 regressions, 0 wins, p = 0.00195" in out  # 2 x 0.5^10
    junit = ElementTree.parse(tmp_path / "gate" / "junit.xml").getroot()
    failure = junit.find("testcase[@name='non-inferiority']/failure")
    assert failure is not None and "-0.250" in failure.get("message")


def test_floors_and_slices_fail_an_otherwise_equal_candidate(tmp_path, monkeypatch, capsys):
    suite = _suite(tmp_path, gate="min_score = 0.99\nmax_slice_drop = 0.5\n")
    assert _run(tmp_path, suite, candidate_wrong={1, 2}, incumbent_wrong={1, 2}, monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert _gate(tmp_path) == 1
    out = capsys.readouterr().out
    assert "PASS  non-inferiority" in out
    assert "FAIL  min score: score = 0.95 must be ≥ 0.99" in out
    assert "PASS  slice total" in out
    # the command line overrides the suite's policy
    assert _gate(tmp_path, "--min-score", "0.9") == 0


def test_gate_against_a_baseline_run_of_the_same_provider(tmp_path, monkeypatch, capsys):
    suite = _suite(tmp_path)
    assert _run(tmp_path, suite, candidate_wrong=set(), incumbent_wrong=set(), monkeypatch=monkeypatch) == 0
    import duckdb

    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    (baseline,) = con.execute("SELECT run_id FROM runs").fetchone()
    con.close()
    assert _run(tmp_path, suite, candidate_wrong=set(range(0, N_CASES, 2)), incumbent_wrong=set(),
                monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert _gate(tmp_path, "--baseline", baseline) == 1
    out = capsys.readouterr().out
    assert f"against local:smollm2-135m in {baseline}" in out and "= -0.500" in out


def test_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    assert _gate(tmp_path) == 2
    assert "no such DuckDB file" in capsys.readouterr().err
    suite = _suite(tmp_path)
    assert _run(tmp_path, suite, candidate_wrong=set(), incumbent_wrong=set(), monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert _gate(tmp_path, "no-such-run") == 2
    err = capsys.readouterr().err
    assert "no run 'no-such-run'" in err and err.count("\n") == 1
    assert _gate(tmp_path, "--margin", "2") == 2
    assert "--margin" in capsys.readouterr().err
    assert _gate(tmp_path, "--metric", "field.nope") == 2
    assert "gate.metric 'field.nope'" in capsys.readouterr().err


def _simulate(rng, suites: int, n: int, p_incumbent: float, shortfall: float, discordance: float) -> np.ndarray:
    """Paired pass/fail outcomes: the candidate disagrees with the incumbent on about `discordance` of the
    cases, and passes `shortfall` less often. Returns candidate - incumbent per case (suites x n)."""
    inc = rng.random((suites, n)) < p_incumbent
    # discordant pairs: regressions at rate (discordance + shortfall) / 2, wins at (discordance - shortfall) / 2
    u = rng.random((suites, n))
    regress = inc & (u < (discordance / 2 + shortfall / 2) / p_incumbent)
    win = ~inc & (u < (discordance / 2 - shortfall / 2) / (1 - p_incumbent))
    cand = (inc & ~regress) | win
    return cand.astype(float) - inc.astype(float)


def test_simulation_error_rate_and_power():
    """1,000 simulated suites of 500 cases, margin 0.05, 95% confidence, the gate's own bootstrap: a candidate
    exactly at the margin passes at most ~5% of the time; an equal one fails rarely; one worse by twice the
    margin is caught nearly always. The numbers are in docs/ci.md."""
    rng = np.random.default_rng(7)
    margin, n = 0.05, 500

    def pass_share(shortfall: float) -> float:
        diffs = _simulate(rng, 1000, n, p_incumbent=0.8, shortfall=shortfall, discordance=0.10)
        return float(np.mean(lower_bounds(diffs, 0.95, 1000, seed=1) > -margin))

    at_margin = pass_share(margin)
    equal = pass_share(0.0)
    twice = pass_share(2 * margin)
    assert at_margin <= 0.07  # 5% nominal, with room for 1,000 draws' noise (sd 0.7 points)
    assert 1 - equal <= 0.05
    assert 1 - twice >= 0.95


def test_mcnemar_matches_the_binomial_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(3, 3) == 1.0
