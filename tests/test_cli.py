"""The command line does what it is told: bare suite names resolve to `suites/NAME`, a run id where a suite is
taken (or a suite where a run id is) gets a "did you mean" line, and every Make variable a target documents is
honoured while one it does not take is an error."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, copy_invoices, copy_suite
from openai_server import OpenAIServer, Reply

from harness.cli import main
from harness.store.db import Store


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A folder laid out like the repository: suites/invoices (6 cases) and suites/tickets (3 cases)."""
    (tmp_path / "suites").mkdir()
    copy_invoices(tmp_path / "suites", 6)
    copy_suite(tmp_path / "suites", "tickets", 3)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(name: str, monkeypatch) -> str:
    """A run of suites/NAME against a loopback server answering gold for invoices and a label for tickets."""
    def responder(body: dict) -> Reply:
        return Reply(text=json.dumps({"label": "card_arrival"} if "Message:" in body["messages"][-1]["content"]
                                     else {"total": "1.00"}))

    with OpenAIServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert main(["run", name, "--db", "s.duckdb", "--reports", "r", "--base-url", server.base_url,
                     "--no-progress", "--cache", "off"]) == 0
    with Store("s.duckdb", read_only=True) as store:
        return store.latest_run()


def test_a_bare_suite_name_resolves_to_the_suites_folder(workdir, monkeypatch, capsys):
    assert main(["validate", "invoices"]) == 0
    assert capsys.readouterr().out.startswith("suites/invoices: suite 'invoices' is valid")
    run_id = _run("tickets", monkeypatch)
    with Store("s.duckdb", read_only=True) as store:
        assert store.run(run_id)["suite"] == "tickets"


def test_near_misses_and_run_ids_where_a_suite_is_taken_say_what_to_type(workdir, capsys):
    assert main(["validate", "invoice"]) == 2
    assert capsys.readouterr().err == "error: invoice: no such suite folder; did you mean suites/invoices?\n"
    run_id = "20261204-175743-d391"
    for command, instead in (("run", f"harness run --resume {run_id}"), ("cost", f"harness cost SUITE --run {run_id}"),
                             ("decide", f"harness decide SUITE --run {run_id}")):
        assert main([command, run_id, "--db", "s.duckdb"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"that is a run id: did you mean `{instead}`?" in err
    assert main(["load", run_id]) == 2
    assert "that is a run id; give a suite folder" in capsys.readouterr().err


def test_a_suite_where_a_run_id_is_taken_says_what_to_type(workdir, monkeypatch, capsys):
    tickets = _run("tickets", monkeypatch)
    capsys.readouterr()
    for command in ("gate", "report", "score"):
        assert main([command, "tickets", "--db", "s.duckdb"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no run 'tickets'" in err
        assert f"'tickets' is a suite, not a run id; did you mean `harness {command} --suite suites/tickets`; " \
               f"its latest run is {tickets}" in err
    assert main(["compare", "tickets", tickets, "--db", "s.duckdb"]) == 2
    assert "give run ids (harness runs lists them)" in capsys.readouterr().err
    assert main(["gate", "nope", "--db", "s.duckdb"]) == 2
    assert "is a suite" not in capsys.readouterr().err


def test_report_and_gate_take_the_run_or_the_suite_they_are_given(workdir, monkeypatch, capsys):
    invoices = _run("invoices", monkeypatch)
    tickets = _run("tickets", monkeypatch)
    capsys.readouterr()
    # the latest run is the tickets run; --suite and a run id each pick theirs
    assert main(["report", "--suite", "invoices", "--db", "s.duckdb", "--reports", "r"]) == 0
    assert f"r/invoices/{invoices}" in capsys.readouterr().out
    assert main(["report", invoices, "--db", "s.duckdb", "--reports", "r"]) == 0
    assert f"r/invoices/{invoices}" in capsys.readouterr().out
    assert main(["gate", invoices, "--db", "s.duckdb", "--out", "g"]) in (0, 1, 3)
    assert "gate.json: g/gate.json" in capsys.readouterr().out
    assert json.loads(Path("g/gate.json").read_text())["stats"]["run_id"] == invoices
    # a run id and a suite that do not belong together
    assert main(["gate", tickets, "--suite", "invoices", "--db", "s.duckdb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run {tickets} is of suite 'tickets', not 'invoices'" in err


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-f", str(ROOT / "Makefile"), *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def _harness_lines(result: subprocess.CompletedProcess) -> str:
    """The harness command lines `make -n` would run, joined (continuation lines folded)."""
    text = result.stdout.replace("\\\n", " ")
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if "/harness " in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("args", "expected"), [
    (["gate", "SUITE=clinc", "RUN=R1"], ".venv/bin/harness gate R1 --suite suites/clinc --db runs/shadow.duckdb"),
    (["gate", "RUN=R1"], ".venv/bin/harness gate R1 --db runs/shadow.duckdb"),
    (["gate", "CANDIDATE=vllm:m"], ".venv/bin/harness gate --suite suites/invoices --db runs/shadow.duckdb "
                                   "--candidate vllm:m"),
    (["report", "RUN=R1"], ".venv/bin/harness report R1 --db runs/shadow.duckdb"),
    (["report", "SUITE=tickets"], ".venv/bin/harness report --suite suites/tickets --db runs/shadow.duckdb"),
    (["report"], ".venv/bin/harness report --db runs/shadow.duckdb"),
    (["shadow", "INCUMBENT=log:prod.jsonl", "CANDIDATE=vllm:a vllm:b", "BASE_URL=http://h:8000/v1"],
     ".venv/bin/harness run suites/invoices --db runs/shadow.duckdb --cache replay --incumbent log:prod.jsonl "
     "--candidate vllm:a --candidate vllm:b --base-url http://h:8000/v1"),
    (["shadow", "RESUME=last"], ".venv/bin/harness run --resume last --db runs/shadow.duckdb"),
    (["score", "SUITE=tickets"], ".venv/bin/harness score --suite suites/tickets --db runs/shadow.duckdb"),
    (["cost", "RUN=R1", "CANDIDATE=vllm:m"], ".venv/bin/harness cost suites/invoices --db runs/shadow.duckdb "
                                             "--run R1 --candidate vllm:m"),
    (["serve", "MODEL=m.gguf"], ".venv/bin/harness serve --model m.gguf"),
])
def test_make_passes_every_variable_a_target_documents(args, expected):
    result = _make(*args)
    assert result.returncode == 0, result.stderr
    assert _harness_lines(result) == expected


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("args", "message"), [
    (["shadow", "RUN=R1"], "make shadow does not take RUN: it takes BASE_URL CACHE CANDIDATE DB INCUMBENT LIMIT "
                           "PRICING RESUME SUITE (to finish a stopped run: RESUME=RUN_ID)"),
    (["test", "SUITE=tickets", "LIMIT=3"], "make test does not take SUITE LIMIT: it takes no variable"),
    (["runs", "SUITE=tickets"], "make runs does not take SUITE: it takes DB"),
])
def test_a_variable_a_target_does_not_take_is_an_error(args, message):
    result = _make(*args)
    assert result.returncode == 2 and message in result.stderr and "/harness " not in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_documents_every_variable_each_target_takes():
    result = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "help"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    sections: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith(" "):
            name, _, text = line.partition(": ")
            sections[name] = text
        elif sections:
            sections[name] += " " + line.strip()
    assert "DB=" in sections["variables"]
    takes = [line.removeprefix("TAKES_").split(":=") for line in (ROOT / "Makefile").read_text().splitlines()
             if line.startswith("TAKES_")]
    assert len(takes) >= 12
    for target, variables in takes:
        for variable in set(variables.split()) - {"DB", "PYTHON"}:
            assert variable in sections[target.strip()], (target, variable)


def test_text_from_a_server_reaches_the_terminal_without_control_characters(workdir, monkeypatch, capsys):
    """A model answer full of terminal escapes (window title, clear screen, colour, bell, NUL, carriage return),
    quoted by a scorer's error and by a failed run's reason: the lines on stdout and stderr carry its words, never
    the escapes; what is stored keeps the text as sent."""
    nasty = "\x1b]0;pwned\x07\x1b[2J\x1b[31mdown\x1b[0m\r\x00\x9b31m for maintenance\x1bc"
    suite = workdir / "suites" / "invoices"
    (suite / "loud.py").write_text("def check(case, output):\n    raise ValueError(output)\n")
    with (suite / "suite.toml").open("a") as f:
        f.write('\n[[scorers]]\nkind = "python"\nname = "loud"\nfunction = "loud:check"\n')
    with OpenAIServer(lambda body: Reply(text=nasty)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert main(["run", "invoices", "--db", "s.duckdb", "--reports", "r", "--base-url", server.base_url,
                     "--no-progress", "--cache", "off"]) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "scorer 'loud' raised on" in shown and "down for maintenance" in shown
    for byte in ("\x1b", "\x07", "\x00", "\r", "\x9b"):
        assert byte not in shown, repr(byte)
    with Store("s.duckdb", read_only=True) as store:
        texts = store.query("SELECT text FROM responses")["text"]
    assert all(text == nasty for text in texts)
