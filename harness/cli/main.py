"""The `harness` command line: its parser, and `main`, which hands each command to the module that does it.

The package is the only place with `asyncio.run` and `sys.exit`. Each command module (run, results, listing,
validate, serving, proxy) is imported only when its command is chosen, so that `harness --help`, `runs` and
`validate` start without the libraries a run needs. A `HarnessError` becomes one line on stderr and exit 2;
Ctrl-C stops the run cleanly (servers stopped, results flushed, run marked interrupted) with exit 130.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError
from harness.run.cache import MODES
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
        module, _, name = args.func.partition(":")
        return getattr(importlib.import_module(f"harness.cli.{module}"), name)(args)
    except HarnessError as exc:
        print(f"error: {printable(str(exc), one_line=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        duckdb = sys.modules.get("duckdb")  # loaded by whichever command opened the file
        if duckdb is None or not isinstance(exc, duckdb.IOException):
            raise
        # a block of the file past its end: a copy or a disk that stopped part-way
        from harness.store.db import damaged

        print(f"error: {printable(str(damaged(getattr(args, 'db', DEFAULT_DB), exc)), one_line=True)}",
              file=sys.stderr)
        return 2


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
    run.set_defaults(func="run:cmd_run", command="run")

    cache = sub.add_parser("cache", help="the response cache")
    cache_sub = cache.add_subparsers(required=True, metavar="ACTION")
    explain = cache_sub.add_parser("explain", help="say why each answer of a run did or did not come from the cache")
    explain.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    explain.add_argument("--case", help="only this case id")
    explain.add_argument("--provider", help="only this provider (kind:model)")
    explain.add_argument("--all", action="store_true", help="list every answer, not only misses and a count of hits")
    explain.add_argument("--db", default=DEFAULT_DB)
    explain.set_defaults(func="listing:cmd_cache_explain", command="cache explain")

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
    score.set_defaults(func="results:cmd_score", command="score")

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
    gate.set_defaults(func="results:cmd_gate", command="gate")

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
        command.set_defaults(func="results:cmd_cost" if name == "cost" else "results:cmd_decide", command=name)

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
    load.set_defaults(func="serving:cmd_load", command="load")

    validate = sub.add_parser("validate", help="check a suite (config, cases, template) without running it")
    validate.add_argument("suite")
    validate.set_defaults(func="validate:cmd_validate", command="validate")

    report = sub.add_parser("report", help="(re)write the HTML report of a stored run")
    report.add_argument("run_id", nargs="?", help="run id (default: the latest run, of --suite if given)")
    report.add_argument("--suite", help="suite folder or name: its latest run")
    report.add_argument("--db", default=DEFAULT_DB)
    report.add_argument("--reports", default="reports")
    report.set_defaults(func="results:cmd_report", command="report")

    compare = sub.add_parser("compare", help="what changed between two runs of a suite: new failures, fixed cases, "
                                             "metric deltas (terminal summary and an HTML page)")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline run id")
    compare.add_argument("run_b", metavar="RUN_B", help="the run to compare with it (e.g. the new prompt or model)")
    compare.add_argument("--db", default=DEFAULT_DB)
    compare.add_argument("--reports", default="reports")
    compare.add_argument("--provider", metavar="KIND:MODEL",
                         help="only this provider (default: every provider in both runs)")
    compare.set_defaults(func="results:cmd_compare", command="compare")

    runs = sub.add_parser("runs", help="list the stored runs")
    runs.add_argument("--db", default=DEFAULT_DB)
    runs.set_defaults(func="listing:cmd_runs")

    serve = sub.add_parser("serve", help="serve the bundled local model (llama.cpp) until Ctrl-C")
    serve.add_argument("--model", default="smollm2-135m", help="bundled model name or path to a .gguf file")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func="serving:cmd_serve")

    smoke = sub.add_parser("smoke", help="start the bundled model's server, ask it one real completion, stop it; "
                           "exit 0 when it answered (make setup runs it)")
    smoke.add_argument("--model", default="smollm2-135m", help="bundled model name or path to a .gguf file")
    smoke.set_defaults(func="serving:cmd_smoke")

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
    proxy.set_defaults(func="proxy:cmd_proxy")
    proxy_sub = proxy.add_subparsers(dest="action", metavar="[export]", title="actions (none: serve)")
    export = proxy_sub.add_parser("export", help="write a proxy run's captured traffic as a suite folder")
    export.add_argument("run", metavar="RUN_ID", nargs="?", help="the proxy run (default: the latest)")
    export.add_argument("--out", required=True, metavar="DIR", help="the suite folder to write (must not exist)")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--only-disagreements", action="store_true",
                        help="only the requests where a candidate's answer did not pass")
    export.set_defaults(func="proxy:cmd_proxy_export")
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
    from harness.suite.load import SUITES_DIR

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
