"""`harness runs` (the stored runs, a line each) and `harness cache explain` (why each answer did or did not come
from the cache): read-only looks at the DuckDB file."""

from __future__ import annotations

import argparse

from harness.run.cache import explain
from harness.run.targets import run_to_use
from harness.store import queries
from harness.store.db import Store
from harness.store.queries import shown_status
from harness.terminal import printable


def cmd_cache_explain(args: argparse.Namespace) -> int:
    """`harness cache explain [RUN_ID]`: why each answer of a run did or did not come from the cache."""
    with Store(args.db, read_only=True) as store:
        run_id = run_to_use(store, args.run_id, "cache explain")
        found = explain(store, run_id, case_id=args.case, provider=args.provider)
    hits = [e for e in found if e.hit]
    print(f"run {run_id}: {len(hits)} of {len(found)} answers came from the cache")
    for e in found:
        if args.all or not e.hit or args.case:
            print(f"  {'HIT ' if e.hit else 'MISS'} {e.provider}  {e.case_id}: {e.reason}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """`harness runs`: one line per stored run, newest first."""
    with Store(args.db, read_only=True) as store:
        rows = queries.run_list(store)
    if not rows:
        print("no runs yet")
    for row in rows:
        why = row["status_reason"] if isinstance(row["status_reason"], str) else None
        status, why = shown_status(row["status"], why)
        reason = f"  {status}: {printable(why, one_line=True)}" if why else ""
        if status == "interrupted":
            reason += f"; resume with `harness run --resume {row['run_id']}`"
        cases = "–" if row["n_cases"] is None else row["n_cases"]
        print(f"{row['run_id']}  {row['suite']:<12} {status:<11} {cases:>5} cases  "
              f"{row['responses']:>6} responses  {row['started_at']:%Y-%m-%d %H:%M}{reason}")
    return 0
