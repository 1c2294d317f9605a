"""`harness proxy` (shadow live traffic) and `harness proxy export` (captured traffic as a suite folder)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from harness.cli.main import suite_folder
from harness.errors import HarnessError, ProviderError
from harness.pricing import load_pricing
from harness.providers.base import public_url
from harness.providers.plan import plan_provider, resolve_served_models
from harness.store.db import Store
from harness.suite.load import load_suite
from harness.suite.spec import JUDGE_KINDS
from harness.terminal import printable


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
