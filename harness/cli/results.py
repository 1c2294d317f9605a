"""Commands over a stored run: `score` (re-score), `gate` (may it ship?), `cost` and `decide` (price the options),
`report` (the HTML report) and `compare` (what changed between two runs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from harness.cli.common import print_judges, print_judging, print_metrics, print_scorer_errors, rate_text
from harness.errors import HarnessError, ProfileError
from harness.pricing import load_pricing
from harness.report.html import render_report
from harness.run.judging import judge_run, plan_judges
from harness.run.rescore import judging_cases, rescore, rescored_pass_rates, store_metrics
from harness.run.targets import run_to_use
from harness.scoring.registry import build_scorers
from harness.store.db import Store
from harness.suite.load import load_suite
from harness.suite.spec import JUDGE_KINDS
from harness.terminal import printable


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
            print_judges(judges)
            reports = asyncio.run(judge_run(
                store, run_id, result.suite, judging_cases(store, run_id, result.suite), judges=judges,
                fresh=args.cache == "off", server_log_dir=Path(args.db).parent,
            ))
            store_metrics(store, run_id, result.suite, build_scorers(result.suite))
            print_judging(reports)
            result.pass_rates = rescored_pass_rates(store, run_id, result.pass_rates)
        if result.gold_changed:
            print(f"  gold changed since the run for {len(result.gold_changed)} case(s): "
                  f"{', '.join(result.gold_changed[:5])}{' ...' if len(result.gold_changed) > 5 else ''}")
        if result.missing_from_suite:
            print(f"  {len(result.missing_from_suite)} case(s) are no longer in the suite; scored with the gold "
                  "stored with the run")
        for provider, (before, after) in result.pass_rates.items():
            print(f"  {provider:<28} pass rate {rate_text(before)} -> {rate_text(after)}")
        print_scorer_errors(store, run_id)
        print_metrics(store, run_id)
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
        print(f"  {p.provider:<28} {p.n_shared} shared cases  pass rate {rate_text(p.pass_rate_a)} -> "
              f"{rate_text(p.pass_rate_b)}{change}  +{len(p.fixed)} fixed  -{len(p.new_failures)} new failures  "
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
