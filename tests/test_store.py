from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from harness.errors import StoreError
from harness.store.db import MIGRATIONS, Store


def _response(run_id: str, i: int, **extra) -> dict:
    return {"run_id": run_id, "case_id": f"c{i}", "provider": "p", "text": "x" * 2000, "input_tokens": i,
            "output_tokens": None, "latency_ms": 1.5, "cached": False, **extra}


def test_migrations_are_recorded_and_applied_once(tmp_path: Path):
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        assert store.schema_version() == len(MIGRATIONS)
    with Store(db) as store:
        assert store.migrate() == []
        names = list(store.query("SELECT name FROM schema_migrations ORDER BY version")["name"])
    assert names == [name for name, _ in MIGRATIONS]


def test_batch_writer_appends_rows_with_nulls(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "t", "params": {"temperature": 0}})
        writer = store.writer(flush_interval=0.05)
        for i in range(2500):
            writer.put("responses", _response(run_id, i))
        writer.put("scores", {"run_id": run_id, "case_id": "c1", "provider": "p", "scorer": "s", "metric": "m",
                              "value": 1.0, "passed": True, "detail": {"outcome": "correct"}})
        writer.close()
        assert writer.rows_written == 2501
        df = store.table("responses", run_id)
        assert len(df) == 2500
        assert df["output_tokens"].isna().all()
        assert sorted(df["input_tokens"])[-1] == 2499
        outcome = store.query("SELECT detail->>'$.outcome' AS o FROM scores")["o"][0]
        assert outcome == "correct"
        assert store.run(run_id)["params"] == '{"temperature": 0}'


def test_writer_error_surfaces_as_store_error(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        writer = store.writer(flush_interval=0.01)
        writer.put("responses", {"run_id": "r", "case_id": "c", "provider": "p", "no_such_column": 1})
        with pytest.raises(StoreError, match="writing results failed"):
            writer.close()


def test_two_runs_live_side_by_side(tmp_path: Path):
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        first = store.start_run({"suite": "t"})
        store.finish_run(first, "completed")
    with Store(db) as store:
        second = store.start_run({"suite": "t"})
        store.finish_run(second, "completed")
        assert first != second
        assert store.latest_run("t") == second
        assert set(store.query("SELECT run_id FROM runs")["run_id"]) == {first, second}


def test_unknown_run_id_and_missing_file(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "t"})
        with pytest.raises(StoreError, match=rf"no run 'nope' \(latest: {run_id}\)"):
            store.run("nope")
    with pytest.raises(StoreError, match="no such DuckDB file; run a suite first"):
        Store(tmp_path / "absent.duckdb", read_only=True)


def test_kill_9_keeps_every_flushed_row(tmp_path: Path):
    """A writer process killed with SIGKILL mid-run: the file opens and holds what was flushed."""
    db = tmp_path / "s.duckdb"
    marker = tmp_path / "flushed"
    script = textwrap.dedent(f"""
        import time
        from harness.store.db import Store
        store = Store({str(db)!r})
        run_id = store.start_run({{"suite": "t"}})
        writer = store.writer(flush_interval=0.1)
        i = 0
        while True:
            writer.put("responses", {{"run_id": run_id, "case_id": f"c{{i}}", "provider": "p", "text": "x" * 500}})
            i += 1
            if i == 300:
                time.sleep(0.5)
                open({str(marker)!r}, "w").write(str(writer.rows_written))
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, "writer process died"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    flushed_before = int(marker.read_text())
    con = duckdb.connect(str(db))
    count = con.execute("SELECT count(*) FROM responses").fetchone()[0]
    status = con.execute("SELECT status FROM runs").fetchone()[0]
    con.close()
    assert flushed_before >= 300
    assert count >= flushed_before
    assert status == "running"  # never finished: the run says so


def test_the_duckdb_command_opens_the_file(tmp_path: Path):
    """Files are written in a storage format that the `duckdb` CLI installed beside the harness reads."""
    import shutil

    cli = Path(sys.executable).with_name("duckdb")
    cli = str(cli) if cli.exists() else shutil.which("duckdb")
    if cli is None:
        pytest.skip("the duckdb command (PyPI duckdb-cli) is not installed")
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        run_id = store.start_run({"suite": "t"})
        store.insert("responses", [_response(run_id, 1)])
    out = subprocess.run([cli, str(db), "-csv", "-c", "SELECT run_id, input_tokens FROM responses"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["run_id,input_tokens", f"{run_id},1"]


def test_times_read_back_in_utc(tmp_path: Path):
    with Store(tmp_path / "s.duckdb") as store:
        assert store.query("SELECT current_setting('TimeZone') AS tz")["tz"][0] == "UTC"


def test_the_journal_recovers_what_a_killed_run_had_not_written(tmp_path: Path):
    """Answers journaled but never flushed (the writer flushes once a minute here) come back on recover;
    one already stored is not stored twice; a torn last line is ignored; the journal goes away."""
    db = tmp_path / "s.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        from harness.store.db import Store
        store = Store({str(db)!r})
        run_id = store.start_run({{"suite": "t"}})
        store.insert("responses", [{{"run_id": run_id, "case_id": "c0", "provider": "p", "text": "stored"}}])
        writer = store.writer(flush_interval=60, journal=store.journal_path(run_id))
        for i in range(4):
            writer.put_record({{
                "responses": [{{"run_id": run_id, "case_id": f"c{{i}}", "provider": "p",
                                "text": f"answer {{i}}" + "\u2028\x85",
                                "started_at": __import__("datetime").datetime.now(__import__("datetime").UTC)}}],
                "scores": [{{"run_id": run_id, "case_id": f"c{{i}}", "provider": "p", "scorer": "s",
                             "metric": "case_pass", "value": 1.0, "passed": True, "detail": {{"outcome": "ok"}}}}],
            }})
        print(run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_id = proc.stdout.strip()
    with Store(db) as store:
        journal = store.journal_path(run_id)
        with journal.open("a") as f:
            f.write('{"responses": [{"run_id": "torn')
        assert store.recover(run_id) == 3
        rows = store.query("SELECT case_id, text FROM responses ORDER BY case_id").values.tolist()
        assert rows == [["c0", "stored"], *[[f"c{i}", f"answer {i}\u2028\x85"] for i in (1, 2, 3)]]
        details = store.query("SELECT detail FROM scores ORDER BY case_id")["detail"].tolist()
        assert details == ['{"outcome": "ok"}'] * 3
        assert not journal.exists()
        assert store.recover(run_id) == 0


def test_a_batch_never_holds_half_a_record(tmp_path: Path):
    """A response and its scores are written in the same transaction, however small the batches."""
    from harness.store.db import BatchWriter

    batches = []

    class Spy(BatchWriter):
        def _flush(self, cuts, rows):
            counts: dict[str, int] = {}
            for cut in cuts:
                for table, batch in cut.items():
                    counts[table] = counts.get(table, 0) + batch.num_rows
            batches.append(counts)
            super()._flush(cuts, rows)

    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "t"})
        writer = Spy(store.con.cursor(), flush_interval=0.01, max_batch=2)
        writer.start()
        for i in range(20):
            writer.put_record({
                "responses": [_response(run_id, i)],
                "scores": [{"run_id": run_id, "case_id": f"c{i}", "provider": "p", "scorer": "s", "metric": m}
                           for m in ("a", "b", "c")],
            })
        writer.close()
        assert store.query("SELECT count(*) AS n FROM scores")["n"][0] == 60
    assert batches and all(b.get("scores", 0) == 3 * b.get("responses", 0) for b in batches)


def test_a_report_of_a_file_from_before_the_metrics_table_opens_read_only(tmp_path):
    """An older file (no `metrics` table, no `cases.context`, no `responses.attempts`) is not migrated when
    opened read-only; the report of its runs still renders, and the file is left as it was."""
    import duckdb as _duckdb
    from conftest import copy_invoices
    from openai_server import OpenAIServer, Reply

    from harness.cli import main

    suite = copy_invoices(tmp_path, 2)
    db = tmp_path / "old.duckdb"
    with OpenAIServer(lambda body: Reply(text="{}")) as server:
        assert main(["run", str(suite), "--db", str(db), "--reports", str(tmp_path / "r"),
                     "--base-url", server.base_url, "--no-progress"]) == 0
    con = _duckdb.connect(str(db))
    con.execute("DROP TABLE metrics")
    con.execute("ALTER TABLE cases DROP COLUMN context")
    for column in ("attempts", "rate_limit_wait_ms", "cost_usd"):  # added by migration 2
        con.execute(f"ALTER TABLE responses DROP COLUMN {column}")
    con.execute("DELETE FROM schema_migrations WHERE version >= 2")
    con.close()
    before = db.read_bytes()
    assert main(["report", "--db", str(db), "--reports", str(tmp_path / "r2")]) == 0
    assert list((tmp_path / "r2" / "invoices").glob("*/index.html"))
    assert db.read_bytes() == before


def test_the_writer_thread_never_dies_silently(tmp_path: Path):
    """An error outside the DuckDB append itself (here, taking the rows) still surfaces at close()."""
    with Store(tmp_path / "s.duckdb") as store:
        writer = store.writer(flush_interval=0.01)

        def broken(everything):
            raise RuntimeError("taken apart")

        writer._take = broken
        writer.put("responses", _response("r", 1))
        with pytest.raises(StoreError, match="writing results failed: taken apart"):
            writer.close()


def test_rows_are_arrow_before_they_reach_the_writer_thread(tmp_path: Path):
    """The thread that puts rows turns them into Arrow every ARROW_SLICE rows (and once the oldest has waited a
    flush interval), so that the writer thread only appends Arrow data; a batch keeps records whole, NULL-only
    slices and ints beside floats are unified, and a lone surrogate becomes U+FFFD."""
    from harness.store.db import ARROW_SLICE

    with Store(tmp_path / "s.duckdb") as store:
        run_id = store.start_run({"suite": "t"})
        writer = store.writer(flush_interval=60, max_batch=10**9)
        n = ARROW_SLICE + 10
        for i in range(n):
            writer.put_record({
                "responses": [_response(run_id, i, latency_ms=i if i < 5 else i + 0.5,
                                        error="bad \ud800" if i == 7 else None)],
                "scores": [{"run_id": run_id, "case_id": f"c{i}", "provider": "p", "scorer": "s", "metric": "m",
                            "value": None if i < ARROW_SLICE else 1.0, "detail": {"i": i}}],
            })
        assert len(writer._cuts) == 1 and writer._gathered == 20  # cut at ARROW_SLICE rows of one table
        writer.close()
        assert writer.rows_written == 2 * n
        rows = store.query("SELECT case_id, latency_ms, error FROM responses ORDER BY input_tokens")
        assert len(rows) == n and rows["latency_ms"].tolist()[:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.5]
        assert rows["error"][7] == "bad \ufffd"
        scores = store.query("SELECT value, detail FROM scores ORDER BY (detail->>'$.i')::INT")
        assert scores["value"].isna().sum() == ARROW_SLICE and scores["detail"][3] == '{"i": 3}'


def _cut_in_half(tmp_path: Path) -> Path:
    """A real DuckDB file with a finished run, truncated to half its size (a copy that stopped part-way)."""
    db = tmp_path / "cut.duckdb"
    with Store(db) as store:
        run_id = store.start_run({"suite": "invoices"})
        store.insert("responses", [_response(run_id, i) for i in range(200)])
        store.finish_run(run_id, "completed")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    return db


def test_a_file_cut_inside_its_headers_is_refused_at_open_and_left_as_it_is(tmp_path: Path):
    db = _cut_in_half(tmp_path)
    before = db.read_bytes()
    for size in (100, 5000, 12_000):  # cut inside the headers
        db.write_bytes(before[:size])
        for read_only in (True, False):
            with pytest.raises(StoreError) as info:
                Store(db, read_only=read_only)
            message = str(info.value)
            assert message.startswith(f"{db}: the DuckDB file is cut short ({size:,} bytes where its headers")
            assert "restore it from a backup" in message and "\n" not in message
        assert db.stat().st_size == size


def test_a_sound_file_shorter_than_its_header_counts_opens(tmp_path: Path):
    """DuckDB drops free blocks at the end of a file, so its header's block count can exceed the file: such a
    file is sound and must open (a check on that count refused real runs)."""
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        run_id = store.start_run({"suite": "invoices"})
        store.insert("responses", [_response(run_id, i) for i in range(2000)])
        store.con.execute("DELETE FROM responses")
        store.con.execute("CHECKPOINT")
        store.finish_run(run_id, "completed")
    with Store(db, read_only=True) as store:
        assert store.run(run_id)["status"] == "completed"


def test_the_cli_says_one_line_about_a_truncated_file_and_leaves_it(tmp_path: Path, monkeypatch, capsys):
    """`runs`, `report` and `run` on a truncated file: exit 2, one line naming the file and the fix, no traceback,
    and the file not modified (a `run` would otherwise open it read-write)."""
    from conftest import closed_port_url, copy_invoices

    from harness.cli import main

    db = _cut_in_half(tmp_path)
    before, mtime = db.read_bytes(), db.stat().st_mtime_ns
    suite = copy_invoices(tmp_path, 2)
    monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", closed_port_url())
    for argv in (["runs"], ["report"], ["run", str(suite), "--candidate", "openai-compatible:m", "--no-progress"]):
        assert main([*argv, "--db", str(db)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {db}: the DuckDB file is damaged or cut short") and err.count("\n") == 1, err
        assert "restore it from a backup or the original, or use another file" in err
    assert db.read_bytes() == before and db.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.duckdb", "invoices"]
