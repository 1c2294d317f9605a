"""A proxy run from start to stop: the mirror and the server together, the terminal's status line, and the run's
final status; what `harness proxy` calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from harness.pricing import PricingTable
from harness.providers.plan import ProviderPlan
from harness.providers.resilience import RetryPolicy
from harness.proxy.mirror import Mirror, ProxySettings
from harness.proxy.server import ProxyServer
from harness.run.runner import RunResult
from harness.store.db import Store
from harness.suite.load import Suite


async def run_proxy(
    store: Store,
    candidates: list[ProviderPlan],
    settings: ProxySettings,
    pricing: PricingTable,
    upstreams: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    suite: Suite | None = None,
    resume: str | None = None,
    on_ready: Callable[[Mirror, ProxyServer], Any] | None = None,
    on_status: Callable[[str], Any] | None = None,
    status_every: float = 10.0,
    stop: asyncio.Event | None = None,
    retry: RetryPolicy | None = None,
    drain_s: float = 30.0,
    server_log_dir: Any = None,
) -> RunResult:
    """Serve the proxy until `stop` is set or the task is cancelled (Ctrl-C, SIGTERM), then drain the copies in
    flight and mark the run. `on_ready(mirror, server)` once it listens; `on_status(line)` every `status_every`
    seconds with the traffic and each candidate's agreement and stop rule."""
    mirror = Mirror(store, candidates, settings, pricing, upstreams=upstreams, suite=suite, resume=resume,
                    retry=retry, drain_s=drain_s, server_log_dir=server_log_dir)
    async with mirror, ProxyServer(mirror, upstreams, host, port) as server:
        if on_ready is not None:
            on_ready(mirror, server)
        ticker = None
        if on_status is not None:
            async def tick() -> None:
                while True:
                    await asyncio.sleep(status_every)
                    on_status(mirror.status_line())
            ticker = asyncio.create_task(tick())
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            if ticker is not None:
                ticker.cancel()
    assert mirror.result is not None
    return mirror.result
