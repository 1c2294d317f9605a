"""Servers watched during a run: a dead one is noticed at once, restarted once (one the harness manages), or ends
the run; an endpoint that refuses every connection is not called case after case.

`ServerWatch` wraps the provider that calls a `ManagedServer` (inside the retries, so that nothing is retried into a
closed port). A call that fails for infrastructure reasons while the server process has exited comes back as a
`server_exited` completion, which the runner does not store: the case stays unanswered and `--resume` redoes it.
The runner then asks `recover()`: a server that died after answering cases is restarted once (smoke test
included) and the case is sent again; a server that died before answering any case since it started, or dies a
second time, is not, and the run ends `failed` with `failure` as the reason
(`llama.cpp server exited with SIGSEGV after 12 requests`).

`EndpointBreaker` does the same for a server the harness does not manage (a vLLM at VLLM_BASE_URL, an API): after
`BREAKER_FAILURES` calls in a row that could not connect, it stops calling and answers `endpoint_down`, which is
not stored either; the run ends `failed` and `--resume` sends the rest once the server is back. Timeouts and HTTP
errors do not count: a slow or overloaded server recovers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from harness.errors import ServerError
from harness.providers.base import Completion, Provider, Request
from harness.providers.failures import ENDPOINT_DOWN, SERVER_EXITED, is_infrastructure_error
from harness.providers.server import ManagedServer, describe_exit

MAX_RESTARTS = 1
BREAKER_FAILURES = 8  # attempts in a row that could not connect (two cases' worth of retries)


def _unanswered(error: str, kind: str) -> Completion:
    """A completion the runner does not store (`outcomes.UNSTORED`): the case stays for --resume."""
    return Completion(text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None, latency_ms=0.0,
                      finish_reason=None, error=error, error_kind=kind)


class ServerWatch:
    """A `Provider` over `inner` (which calls `server`) that notices the server's death. The runner closes `inner`."""

    def __init__(self, inner: Provider, server: ManagedServer) -> None:
        self.inner = inner
        self.name = inner.name
        self.server = server
        self.answered = 0  # requests answered since the server last started
        self.answered_total = 0
        self.restarts = 0
        self.failure: str | None = None  # why the run cannot go on with this server
        self.events: list[str] = []  # what happened, for the run's record
        self._lock = asyncio.Lock()

    async def complete(self, request: Request) -> Completion:
        """The inner provider's answer, or a `server_exited` completion when the server is (or just went) down."""
        if self.failure is not None or self.server.exit_status is not None:
            return self._exited()
        completion = await self.inner.complete(request)
        if completion.error and is_infrastructure_error(completion.error_kind) \
                and await self.server.exited_within(1.0):
            return replace(self._exited(), latency_ms=completion.latency_ms)
        if not completion.error:
            self.answered += 1
            self.answered_total += 1
        return completion

    def _exited(self) -> Completion:
        return _unanswered(f"{self.server.name} {describe_exit(self.server.exit_status)}", SERVER_EXITED)

    async def recover(self) -> bool:
        """After a `server_exited` answer: True when the server is up again (restarted here or by another worker),
        False when the run must stop (then `failure` says why)."""
        async with self._lock:
            if self.failure is not None:
                return False
            if self.server.exit_status is None:
                return True
            died = (f"{self.server.name} {describe_exit(self.server.exit_status)} after {self.answered} "
                    f"request{'s' if self.answered != 1 else ''}")
            self.events.append(died)
            if self.answered == 0 or self.restarts >= MAX_RESTARTS:
                self.failure = died + (f", after {self.restarts} restart" if self.restarts else "")
                return False
            self.restarts += 1
            try:
                await self.server.restart()
            except ServerError as exc:
                self.failure = f"{died}; the restart failed: {exc}"
                return False
            self.answered = 0
            self.events.append(f"{self.server.name} restarted")
            return True


class EndpointBreaker:
    """A `Provider` over `inner` (an endpoint the harness does not manage) that stops calling it after
    `BREAKER_FAILURES` connection failures in a row; `failure` then says why."""

    def __init__(self, inner: Provider, limit: int = BREAKER_FAILURES) -> None:
        self.inner = inner
        self.name = inner.name
        self.limit = limit
        self.in_a_row = 0
        self.answered = 0
        self.failure: str | None = None

    async def complete(self, request: Request) -> Completion:
        """The inner provider's answer, or an `endpoint_down` completion once the breaker has tripped."""
        if self.failure is not None:
            return self._down()
        completion = await self.inner.complete(request)
        if completion.error_kind != "connection":
            self.in_a_row = 0
            self.answered += completion.error is None
            return completion
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            self.failure = (f"{self.in_a_row} calls in a row could not connect ({completion.error}), after "
                            f"{self.answered} answer{'s' if self.answered != 1 else ''}; the cases not yet answered "
                            "were not sent")
            return replace(self._down(), latency_ms=completion.latency_ms)
        return completion

    def _down(self) -> Completion:
        return _unanswered(f"{self.name}: {self.failure}", ENDPOINT_DOWN)
