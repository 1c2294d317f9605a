"""Named queries over the store that more than one part of the harness reads."""

from __future__ import annotations

import json
from typing import Any

from harness.store.db import Store


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
