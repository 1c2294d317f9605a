"""A managed model server that dies under a run: noticed at once, restarted once, or the run fails with the
reason and its unanswered cases stay for --resume. Real processes and real HTTP: the stand-in `vllm` command
(tests/fake_vllm.py) kills itself with SIGSEGV after a set number of completions, as a crashing library does."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import closed_port_url, copy_invoices

from harness.cli import main


@pytest.fixture
def managed_vllm(tmp_path: Path, monkeypatch, mini_suite: Path, fake_vllm: Path) -> Path:
    """The mini suite with a managed vLLM candidate (one request at a time) and no incumbent key: `vllm` is the
    stand-in command on PATH and an empty `vllm` package makes the harness believe vLLM is installed."""
    package = tmp_path / "stub" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    for name in ("OPENAI_API_KEY", "VLLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace('id = "local:smollm2-135m"', 'id = "vllm:org/model"'))
    return mini_suite


def _run(suite: Path, tmp_path: Path, *extra: str) -> int:
    return main(["run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--reports", str(tmp_path / "r"),
                 "--no-progress", "--cache", "off", *extra])


def _stored(tmp_path: Path) -> tuple[tuple, list[tuple]]:
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    run = con.execute("SELECT run_id, status, status_reason FROM runs").fetchone()
    answers = con.execute("SELECT case_id, error_kind FROM responses ORDER BY case_id").fetchall()
    stats = con.execute("SELECT stats FROM run_providers WHERE provider = 'vllm:org/model'").fetchone()[0]
    con.close()
    return (*run, json.loads(stats)), answers


def test_a_server_that_dies_after_answering_is_restarted_once(managed_vllm, tmp_path, monkeypatch, capsys):
    # per start: the smoke test, then 3 cases, then SIGSEGV on the next: one restart carries the run to its end
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "4")
    assert _run(managed_vllm, tmp_path) == 0
    (_, status, reason, stats), answers = _stored(tmp_path)
    assert (status, reason) == ("completed", None)
    assert len(answers) == 6 and all(kind is None for _, kind in answers)  # no connection error stored
    assert stats["server"] == {"restarts": 1, "events": ["vLLM server exited with SIGSEGV after 3 requests",
                                                         "vLLM server restarted"]}
    assert "vllm:org/model: vLLM server exited with SIGSEGV after 3 requests; vLLM server restarted" in \
        capsys.readouterr().out


def test_a_server_that_keeps_dying_fails_the_run_which_resumes_once_it_works(managed_vllm, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "2")  # the smoke test and one case a start
    assert _run(managed_vllm, tmp_path) == 1
    captured = capsys.readouterr()
    (run_id, status, reason, _), answers = _stored(tmp_path)
    expected = ("vllm:org/model: vLLM server exited with SIGSEGV after 1 request, after 1 restart; its unanswered "
                "cases stay for --resume")
    assert (status, reason) == ("failed", expected)
    assert f"run {run_id}: failed: {expected}" in captured.out
    assert f"error: run {run_id} failed: {expected}" in captured.err and f"--resume {run_id}" in captured.err
    # two answers (one a start), nothing stored for the cases the dead server could not answer
    assert len(answers) == 2 and all(kind is None for _, kind in answers)
    html = next((tmp_path / "r").rglob("index.html")).read_text()
    assert 'id="run-status" data-status="failed"' in html and "exited with SIGSEGV" in html
    assert main(["runs", "--db", str(tmp_path / "s.duckdb")]) == 0
    assert f"failed: {expected}" in capsys.readouterr().out

    monkeypatch.delenv("FAKE_VLLM_CRASH_AFTER")  # the server works again: resume finishes the run
    assert main(["run", str(managed_vllm), "--resume", "last", "--db", str(tmp_path / "s.duckdb"),
                 "--reports", str(tmp_path / "r"), "--no-progress"]) == 0
    (resumed_id, status, reason, _), answers = _stored(tmp_path)
    assert (resumed_id, status, reason) == (run_id, "completed", None)
    assert len(answers) == 6 and all(kind is None for _, kind in answers)


def test_a_server_that_dies_before_answering_a_case_is_not_restarted(managed_vllm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "1")  # the smoke test passes, the first case kills it
    assert _run(managed_vllm, tmp_path) == 1
    (_, status, reason, stats), answers = _stored(tmp_path)
    assert status == "failed" and reason.startswith("vllm:org/model: vLLM server exited with SIGSEGV after 0 requests;")
    assert answers == [] and stats["server"]["restarts"] == 0


def test_a_provider_that_answers_nothing_fails_the_run(tmp_path, monkeypatch, mini_suite, capsys):
    """Not a managed server: an endpoint that refuses every connection. The run ends `failed`, not `completed`."""
    url = closed_port_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 1\nmax_attempts = 1"))
    assert _run(mini_suite, tmp_path, "--base-url", url) == 1
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    status, reason = con.execute("SELECT status, status_reason FROM runs").fetchone()
    con.close()
    assert status == "failed"
    assert reason == "local:smollm2-135m answered no case: 6 of 6 failed for infrastructure reasons (connection 6)"

    # the server comes up on that address: --resume calls again for every answer that failed for that reason
    from openai_server import OpenAIServer, Reply

    gold = {json.loads(line)["text"]: json.loads(line)["gold"] for line in (mini_suite / "cases.jsonl").read_text()
            .splitlines()}

    def responder(body: dict) -> Reply:
        text = next(t for t in gold if t in body["messages"][-1]["content"])
        return Reply(text=json.dumps(gold[text]), chunks=1)

    capsys.readouterr()
    with OpenAIServer(responder, port=port) as server:
        assert main(["run", str(mini_suite), "--resume", "last", "--db", str(tmp_path / "s.duckdb"), "--reports",
                     str(tmp_path / "r"), "--no-progress", "--base-url", server.base_url]) == 0
    assert "called again for 6 answers that had failed for infrastructure reasons" in capsys.readouterr().out
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT status, status_reason FROM runs").fetchone() == ("completed", None)
    assert con.execute("SELECT count(*), count(error) FROM responses").fetchone() == (6, 0)
    assert con.execute("SELECT count(*) FROM scores WHERE metric = 'case_pass' AND passed").fetchone() == (6,)
    con.close()


def test_an_endpoint_that_refuses_every_connection_is_not_called_case_after_case(tmp_path, monkeypatch, capsys):
    """A server you point the harness at, down: after 8 attempts in a row that could not connect the provider is no
    longer called (not 4 retries for each of 20 cases), the run fails, and the cases not sent stay for --resume."""
    suite = copy_invoices(tmp_path, 20)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = suite / "suite.toml"
    config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 1\nmax_attempts = 2"))
    assert _run(suite, tmp_path, "--base-url", closed_port_url()) == 1
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    status, reason = con.execute("SELECT status, status_reason FROM runs").fetchone()
    stored = con.execute("SELECT count(*), count(error) FROM responses").fetchone()
    con.close()
    assert status == "failed"
    assert reason.startswith("local:smollm2-135m: 8 calls in a row could not connect (connection failed")
    assert reason.endswith("after 0 answers; the cases not yet answered were not sent; they stay for --resume")
    assert stored == (3, 3)  # 2 attempts a case: three cases failed, the fourth tripped the breaker, 16 never sent
