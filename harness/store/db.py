"""The DuckDB store: one file holds every run, its provenance, cases, responses and scores.

The schema evolves through `MIGRATIONS`, an ordered list of named steps recorded in `schema_migrations`.
Results are written in batches by a writer thread (`BatchWriter`), flushed about once a second, so that the
event loop never waits on DuckDB and a killed run keeps everything flushed before it died.
JSON-valued columns hold JSON text (query them with DuckDB's `->>` operators).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from harness.errors import StoreError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

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
    (
        "retries_cache_cost_resume",
        """
        ALTER TABLE responses ADD COLUMN cached_input_tokens INTEGER;  -- read from the provider's prompt cache
        ALTER TABLE responses ADD COLUMN cache_write_tokens INTEGER;   -- written to it (Anthropic)
        ALTER TABLE responses ADD COLUMN attempts INTEGER;
        ALTER TABLE responses ADD COLUMN retry_wait_ms DOUBLE;         -- waiting between attempts, not latency
        ALTER TABLE responses ADD COLUMN rate_limit_wait_ms DOUBLE;    -- the part of it after 429 answers
        ALTER TABLE responses ADD COLUMN source VARCHAR;               -- call, cache or log
        ALTER TABLE responses ADD COLUMN cost_usd DOUBLE;              -- NULL when the price is unknown
        ALTER TABLE responses ADD COLUMN cache_key VARCHAR;            -- sha256 of cache_parts
        ALTER TABLE responses ADD COLUMN cache_parts VARCHAR;          -- JSON: what the key is made of
        ALTER TABLE responses ADD COLUMN cached_from VARCHAR;          -- run_id of the stored answer reused
        ALTER TABLE run_providers ADD COLUMN spec VARCHAR;             -- JSON: the provider entry, to resume
        ALTER TABLE run_providers ADD COLUMN pricing VARCHAR;          -- JSON: price used and table version
        ALTER TABLE run_providers ADD COLUMN stats VARCHAR;            -- JSON: calls, retries, 429s, log matches
        ALTER TABLE runs ADD COLUMN cache_mode VARCHAR;                -- replay, fresh or off
        ALTER TABLE runs ADD COLUMN pricing_version VARCHAR;
        ALTER TABLE runs ADD COLUMN resumed INTEGER DEFAULT 0;         -- times resumed
        ALTER TABLE runs ADD COLUMN resumed_at TIMESTAMPTZ;
        """,
    ),
    (
        "metrics_context_rescoring",
        """
        CREATE TABLE metrics (             -- run-level aggregates per provider and scorer (F1, confusion matrix...)
            run_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            scorer VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            value DOUBLE,                  -- NULL when undefined (0/0) or when the metric is all detail
            detail VARCHAR,                -- JSON
            PRIMARY KEY (run_id, provider, scorer, metric)
        );
        ALTER TABLE cases ADD COLUMN context VARCHAR;     -- JSON: how a long input was cut to fit, if it was
        ALTER TABLE runs ADD COLUMN scorers VARCHAR;      -- JSON: the scorer entries the stored scores came from
        ALTER TABLE runs ADD COLUMN scored_at TIMESTAMPTZ;
        ALTER TABLE runs ADD COLUMN rescored INTEGER DEFAULT 0;  -- times `harness score` re-scored the run
        """,
    ),
    (
        "confidence_samples_load_tests",
        """
        ALTER TABLE responses ADD COLUMN logprob_mean DOUBLE;    -- mean log-probability of the answer's tokens
        ALTER TABLE responses ADD COLUMN logprob_min DOUBLE;     -- of its least likely token
        ALTER TABLE responses ADD COLUMN margin_mean DOUBLE;     -- mean gap between each token's top two logprobs
        ALTER TABLE responses ADD COLUMN logprob_tokens INTEGER; -- tokens the three figures are over
        ALTER TABLE responses ADD COLUMN agreement DOUBLE;       -- share of extra samples giving the same answer
        ALTER TABLE responses ADD COLUMN samples INTEGER;        -- extra samples drawn for `agreement`
        CREATE TABLE samples (             -- the extra answers drawn to measure agreement (provider `samples` > 1)
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            sample INTEGER NOT NULL,       -- 1, 2...; the main answer (sample 0) is in responses
            text VARCHAR,
            input_tokens INTEGER,
            output_tokens INTEGER,
            latency_ms DOUBLE,
            cost_usd DOUBLE,               -- NULL when the price is unknown
            error VARCHAR,
            agrees BOOLEAN,                -- the same answer as the main one, after normalisation
            PRIMARY KEY (run_id, case_id, provider, sample)
        );
        CREATE TABLE load_tests (          -- `harness load`: a provider driven at a fixed concurrency
            load_id VARCHAR PRIMARY KEY,
            run_id VARCHAR,                -- the shadow run it stands beside (the suite's latest), if any
            suite VARCHAR NOT NULL,
            suite_hash VARCHAR,
            provider VARCHAR NOT NULL,
            model VARCHAR,
            endpoint VARCHAR,              -- URL or managed server; never a key
            concurrency INTEGER,
            duration_s DOUBLE,             -- asked for
            max_requests INTEGER,
            warmup INTEGER,                -- requests sent before the clock started, left out of every figure
            elapsed_s DOUBLE,              -- measured, first request sent to last answer received
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            requests INTEGER,              -- answered
            errors INTEGER,
            requests_per_s DOUBLE,
            output_tokens_per_s DOUBLE,
            ttft_p50_ms DOUBLE, ttft_p95_ms DOUBLE, ttft_p99_ms DOUBLE,
            tpot_p50_ms DOUBLE, tpot_p95_ms DOUBLE, tpot_p99_ms DOUBLE,   -- time per output token after the first
            latency_p50_ms DOUBLE, latency_p95_ms DOUBLE, latency_p99_ms DOUBLE,
            host VARCHAR,                  -- JSON: where the load ran (hostname, CPUs, GPUs seen)
            status VARCHAR                 -- completed or interrupted
        );
        CREATE TABLE load_requests (
            load_id VARCHAR NOT NULL,
            seq INTEGER NOT NULL,          -- order sent
            case_id VARCHAR,
            sent_s DOUBLE,                 -- seconds after the load test started
            ttft_ms DOUBLE,
            tpot_ms DOUBLE,
            latency_ms DOUBLE,
            input_tokens INTEGER,
            output_tokens INTEGER,
            error_kind VARCHAR,
            error VARCHAR,
            PRIMARY KEY (load_id, seq)
        );
        """,
    ),
    (
        "client_selfcheck",
        # harness.selfcheck: what the client itself cost while it measured (NULL: no call was made, or a file from
        # before the check); latency_reliable is false when the loop lag p99 was over selfcheck.LAG_LIMIT_MS
        """
        ALTER TABLE runs ADD COLUMN client_cpu_s DOUBLE;          -- CPU seconds of the harness process, all threads
        ALTER TABLE runs ADD COLUMN client_cpu_share DOUBLE;      -- those per wall-clock second (1.0 = one core)
        ALTER TABLE runs ADD COLUMN loop_lag_p50_ms DOUBLE;       -- how late the event loop woke a 10 ms timer
        ALTER TABLE runs ADD COLUMN loop_lag_p99_ms DOUBLE;
        ALTER TABLE runs ADD COLUMN loop_lag_max_ms DOUBLE;
        ALTER TABLE runs ADD COLUMN latency_reliable BOOLEAN;     -- false: the client was saturated
        ALTER TABLE load_tests ADD COLUMN client_cpu_s DOUBLE;
        ALTER TABLE load_tests ADD COLUMN client_cpu_share DOUBLE;
        ALTER TABLE load_tests ADD COLUMN loop_lag_p50_ms DOUBLE;
        ALTER TABLE load_tests ADD COLUMN loop_lag_p99_ms DOUBLE;
        ALTER TABLE load_tests ADD COLUMN loop_lag_max_ms DOUBLE;
        ALTER TABLE load_tests ADD COLUMN latency_reliable BOOLEAN;
        """,
    ),
    (
        "run_status_reason",
        # why a run is `failed` or `degraded` (harness.runner.run_status), e.g. the managed server died
        """
        ALTER TABLE runs ADD COLUMN status_reason VARCHAR;
        """,
    ),
    (
        "proxy_reference",
        # harness proxy: live traffic has no gold; its answers are judged against the incumbent's answer
        """
        ALTER TABLE runs ADD COLUMN reference VARCHAR;    -- NULL: the suite's gold; incumbent: its answers
        """,
    ),
    (
        "judgements",
        # judge scorers (pairwise, rubric): every call to the judge model, the cache of its verdicts
        """
        CREATE TABLE judgements (
            run_id VARCHAR NOT NULL,
            scorer VARCHAR NOT NULL,       -- the judge scorer's name
            judge VARCHAR NOT NULL,        -- the judge's provider id
            case_id VARCHAR NOT NULL,
            provider VARCHAR,              -- the provider whose answer was judged; NULL for a human-labelled example
            item VARCHAR NOT NULL,         -- ab / ba (pairwise orders), one (rubric); label N ... for an example
            verdict VARCHAR,               -- A, B, tie, or a rubric score; NULL when the output was not a verdict
            parsed JSON,                   -- the judge's answer as read (score, criteria...)
            invalid VARCHAR,               -- why the judge's output is not a verdict
            human VARCHAR,                 -- the human label of an example
            text VARCHAR,                  -- what the judge wrote
            model VARCHAR,
            error VARCHAR,
            error_kind VARCHAR,
            input_tokens INTEGER,
            output_tokens INTEGER,
            latency_ms DOUBLE,
            cost_usd DOUBLE,               -- of the call, also when answered from the cache (what a fresh run pays)
            cached BOOLEAN,                -- answered from an earlier run's judgement
            cache_key VARCHAR,
            judged_at TIMESTAMPTZ
        );
        """,
    ),
    (
        "spend_and_stop_rule",
        # harness run --max-cost / --until-decided: the ceiling and what was spent; the stop rule and where it stopped
        """
        ALTER TABLE runs ADD COLUMN spend JSON;       -- {"ceiling", "spent", "reached", ...} of a run with a ceiling
        ALTER TABLE runs ADD COLUMN stop_rule JSON;   -- {"metric", "margin", "confidence", "seed", "verdicts", ...}
        """,
    ),
]

# New files stay readable by every DuckDB since 1.0 (the `duckdb` CLI, DBeaver...), not only by this version.
CONNECT_CONFIG = {"storage_compatibility_version": "v1.0.0"}

TABLES = (
    "runs", "run_providers", "cases", "responses", "samples", "scores", "metrics", "load_tests", "load_requests",
    "judgements",
)


HEADER_SIZE = 4096  # DuckDB's file: a main header, two database headers, then blocks (storage_info.hpp)


def check_file(path: Path) -> None:
    """Raise StoreError if the DuckDB file at `path` is cut short inside its headers (a copy or a download that
    stopped, a full disk); reads 12 KB and opens nothing, so the file is left as it is. A file cut further on is
    found when a query reaches the missing part (`damaged`). The header's block count is no bound on the file's
    size: DuckDB drops free blocks at the end of a file, so a sound file may be shorter than it says. A file that
    is not there, is empty or does not start like a DuckDB file is left to DuckDB."""
    try:
        with path.open("rb") as f:
            head = f.read(3 * HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except (FileNotFoundError, IsADirectoryError):
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the DuckDB file: {exc.strerror or exc}") from None
    if head[8:12] == b"DUCK" and len(head) < 3 * HEADER_SIZE:
        raise StoreError(_truncated(path, size, 3 * HEADER_SIZE, "its headers alone take"))


def damaged(path: Path | str, exc: BaseException) -> StoreError:
    """The StoreError for a DuckDB file a query could not read (DuckDB's IOException: a block past its end)."""
    return StoreError(f"{path}: the DuckDB file is damaged or cut short ({str(exc).splitlines()[0][:200]}); it was "
                      "left as it is: restore it from a backup or the original, or use another file "
                      "(--db, make DB=...)")


def _truncated(path: Path, size: int, expected: int, says: str) -> str:
    return (f"{path}: the DuckDB file is cut short ({size:,} bytes where {says} {expected:,}: "
            "a copy, download or disk that stopped part-way); it was left as it is: restore it from a backup or "
            "the original, or use another file (--db, make DB=...)")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix, e.g. `20261122-173005-3fa9`."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@functools.cache
def _latest_schema() -> dict[str, list[tuple[str, str]]]:
    """Table -> its (column, type) pairs once every migration has run (read from an in-memory database)."""
    con = duckdb.connect()
    try:
        for _, sql in MIGRATIONS:
            con.execute(sql)
        rows = con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    finally:
        con.close()
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for table, column, kind in rows:
        out[table].append((column, kind))
    return dict(out)


class Store:
    """A DuckDB file of runs. Opening it applies any pending migrations."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.exists():
                raise StoreError(f"{self.path}: no such DuckDB file; run a suite first (make shadow SUITE=...)")
            check_file(self.path)
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=CONNECT_CONFIG)
            self.con.execute("SET TimeZone = 'UTC'")
        except duckdb.IOException as exc:
            if "could not read enough bytes" in str(exc).lower():  # the catalog lies past where the file stops
                raise damaged(self.path, exc) from None
            raise StoreError(f"{self.path}: cannot open the DuckDB file: {_first_line(exc)}") from None
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open the DuckDB file: {_first_line(exc)}") from None
        if not read_only:
            # DuckDB's allocator keeps freed memory until it next works; its background threads hand it back to the
            # system as it goes (a 100,000-case run's peak is 300 MB lower with them)
            with contextlib.suppress(duckdb.Error):
                self.con.execute("SET allocator_background_threads = true")
            self.migrate()
        else:
            self._fill_in_old_schema()

    def _fill_in_old_schema(self) -> None:
        """A file written by an older harness, opened read-only, cannot be migrated: each of its tables that lacks
        newer columns is shadowed by a temporary view adding them as NULL, so that every query reads one schema
        (tables it lacks altogether stay absent: see `tables`)."""
        have: dict[str, set[str]] = defaultdict(set)
        for table, column in self.con.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
        ).fetchall():
            have[table].add(column)
        database = self.con.execute("SELECT current_database()").fetchone()[0]
        for table, columns in _latest_schema().items():
            missing = [(name, kind) for name, kind in columns if name not in have[table]]
            if have[table] and missing:
                added = ", ".join(f'NULL::{kind} AS "{name}"' for name, kind in missing)
                self.con.execute(f'CREATE TEMP VIEW "{table}" AS SELECT *, {added} FROM "{database}".main."{table}"')

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
        # fetchall, not fetchone: DuckDB 2 keeps a half-read result open, and the connection's next write fails
        return self.con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]

    def insert(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append `rows` (dicts keyed by column; a list, or any iterable, consumed `INSERT_BATCH` at a time so
        that memory stays flat) to `table` in one transaction, from this thread."""
        iterator = iter(rows)
        first = list(itertools.islice(iterator, INSERT_BATCH))
        rest = list(itertools.islice(iterator, INSERT_BATCH))
        if not rest:
            _insert(self.con, table, first)
            return
        with self._transaction():
            _insert(self.con, table, first)
            _insert(self.con, table, itertools.chain(rest, iterator))

    def insert_large(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Append `rows` to `table` `INSERT_BATCH` at a time, each batch committed and, when there is more than
        one, checkpointed: DuckDB keeps a transaction's rows, and committed rows until a checkpoint, in memory
        (about twice their size), so the 100,000 cases of a run inserted at once would cost 500 MB more at their
        peak than a batch at a time. Not atomic: a reader must check it has every row. Returns the rows written."""
        iterator = iter(rows)
        written = 0
        while chunk := list(itertools.islice(iterator, INSERT_BATCH)):
            _insert(self.con, table, chunk)
            written += len(chunk)
            if written > len(chunk) or len(chunk) == INSERT_BATCH:
                self.con.execute("CHECKPOINT")
        return written

    def start_run(self, run: dict[str, Any]) -> str:
        """Record a new run (provenance columns of `runs`) with status 'running'; returns its id."""
        row = {"run_id": new_run_id(), "started_at": datetime.now(UTC), "status": "running", **run}
        self.insert("runs", [row])
        return row["run_id"]

    def finish_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Mark a run completed, degraded, interrupted or failed, with its end time and why (`status_reason`)."""
        self.con.execute(
            "UPDATE runs SET status = ?, status_reason = ?, ended_at = ? WHERE run_id = ?",
            [status, reason, datetime.now(UTC), run_id],
        )

    def update_run(self, run_id: str, values: dict[str, Any]) -> None:
        """Set columns of one `runs` row."""
        if not values:
            return
        columns = ", ".join(f"{column} = ?" for column in values)
        self.con.execute(
            f"UPDATE runs SET {columns} WHERE run_id = ?", [_cell(k, v) for k, v in values.items()] + [run_id]
        )

    def resume_run(self, run_id: str) -> None:
        """Mark a stored run running again, counting the resume."""
        self.con.execute(
            "UPDATE runs SET status = 'running', status_reason = NULL, ended_at = NULL, "
            "resumed = coalesce(resumed, 0) + 1, resumed_at = ? WHERE run_id = ?", [datetime.now(UTC), run_id],
        )

    def update_provider(self, run_id: str, provider: str, values: dict[str, Any]) -> None:
        """Set columns of one `run_providers` row."""
        columns = ", ".join(f"{column} = ?" for column in values)
        self.con.execute(
            f"UPDATE run_providers SET {columns} WHERE run_id = ? AND provider = ?",
            [_cell(k, v) for k, v in values.items()] + [run_id, provider],
        )

    def forget(self, run_id: str, pairs: list[tuple[str, str]]) -> None:
        """Delete the stored answers (responses, their scores and samples) of these (case_id, provider) pairs of
        `run_id`, so that a resume calls for them again."""
        import pyarrow as pa

        if not pairs:
            return
        self.con.register("_forget", pa.table({"case_id": [c for c, _ in pairs], "provider": [p for _, p in pairs]}))
        try:
            with self._transaction():
                for table in ("samples", "scores", "responses"):
                    self.con.execute(
                        f"DELETE FROM {table} WHERE run_id = ? AND (case_id, provider) IN "
                        "(SELECT case_id, provider FROM _forget)", [run_id],
                    )
        finally:
            self.con.unregister("_forget")

    def done_pairs(self, run_id: str) -> set[tuple[str, str]]:
        """The (case_id, provider) pairs of `run_id` that have a stored response."""
        rows = self.con.execute("SELECT case_id, provider FROM responses WHERE run_id = ?", [run_id]).fetchall()
        return {(case_id, provider) for case_id, provider in rows}

    def cached_answers(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """For each cache key, the newest stored answer that was really called for and did not fail."""
        import pyarrow as pa

        if not keys:
            return {}
        self.con.register("_keys", pa.table({"cache_key": list(dict.fromkeys(keys))}))
        try:
            cursor = self.con.execute(
                "SELECT r.* FROM responses r JOIN _keys USING (cache_key) "
                "WHERE r.error IS NULL AND coalesce(r.source, 'call') = 'call' "
                "QUALIFY row_number() OVER (PARTITION BY r.cache_key ORDER BY r.started_at DESC) = 1"
            )
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
        finally:
            self.con.unregister("_keys")
        return {row["cache_key"]: row for row in rows}

    def cached_judgements(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """For each cache key, the newest stored judge call with that key that did not fail."""
        import pyarrow as pa

        if not keys:
            return {}
        self.con.register("_keys", pa.table({"cache_key": list(dict.fromkeys(keys))}))
        try:
            cursor = self.con.execute(
                "SELECT j.* FROM judgements j JOIN _keys USING (cache_key) WHERE j.error IS NULL "
                "QUALIFY row_number() OVER (PARTITION BY j.cache_key ORDER BY j.judged_at DESC) = 1"
            )
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
        finally:
            self.con.unregister("_keys")
        return {row["cache_key"]: row for row in rows}

    def put_judgement(self, row: dict[str, Any]) -> None:
        """Store one judge call, replacing the run's earlier one of the same scorer, case, provider and item."""
        with self._transaction():
            self.con.execute(
                "DELETE FROM judgements WHERE run_id = ? AND scorer = ? AND case_id = ? AND item = ? AND "
                "provider IS NOT DISTINCT FROM ?",
                [row["run_id"], row["scorer"], row["case_id"], row["item"], row.get("provider")],
            )
            _insert(self.con, "judgements", [row])

    def replace_judged_scores(self, run_id: str, scorers: list[str], rows: list[dict[str, Any]],
                              keep: set[tuple[str, str, str | None, str]] | None = None) -> None:
        """Swap the scores of judge scorers `scorers` in run `run_id` for `rows` in one transaction; with `keep`
        ((scorer, case, provider, item) of the judge calls that made them), drop the run's other judge calls of
        those scorers (left from an earlier judging, e.g. of a case no longer judged)."""
        with self._transaction():
            for scorer in scorers:
                self.con.execute("DELETE FROM scores WHERE run_id = ? AND scorer = ?", [run_id, scorer])
            _insert(self.con, "scores", rows)
            if keep is not None:
                stored = self.con.execute(
                    "SELECT scorer, case_id, provider, item FROM judgements WHERE run_id = ?", [run_id]).fetchall()
                for scorer, case_id, provider, item in stored:
                    if scorer in scorers and (scorer, case_id, provider, item) not in keep:
                        self.con.execute(
                            "DELETE FROM judgements WHERE run_id = ? AND scorer = ? AND case_id = ? AND item = ? "
                            "AND provider IS NOT DISTINCT FROM ?", [run_id, scorer, case_id, item, provider])

    def put_metrics(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Replace the run's aggregate metrics with `rows` (provider, scorer, metric, value, detail)."""
        with self._transaction():
            self.con.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            _insert(self.con, "metrics", [{"run_id": run_id, **row} for row in rows])

    def replace_scores(
        self,
        run_id: str,
        scores: list[dict[str, Any]],
        metrics: list[dict[str, Any]],
        scorers: list[dict[str, Any]],
        gold: dict[str, Any] | None = None,
    ) -> None:
        """Swap every score and metric of a run for new ones in one transaction (re-scoring), recording
        which scorers produced them and any corrected gold values (case id -> gold); a failure leaves the old
        scores as they were."""
        with self._transaction():
            for case_id, value in (gold or {}).items():
                self.con.execute(
                    "UPDATE cases SET gold = ? WHERE run_id = ? AND case_id = ?",
                    [_cell("gold", value), run_id, case_id],
                )
            self.con.execute("DELETE FROM scores WHERE run_id = ?", [run_id])
            self.con.execute("DELETE FROM metrics WHERE run_id = ?", [run_id])
            _insert(self.con, "scores", scores)
            _insert(self.con, "metrics", [{"run_id": run_id, **row} for row in metrics])
            self.con.execute(
                "UPDATE runs SET scorers = ?, scored_at = ?, rescored = coalesce(rescored, 0) + 1 WHERE run_id = ?",
                [json.dumps(scorers), datetime.now(UTC), run_id],
            )

    def journal_path(self, run_id: str) -> Path:
        """Where a run's write-ahead journal lives while the run is going."""
        return self.path.parent / f"{self.path.stem}.journal" / f"{run_id}.jsonl"

    def recover(self, run_id: str) -> int:
        """Store the results a killed run had journaled but not yet written; returns how many records.

        The runner journals each response (with its scores) before queueing it for DuckDB, so after a kill -9
        the journal holds every answer received, the last second's included. Records already stored are skipped.
        """
        path = self.journal_path(run_id)
        if not path.exists():
            return 0
        done = self.done_pairs(run_id)
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        records = 0
        for line in path.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:  # the line being written when the process died
                continue
            response = record["responses"][0]
            if (response["case_id"], response["provider"]) in done:
                continue
            done.add((response["case_id"], response["provider"]))
            records += 1
            for table, rows in record.items():
                pending[table].extend(_revive(row) for row in rows)
        with self._transaction():
            for table in sorted(pending, key=TABLES.index):
                _insert(self.con, table, pending[table])
        path.unlink()
        return records

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def writer(
        self, flush_interval: float = 1.0, max_batch: int = 5000, journal: Path | None = None
    ) -> BatchWriter:
        """A started writer thread with its own connection to this file; with `journal`, each record is
        appended there first (see `recover`), and the journal is removed once everything is written."""
        writer = BatchWriter(self.con.cursor(), flush_interval=flush_interval, max_batch=max_batch, journal=journal)
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
        rows = self.con.execute(sql, [suite] if suite else []).fetchall()
        return rows[0][0] if rows else None

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        """Run a SQL query and return a pandas DataFrame."""
        return self.con.execute(sql, params or []).df()

    def tables(self) -> set[str]:
        """The names of the tables this file has (an older file opened read-only lacks the newer ones)."""
        rows = self.con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")
        return {name for (name,) in rows.fetchall()}

    def table(self, name: str, run_id: str) -> pd.DataFrame:
        """All rows of one run in `name` (one of `TABLES`)."""
        import pandas as pd

        if name not in TABLES:
            raise StoreError(f"unknown table '{name}'; one of {', '.join(TABLES)}")
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'", [name]
        ).fetchall()[0][0]
        if not exists:  # a file written by an older harness, opened read-only (so not migrated)
            return pd.DataFrame(columns=["run_id"])
        return self.query(f"SELECT * FROM {name} WHERE run_id = ?", [run_id])

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Columns:
    """Rows of one table gathered column by column, each value already as DuckDB takes it (JSON columns as JSON
    text): appending a row is a few list appends, and `cut` turns what was gathered into an Arrow table with no
    pass over dicts."""

    __slots__ = ("columns", "n")

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.n = 0

    def append(self, row: dict[str, Any]) -> None:
        """Add one row (a dict keyed by column); a column it lacks is NULL for it."""
        self.extend((row,))

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows (called once a record, so the loop is here and not in a call per row)."""
        columns, json_columns, encode = self.columns, JSON_COLUMNS, _json_text
        for row in rows:
            n = self.n
            for key, value in row.items():
                column = columns.get(key)
                if column is None:
                    column = columns[key] = [None] * n
                if value is not None and key in json_columns:
                    value = encode(value)
                column.append(value)
            self.n = n + 1
            if len(row) != len(columns):  # a column some earlier row had and this one lacks
                for column in columns.values():
                    if len(column) == n:
                        column.append(None)

    def cut(self) -> pa.Table | None:
        """The rows gathered as an Arrow table (types inferred per column; a column of NULLs only is cast by
        DuckDB), None when there are none; the lists start empty again."""
        import pyarrow as pa

        if not self.n:
            return None
        table = pa.table({name: _array(values) for name, values in self.columns.items()})
        self.columns, self.n = {}, 0
        return table

    def __len__(self) -> int:
        return self.n


ARROW_SLICE = 1024  # rows a table gathers before the thread that records them turns them into Arrow


class BatchWriter(threading.Thread):
    """Collects rows from any thread and appends them in batches on its own DuckDB connection.

    The thread that puts a row (the event loop) appends its values to per-table column lists under a lock held
    for microseconds, and writes one journal line; every `ARROW_SLICE` rows of a table, or once its oldest row
    has waited `flush_interval`, it turns the lists of every table into Arrow tables (a cut at a record boundary,
    about a millisecond). The writer thread wakes every `flush_interval` seconds (sooner once `max_batch` rows
    are waiting), takes the cuts and appends each table's with one INSERT, all tables of a batch in one
    transaction. It never converts Python objects itself while rows are arriving: pyarrow converting in one
    thread was measured to hold off a busy thread beside it for seconds, where Arrow appends to DuckDB run
    without Python's lock and cost the event loop nothing. A checkpoint DuckDB starts on commit (seconds on a
    large file) stalls only the writer thread; rows keep gathering meanwhile, and the journal has them."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        flush_interval: float = 1.0,
        max_batch: int = 5000,
        journal: Path | None = None,
    ) -> None:
        super().__init__(name="duckdb-writer", daemon=True)
        self._con = con
        self.journal = journal
        self._journal_fd: int | None = None
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            self._journal_fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()
        self._gathering: dict[str, Columns] = {}  # rows since the last cut
        self._gathered = 0  # how many, all tables
        self._since: float | None = None  # when the oldest of them was put
        self._last_put = 0.0
        self._cuts: list[dict[str, pa.Table]] = []  # Arrow tables by table name, oldest first
        self._count = 0  # rows waiting, cut or not
        self._wake = threading.Event()
        self._stopping = False
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.error: BaseException | None = None
        self.rows_written = 0
        self.batches = 0
        self.flush_seconds = 0.0  # time spent in DuckDB appends and commits, checkpoints included
        self.slowest_flush_s = 0.0

    def _check(self) -> None:
        if self.error is not None:
            raise StoreError(f"writing results failed: {_first_line(self.error)}")

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Queue one row for `table`; never blocks on the database."""
        self.put_record({table: [row]}, journal=False)

    def put_record(self, record: dict[str, list[dict[str, Any]]], *, journal: bool = True) -> None:
        """Queue rows that belong together (a response and its scores), journaling them first: one write
        of one line, which survives the process being killed once it returns."""
        self._check()
        if journal and self._journal_fd is not None:
            # ASCII escapes: no raw U+2028 or NEL in a line that a reader might split on
            line = _journal_line(record) + "\n"
            os.write(self._journal_fd, line.encode("ascii"))
        now = time.monotonic()
        with self._lock:  # one hold: a cut never holds half a record
            gathering = self._gathering
            added = 0
            for table, rows in record.items():
                if not rows:
                    continue
                columns = gathering.get(table)
                if columns is None:
                    columns = gathering[table] = Columns()
                columns.extend(rows)
                added += len(rows)
            if self._since is None:
                self._since = now
            self._last_put = now
            self._gathered += added
            self._count += added
            if (max(len(c) for c in gathering.values()) >= ARROW_SLICE
                    or now - self._since >= self.flush_interval):
                self._cut()
            wake = self._count >= self.max_batch
        if wake:
            self._wake.set()

    def _cut(self) -> None:
        """Turn the rows gathered into Arrow tables (under the lock, on the calling thread)."""
        tables = {name: table for name, columns in self._gathering.items() if (table := columns.cut()) is not None}
        if tables:
            self._cuts.append(tables)
        self._gathering, self._gathered, self._since = {}, 0, None

    def _take(self, everything: bool) -> tuple[list[dict[str, pa.Table]], int]:
        """The cuts waiting, and the rows not yet cut when `everything` (stopping) or when no row has been put
        for `flush_interval` (nothing is recording: converting here holds nobody up)."""
        with self._lock:
            idle = time.monotonic() - self._last_put >= self.flush_interval
            if self._gathered and (everything or idle):
                self._cut()
            cuts = self._cuts
            rows = sum(table.num_rows for cut in cuts for table in cut.values())
            self._cuts = []
            self._count -= rows
            self._wake.clear()
        return cuts, rows

    def run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            stopping = self._stopping
            try:
                cuts, rows = self._take(everything=stopping)
                if cuts and self.error is None:
                    self._flush(cuts, rows)
            except BaseException as exc:  # never die silently: put() and close() raise it
                self.error = self.error or exc
            if stopping:
                return

    def _flush(self, cuts: list[dict[str, pa.Table]], rows: int) -> None:
        import pyarrow as pa

        started = time.perf_counter()
        by_table: dict[str, list[pa.Table]] = defaultdict(list)
        for cut in cuts:
            for name, table in cut.items():
                by_table[name].append(table)
        try:
            # one transaction a batch: a killed run never keeps a response without its scores
            self._con.execute("BEGIN TRANSACTION")
            for name in sorted(by_table, key=TABLES.index):
                tables = by_table[name]
                batch = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
                _append(self._con, name, batch)
            self._con.execute("COMMIT")
            self.rows_written += rows
            self.batches += 1
        except BaseException as exc:  # surfaced to the caller at put() or close()
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            self.error = exc
        elapsed = time.perf_counter() - started
        self.flush_seconds += elapsed
        self.slowest_flush_s = max(self.slowest_flush_s, elapsed)

    def close(self) -> None:
        """Flush what is queued, stop the thread and raise StoreError if any write failed."""
        self._stopping = True
        self._wake.set()
        self.join()
        self._con.close()
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if self.error is not None:
            raise StoreError(f"writing results failed: {_first_line(self.error)}")
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)


INSERT_BATCH = 10_000  # rows converted to Arrow at a time by `Store.insert`: memory stays flat for any size


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` (dicts keyed by column) to `table`, `INSERT_BATCH` rows at a time."""
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, INSERT_BATCH)):
        columns = Columns()
        columns.extend(chunk)
        batch = columns.cut()
        if batch is not None:
            _append(con, table, batch)


def _array(values: list[Any]) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(values)
    except UnicodeEncodeError:  # a lone surrogate (a model can emit one as \ud800): UTF-8 cannot hold it
        return pa.array([_utf8(v) if isinstance(v, str) else v for v in values])


def _append(con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table) -> None:
    # Arrow, not pandas: pandas would turn a missing integer into NaN, which DuckDB will not cast.
    con.register("_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    finally:
        con.unregister("_batch")


JSON_COLUMNS = frozenset(
    {"params", "package_versions", "input", "gold", "messages", "detail", "cache_parts", "spec", "pricing", "stats",
     "context", "scorers", "parsed", "spend", "stop_rule"}
)


# built once: json.dumps with arguments builds a new encoder at every call
_json_text = json.JSONEncoder(ensure_ascii=False, default=str).encode
_journal_line = json.JSONEncoder(ensure_ascii=True, default=str).encode


def _cell(column: str, value: Any) -> Any:
    # JSON columns always hold JSON text: a gold label "spam" is stored as "\"spam\"", so it reads back as itself
    if column in JSON_COLUMNS and value is not None:
        return _utf8(_json_text(value))
    return _utf8(value) if isinstance(value, str) else value


def _utf8(text: str) -> str:
    """`text`, with any lone surrogate (a model can emit one as the JSON escape \\ud800) replaced by U+FFFD:
    UTF-8, and so DuckDB, cannot hold one, and one answer must not fail a whole batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


_TIME_COLUMNS = ("started_at",)


def _revive(row: dict[str, Any]) -> dict[str, Any]:
    """A journaled row as it was before JSON: timestamps back to datetimes."""
    for column in _TIME_COLUMNS:
        if isinstance(row.get(column), str):
            row[column] = datetime.fromisoformat(row[column])
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
