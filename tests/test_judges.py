"""Judge scorers (pairwise, rubric) against a scripted judge on the local OpenAI wire-format server: both orders
asked and combined, ties, order-inconsistent and invalid verdicts, the cache and re-judging by `harness score`,
judge trust from human labels, the gate and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
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
