"""The bundled model's server (`serve`, `smoke`) and `load` (latency and throughput under load)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from harness.cli.common import cancel_on_sigterm, print_selfcheck_warning
from harness.errors import HarnessError
from harness.providers.server import ManagedServer
from harness.run.targets import provider_specs
from harness.store.db import Store
from harness.suite.load import load_suite


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
            row = asyncio.run(cancel_on_sigterm(load_test(
                suite, provider, store, concurrency=args.concurrency, duration_s=args.duration,
                max_requests=args.max_requests, warmup=args.warmup, base_url=base_url,
                server_log_dir=Path(args.db).parent, progress=progress,
            )))
        finally:
            if bar is not None:
                bar.close()
    print(load_summary_text(row))
    print_selfcheck_warning(row)
    print(f"DuckDB:  {args.db}  (load_id = '{row['load_id']}', table load_tests; per request: load_requests)")
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
        asyncio.run(cancel_on_sigterm(serve()))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: the way to stop it
        print("server stopped", flush=True)
    return 0
