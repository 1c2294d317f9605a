"""Named queries over the store that more than one part of the harness reads."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from harness.store.db import Store

if TYPE_CHECKING:
    import pandas as pd


def latest_load(store: Store, suite: Any, provider: str) -> dict[str, Any] | None:
    """The latest completed load test of `provider` on `suite` (a name or a loaded suite) as a dict of the
    `load_tests` columns (`host` parsed from JSON; SQL NULL as None) plus `error_kinds` ({kind: count}, from its
    `load_requests`), or None if there is none."""
    name = getattr(suite, "name", suite)
    if "load_tests" not in store.tables():  # a file from before load tests, opened read-only (not migrated)
        return None
    cursor = store.con.execute(
        "SELECT * FROM load_tests WHERE suite = ? AND provider = ? AND status = 'completed' "
        "ORDER BY ended_at DESC LIMIT 1", [name, provider],
    )
    found = cursor.fetchall()  # not fetchone: DuckDB 2 keeps a half-read result open, and the next insert fails
    if not found:
        return None
    row = dict(zip([d[0] for d in cursor.description], found[0], strict=True))
    if isinstance(row.get("host"), str):
        row["host"] = json.loads(row["host"])
    kinds = store.con.execute(
        "SELECT error_kind, count(*) FROM load_requests WHERE load_id = ? AND error IS NOT NULL GROUP BY 1",
        [row["load_id"]],
    ).fetchall()
    row["error_kinds"] = {kind or "unknown": n for kind, n in kinds}
    return row


def count_responses(store: Store, run_id: str) -> int:
    """How many answers `run_id` has stored."""
    return int(store.con.execute("SELECT count(*) FROM responses WHERE run_id = ?", [run_id]).fetchone()[0])


def provider_specs(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The provider entries (suite.toml `[[providers]]`, as JSON objects) a stored run was started with."""
    rows = store.con.execute(
        "SELECT spec FROM run_providers WHERE run_id = ? AND spec IS NOT NULL", [run_id]).fetchall()
    return [json.loads(spec) for (spec,) in rows]


def stopped_runs(store: Store, suite: str | None = None, suite_hash: str | None = None) -> list[dict[str, Any]]:
    """Runs that did not complete (running, interrupted, failed, or stopped at a spending ceiling: `budget`), newest
    first, with how many answers they hold (`answers`) and how many providers were ready (`providers`); of `suite`
    and `suite_hash` when given."""
    sql = (
        "SELECT r.run_id, r.status, r.n_cases, r.case_limit, r.started_at, "
        "(SELECT count(*) FROM responses s WHERE s.run_id = r.run_id) AS answers, "
        "(SELECT count(*) FROM run_providers p WHERE p.run_id = r.run_id AND p.status = 'ready') AS providers "
        "FROM runs r WHERE r.status IN ('running', 'interrupted', 'failed', 'budget')"
    )
    params: list[Any] = []
    if suite:
        sql += " AND r.suite = ?"
        params.append(suite)
    if suite_hash:
        sql += " AND r.suite_hash = ?"
        params.append(suite_hash)
    return store.query(sql + " ORDER BY r.started_at DESC", params).to_dict("records")


def scorer_errors(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per scorer that raised on some answers of `run_id`: `scorer`, `n` (answers) and one `example` error."""
    return store.query(
        "SELECT scorer, count(*) AS n, any_value(detail->>'$.scorer_error') AS example FROM scores "
        "WHERE run_id = ? AND detail->>'$.scorer_error' IS NOT NULL GROUP BY scorer", [run_id]
    ).to_dict("records")


KILLED = ("its process stopped without finishing (killed, or the machine went down); the answers stored so far "
          "are kept")


def shown_status(status: str, reason: str | None) -> tuple[str, str | None]:
    """A stored run's (status, reason) as a reader should see them. A run still marked `running` when another
    process can read the file is `interrupted`: a running harness holds the DuckDB file's write lock, which keeps
    every other process out, so no process is running it any more. Not for the process that runs it."""
    if status == "running":
        return "interrupted", KILLED
    return status, reason


def run_list(store: Store) -> list[dict[str, Any]]:
    """Every stored run, newest first: run_id, suite, status, status_reason, n_cases, responses, started_at
    (read without pandas: `harness runs` needs no more)."""
    # a file written before migration 6 has no status_reason, and a read-only store does not migrate
    columns = {name for (name,) in store.con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' AND table_schema = 'main'"
    ).fetchall()}
    reason = "r.status_reason" if "status_reason" in columns else "NULL AS status_reason"
    cursor = store.con.execute(
        f"SELECT r.run_id, r.suite, r.status, {reason}, r.n_cases, count(s.case_id) AS responses, "
        "r.started_at FROM runs r LEFT JOIN responses s USING (run_id) GROUP BY ALL ORDER BY r.started_at DESC"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def case_ids(store: Store, run_id: str) -> list[str]:
    """The case ids stored with `run_id`, in suite order."""
    rows = store.con.execute("SELECT case_id FROM cases WHERE run_id = ? ORDER BY position", [run_id]).fetchall()
    return [case_id for (case_id,) in rows]


def samples_of(store: Store, provider: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """The extra samples `provider` drew in the runs `run_ids` (every `samples` column but the provider), in
    sample order."""
    cursor = store.con.execute(
        "SELECT * EXCLUDE (provider) FROM samples WHERE provider = ? AND list_contains(?, run_id) ORDER BY sample",
        [provider, run_ids],
    )
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


def failed_answers(store: Store, run_id: str) -> pd.DataFrame:
    """The failed answers of `run_id`: case_id, provider, error_kind, attempts, retry_wait_ms, rate_limit_wait_ms,
    cached."""
    return store.query("SELECT case_id, provider, error_kind, attempts, retry_wait_ms, rate_limit_wait_ms, cached "
                       "FROM responses WHERE run_id = ? AND error IS NOT NULL", [run_id])


def provider_stats(store: Store, run_id: str, provider: str) -> str | None:
    """The stored `run_providers.stats` JSON of one provider of `run_id`, or None."""
    row = store.con.execute("SELECT stats FROM run_providers WHERE run_id = ? AND provider = ?",
                            [run_id, provider]).fetchone()
    return row[0] if row else None


def answer_counts(store: Store, run_id: str) -> pd.DataFrame:
    """Per provider and error kind of `run_id`: whether the answers failed (`failed`) and how many (`n`)."""
    return store.query(
        "SELECT provider, error_kind, error IS NOT NULL AS failed, count(*) AS n FROM responses WHERE run_id = ? "
        "GROUP BY ALL", [run_id],
    )


def answer_errors(store: Store, run_id: str) -> pd.DataFrame:
    """Every answer of `run_id`: case_id, provider, error."""
    return store.query("SELECT case_id, provider, error FROM responses WHERE run_id = ?", [run_id])


def scores_of(store: Store, run_id: str, scorers: list[str]) -> pd.DataFrame:
    """The score rows of `run_id` written by the scorers named `scorers`."""
    return store.query("SELECT * FROM scores WHERE run_id = ? AND list_contains(?, scorer)", [run_id, scorers])


def ready_endpoints(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The providers of `run_id` that ran (`provider`, `endpoint`)."""
    return store.query("SELECT provider, endpoint FROM run_providers WHERE run_id = ? AND status = 'ready'",
                       [run_id]).to_dict("records")


def count_cases(store: Store, run_id: str) -> int:
    """How many cases `run_id` has stored."""
    return int(store.con.execute("SELECT count(*) FROM cases WHERE run_id = ?", [run_id]).fetchone()[0])


def providers_with_role(store: Store, run_id: str, role: str) -> list[str]:
    """The providers of `run_id` with `role` (incumbent or candidate), in the order they were recorded."""
    rows = store.con.execute("SELECT provider FROM run_providers WHERE run_id = ? AND role = ? ORDER BY rowid",
                             [run_id, role]).fetchall()
    return [provider for (provider,) in rows]


def provider_names(store: Store, run_id: str) -> set[str]:
    """Every provider of `run_id`, skipped ones included."""
    rows = store.con.execute("SELECT provider FROM run_providers WHERE run_id = ?", [run_id]).fetchall()
    return {provider for (provider,) in rows}


def cache_sources(store: Store, run_id: str, case_id: str | None = None,
                  provider: str | None = None) -> list[dict[str, Any]]:
    """Where each answer of `run_id` came from (source, cached_from, cache key and parts, error), by provider and
    case; only `case_id` and `provider` when given."""
    sql = "SELECT case_id, provider, source, cached_from, cache_key, cache_parts, error FROM responses WHERE run_id = ?"
    params: list[Any] = [run_id]
    if case_id is not None:
        sql += " AND case_id = ?"
        params.append(case_id)
    if provider is not None:
        sql += " AND provider = ?"
        params.append(provider)
    return store.query(sql + " ORDER BY provider, case_id", params).to_dict("records")


def earlier_calls(store: Store, run_id: str) -> pd.DataFrame:
    """The answers called for (not reused) in runs started before `run_id`, newest first, with their cache keys."""
    return store.query(
        "SELECT case_id, provider, run_id, cache_key, cache_parts, error, source, started_at FROM responses "
        "WHERE run_id <> ? AND cache_key IS NOT NULL AND coalesce(source, 'call') = 'call' "
        "AND started_at <= (SELECT started_at FROM runs WHERE run_id = ?) "
        "ORDER BY started_at DESC",
        [run_id, run_id],
    )


def latest_loads(store: Store, suite: str) -> list[dict[str, Any]]:
    """The latest completed load test of each provider on `suite`; [] for a file from before load tests."""
    if "load_tests" not in store.tables():
        return []
    return store.query(
        "SELECT * FROM load_tests WHERE suite = ? AND status = 'completed' "
        "QUALIFY row_number() OVER (PARTITION BY provider ORDER BY ended_at DESC) = 1 ORDER BY provider",
        [suite],
    ).to_dict("records")



def score_metrics(store: Store, run_id: str) -> set[str]:
    """The names of the per-case score metrics `run_id` stored."""
    rows = store.con.execute("SELECT DISTINCT metric FROM scores WHERE run_id = ?", [run_id]).fetchall()
    return {metric for (metric,) in rows}


def metric_by_case(store: Store, run_id: str, provider: str, metric: str) -> dict[str, float]:
    """Case id -> the mean value of score `metric` of `provider` in `run_id`, for the cases that have one."""
    rows = store.con.execute(
        "SELECT case_id, avg(value) FROM scores WHERE run_id = ? AND provider = ? AND metric = ? GROUP BY case_id",
        [run_id, provider, metric]).fetchall()
    return {case_id: float(value) for case_id, value in rows if value is not None}


def field_counts(store: Store, run_id: str) -> pd.DataFrame:
    """Per provider, field, outcome and gold-in-input flag of `run_id`'s field scores: how many rows (`n`) and how
    many passed (`passed`), fields in the order the scorers wrote them (`summary.field_metrics_from_counts`)."""
    return store.query(
        "SELECT provider, metric[7:] AS field, detail->>'$.outcome' AS outcome, "
        "CASE detail->>'$.gold_in_input' WHEN 'true' THEN true WHEN 'false' THEN false END AS gold_in_input, "
        "count(*) AS n, count(*) FILTER (passed) AS passed FROM scores "
        "WHERE run_id = ? AND metric LIKE 'field.%' GROUP BY ALL ORDER BY min(rowid)", [run_id])


def answers(store: Store, run_id: str, *, provider: str | None = None,
            case_ids: list[str] | None = None) -> pd.DataFrame:
    """The stored answers of `run_id` (of `provider`, of `case_ids`, when given): case_id, provider, text, error."""
    sql = "SELECT case_id, provider, text, error FROM responses WHERE run_id = $run"
    params: dict[str, Any] = {"run": run_id}
    if provider is not None:
        sql += " AND provider = $provider"
        params["provider"] = provider
    if case_ids is not None:
        sql += " AND list_contains($cases::VARCHAR[], case_id)"
        params["cases"] = case_ids
    return store.query(sql, params)


def cases_of(store: Store, run_id: str, case_ids: list[str]) -> pd.DataFrame:
    """The stored cases `case_ids` of `run_id` (every column of `cases`)."""
    return store.query("SELECT * FROM cases WHERE run_id = $run AND list_contains($cases::VARCHAR[], case_id)",
                       {"run": run_id, "cases": case_ids})


def context_cuts(store: Store, run_id: str) -> tuple[int, list[dict[str, Any]]]:
    """(how many cases `run_id` has, the context record of each input cut to fit the context, in case order)."""
    n, cut = store.con.execute(
        "SELECT count(*), list(context ORDER BY position) FILTER (context->>'truncated' = 'true') FROM cases "
        "WHERE run_id = ?", [run_id]).fetchone()
    return int(n), [json.loads(c) for c in cut or []]


def captured_traffic(store: Store, run_id: str, incumbent: str) -> list[dict[str, Any]]:
    """A proxy run's cases in order with the incumbent's answer to each (`incumbent`: its provider name):
    case_id, input, gold and messages (JSON text), then text, model, input_tokens, output_tokens, latency_ms,
    ttft_ms, finish_reason, error, started_at of the answer, and `failed_by`: the candidates whose answer did not
    pass (a list, empty when all passed)."""
    return store.query(
        """
        WITH judged AS (
            SELECT s.case_id, list(DISTINCT s.provider ORDER BY s.provider) AS failed_by
            FROM scores s JOIN run_providers p ON p.run_id = s.run_id AND p.provider = s.provider
            WHERE s.run_id = $run AND p.role = 'candidate' AND s.metric = 'case_pass' AND NOT s.passed
            GROUP BY s.case_id
            UNION ALL
            SELECT r.case_id, list(DISTINCT r.provider ORDER BY r.provider)
            FROM responses r JOIN run_providers p ON p.run_id = r.run_id AND p.provider = r.provider
            WHERE r.run_id = $run AND p.role = 'candidate' AND r.error IS NOT NULL
            GROUP BY r.case_id
        ), failed AS (SELECT case_id, flatten(list(failed_by)) AS failed_by FROM judged GROUP BY case_id)
        SELECT c.case_id, c.input, c.gold, c.messages, r.text, r.model, r.input_tokens, r.output_tokens,
               r.latency_ms, r.ttft_ms, r.finish_reason, r.error, r.started_at,
               coalesce(f.failed_by, []) AS failed_by
        FROM cases c
        LEFT JOIN responses r ON r.run_id = c.run_id AND r.case_id = c.case_id AND r.provider = $incumbent
        LEFT JOIN failed f ON f.case_id = c.case_id
        WHERE c.run_id = $run ORDER BY c.position
        """,
        {"run": run_id, "incumbent": incumbent},
    ).to_dict("records")


def answers_by_provider(store: Store, run_id: str) -> dict[str, int]:
    """How many answers each provider of `run_id` has stored, failed ones included."""
    rows = store.con.execute("SELECT provider, count(*) FROM responses WHERE run_id = ? GROUP BY provider",
                             [run_id]).fetchall()
    return {provider: int(n) for provider, n in rows}


def dead_proxy_runs(store: Store) -> list[str]:
    """Proxy runs still marked `running`: a proxy killed before it could mark its run (one file has one writer,
    so no other proxy is serving them)."""
    if "reference" not in store.query("SELECT * FROM runs LIMIT 0").columns:
        return []
    rows = store.con.execute(
        "SELECT run_id FROM runs WHERE reference = 'incumbent' AND status = 'running' ORDER BY started_at").fetchall()
    return [run_id for (run_id,) in rows]


def latest_proxy_run(store: Store) -> str | None:
    """The most recent run recorded by `harness proxy` (its answers judged against the incumbent's), if any."""
    if "reference" not in store.query("SELECT * FROM runs LIMIT 0").columns:
        return None
    rows = store.con.execute(
        "SELECT run_id FROM runs WHERE reference = 'incumbent' ORDER BY started_at DESC LIMIT 1").fetchall()
    return rows[0][0] if rows else None


def answers_for_judging(store: Store, run_id: str) -> pd.DataFrame:
    """The stored answers of `run_id` a judge reads: case_id, provider, role, text, error."""
    return store.query(
        "SELECT r.case_id, r.provider, p.role, r.text, r.error FROM responses r JOIN run_providers p "
        "ON p.run_id = r.run_id AND p.provider = r.provider WHERE r.run_id = ?", [run_id])


def ready_roles(store: Store, run_id: str) -> dict[str, str]:
    """Provider -> role of the providers of `run_id` that ran, incumbents first."""
    rows = store.con.execute(
        "SELECT provider, role FROM run_providers WHERE run_id = ? AND status = 'ready' "
        "ORDER BY role = 'incumbent' DESC, rowid", [run_id]).fetchall()
    return dict(rows)


def judgements_of(store: Store, run_id: str, scorer: str | None = None) -> list[dict[str, Any]]:
    """The stored judge calls of `run_id` (of judge scorer `scorer` only, when given), as dicts."""
    import pandas as pd

    if "judgements" not in store.tables():
        return []
    sql = "SELECT * FROM judgements WHERE run_id = ?" + (" AND scorer = ?" if scorer else "")
    frame = store.query(sql, [run_id, scorer] if scorer else [run_id])
    return [{k: (None if not isinstance(v, (list, dict)) and pd.isna(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def scores_with_detail(store: Store, run_id: str, scorers: list[str]) -> list[dict[str, Any]]:
    """The score rows of `scorers` in `run_id` (case_id, provider, scorer, metric, value, passed, detail parsed)."""
    if not scorers:
        return []
    frame = store.query(
        "SELECT case_id, provider, scorer, metric, value, passed, detail FROM scores WHERE run_id = ? "
        "AND list_contains(?, scorer)", [run_id, scorers])
    rows = frame.to_dict("records")
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if isinstance(row["detail"], str) else {}
    return rows


def cases_with_gold(store: Store, run_id: str) -> list[str]:
    """The ids of `run_id`'s cases that have a gold value (a reference answer), in run order."""
    rows = store.con.execute("SELECT case_id FROM cases WHERE run_id = ? AND gold IS NOT NULL AND gold::VARCHAR "
                             "<> 'null' ORDER BY position", [run_id]).fetchall()
    return [case_id for (case_id,) in rows]


def run_spent(store: Store, run_id: str) -> float:
    """USD billed so far by run `run_id`: its answers, extra samples and judge calls that were called for (not
    answered from the cache); unpriced calls count 0."""
    row = store.query(
        "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM responses WHERE run_id = $run AND NOT coalesce(cached, false))"
        " + (SELECT coalesce(sum(m.cost_usd), 0) FROM samples m JOIN responses r USING (run_id, case_id, provider) "
        "    WHERE m.run_id = $run AND NOT coalesce(r.cached, false))"
        " + (SELECT coalesce(sum(cost_usd), 0) FROM judgements WHERE run_id = $run AND NOT coalesce(cached, false))"
        " AS spent", {"run": run_id})
    return float(row["spent"].iloc[0] or 0.0)


def output_history(store: Store, suite: str, provider: str) -> pd.DataFrame:
    """Output tokens of `provider`'s answers in earlier runs of suite `suite` (answered, usage known): one row per
    answer, column `output_tokens`, the latest 5,000."""
    return store.query(
        "SELECT s.output_tokens FROM responses s JOIN runs r USING (run_id) WHERE r.suite = ? AND s.provider = ? "
        "AND s.error IS NULL AND s.output_tokens IS NOT NULL ORDER BY s.started_at DESC LIMIT 5000",
        [suite, provider])


def billed_inputs(store: Store, provider: str) -> pd.DataFrame:
    """`input_tokens` and the request's `messages` of `provider`'s answers whose usage the provider reported, in
    any run (the latest 2,000): what calibrates its tokens per character."""
    return store.query(
        "SELECT s.input_tokens, c.messages FROM responses s JOIN cases c USING (run_id, case_id) "
        "WHERE s.provider = ? AND s.usage_source = 'provider' AND s.input_tokens IS NOT NULL "
        "AND c.messages IS NOT NULL ORDER BY s.started_at DESC LIMIT 2000", [provider])


def judge_output_history(store: Store, suite: str, scorer: str) -> pd.DataFrame:
    """Output tokens of judge scorer `scorer`'s calls in earlier runs of suite `suite` (answered, usage known), the
    latest 5,000: column `output_tokens`."""
    return store.query(
        "SELECT j.output_tokens FROM judgements j JOIN runs r USING (run_id) WHERE r.suite = ? AND j.scorer = ? "
        "AND j.error IS NULL AND j.output_tokens IS NOT NULL AND NOT coalesce(j.cached, false) "
        "ORDER BY j.judged_at DESC LIMIT 5000", [suite, scorer])
