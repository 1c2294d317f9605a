"""`harness validate SUITE`: load and check a suite without running it. Needs no store, SDK or model server."""

from __future__ import annotations

import argparse

from harness.scoring.registry import build_scorers
from harness.suite.load import load_suite


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
