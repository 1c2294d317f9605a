"""What several commands print (judges, metrics, scorer errors, rates and costs) and how they are stopped
(SIGTERM as Ctrl-C)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import pandas as pd

from harness.providers.base import public_url
from harness.scoring.registry import metric_info
from harness.selfcheck import ADVICE, unreliable_reason
from harness.store import queries
from harness.store.db import Store
from harness.terminal import printable


def print_judges(judges: dict[str, Any]) -> None:
    """One line per judge scorer: the judge that will judge, or why none can."""
    for scorer, plan in judges.items():
        state = f"skipped: {plan.reason}" if plan.status != "ready" else plan.describe_endpoint()
        print(f"  {'judge':<9} {plan.name if plan.status == 'ready' else 'none'}  ({state}) for scorer {scorer}")


def print_judging(reports: list[Any]) -> None:
    """What each judge did: calls, cache, outputs that were no verdict, failed calls, cost."""
    for r in reports:
        cost = "cost unknown (no price)" if r.cost_usd is None else f"${r.cost_usd:.4f}"
        who = r.judge or "no judge"
        against = f", against the {r.against}" if r.against else ""
        print(f"judge {r.scorer} ({who}{against}): {r.calls} calls, {r.cached} from the cache, {r.invalid} not a "
              f"verdict, {r.errors} failed, {cost}")
        for note in r.notes:
            print(f"  {printable(note, one_line=True)}", file=sys.stderr)


def base_url_arg(args: argparse.Namespace) -> str:
    return f" --base-url {public_url(args.base_url)}" if args.base_url else ""


async def cancel_on_sigterm(coro: Any) -> Any:
    """Await `coro`, cancelling it on SIGTERM (CI cancels, `timeout`) as Ctrl-C would: servers stopped, rows kept."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def print_selfcheck_warning(row: dict[str, Any]) -> None:
    """One line when the client was too busy to measure latency (a `runs` or `load_tests` row)."""
    reason = unreliable_reason(row)
    if reason:
        print(f"warning: latency unreliable: {reason}; {ADVICE}")


def cost_text(s: Any) -> str:
    if s.cost_usd is None or pd.isna(s.cost_usd):
        return "unknown" if s.answered - s.cached else "–"
    text = f"${s.cost_usd:.4f}"
    return text + (f" (+{s.cost_unknown} unpriced)" if s.cost_unknown else "")


def rate_text(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.0f}%"


def print_scorer_errors(store: Store, run_id: str) -> None:
    """Say when a scorer raised (its cases fail; the report shows the error on each)."""
    for row in queries.scorer_errors(store, run_id):
        example = printable(row["example"], one_line=True)
        print(f"  scorer '{row['scorer']}' raised on {row['n']} answer(s), which fail: {example}")


def print_metrics(store: Store, run_id: str) -> None:
    """The headline run-level metrics (accuracy, F1, hallucinated quotes...), one line per provider."""
    metrics = store.table("metrics", run_id)
    if metrics.empty:
        return
    for provider, group in metrics.groupby("provider", sort=False):
        shown = [f"{m.metric} {m.value:.3g}" for m in group.itertuples()
                 if m.value is not None and not pd.isna(m.value) and metric_info(m.metric).headline]
        if shown:
            print(f"  {provider:<28} " + "  ".join(shown))
