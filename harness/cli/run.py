"""`harness run`: the shadow run (or the rest of a stopped one), its estimate and stop rules, then a summary and
the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.outcomes import outcome_table
from harness.analysis.summary import summarize
from harness.cli.common import (
    base_url_arg,
    cancel_on_sigterm,
    cost_text,
    print_judges,
    print_judging,
    print_metrics,
    print_scorer_errors,
    print_selfcheck_warning,
    rate_text,
)
from harness.cli.main import ALL
from harness.errors import HarnessError, ProviderError
from harness.pricing import load_pricing
from harness.providers.plan import plan_provider, resolve_served_models
from harness.report.html import render_report, run_counts
from harness.run.decided import StopRule
from harness.run.estimate import estimate_run
from harness.run.judging import plan_judges
from harness.run.runner import resumable_cases, shadow_run
from harness.run.targets import case_limit, provider_specs, resume_target, stopped_run, stored_specs
from harness.store import queries
from harness.store.db import Store
from harness.suite.load import load_suite
from harness.terminal import printable


def cmd_run(args: argparse.Namespace) -> int:
    """`harness run SUITE`: the whole shadow run (or the rest of a stopped one), then a summary and the report."""
    if args.resume and (args.candidate or args.incumbent or args.limit is not None or args.all):
        raise HarnessError(
            "--resume finishes a run as it was started: leave out --candidate, --incumbent, --limit and --all"
        )
    if not args.resume and not args.suite:
        raise HarnessError("name a suite folder (e.g. suites/invoices), or --resume RUN_ID")
    opened: list[Store] = []

    def store() -> Store:  # opened once there is something to store: bad input leaves no file behind
        if not opened:
            opened.append(Store(args.db))
        return opened[0]

    try:
        return _run(args, store)
    finally:
        for each in opened:
            each.close()


def _run(args: argparse.Namespace, open_store: Callable[[], Store]) -> int:
    cache_mode = args.cache
    if args.resume:
        store = open_store()
        run_id = resume_target(store, args.resume, args.suite)
        run = store.run(run_id)
        if run.get("reference") == "incumbent":
            raise HarnessError(f"run {run_id} is a proxy run (live traffic): go on with it with "
                               f"`harness proxy --resume {run_id}`")
        suite = load_suite(args.suite or run["suite_path"])
        specs = stored_specs(store, run_id) or list(suite.spec.providers)
        cache_mode = run.get("cache_mode") or cache_mode
    else:
        suite = load_suite(args.suite)
        specs = provider_specs(suite, args.candidate, args.incumbent)
        run_id = None
        every = args.all or args.limit == ALL
        args = argparse.Namespace(**{**vars(args), "limit": case_limit(suite, args.limit, every)})
    pricing = load_pricing(args.pricing or ())
    plans = [plan_provider(spec, base_url=args.base_url, suite_dir=suite.path) for spec in specs]
    resolve_served_models(plans)
    if not any(plan.status == "ready" for plan in plans):
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in plans)
        raise ProviderError(f"no provider can run ({reasons})")
    store = open_store()
    if run_id is None:
        run_id = _offer_resume(store, suite, args)
        if run_id is not None:
            return _run(argparse.Namespace(**{**vars(args), "resume": run_id}), open_store)

    ready = [p for p in plans if p.status == "ready"]
    n = len(resumable_cases(store, run_id, suite)) if run_id else min(args.limit or len(suite.cases), len(suite.cases))
    verb = f"resuming run {run_id}" if run_id else f"{n} of {len(suite.cases)} cases"
    print(f"suite {suite.name}: {verb} × {len(ready)} provider(s), cache {cache_mode}")
    for plan in plans:
        state = f"skipped: {plan.reason}" if plan.status == "skipped" else plan.describe_endpoint()
        print(f"  {plan.spec.role:<9} {plan.name}  ({state})")
    judges = plan_judges(suite, base_url=args.base_url)
    print_judges(judges)
    budget = suite.spec.budget
    max_cost = args.max_cost if args.max_cost is not None else budget.max_cost
    confirm_above = args.confirm_above if args.confirm_above is not None else budget.confirm_above
    cases = resumable_cases(store, run_id, suite) if run_id else suite.cases[:n]
    done = store.done_pairs(run_id) if run_id else set()
    estimate = estimate_run(suite, plans, cases, pricing, store, cache_mode=cache_mode, done=done, judges=judges)
    if args.estimate or estimate.paid:
        print("estimate before the run:" if not args.estimate else "estimate (nothing is called):")
        for line in estimate.lines():
            print(line)
        if max_cost is not None:
            print(f"spending ceiling: ${max_cost:g}")
    if args.estimate:
        return 0
    expected = estimate.total("expected")
    figure = expected if expected is not None else estimate.total("high")
    if confirm_above is not None and figure is not None and figure > confirm_above \
            and sys.stdin.isatty() and sys.stdout.isatty():
        answer = input(f"The run is estimated at ${figure:.4f}, above ${confirm_above:g}. Run it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not run")
            return 0
    rule = StopRule(suite.spec.gate.metric, suite.spec.gate.margin, suite.spec.gate.confidence, args.seed) \
        if args.until_decided else None

    started: dict[str, str] = {}
    bars: list[Any] = []

    def on_started(new_run_id: str, todo: int) -> None:
        started["run_id"] = new_run_id
        bar = _progress_bar(todo, disable=args.no_progress)
        if bar is not None:
            bars.append(bar)

    try:
        result = asyncio.run(cancel_on_sigterm(shadow_run(
            suite, plans, store, limit=args.limit, progress=lambda k: bars and bars[0].update(k),
            server_log_dir=Path(args.db).parent, on_started=on_started, cache_mode=cache_mode,
            pricing=pricing, resume=run_id, judges=judges, max_cost=max_cost, allow_unpriced=args.allow_unpriced,
            until_decided=rule,
        )))
    except (KeyboardInterrupt, asyncio.CancelledError):
        for bar in bars:
            bar.close()
        run_id = started.get("run_id")
        if run_id:
            kept = queries.count_responses(store, run_id)
            print(f"\ninterrupted: run {run_id} kept {kept} responses in {args.db}", file=sys.stderr)
            print(f"resume it with: harness run {suite.path} --resume {run_id} --db {args.db}{base_url_arg(args)}",
                  file=sys.stderr)
            path = render_report(store, run_id, args.reports)
            print(f"Report of what was kept: {path}", file=sys.stderr)
        return 130
    for bar in bars:
        bar.close()

    if result.recovered:
        print(f"recovered {result.recovered} answers the stopped run had received but not yet stored")
    if result.retried:
        print(f"called again for {result.retried} answers that had failed for infrastructure reasons")
    for name, stats in result.stats.items():
        if stats.get("summary"):
            print(f"  {name}: {printable(stats['summary'], one_line=True)}")
    print_judging(result.judging)
    _print_stop(store, result)
    _print_summary(store, result.run_id, result.n_cases)
    print_metrics(store, result.run_id)
    print_scorer_errors(store, result.run_id)
    path = render_report(store, result.run_id, args.reports)
    print(f"DuckDB:  {args.db}  (run_id = '{result.run_id}')")
    print(f"Report:  {path}")
    if result.status == "failed":
        print(f"error: run {result.run_id} failed: {printable(result.reason or '', one_line=True)}", file=sys.stderr)
        print(f"resume it once the cause is fixed: harness run {suite.path} --resume {result.run_id} --db {args.db}"
              f"{base_url_arg(args)}", file=sys.stderr)
        return 1
    return 0


def _print_stop(store: Store, result: Any) -> None:
    """What a ceiling or --until-decided did: spent against the ceiling; the verdicts and what stopping saved."""
    run = store.run(result.run_id)
    spend = run.get("spend")
    spend = json.loads(spend) if isinstance(spend, str) else None
    if spend:
        print(f"spent ${spend['spent']:.4f} of the ${spend['ceiling']:g} ceiling"
              + ("; the ceiling was reached" if spend.get("reached") else ""))
    rule = run.get("stop_rule")
    rule = json.loads(rule) if isinstance(rule, str) else None
    if not rule:
        return
    for name, verdict in rule["verdicts"].items():
        print(f"until decided: {name}: {verdict['describe']}")
    if result.status == "decided":
        ready = [p for p in result.plans if p.status == "ready"]
        asked = queries.count_responses(store, result.run_id)
        unsent = result.n_cases * len(ready) - asked
        spent = queries.run_spent(store, result.run_id)
        saved = f", about ${spent / asked * unsent:.4f} at the cost per answer so far" if asked and spent else ""
        print(f"stopped after {rule['decided_at']} of {result.n_cases} cases: {unsent} answers not asked for{saved}")


def _offer_resume(store: Store, suite: Any, args: argparse.Namespace) -> str | None:
    """If a run of this suite (same contents) stopped half-way, say how to resume it; at a terminal, ask."""
    run = stopped_run(store, suite, args.limit)
    if run is None:
        return None
    total = run["n_cases"] * run["providers"]
    print(f"run {run['run_id']} of this suite stopped ({run['status']}) with {run['answers']} of {total} answers;"
          f" resume it with: harness run {suite.path} --resume {run['run_id']}{base_url_arg(args)}"
          f"  (make shadow RESUME={run['run_id']})")
    if not (sys.stdin.isatty() and sys.stdout.isatty()) or args.candidate or args.incumbent:
        return None
    answer = input("Resume it now instead of starting a new run? [Y/n] ").strip().lower()
    return run["run_id"] if answer in ("", "y", "yes") else None


def _progress_bar(total: int, disable: bool) -> Any:
    if disable or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="resp", dynamic_ncols=True, file=sys.stderr, disable=None)


def _print_summary(store: Store, run_id: str, n_cases: int) -> None:
    providers = store.table("run_providers", run_id)
    outcomes = outcome_table(store, run_id).frame
    summary = summarize(outcomes, n_cases)
    run = store.run(run_id)
    reason = run.get("status_reason")
    print(f"run {run_id}: {run['status']}"
          + (f": {printable(reason, one_line=True)}" if isinstance(reason, str) and reason else ""))
    for p in providers.itertuples():
        if p.status == "skipped":
            print(f"  {p.provider:<28} skipped: {printable(p.reason or '', one_line=True)}")
            continue
        row = summary[summary["provider"] == p.provider]
        if row.empty:
            print(f"  {p.provider:<28} no responses")
            continue
        s = row.iloc[0]
        stats = json.loads(p.stats) if isinstance(p.stats, str) else {}
        counts = run_counts(outcomes[outcomes["provider"] == p.provider], stats)  # over every invocation
        p50 = "–" if pd.isna(s.latency_p50_ms) else f"{s.latency_p50_ms / 1000:.2f}s"
        print(
            f"  {p.provider:<28} passed {s.passed}/{n_cases} ({100 * s.pass_rate:.0f}%)  errors {s.errors}  "
            f"invalid output {rate_text(s.invalid_rate)}  latency p50 {p50}  cost {cost_text(s)}"
            + (f"  cached {s.cached}" if s.cached else "")
            + (f"  retries {counts['retries']}" if counts["retries"] else "")
            + (f"  rate-limit wait {counts['rate_limit_wait_ms'] / 1000:.1f}s" if counts["rate_limit_wait_ms"] else "")
        )
    print_selfcheck_warning(run)
