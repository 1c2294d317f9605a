"""The DuckDB store: one file holds every run, its provenance, cases, responses and scores.

The schema evolves through `MIGRATIONS`, an ordered list of named steps recorded in `schema_migrations`.
Results are written in batches by a writer thread (`BatchWriter`), flushed about once a second, so that the
event loop never waits on DuckDB and a killed run keeps everything flushed before it died.
JSON-valued columns hold JSON text (query them with DuckDB's `->>` operators).
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from harness.errors import StoreError

MIGRATIONS: list[tuple[str, str]] = [
    (
        "create_runs_cases_responses_scores",
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            suite VARCHAR NOT NULL,
            suite_path VARCHAR,
            suite_version VARCHAR,
            suite_hash VARCHAR,
            task VARCHAR,
            params VARCHAR,            -- JSON: generation parameters
            n_cases INTEGER,
            case_limit INTEGER,
            git_revision VARCHAR,
            harness_version VARCHAR,
            package_versions VARCHAR,  -- JSON: {package: version}
            python_version VARCHAR,
            hostname VARCHAR,
            command VARCHAR,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            status VARCHAR             -- running, completed, interrupted, failed
        );
        CREATE TABLE run_providers (
            run_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,  -- kind:model, as named in the suite
            role VARCHAR,               -- incumbent or candidate
            kind VARCHAR,
            model VARCHAR,
            served_model VARCHAR,       -- the model name sent to the server (as the server lists it)
            endpoint VARCHAR,           -- URL or managed server; never a key
            params VARCHAR,             -- JSON
            concurrency INTEGER,
            status VARCHAR,             -- ready or skipped
            reason VARCHAR,             -- why it was skipped
            PRIMARY KEY (run_id, provider)
        );
        CREATE TABLE cases (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            position INTEGER,
            source_line INTEGER,
            input VARCHAR,              -- JSON: the case's fields, gold excluded
            gold VARCHAR,               -- JSON
            messages VARCHAR,           -- JSON: the rendered chat messages
            PRIMARY KEY (run_id, case_id)
        );
        CREATE TABLE responses (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            text VARCHAR,
            model VARCHAR,              -- the model the server says answered
            input_tokens INTEGER,
            output_tokens INTEGER,
            usage_source VARCHAR,       -- provider, or estimated when the server reported no usage
            ttft_ms DOUBLE,
            latency_ms DOUBLE,
            finish_reason VARCHAR,
            error VARCHAR,
            error_kind VARCHAR,
            cached BOOLEAN,
            started_at TIMESTAMPTZ,
            PRIMARY KEY (run_id, case_id, provider)
        );
        CREATE TABLE scores (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            scorer VARCHAR,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            passed BOOLEAN,
            detail VARCHAR,             -- JSON
            PRIMARY KEY (run_id, case_id, provider, scorer, metric)
        );
        """,
    ),
]

# New files stay readable by every DuckDB since 1.0 (the `duckdb` CLI, DBeaver...), not only by this version.
CONNECT_CONFIG = {"storage_compatibility_version": "v1.0.0"}

TABLES = ("runs", "run_providers", "cases", "responses", "scores")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix, e.g. `20261122-173005-3fa9`."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class Store:
    """A DuckDB file of runs. Opening it applies any pending migrations."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.exists():
                raise StoreError(f"{self.path}: no such DuckDB file; run a suite first (make shadow SUITE=...)")
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=CONNECT_CONFIG)
            self.con.execute("SET TimeZone = 'UTC'")
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open the DuckDB file: {_first_line(exc)}") from None
        if not read_only:
            self.migrate()

    def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded; returns the names applied."""
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMPTZ)"
        )
        done = {row[0] for row in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for version, (name, sql) in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute(sql)
                self.con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, datetime.now(UTC)]
                )
                self.con.execute("COMMIT")
            except duckdb.Error:
                self.con.execute("ROLLBACK")
                raise
            applied.append(name)
        return applied

    def schema_version(self) -> int:
        """The number of migrations applied to this file."""
        return self.con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Append `rows` (dicts keyed by column) to `table` in one statement, from this thread."""
        _insert(self.con, table, rows)

    def start_run(self, run: dict[str, Any]) -> str:
        """Record a new run (provenance columns of `runs`) with status 'running'; returns its id."""
        row = {"run_id": new_run_id(), "started_at": datetime.now(UTC), "status": "running", **run}
        self.insert("runs", [row])
        return row["run_id"]

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run completed, interrupted or failed, with its end time."""
        self.con.execute(
            "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?", [status, datetime.now(UTC), run_id]
        )

    def writer(self, flush_interval: float = 1.0, max_batch: int = 5000) -> BatchWriter:
        """A started writer thread with its own connection to this file."""
        writer = BatchWriter(self.con.cursor(), flush_interval=flush_interval, max_batch=max_batch)
        writer.start()
        return writer

    def run(self, run_id: str) -> dict[str, Any]:
        """The `runs` row of `run_id`; raises StoreError naming the known runs if there is none."""
        df = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            recent = ", ".join(self.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 3")["run_id"])
            raise StoreError(f"{self.path}: no run '{run_id}' (latest: {recent or 'none'})")
        return df.iloc[0].to_dict()

    def latest_run(self, suite: str | None = None) -> str | None:
        """The id of the most recent run, of `suite` if given."""
        sql = "SELECT run_id FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY started_at DESC LIMIT 1"
        row = self.con.execute(sql, [suite] if suite else []).fetchone()
        return row[0] if row else None

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run a SQL query and return a pandas DataFrame."""
        return self.con.execute(sql, params or []).df()

    def table(self, name: str, run_id: str) -> pd.DataFrame:
        """All rows of one run in `name` (one of `TABLES`)."""
        if name not in TABLES:
            raise StoreError(f"unknown table '{name}'; one of {', '.join(TABLES)}")
        return self.query(f"SELECT * FROM {name} WHERE run_id = ?", [run_id])

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchWriter(threading.Thread):
    """Collects rows from any thread and appends them in batches on its own DuckDB connection."""

    _STOP = object()

    def __init__(self, con: duckdb.DuckDBPyConnection, flush_interval: float = 1.0, max_batch: int = 5000) -> None:
        super().__init__(name="duckdb-writer", daemon=True)
        self._con = con
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.error: BaseException | None = None
        self.rows_written = 0

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Queue one row for `table`; never blocks on the database."""
        if self.error is not None:
            raise StoreError(f"writing results failed: {_first_line(self.error)}")
        self._queue.put((table, row))

    def run(self) -> None:
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        count = 0
        last = time.monotonic()
        stopping = False
        while not stopping:
            timeout = max(0.0, self.flush_interval - (time.monotonic() - last))
            try:
                item = self._queue.get(timeout=timeout)
                if item is self._STOP:
                    stopping = True
                else:
                    pending[item[0]].append(item[1])
                    count += 1
            except queue.Empty:
                pass
            if count and (stopping or count >= self.max_batch or time.monotonic() - last >= self.flush_interval):
                self._flush(pending)
                pending.clear()
                count = 0
            if time.monotonic() - last >= self.flush_interval:
                last = time.monotonic()

    def _flush(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        try:
            # one transaction a batch: a killed run never keeps a response without its scores
            self._con.execute("BEGIN TRANSACTION")
            for table in sorted(pending, key=lambda t: TABLES.index(t)):
                _insert(self._con, table, pending[table])
            self._con.execute("COMMIT")
            self.rows_written += sum(len(rows) for rows in pending.values())
        except BaseException as exc:  # surfaced to the caller at put() or close()
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            self.error = exc

    def close(self) -> None:
        """Flush what is queued, stop the thread and raise StoreError if any write failed."""
        self._queue.put(self._STOP)
        self.join()
        self._con.close()
        if self.error is not None:
            raise StoreError(f"writing results failed: {_first_line(self.error)}")


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    # Arrow, not pandas: pandas would turn a missing integer into NaN, which DuckDB will not cast.
    batch = pa.Table.from_pylist([{k: _cell(k, v) for k, v in row.items()} for row in rows])
    con.register("_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    finally:
        con.unregister("_batch")


JSON_COLUMNS = frozenset({"params", "package_versions", "input", "gold", "messages", "detail"})


def _cell(column: str, value: Any) -> Any:
    # JSON columns always hold JSON text: a gold label "spam" is stored as "\"spam\"", so it reads back as itself
    if column in JSON_COLUMNS and value is not None:
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
