"""The `harness` command line: a thin layer over the library.

The only place with `asyncio.run` and `sys.exit`. A `HarnessError` becomes one line on stderr and exit 2;
Ctrl-C stops the run cleanly (servers stopped, results flushed, run marked interrupted) with exit 130.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError, ProviderError
from harness.providers import plan_provider, resolve_served_models
from harness.report import render_report
from harness.scorers import summarize
from harness.server import ManagedServer
from harness.store import Store
from harness.suite import ProviderSpec, load_suite

DEFAULT_DB = "runs/shadow.duckdb"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Shadow-deployment evaluation of LLMs.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite on its candidate(s) and incumbent, store and report")
    run.add_argument("suite", help="suite folder, e.g. suites/invoices")
    run.add_argument("--limit", type=_limit, default=None, help="run only the first N cases ('all' for every case)")
    run.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    run.add_argument("--reports", default="reports", help="folder for HTML reports (default reports)")
    run.add_argument(
        "--base-url", help="use this OpenAI-compatible server for local/vllm candidates (or set VLLM_BASE_URL)"
    )
    run.add_argument("--candidate", action="append", metavar="KIND:MODEL", help="replace the suite's candidates")
    run.add_argument("--incumbent", metavar="KIND:MODEL", help="replace the suite's incumbent")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a suite (config, cases, template) without running it")
    validate.add_argument("suite")
    validate.set_defaults(func=cmd_validate)

    report = sub.add_parser("report", help="(re)write the HTML report of a stored run")
    report.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    report.add_argument("--db", default=DEFAULT_DB)
    report.add_argument("--reports", default="reports")
    report.set_defaults(func=cmd_report)

    runs = sub.add_parser("runs", help="list the stored runs")
    runs.add_argument("--db", default=DEFAULT_DB)
    runs.set_defaults(func=cmd_runs)

    serve = sub.add_parser("serve", help="serve the bundled local model (llama.cpp) until Ctrl-C")
    serve.add_argument("--model", default="smollm2-135m", help="bundled model name or path to a .gguf file")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=cmd_serve)
    return parser


def _limit(value: str) -> int | None:
    if value.lower() == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number or 'all', not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--limit must be 1 or more, or 'all', not {number}")
    return number


def cmd_run(args: argparse.Namespace) -> int:
    """`harness run SUITE`: the whole shadow run, then a summary and the report's path."""
    suite = load_suite(args.suite)
    specs = list(suite.spec.providers)
    if args.candidate:
        specs = [s for s in specs if s.role != "candidate"] + [
            _spec(c, "candidate", suite.spec.providers) for c in args.candidate
        ]
    if args.incumbent:
        specs = [s for s in specs if s.role != "incumbent"] + [_spec(args.incumbent, "incumbent", suite.spec.providers)]
    plans = [plan_provider(spec, base_url=args.base_url) for spec in specs]
    resolve_served_models(plans)
    if not any(plan.status == "ready" for plan in plans):
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in plans)
        raise ProviderError(f"no provider can run ({reasons})")

    n = min(args.limit or len(suite.cases), len(suite.cases))
    ready = [p for p in plans if p.status == "ready"]
    print(f"suite {suite.name}: {n} of {len(suite.cases)} cases × {len(ready)} provider(s)")
    for plan in plans:
        state = f"skipped: {plan.reason}" if plan.status == "skipped" else plan.describe_endpoint()
        print(f"  {plan.spec.role:<9} {plan.name}  ({state})")

    store = Store(args.db)
    started: dict[str, str] = {}
    bar = _progress_bar(n * len(ready), disable=args.no_progress)
    try:
        from harness.runner import shadow_run

        result = asyncio.run(_cancel_on_sigterm(shadow_run(
            suite, plans, store, limit=args.limit, progress=bar.update if bar else None,
            server_log_dir=Path(args.db).parent, on_started=lambda rid: started.setdefault("run_id", rid),
        )))
    except (KeyboardInterrupt, asyncio.CancelledError):
        if bar:
            bar.close()
        run_id = started.get("run_id")
        if run_id:
            kept = store.query("SELECT count(*) AS n FROM responses WHERE run_id = ?", [run_id])["n"][0]
            print(f"\ninterrupted: run {run_id} kept {kept} responses in {args.db}", file=sys.stderr)
            path = render_report(store, run_id, args.reports)
            print(f"Report of what was kept: {path}", file=sys.stderr)
        store.close()
        return 130
    if bar:
        bar.close()

    _print_summary(store, result.run_id, n)
    path = render_report(store, result.run_id, args.reports)
    store.close()
    print(f"DuckDB:  {args.db}  (run_id = '{result.run_id}')")
    print(f"Report:  {path}")
    return 0


async def _cancel_on_sigterm(coro: Any) -> Any:
    """Await `coro`, cancelling it on SIGTERM (CI cancels, `timeout`) as Ctrl-C would: servers stopped, rows kept."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _spec(provider_id: str, role: str, known: list[ProviderSpec]) -> ProviderSpec:
    for spec in known:
        if spec.id == provider_id:
            return spec.model_copy(update={"role": role})
    try:
        return ProviderSpec(id=provider_id, role=role)
    except ValueError as exc:
        raise ProviderError(f"--{role} {provider_id}: must look like 'kind:model', e.g. 'openai:gpt-4o-mini'") from exc


def _progress_bar(total: int, disable: bool) -> Any:
    if disable or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="resp", dynamic_ncols=True, file=sys.stderr, disable=None)


def _print_summary(store: Store, run_id: str, n_cases: int) -> None:
    responses = store.table("responses", run_id)
    scores = store.table("scores", run_id)
    providers = store.table("run_providers", run_id)
    summary = summarize(responses, scores, n_cases) if not responses.empty else None
    print(f"run {run_id}: {store.run(run_id)['status']}")
    for p in providers.itertuples():
        if p.status == "skipped":
            print(f"  {p.provider:<28} skipped: {p.reason}")
            continue
        row = summary[summary["provider"] == p.provider] if summary is not None else None
        if row is None or row.empty:
            print(f"  {p.provider:<28} no responses")
            continue
        s = row.iloc[0]
        p50 = "–" if pd.isna(s.latency_p50_ms) else f"{s.latency_p50_ms / 1000:.2f}s"
        print(
            f"  {p.provider:<28} passed {s.passed}/{n_cases} ({100 * s.pass_rate:.0f}%)  errors {s.errors}  "
            f"invalid output {_rate(s.invalid_rate)}  latency p50 {p50}"
        )


def _rate(value: float) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.0f}%"


def cmd_validate(args: argparse.Namespace) -> int:
    """`harness validate SUITE`: load and check a suite, print what it holds."""
    suite = load_suite(args.suite)
    print(f"{suite.path}: suite '{suite.name}' is valid: {len(suite.cases)} cases, "
          f"{len(suite.spec.providers)} providers, hash {suite.hash}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`harness report [RUN_ID]`: write the HTML report of a stored run."""
    with Store(args.db, read_only=True) as store:
        run_id = args.run_id or store.latest_run()
        if run_id is None:
            raise HarnessError(f"{args.db}: no runs yet; run `make shadow SUITE=invoices` first")
        print(render_report(store, run_id, args.reports))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """`harness runs`: one line per stored run, newest first."""
    with Store(args.db, read_only=True) as store:
        df = store.query(
            "SELECT r.run_id, r.suite, r.status, r.n_cases, count(s.case_id) AS responses, r.started_at "
            "FROM runs r LEFT JOIN responses s USING (run_id) GROUP BY ALL ORDER BY r.started_at DESC"
        )
    if df.empty:
        print("no runs yet")
    for row in df.itertuples():
        print(f"{row.run_id}  {row.suite:<12} {row.status:<11} {row.n_cases:>5} cases  "
              f"{row.responses:>6} responses  {row.started_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`harness serve`: start the bundled model's server and keep it up until Ctrl-C."""
    from harness.providers import ServerPlan

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


if __name__ == "__main__":
    sys.exit(main())
