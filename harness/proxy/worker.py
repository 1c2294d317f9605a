"""The mirror in a process of its own: `MirrorProcess` is what the caller's side (`proxy.server`) holds; the
`Mirror` (`proxy.mirror`) runs in a child process, fed over a socket pair.

The caller's side decides, in a few microseconds and without awaiting, whether a chat request is copied: its body
under `max_body`, sampled, under the per-minute cap; and once the caller has the answer, whether fewer than `queue`
copies are waiting for the candidates (a counter the child keeps in shared memory). A copy is then one pickled frame
to the child, the request and the answer's bytes together; everything else (reading both answers, the candidates'
calls, scoring, DuckDB) is the child's CPU time, not the caller's. The child sends back its status (counts,
agreement, the stop rule) a few times a second, which the status page and the terminal line show.

The child runs at a lower scheduling priority (`NICENESS`): on a busy machine its work waits, not the callers'.
The child ignores Ctrl-C (the terminal sends it to both processes): the caller's side stops serving first, then
tells the child to drain and mark the run. If the caller's side dies, the child sees its socket close, drains and
marks the run `interrupted`; if both are killed, the next proxy stores what the journal holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import pickle
import random
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.providers.plan import ProviderPlan
from harness.providers.resilience import RetryPolicy
from harness.proxy.mirror import Counts, ProxySettings

_HEADER = struct.Struct("!I")
NICENESS = 10  # the mirror process's scheduling priority below the caller's side (nice(2))
STATUS_EVERY_S = 0.05  # the child sends its status at most this often, when something changed
CALLER_COUNTS = ("requests", "chat", "not_sampled", "over_cap", "dropped", "too_large", "upstream_errors",
                 "caller_closed", "mirror_down")


@dataclass
class MirrorConfig:
    """What the child needs to mirror: the store's path, the candidates' plans, the settings, where the upstreams
    are (for the incumbent's stored endpoint), price overrides, an attached suite's folder, a run to resume."""

    db: str
    candidates: list[ProviderPlan]
    settings: ProxySettings
    upstreams: dict[str, str]
    pricing_files: list[str] = field(default_factory=list)
    suite_path: str | None = None
    resume: str | None = None
    retry: RetryPolicy | None = None
    drain_s: float = 30.0
    server_log_dir: str | None = None


@dataclass
class ProxyResult:
    """How a proxy run ended: its id, status (completed, degraded, failed, interrupted) and why, its counts."""

    run_id: str
    status: str
    reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class MirrorProcess:
    """The caller's side's handle on the mirror. `async with MirrorProcess(config) as mirror:` starts the child
    (its candidates' servers included) and waits until it has recorded the run (a HarnessError with its message
    when it cannot); leaving stops it after it has drained. `offer` and `answered` never await."""

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.settings = config.settings
        self.counts = Counts()
        self.run_id = ""
        self.result: ProxyResult | None = None
        self._random = random.Random(config.settings.seed)
        self._minute = (0, 0)  # (minute number, copies in it)
        self._tickets = itertools.count(1)
        self._offered = 0
        self._waiting: dict[int, tuple[str, bytes, float, datetime]] = {}  # copies whose answer is still coming
        self.dead = False  # the mirror's process stopped while the proxy served
        self._finished = multiprocessing.get_context("spawn").RawValue("q", 0)  # copies the child is done with
        self._status: dict[str, Any] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._process: Any = None
        self._ready: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[Any] | None = None

    # -- the caller's path -----------------------------------------------------------------------------------------

    def offer(self, api: str, body: bytes, received: float) -> int | None:
        """A ticket when this chat request is to be copied (its answer's bytes are then to be kept for `answered`),
        else None: too large, not sampled, over the per-minute cap; counted either way."""
        counts, settings = self.counts, self.settings
        counts.chat += 1
        if len(body) > settings.max_body:
            counts.too_large += 1
            return None
        if settings.sample < 1.0 and self._random.random() >= settings.sample:
            counts.not_sampled += 1
            return None
        if settings.per_minute is not None:
            minute = int(time.monotonic() // 60)
            number, used = self._minute if self._minute[0] == minute else (minute, 0)
            if used >= settings.per_minute:
                counts.over_cap += 1
                return None
            self._minute = (number, used + 1)
        ticket = next(self._tickets)
        self._waiting[ticket] = (api, body, received, datetime.now(UTC))
        return ticket

    def answered(self, ticket: int, status: int, headers: Any, chunks: list[tuple[float, bytes]] | None,
                 failure: str | None = None) -> None:
        """The incumbent's answer to copy `ticket` (see `Mirror.answered`): the copy goes to the mirror's process
        as one frame, unless `queue` copies are already waiting for the candidates there (dropped, counted) or that
        process has died (counted)."""
        api, body, received, received_at = self._waiting.pop(ticket)
        if self.dead:
            self.counts.mirror_down += 1
            return
        if self._offered - self._finished.value >= self.settings.queue:
            self.counts.dropped += 1
            return
        self._offered += 1
        wanted = {key: headers.get(key) for key in ("Content-Type", "Content-Encoding")} if headers else {}
        self._send(("copy", api, body, received, received_at, status, wanted, chunks, failure))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_HEADER.pack(len(payload)) + payload)

    # -- what the status page shows --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The child's latest status, with the caller's side's counts."""
        status = dict(self._status) or {"run_id": self.run_id, "candidates": []}
        mine = self.counts.as_dict()
        status["counts"] = {**(status.get("counts") or {}), **{k: mine[k] for k in CALLER_COUNTS}}
        return status

    def status_line(self) -> str:
        """One line for the terminal: traffic, then each candidate's agreement and the stop rule."""
        status = self.status()
        c = status["counts"]
        dead = ["THE MIRROR PROCESS DIED: no copies are made (restart the proxy)"] if self.dead else []
        parts = [*dead, f"{c.get('requests', 0):,} requests, {c.get('mirrored', 0):,} mirrored"
                 + (f", {c['dropped']:,} dropped (queue full)" if c.get("dropped") else "")]
        for candidate in status.get("candidates", []):
            errors = candidate.get("infrastructure_errors")
            parts.append(f"{candidate['provider']}: {candidate['stop_rule']}"
                         + (f"; {errors:,} calls failed (server)" if errors else ""))
        return " | ".join(parts)

    # -- the child's lifetime --------------------------------------------------------------------------------------

    async def __aenter__(self) -> MirrorProcess:
        mine, theirs = socket.socketpair()
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(target=_child, args=(theirs, self.config, self._finished),
                                        name="harness-proxy-mirror", daemon=True)
        self._process.start()
        theirs.close()
        loop = asyncio.get_running_loop()
        self._ready, self._done = loop.create_future(), loop.create_future()
        reader, self._writer = await asyncio.open_unix_connection(sock=mine)
        self._reader_task = asyncio.create_task(self._read(reader))
        waiting = asyncio.ensure_future(asyncio.shield(self._ready))
        while not waiting.done():
            await asyncio.wait([waiting], timeout=0.5)
            if not waiting.done() and not self._process.is_alive():
                raise HarnessError(f"the proxy's mirror process exited at start (exit status {self._process.exitcode})")
        kind, value = waiting.result()
        if kind == "error":
            await self._stop(graceful=False)
            raise HarnessError(value)
        self.run_id = value
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop(graceful=True)

    async def _stop(self, graceful: bool) -> None:
        with contextlib.suppress(Exception):
            mine = self.counts.as_dict()
            self._send(("stop", {key: mine[key] for key in CALLER_COUNTS}))
            if self._writer is not None:
                await self._writer.drain()
        if graceful and self._done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._done), self.config.drain_s + 30)
        if self._done is not None and self._done.done():
            self.result = self._done.result()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if self._process is not None:
            await asyncio.to_thread(self._process.join, 10)
            if self._process.is_alive():
                self._process.kill()
        if self.result is None and self.run_id:
            self.result = ProxyResult(self.run_id, "interrupted", "the mirror process did not report its end")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        assert self._ready is not None and self._done is not None
        try:
            while True:
                size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
                kind, value = pickle.loads(await reader.readexactly(size))
                if kind == "status":
                    self._status = value
                elif kind in ("ready", "error") and not self._ready.done():
                    self._ready.set_result((kind, value))
                elif kind == "done":
                    self._done.set_result(ProxyResult(**value))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.dead = True
            if not self._ready.done():
                self._ready.set_result(("error", "the proxy's mirror process stopped before it started"))
            if not self._done.done():  # it died (killed, out of memory): what it had journaled is recovered later
                code = self._process.exitcode if self._process is not None else None
                self._done.set_result(ProxyResult(self.run_id, "failed", "the proxy's mirror process died (exit "
                                                  f"status {code}) while serving; copies after that were not made"))
                self._status = {**self._status, "mirror": "dead"}


class _Incoming(asyncio.StreamReader):
    """The frames from the caller's side. A reset connection (the front killed while status frames were still
    unread on its side) ends the stream as a close does, after the frames that had arrived: asyncio's reader would
    raise the reset before handing over the bytes it already holds, and drop copies the front had sent."""

    def set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionResetError):
            self.feed_eof()
        else:
            super().set_exception(exc)


def _child(sock: socket.socket, config: MirrorConfig, finished: Any) -> None:
    """The child process: the `Mirror`, fed by the caller's side over `sock`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's side decides when to stop
    with contextlib.suppress(OSError):  # when the CPUs are busy, the bytes passed to callers go first
        os.nice(NICENESS)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_mirror(sock, config, finished))


async def _mirror(sock: socket.socket, config: MirrorConfig, finished: Any) -> None:
    from harness.pricing import load_pricing
    from harness.proxy.mirror import Mirror
    from harness.store.db import Store
    from harness.suite.load import load_suite

    loop = asyncio.get_running_loop()
    reader = _Incoming(loop=loop)
    await loop.create_unix_connection(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sock=sock)
    # writes go through a transport of their own, on a duplicate of the socket: a write that fails once the front
    # is gone closes only that one, and the copies the front had sent are still read (nothing reads from it)
    _, writer = await asyncio.open_unix_connection(sock=sock.dup())
    writer.transport.pause_reading()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    def send(message: tuple[Any, ...]) -> None:
        if not writer.is_closing():
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            writer.write(_HEADER.pack(len(payload)) + payload)

    def done_one() -> None:
        finished.value += 1

    try:
        suite = load_suite(config.suite_path) if config.suite_path else None
        store = Store(config.db)
    except HarnessError as exc:
        send(("error", str(exc)))
        await writer.drain()
        return
    with store:
        try:
            mirror = Mirror(store, config.candidates, config.settings, load_pricing(config.pricing_files),
                            upstreams=config.upstreams, suite=suite, resume=config.resume, retry=config.retry,
                            drain_s=config.drain_s, server_log_dir=Path(config.server_log_dir or "."),
                            on_done=done_one)
            await mirror.__aenter__()
        except Exception as exc:  # a HarnessError says what to fix; anything else is said as it is
            send(("error", str(exc) if isinstance(exc, HarnessError) else f"the mirror could not start: "
                                                                         f"{type(exc).__name__}: {exc}"))
            await writer.drain()
            return
        send(("ready", mirror.run_id))
        reason = None
        broken = None

        async def publish() -> None:
            last = None
            while True:
                status = mirror.status()
                if status != last:
                    send(("status", status))
                    last = status
                await asyncio.sleep(STATUS_EVERY_S)

        publisher = asyncio.create_task(publish())
        try:
            while not stop.is_set():
                try:
                    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
                    message = pickle.loads(await reader.readexactly(size))
                except (asyncio.IncompleteReadError, ConnectionError):
                    reason = ("the proxy's front process went away; the copies in flight were drained (go on with "
                              f"it: harness proxy --resume {mirror.run_id})")
                    break
                if message[0] == "copy":
                    _, api, body, received, received_at, status, headers, chunks, failure = message
                    try:
                        copy = mirror.offer(api, body, received, received_at)
                        if copy is not None:
                            mirror.answered(copy, status, headers, chunks, failure)
                    except Exception as exc:  # a bug must stop the run as failed, never leave it "completed"
                        broken = f"the mirror failed on a copy: {type(exc).__name__}: {exc}"[:300]
                        break
                elif message[0] == "stop":
                    for key, value in message[1].items():  # the caller's side's counts, stored with the run
                        setattr(mirror.counts, key, value)
                    break
        finally:
            publisher.cancel()
            await mirror.__aexit__(None, None, None)
            result = mirror.result
            status, why = (result.status, result.reason) if result is not None else ("failed", None)
            if broken:
                status, why = "failed", "; ".join(filter(None, [broken, why]))
                store.finish_run(mirror.run_id, status, why)
            elif reason and status == "completed":
                status, why = "interrupted", reason
                store.finish_run(mirror.run_id, status, why)
            send(("status", mirror.status()))
            send(("done", {"run_id": mirror.run_id, "status": status, "reason": why,
                           "counts": mirror.counts.as_dict()}))
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
