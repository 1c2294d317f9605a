"""The `harness` command line: a thin layer over the library.

The only place with `asyncio.run` and `sys.exit`. A `HarnessError` becomes one line on stderr and exit 2;
Ctrl-C stops the run cleanly (servers stopped, results flushed, run marked interrupted) with exit 130.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from harness.analysis.outcomes import outcome_table, shown_status
from harness.analysis.summary import summarize
from harness.errors import HarnessError, ProfileError, ProviderError
from harness.pricing import load_pricing
from harness.providers.base import public_url
from harness.providers.plan import plan_provider, resolve_served_models
from harness.providers.server import ManagedServer
from harness.report.html import render_report, run_counts
from harness.run.cache import MODES, explain
from harness.run.decided import StopRule
from harness.run.estimate import estimate_run
from harness.run.judging import judge_run, plan_judges
from harness.run.rescore import judging_cases, rescore, rescored_pass_rates, store_metrics
from harness.run.runner import resumable_cases, shadow_run
from harness.run.targets import (
    SUITES_DIR,
    case_limit,
    provider_specs,
    resume_target,
    run_to_use,
    stopped_run,
    stored_specs,
)
from harness.scoring.registry import build_scorers, metric_info
from harness.selfcheck import ADVICE, unreliable_reason
from harness.store import queries
from harness.store.db import Store, damaged
from harness.suite.load import load_suite
from harness.suite.spec import JUDGE_KINDS
from harness.terminal import printable

DEFAULT_DB = "runs/shadow.duckdb"
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")  # store.new_run_id
# what to type instead when a run id is given where a suite folder is taken
RUN_INSTEAD = {"run": "harness run --resume {id}", "cost": "harness cost SUITE --run {id}",
               "decide": "harness decide SUITE --run {id}"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "suite", None):
            args.suite = suite_folder(args.suite, args.command)
        return args.func(args)
    except duckdb.IOException as exc:  # a block of the file past its end: a copy or a disk that stopped part-way
        print(f"error: {printable(str(damaged(getattr(args, 'db', DEFAULT_DB), exc)), one_line=True)}",
              file=sys.stderr)
        return 2
    except HarnessError as exc:
        print(f"error: {printable(str(exc), one_line=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Shadow-deployment evaluation of LLMs.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite on its candidate(s) and incumbent, store and report")
    run.add_argument("suite", nargs="?", help="suite folder, e.g. suites/invoices (optional with --resume)")
    run.add_argument("--limit", type=_limit, default=None,
                     help="run only the first N cases ('all': every case; default: the suite's cases.default_limit)")
    run.add_argument("--all", action="store_true", help="run every case, whatever the suite's default_limit")
    run.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    run.add_argument("--reports", default="reports", help="folder for HTML reports (default reports)")
    run.add_argument(
        "--base-url", help="use this OpenAI-compatible server for local/vllm candidates (or set VLLM_BASE_URL)"
    )
    run.add_argument("--candidate", action="append", metavar="KIND:MODEL", help="replace the suite's candidates")
    run.add_argument("--incumbent", metavar="KIND:MODEL", help="replace the suite's incumbent")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--cache", choices=MODES, default="replay",
        help="replay: reuse stored answers to identical requests, call for the rest (default); "
             "fresh: call for every case; off: no cache keys at all",
    )
    run.add_argument(
        "--resume", metavar="RUN_ID",
        help="fill in a stopped run: call only for its missing case x provider pairs ('last': the latest one)",
    )
    run.add_argument("--pricing", action="append", metavar="FILE", help="TOML file of prices overriding the built-in "
                     "table (repeatable; see README)")
    run.add_argument("--estimate", action="store_true",
                     help="say what the run would cost (calls, tokens, cost range per provider); calls nothing")
    run.add_argument("--max-cost", type=_usd("--max-cost"), metavar="USD",
                     help="spending ceiling of the run (resumes included): no call starts whose worst case would "
                          "pass it; the run stops with status budget (default: the suite's [budget] max_cost)")
    run.add_argument("--confirm-above", type=_usd("--confirm-above"), metavar="USD",
                     help="at a terminal, ask before a run estimated above this (default: [budget] confirm_above)")
    run.add_argument("--allow-unpriced", action="store_true",
                     help="with a ceiling, call paid providers that have no price (their calls are not counted)")
    run.add_argument("--until-decided", action="store_true",
                     help="send the cases in a seeded random order and stop once the gate's non-inferiority question "
                          "has an anytime-valid answer (pass or fail) for every candidate")
    run.add_argument("--seed", type=int, default=0, help="order of the cases with --until-decided (default 0)")
    run.set_defaults(func=cmd_run, command="run")

    cache = sub.add_parser("cache", help="the response cache")
    cache_sub = cache.add_subparsers(required=True, metavar="ACTION")
    explain = cache_sub.add_parser("explain", help="say why each answer of a run did or did not come from the cache")
    explain.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    explain.add_argument("--case", help="only this case id")
    explain.add_argument("--provider", help="only this provider (kind:model)")
    explain.add_argument("--all", action="store_true", help="list every answer, not only misses and a count of hits")
    explain.add_argument("--db", default=DEFAULT_DB)
    explain.set_defaults(func=cmd_cache_explain, command="cache explain")

    score = sub.add_parser("score", help="re-score a stored run's answers with the suite's current scorers (no model "
                           "called, except a judge for verdicts it has not given before)")
    score.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    score.add_argument("--suite", help="score with the suite in this folder (default: where the run's suite was); "
                       "without a run id, its latest run")
    score.add_argument("--base-url", help="a running server for a local:/vllm: judge (else the harness starts one)")
    score.add_argument("--cache", choices=["replay", "off"], default="replay",
                       help="judge verdicts: re-use those already given to the same request (replay), or ask again")
    score.add_argument("--db", default=DEFAULT_DB)
    score.add_argument("--reports", default="reports")
    score.set_defaults(func=cmd_score, command="score")

    gate = sub.add_parser("gate", help="may the candidate ship? paired statistics; exit 0 pass, 1 fail, "
                          "2 invalid run or error, 3 inconclusive")
    gate.add_argument("run_id", nargs="?", help="run id (default: the latest run, of --suite if given)")
    gate.add_argument("--baseline", metavar="RUN_ID", help="compare with this earlier run of the suite, same provider")
    gate.add_argument("--candidate", metavar="KIND:MODEL", help="the provider to gate (default: the run's first)")
    gate.add_argument("--suite", help="read [gate] from this suite folder (default: the run's)")
    gate.add_argument("--metric", help="override gate.metric (pass_rate, field.total, items.f1...)")
    for option, kind in (("margin", float), ("confidence", float), ("min-score", float), ("max-invalid-rate", float),
                         ("max-error-rate", float), ("max-latency-p95-ms", float), ("max-ttft-p95-ms", float),
                         ("max-cost-per-1k", float), ("max-slice-drop", float), ("max-infra-error-rate", float),
                         ("max-judge-inconsistency", float), ("min-judge-kappa", float)):
        gate.add_argument(f"--{option}", type=kind, help=f"override gate.{option.replace('-', '_')}")
    gate.add_argument("--out", help="folder for gate.json and junit.xml (default: beside the run's report)")
    gate.add_argument("--db", default=DEFAULT_DB)
    gate.add_argument("--reports", default="reports")
    gate.set_defaults(func=cmd_gate, command="gate")

    for name, helptext in (
        ("cost", "monthly cost of the API, self-hosting and a hybrid at the profile's volume; the break-even volume"),
        ("decide", "migrate, stay, hybrid or undecided: cost, cascade curve and the decision matrix for a stored run"),
    ):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("suite", help="suite folder, e.g. suites/invoices (its profile.toml is read)")
        command.add_argument("--run", metavar="RUN_ID", help="the stored run (default: the suite's latest)")
        command.add_argument("--profile", metavar="FILE", help="workload profile (default: SUITE/profile.toml)")
        command.add_argument("--volume", type=float, metavar="CASES", help="cases a month (overrides the profile's)")
        command.add_argument("--candidate", metavar="KIND:MODEL", help="the candidate (default: the run's first)")
        command.add_argument("--pricing", action="append", metavar="FILE", help="TOML price overrides (repeatable)")
        command.add_argument("--json", metavar="FILE", help="also write everything as JSON to FILE")
        command.add_argument("--db", default=DEFAULT_DB)
        command.set_defaults(func=cmd_cost if name == "cost" else cmd_decide, command=name)

    load = sub.add_parser("load", help="latency and throughput under load: the suite's inputs replayed at a fixed "
                                       "concurrency, cache off (TTFT, time per output token, latency p50/p95/p99)")
    load.add_argument("suite", help="suite folder, e.g. suites/invoices")
    load.add_argument("--provider", metavar="KIND:MODEL",
                      help="the provider to load (default: the suite's first candidate; any kind:model works)")
    load.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    load.add_argument("--duration", type=float, default=60.0, help="seconds to keep starting requests (default 60)")
    load.add_argument("--max-requests", type=int, help="stop starting requests after this many")
    load.add_argument("--warmup", type=int, help="requests sent first and left out (default min(concurrency, 4))")
    load.add_argument("--base-url", help="OpenAI-compatible server for local/vllm providers (or set VLLM_BASE_URL)")
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    load.add_argument("--db", default=DEFAULT_DB)
    load.set_defaults(func=cmd_load, command="load")

    validate = sub.add_parser("validate", help="check a suite (config, cases, template) without running it")
    validate.add_argument("suite")
    validate.set_defaults(func=cmd_validate, command="validate")

    report = sub.add_parser("report", help="(re)write the HTML report of a stored run")
    report.add_argument("run_id", nargs="?", help="run id (default: the latest run, of --suite if given)")
    report.add_argument("--suite", help="suite folder or name: its latest run")
    report.add_argument("--db", default=DEFAULT_DB)
    report.add_argument("--reports", default="reports")
    report.set_defaults(func=cmd_report, command="report")

    compare = sub.add_parser("compare", help="what changed between two runs of a suite: new failures, fixed cases, "
                                             "metric deltas (terminal summary and an HTML page)")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline run id")
    compare.add_argument("run_b", metavar="RUN_B", help="the run to compare with it (e.g. the new prompt or model)")
    compare.add_argument("--db", default=DEFAULT_DB)
    compare.add_argument("--reports", default="reports")
    compare.add_argument("--provider", metavar="KIND:MODEL",
                         help="only this provider (default: every provider in both runs)")
    compare.set_defaults(func=cmd_compare, command="compare")

    runs = sub.add_parser("runs", help="list the stored runs")
    runs.add_argument("--db", default=DEFAULT_DB)
    runs.set_defaults(func=cmd_runs)

    serve = sub.add_parser("serve", help="serve the bundled local model (llama.cpp) until Ctrl-C")
    serve.add_argument("--model", default="smollm2-135m", help="bundled model name or path to a .gguf file")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=cmd_serve)

    smoke = sub.add_parser("smoke", help="start the bundled model's server, ask it one real completion, stop it; "
                           "exit 0 when it answered (make setup runs it)")
    smoke.add_argument("--model", default="smollm2-135m", help="bundled model name or path to a .gguf file")
    smoke.set_defaults(func=cmd_smoke)

    proxy = sub.add_parser("proxy", help="shadow live traffic: pass OpenAI/Anthropic calls through to the API "
                           "unchanged, copy a share to the candidate(s), judge both answers, store them as a run")
    proxy.add_argument("--candidate", action="append", metavar="KIND:MODEL",
                       help="a candidate the copies go to, e.g. local:smollm2-135m or vllm:MODEL (repeatable)")
    proxy.add_argument("--base-url", help="URL of a running OpenAI-compatible server for local/vllm candidates")
    proxy.add_argument("--upstream", default="https://api.openai.com/v1",
                       help="the OpenAI API (or compatible) the calls go to, a base URL ending in /v1 "
                            "(default https://api.openai.com/v1)")
    proxy.add_argument("--anthropic-upstream", default="https://api.anthropic.com",
                       help="where Anthropic calls go (/v1/messages..., or any with anthropic-version; default "
                            "https://api.anthropic.com)")
    proxy.add_argument("--suite", dest="proxy_suite", metavar="DIR",
                       help="judge with this suite's scorers (the incumbent's answer as the reference) and gate "
                            "margin, instead of agreement alone")
    proxy.add_argument("--sample", type=_share, default=1.0, help="share of chat calls copied, 0.0-1.0 (default 1)")
    proxy.add_argument("--per-minute", type=_positive, help="at most this many copies a minute")
    proxy.add_argument("--queue", type=_positive, default=1000,
                       help="copies waiting for the candidates before new ones are dropped (default 1000)")
    proxy.add_argument("--max-body", type=_positive, default=1_000_000, metavar="BYTES",
                       help="larger request bodies are passed through but neither copied nor stored")
    proxy.add_argument("--redact", action="append", default=[], metavar="PATTERN",
                       help="email, card, phone or a regular expression, replaced before anything is stored "
                            "(repeatable)")
    proxy.add_argument("--incumbent", metavar="API:MODEL",
                       help="mirror only calls for this model, e.g. openai:gpt-4o-mini (default: the first seen)")
    proxy.add_argument("--name", default="proxy", help="the run's suite name in the store (default proxy)")
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    proxy.add_argument("--port", type=int, default=8787)
    proxy.add_argument("--db", default=DEFAULT_DB)
    proxy.add_argument("--resume", metavar="RUN_ID", help="go on adding to a stopped proxy run")
    proxy.add_argument("--pricing", action="append", metavar="FILE", help="TOML price overrides (repeatable)")
    proxy.add_argument("--status-every", type=float, default=10.0, metavar="SECONDS",
                       help="how often the status line is printed (default 10)")
    proxy.set_defaults(func=cmd_proxy)
    proxy_sub = proxy.add_subparsers(dest="action", metavar="[export]", title="actions (none: serve)")
    export = proxy_sub.add_parser("export", help="write a proxy run's captured traffic as a suite folder")
    export.add_argument("run", metavar="RUN_ID", nargs="?", help="the proxy run (default: the latest)")
    export.add_argument("--out", required=True, metavar="DIR", help="the suite folder to write (must not exist)")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--only-disagreements", action="store_true",
                        help="only the requests where a candidate's answer did not pass")
    export.set_defaults(func=cmd_proxy_export)
    return parser


def _share(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0.0 to 1.0, not {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0.0 to 1.0, not {number}")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def suite_folder(value: str, command: str) -> str:
    """The suite folder an argument names: as given when it exists, else `suites/NAME` for a bare NAME. A run id
    given where a suite is taken, or a near miss of a bundled suite's name, is a HarnessError saying what to type."""
    path = Path(value)
    if path.exists():
        return value
    if len(path.parts) == 1 and (SUITES_DIR / value / "suite.toml").is_file():
        return str(SUITES_DIR / value)
    if RUN_ID.fullmatch(value):
        instead = RUN_INSTEAD.get(command)
        raise HarnessError(f"{value}: no such suite folder; that is a run id" + (
            f": did you mean `{instead.format(id=value)}`?" if instead else "; give a suite folder such as "
                                                                               "suites/invoices"))
    known = sorted(p.name for p in SUITES_DIR.iterdir() if (p / "suite.toml").is_file()) if SUITES_DIR.is_dir() \
        else []
    close = difflib.get_close_matches(path.name, known, n=1)
    if close:
        raise HarnessError(f"{value}: no such suite folder; did you mean suites/{close[0]}?")
    return value


ALL = 0  # --limit all


def _usd(option: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an amount in USD such as 5 or 0.50, not {value!r}") \
                from None
        if not math.isfinite(number) or number < 0:
            raise argparse.ArgumentTypeError(f"{option} must be 0 or more USD, not {value}")
        return number

    return parse


def _limit(value: str) -> int:
    if value.lower() == "all":
        return ALL
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number or 'all', not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--limit must be 1 or more, or 'all', not {number}")
    return number


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
    _print_judges(judges)
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
        result = asyncio.run(_cancel_on_sigterm(shadow_run(
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
            print(f"resume it with: harness run {suite.path} --resume {run_id} --db {args.db}{_base_url_arg(args)}",
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
    _print_judging(result.judging)
    _print_stop(store, result)
    _print_summary(store, result.run_id, result.n_cases)
    _print_metrics(store, result.run_id)
    _print_scorer_errors(store, result.run_id)
    path = render_report(store, result.run_id, args.reports)
    print(f"DuckDB:  {args.db}  (run_id = '{result.run_id}')")
    print(f"Report:  {path}")
    if result.status == "failed":
        print(f"error: run {result.run_id} failed: {printable(result.reason or '', one_line=True)}", file=sys.stderr)
        print(f"resume it once the cause is fixed: harness run {suite.path} --resume {result.run_id} --db {args.db}"
              f"{_base_url_arg(args)}", file=sys.stderr)
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


def _print_judges(judges: dict[str, Any]) -> None:
    """One line per judge scorer: the judge that will judge, or why none can."""
    for scorer, plan in judges.items():
        state = f"skipped: {plan.reason}" if plan.status != "ready" else plan.describe_endpoint()
        print(f"  {'judge':<9} {plan.name if plan.status == 'ready' else 'none'}  ({state}) for scorer {scorer}")


def _print_judging(reports: list[Any]) -> None:
    """What each judge did: calls, cache, outputs that were no verdict, failed calls, cost."""
    for r in reports:
        cost = "cost unknown (no price)" if r.cost_usd is None else f"${r.cost_usd:.4f}"
        who = r.judge or "no judge"
        against = f", against the {r.against}" if r.against else ""
        print(f"judge {r.scorer} ({who}{against}): {r.calls} calls, {r.cached} from the cache, {r.invalid} not a "
              f"verdict, {r.errors} failed, {cost}")
        for note in r.notes:
            print(f"  {printable(note, one_line=True)}", file=sys.stderr)


def _base_url_arg(args: argparse.Namespace) -> str:
    return f" --base-url {public_url(args.base_url)}" if args.base_url else ""


def _offer_resume(store: Store, suite: Any, args: argparse.Namespace) -> str | None:
    """If a run of this suite (same contents) stopped half-way, say how to resume it; at a terminal, ask."""
    run = stopped_run(store, suite, args.limit)
    if run is None:
        return None
    total = run["n_cases"] * run["providers"]
    print(f"run {run['run_id']} of this suite stopped ({run['status']}) with {run['answers']} of {total} answers;"
          f" resume it with: harness run {suite.path} --resume {run['run_id']}{_base_url_arg(args)}"
          f"  (make shadow RESUME={run['run_id']})")
    if not (sys.stdin.isatty() and sys.stdout.isatty()) or args.candidate or args.incumbent:
        return None
    answer = input("Resume it now instead of starting a new run? [Y/n] ").strip().lower()
    return run["run_id"] if answer in ("", "y", "yes") else None


async def _cancel_on_sigterm(coro: Any) -> Any:
    """Await `coro`, cancelling it on SIGTERM (CI cancels, `timeout`) as Ctrl-C would: servers stopped, rows kept."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


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
            f"invalid output {_rate(s.invalid_rate)}  latency p50 {p50}  cost {_cost(s)}"
            + (f"  cached {s.cached}" if s.cached else "")
            + (f"  retries {counts['retries']}" if counts["retries"] else "")
            + (f"  rate-limit wait {counts['rate_limit_wait_ms'] / 1000:.1f}s" if counts["rate_limit_wait_ms"] else "")
        )
    _print_selfcheck_warning(run)


def _print_selfcheck_warning(row: dict[str, Any]) -> None:
    """One line when the client was too busy to measure latency (a `runs` or `load_tests` row)."""
    reason = unreliable_reason(row)
    if reason:
        print(f"warning: latency unreliable: {reason}; {ADVICE}")


def _cost(s: Any) -> str:
    if s.cost_usd is None or pd.isna(s.cost_usd):
        return "unknown" if s.answered - s.cached else "–"
    text = f"${s.cost_usd:.4f}"
    return text + (f" (+{s.cost_unknown} unpriced)" if s.cost_unknown else "")


def _rate(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.0f}%"


def cmd_validate(args: argparse.Namespace) -> int:
    """`harness validate SUITE`: load and check a suite (its custom scorers load too), print what it holds."""
    suite = load_suite(args.suite)
    scorers = build_scorers(suite)
    print(f"{suite.path}: suite '{suite.name}' is valid: {len(suite.cases)} cases, "
          f"{len(suite.spec.providers)} providers, scorers {', '.join(s.name for s in scorers)}, hash {suite.hash}")
    if suite.spec.cases.default_limit:
        print(f"  a run takes the first {min(suite.spec.cases.default_limit, len(suite.cases))} cases unless --limit N "
              "or --all")
    if suite.labels:
        print(f"  {len(suite.labels)} labels")
    context = suite.spec.context
    if context is not None:
        cut = sum(1 for case in suite.cases if case.context and case.context["truncated"])
        print(f"  '{context.field}' cut to {context.max_chars} characters ({context.strategy}) in {cut} of "
              f"{len(suite.cases)} cases")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """`harness score [RUN_ID]`: re-score a stored run with the current scorers, then rewrite its report."""
    if not Path(args.db).exists():
        raise HarnessError(f"{args.db}: no such DuckDB file; run a suite first (make shadow SUITE=...)")
    with Store(args.db) as store:
        run_id = run_to_use(store, args.run_id, "score", args.suite if not args.run_id else None)
        result = rescore(store, run_id, args.suite)
        judged = any(s.kind in JUDGE_KINDS for s in result.suite.spec.scorers)
        print(f"run {run_id}: re-scored {result.scored} answers of suite '{result.suite.name}' with "
              f"{', '.join(s.name or s.kind for s in result.suite.spec.scorers)}"
              + (" (no model called)" if not judged else "")
              + (f"; {result.failed_calls} failed calls have no answer to score" if result.failed_calls else ""))
        if judged:
            judges = plan_judges(result.suite, base_url=args.base_url)
            _print_judges(judges)
            reports = asyncio.run(judge_run(
                store, run_id, result.suite, judging_cases(store, run_id, result.suite), judges=judges,
                fresh=args.cache == "off", server_log_dir=Path(args.db).parent,
            ))
            store_metrics(store, run_id, result.suite, build_scorers(result.suite))
            _print_judging(reports)
            result.pass_rates = rescored_pass_rates(store, run_id, result.pass_rates)
        if result.gold_changed:
            print(f"  gold changed since the run for {len(result.gold_changed)} case(s): "
                  f"{', '.join(result.gold_changed[:5])}{' ...' if len(result.gold_changed) > 5 else ''}")
        if result.missing_from_suite:
            print(f"  {len(result.missing_from_suite)} case(s) are no longer in the suite; scored with the gold "
                  "stored with the run")
        for provider, (before, after) in result.pass_rates.items():
            print(f"  {provider:<28} pass rate {_rate(before)} -> {_rate(after)}")
        _print_scorer_errors(store, run_id)
        _print_metrics(store, run_id)
        print(f"Report:  {render_report(store, run_id, args.reports)}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    """`harness gate [RUN_ID]`: the verdict, gate.json and junit.xml; exit 0 pass, 1 fail, 2 invalid run or error,
    3 inconclusive."""
    from harness.analysis.verdict import gate_run, verdict_text, write_outputs
    from harness.suite.spec import GateSpec

    if not Path(args.db).exists():
        raise HarnessError(f"{args.db}: no such DuckDB file; run a suite first (make shadow SUITE=...)")
    with Store(args.db, read_only=True) as store:
        run_id = run_to_use(store, args.run_id, "gate", args.suite)
        run = store.run(run_id)
        suite_dir = Path(args.suite or run["suite_path"] or "")  # a proxy run without a suite has no folder
        policy = load_suite(suite_dir).spec.gate if (suite_dir / "suite.toml").is_file() else GateSpec()
        overrides = {key: getattr(args, key) for key in GateSpec.model_fields if getattr(args, key, None) is not None}
        try:
            policy = GateSpec.model_validate({**policy.model_dump(), **overrides})
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("?",), "msg": str(exc)}
            raise HarnessError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
        result = gate_run(store, run_id, policy, baseline=args.baseline, candidate=args.candidate)
    print(printable(verdict_text(result)))
    out = Path(args.out) if args.out else Path(args.reports) / str(run["suite"]) / run_id / "gate"
    paths = write_outputs(result, out)
    print(f"gate.json: {paths['json']}\njunit.xml: {paths['junit']}")
    if result.verdict == "invalid":
        print(f"error: {printable(result.reason, one_line=True)}", file=sys.stderr)
    return result.exit_status


def cmd_load(args: argparse.Namespace) -> int:
    """`harness load SUITE`: drive one provider at a fixed concurrency, print and store the figures."""
    from harness.run.loadtest import load_summary_text, load_test

    suite = load_suite(args.suite)
    wanted = args.provider or next((p.id for p in suite.spec.providers if p.role == "candidate"), None)
    provider = provider_specs(suite, [wanted])[-1]
    base_url = args.base_url or os.environ.get("VLLM_BASE_URL")
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    bar = None
    with Store(args.db) as store:
        def progress(n: int) -> None:
            nonlocal bar
            if bar is None and not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(unit="req", dynamic_ncols=True, file=sys.stderr, disable=None)
            if bar is not None:
                bar.update(n)

        try:
            row = asyncio.run(_cancel_on_sigterm(load_test(
                suite, provider, store, concurrency=args.concurrency, duration_s=args.duration,
                max_requests=args.max_requests, warmup=args.warmup, base_url=base_url,
                server_log_dir=Path(args.db).parent, progress=progress,
            )))
        finally:
            if bar is not None:
                bar.close()
    print(load_summary_text(row))
    _print_selfcheck_warning(row)
    print(f"DuckDB:  {args.db}  (load_id = '{row['load_id']}', table load_tests; per request: load_requests)")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """`harness cost SUITE`: monthly cost of each option and the break-even volume, from a stored run."""
    from harness.analysis.decide import cost_text

    analysis = _analysis(args)
    print(cost_text(analysis))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """`harness decide SUITE`: cost, cascade curve, decision matrix and the recommendation for a stored run."""
    from harness.analysis.decide import decision_text

    analysis = _analysis(args)
    print(decision_text(analysis))
    return 0


def _analysis(args: argparse.Namespace) -> Any:
    """The cost/decision analysis of `args.suite`'s run under its profile (shared by cost and decide)."""
    from harness.analysis.decide import analyse
    from harness.suite.profile import find_profile

    suite = load_suite(args.suite)
    profile = find_profile(args.suite, args.profile)
    if profile is None:
        raise ProfileError(f"{Path(args.suite) / 'profile.toml'}: no such profile; copy suites/invoices/profile.toml "
                           "into the suite folder and set [volume], or pass --profile FILE")
    if not Path(args.db).exists():
        raise HarnessError(f"{args.db}: no such DuckDB file; run the suite first (make shadow SUITE={suite.name})")
    pricing = load_pricing(args.pricing or [])
    with Store(args.db, read_only=True) as store:
        run_id = args.run or store.latest_run(suite.name)
        if run_id is None:
            raise HarnessError(f"{args.db}: no runs of suite {suite.name} yet; run `make shadow SUITE={suite.name}`")
        run = store.run(run_id)
        # a proxy run (live traffic judged against the incumbent) is priced under any suite's workload profile
        if run["suite"] != suite.name and run.get("reference") != "incumbent":
            raise HarnessError(f"run {run_id} is of suite '{run['suite']}', not '{suite.name}'")
        analysis = analyse(store, run_id, profile, suite.spec.gate, candidate=args.candidate, pricing=pricing,
                           volume=args.volume)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(analysis.to_dict(), indent=2, default=str), encoding="utf-8")
    return analysis


def _print_scorer_errors(store: Store, run_id: str) -> None:
    """Say when a scorer raised (its cases fail; the report shows the error on each)."""
    for row in queries.scorer_errors(store, run_id):
        example = printable(row["example"], one_line=True)
        print(f"  scorer '{row['scorer']}' raised on {row['n']} answer(s), which fail: {example}")


def _print_metrics(store: Store, run_id: str) -> None:
    """The headline run-level metrics (accuracy, F1, hallucinated quotes...), one line per provider."""
    metrics = store.table("metrics", run_id)
    if metrics.empty:
        return
    for provider, group in metrics.groupby("provider", sort=False):
        shown = [f"{m.metric} {m.value:.3g}" for m in group.itertuples()
                 if m.value is not None and not pd.isna(m.value) and metric_info(m.metric).headline]
        if shown:
            print(f"  {provider:<28} " + "  ".join(shown))


def cmd_report(args: argparse.Namespace) -> int:
    """`harness report [RUN_ID]`: write the HTML report of a stored run."""
    with Store(args.db, read_only=True) as store:
        run_id = run_to_use(store, args.run_id, "report", args.suite)
        print(render_report(store, run_id, args.reports))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`harness compare RUN_A RUN_B`: what changed from run A to run B (informational: exit 0 whatever changed)."""
    from harness.report.compare import compare_runs, format_delta, render_comparison

    with Store(args.db, read_only=True) as store:
        for run_id in (args.run_a, args.run_b):
            run_to_use(store, run_id, "compare")
        comparison = compare_runs(store, args.run_a, args.run_b, provider=args.provider)
        path = render_comparison(store, comparison, args.reports)
    c = comparison
    print(f"suite {c.suite}: run {c.run_b} (B) against {c.run_a} (A), {len(c.shared_cases)} shared cases")
    for warning in c.warnings:
        print(f"warning: {warning}")
    for p in c.providers:
        change = "" if p.pass_rate_delta is None else f" ({100 * p.pass_rate_delta:+.0f} pts)"
        print(f"  {p.provider:<28} {p.n_shared} shared cases  pass rate {_rate(p.pass_rate_a)} -> "
              f"{_rate(p.pass_rate_b)}{change}  +{len(p.fixed)} fixed  -{len(p.new_failures)} new failures  "
              f"({len(p.still_failing)} still failing)")
        if p.new_failures:
            print(f"    new failures: {', '.join(p.new_failures[:5])}"
                  + (f" and {len(p.new_failures) - 5} more" if len(p.new_failures) > 5 else ""))
        line = ""
        for d in p.top_changes():
            a, b, delta = format_delta(d)
            item = f"{d.name} {a} -> {b} ({delta}{', worse' if d.worse else ''})"
            if line and len(line) + len(item) > 110:
                print(line)
                line = ""
            line = f"{line}  ·  {item}" if line else f"    {item}"
        if line:
            print(line)
    for name in c.added:
        print(f"  {name:<28} only in B" + (f" ({c.skipped[name]})" if name in c.skipped else ""))
    for name in c.removed:
        print(f"  {name:<28} only in A" + (f" ({c.skipped[name]})" if name in c.skipped else ""))
    print(f"Report:  {path}")
    return 0


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
        print(f"{row['run_id']}  {row['suite']:<12} {status:<11} {row['n_cases']:>5} cases  "
              f"{row['responses']:>6} responses  {row['started_at']:%Y-%m-%d %H:%M}{reason}")
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """`harness smoke`: the start-up check of every managed server, alone: the llama.cpp library, the bundled model
    and one real completion of a multi-token prompt. A crash raises ServerError (one line, exit 2)."""
    from harness.providers.plan import ServerPlan

    async def smoke() -> str:
        plan = ServerPlan(engine="llama_cpp", model=args.model, served_name=Path(args.model).stem)
        async with ManagedServer(plan) as server:
            return server.name

    started = time.monotonic()
    name = asyncio.run(smoke())
    print(f"smoke test passed: the {name} answered a multi-token prompt ({time.monotonic() - started:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`harness serve`: start the bundled model's server and keep it up until Ctrl-C."""
    from harness.providers.plan import ServerPlan

    async def serve() -> None:
        plan = ServerPlan(engine="llama_cpp", model=args.model, served_name=Path(args.model).stem)
        async with ManagedServer(plan, port=args.port) as server:
            print(f"serving {args.model} at {server.base_url} (Ctrl-C to stop)")
            print(f"use it with: VLLM_BASE_URL={server.base_url} make shadow SUITE=invoices", flush=True)
            while server.process is not None and server.process.poll() is None:
                await asyncio.sleep(0.5)
            raise HarnessError(f"the server stopped unexpectedly (log: {server.log_path})")

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        asyncio.run(_cancel_on_sigterm(serve()))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: the way to stop it
        print("server stopped", flush=True)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    """`harness proxy`: serve until Ctrl-C (or SIGTERM), mirroring chat calls to the candidates."""
    from harness.proxy.mirror import ProxySettings
    from harness.proxy.privacy import Redactor
    from harness.proxy.serve import run_proxy
    from harness.proxy.server import check_upstream
    from harness.proxy.worker import MirrorConfig
    from harness.suite.spec import ProviderSpec

    if not args.candidate:
        raise HarnessError("name a candidate to copy the calls to: --candidate local:smollm2-135m (the bundled "
                           "model), vllm:MODEL or openai-compatible:MODEL")
    Redactor(args.redact)  # a bad pattern is an error before anything starts
    upstreams = {"openai": check_upstream(args.upstream, "--upstream"),
                 "anthropic": check_upstream(args.anthropic_upstream, "--anthropic-upstream")
                 if args.anthropic_upstream != "https://api.anthropic.com" else args.anthropic_upstream}
    suite_path = suite_folder(args.proxy_suite, "proxy") if args.proxy_suite else None
    if suite_path:
        attached = load_suite(suite_path)  # a bad suite is an error here, before the mirror starts
        judged = [s.name or s.kind for s in attached.spec.scorers if s.kind in JUDGE_KINDS]
        if judged:
            raise HarnessError(f"{suite_path}: scorer(s) {', '.join(judged)} need a judge model, which the proxy does "
                               "not call on live traffic; attach a suite without them, or export the traffic "
                               "(`harness proxy export`) and run it with the judges")
    plans = []
    for candidate in args.candidate:
        try:
            spec = ProviderSpec(id=candidate, role="candidate")
        except ValueError as exc:
            raise HarnessError(f"--candidate {candidate!r}: {exc.errors()[0]['msg']}") from None
        plans.append(plan_provider(spec, base_url=args.base_url))
    resolve_served_models(plans)
    skipped = [p for p in plans if p.status != "ready"]
    if skipped:
        raise ProviderError("; ".join(f"{p.name} cannot run: {p.reason}" for p in skipped))
    load_pricing(args.pricing or ())  # a bad price file is an error here
    settings = ProxySettings(name=args.name, sample=args.sample, per_minute=args.per_minute, queue=args.queue,
                             max_body=args.max_body, incumbent=args.incumbent, redact=args.redact)
    config = MirrorConfig(db=args.db, candidates=plans, settings=settings, upstreams=upstreams,
                          pricing_files=list(args.pricing or ()), suite_path=suite_path, resume=args.resume,
                          server_log_dir=str(Path(args.db).parent))
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    def ready(mirror: Any, server: Any) -> None:
        print(f"proxy run {mirror.run_id}: listening on {server.url}, calls go to {public_url(upstreams['openai'])} "
              f"(OpenAI) and {public_url(upstreams['anthropic'])} (Anthropic)")
        print(f"  copies of {args.sample:.0%} of chat calls go to {', '.join(p.name for p in plans)}; "
              f"status: {server.url}/shadow")
        print(f"  point your app at it: OPENAI_BASE_URL={server.url}/v1 (or ANTHROPIC_BASE_URL={server.url}); "
              "Ctrl-C stops", flush=True)

    async def serve() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def first_then_cancel() -> None:  # the first Ctrl-C drains the copies in flight; a second stops at once
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, first_then_cancel)
        return await run_proxy(config, host=args.host, port=args.port, on_ready=ready,
                               on_status=lambda line: print(printable(line), flush=True),
                               status_every=args.status_every, stop=stop)

    try:
        result = asyncio.run(serve())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nstopped at once: the copies in flight were not stored", file=sys.stderr)
        return 130
    print(f"proxy run {result.run_id} {result.status}" + (f": {result.reason}" if result.reason else ""))
    print(f"  its report: harness report {result.run_id} --db {args.db}; as a suite: harness proxy export "
          f"{result.run_id} --out suites/NAME --db {args.db}")
    return 0 if result.status == "completed" else 1


def cmd_proxy_export(args: argparse.Namespace) -> int:
    """`harness proxy export`: a proxy run's captured requests and the incumbent's answers as a suite folder."""
    from harness.proxy.export import export_suite

    with Store(args.db, read_only=True) as store:
        written = export_suite(store, args.run, Path(args.out), only_disagreements=args.only_disagreements)
    print(f"wrote {written.cases} cases to {written.path} (the incumbent's answers in {written.log.name}); "
          f"run it with: harness run {written.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
