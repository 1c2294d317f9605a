"""A proxy run from start to stop: the mirror's process and the server together, the terminal's status line, and
how the run ended; what `harness proxy` calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from harness.proxy.server import ProxyServer
from harness.proxy.worker import MirrorConfig, MirrorProcess, ProxyResult


async def run_proxy(
    config: MirrorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    on_ready: Callable[[MirrorProcess, ProxyServer], Any] | None = None,
    on_status: Callable[[str], Any] | None = None,
    status_every: float = 10.0,
    stop: asyncio.Event | None = None,
) -> ProxyResult:
    """Serve the proxy until `stop` is set or the task is cancelled (Ctrl-C, SIGTERM), then let the mirror drain the
    copies in flight and mark the run. `on_ready(mirror, server)` once it listens; `on_status(line)` every
    `status_every` seconds with the traffic and each candidate's agreement and stop rule. Raises HarnessError when
    the mirror cannot start (a run to resume that is not a proxy run, a candidate's server that will not start)."""
    mirror = MirrorProcess(config)
    async with mirror, ProxyServer(mirror, config.upstreams, host, port) as server:
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
