"""Resilience around a provider: bounded retries with backoff and jitter, Retry-After, a per-request
timeout, and a concurrency limit that halves on rate limits and climbs back one step at a time.

`Resilient` wraps any `Provider`; it never raises for a failed call either. The waits it spends before
retrying are recorded on the `Completion` (`retry_wait_ms`, and the part after rate limits in
`rate_limit_wait_ms`), apart from `latency_ms`, which is the latency of the attempt that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from harness.providers.base import Completion, Provider, Request
from harness.providers.failures import BUDGET
from harness.providers.spend import Ledger, Spend

RATE_LIMITED = "http_429"
_SLOW_DOWN = frozenset({RATE_LIMITED, "http_529"})  # answers that ask for less concurrency (529: Anthropic overloaded)


def is_retryable(error_kind: str | None) -> bool:
    """Whether a failed call is worth trying again: rate limits, server errors, timeouts, dropped
    connections and cut-off streams. Client errors (400, 401, 404...) and malformed answers are not."""
    if error_kind is None:
        return False
    if error_kind in ("http_408", "http_409", RATE_LIMITED, "timeout", "connection", "truncated", "stream_error"):
        return True
    return error_kind.startswith("http_5")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. `max_attempts` counts the first call; `timeout_s` bounds each attempt
    from request to last token; a Retry-After longer than `max_retry_after_s` is not waited for."""

    max_attempts: int = 4
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 300.0
    timeout_s: float | None = 120.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based), or None to give up.

        Exponential backoff with jitter (half fixed, half random, so that clients that failed together do not
        retry together); a server's Retry-After is honoured as the minimum, with a little jitter on top.
        """
        if attempt >= self.max_attempts:
            return None
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        backoff = backoff / 2 + rng.uniform(0, backoff / 2)
        if retry_after_s is None:
            return backoff
        if retry_after_s > self.max_retry_after_s:
            return None
        return retry_after_s + rng.uniform(0, min(1.0, self.base_delay_s) / 4)


class AdaptiveLimiter:
    """A concurrency limit that halves when the provider answers 429 (or 529) and grows by one after each
    `limit` successful calls in a row, between 1 and `maximum` (additive increase, multiplicative decrease).

    Concurrent 429s from requests sent under the same limit cut it once, not once each.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.lowest = self.maximum
        self.cuts = 0
        self.in_flight = 0
        self._epoch = 0
        self._successes = 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Callable[[str | None], None]]:
        """Hold one slot for one call; report the call's error kind (None when it succeeded) through the
        callable it yields, before leaving the block."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            epoch = self._epoch
        outcome: list[str | None] = ["unknown"]

        def report(kind: str | None) -> None:
            outcome[0] = kind

        try:
            yield report
        finally:
            async with self._cond:
                self.in_flight -= 1
                self._adjust(outcome[0], epoch)
                self._cond.notify_all()

    def _adjust(self, kind: str | None, epoch: int) -> None:
        if kind in _SLOW_DOWN:
            self._successes = 0
            if epoch == self._epoch:  # sent under the current limit: the limit is too high
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
                self.cuts += 1
                self._epoch += 1
        elif kind is None:
            self._successes += 1
            if self._successes >= self.limit and self.limit < self.maximum:
                self.limit += 1
                self._successes = 0


@dataclass
class CallStats:
    """What a wrapped provider did over a run, for the run's provenance."""

    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    gave_up: int = 0


class Resilient:
    """`provider` with retries, a per-attempt timeout and an adaptive concurrency limit."""

    def __init__(
        self,
        provider: Provider,
        policy: RetryPolicy,
        limiter: AdaptiveLimiter,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        spend: Spend | None = None,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.policy = policy
        self.limiter = limiter
        self.stats = CallStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.spend = spend

    async def complete(self, request: Request) -> Completion:
        """Call until an attempt succeeds, fails for good, or the attempts are spent; returns the last attempt's
        completion with `attempts`, `retry_wait_ms` and `rate_limit_wait_ms` filled in."""
        attempt = 0
        waited = rate_waited = 0.0
        failed_in = failed_out = 0
        completion: Completion | None = None
        while True:
            attempt += 1
            worst = self.spend.worst(request) if self.spend is not None else 0.0
            if self.spend is not None and not self.spend.ledger.reserve(worst):
                if completion is None:
                    return over_budget(self.name, worst, self.spend.ledger)
                completion = replace(completion, error=f"{completion.error}; not retried: the spending ceiling "
                                                       "is reached")
                attempt -= 1
                break
            if completion is not None and completion.error and completion.usage_source == "provider":
                failed_in += completion.input_tokens or 0  # the attempt before this one was billed
                failed_out += completion.output_tokens or 0
            async with self.limiter.slot() as report:
                try:
                    completion = await self._attempt(request)
                except BaseException:  # cancelled under way: it may have been billed in full
                    if self.spend is not None:
                        self.spend.ledger.settle(worst, worst)
                    raise
                if self.spend is not None:
                    self.spend.ledger.settle(worst, self.spend.billed(completion, worst))
                report(completion.error_kind if completion.error else None)
            self.stats.calls += 1
            if completion.error_kind == RATE_LIMITED:
                self.stats.rate_limited += 1
            if not completion.error or not is_retryable(completion.error_kind):
                break
            delay = self.policy.delay(attempt, completion.retry_after_s, self._rng)
            if delay is None:
                self.stats.gave_up += 1
                completion = _gave_up(completion, attempt, self.policy)
                break
            self.stats.retries += 1
            await self._sleep(delay)
            waited += delay
            if completion.error_kind == RATE_LIMITED:
                rate_waited += delay
        return replace(completion, attempts=attempt, retry_wait_ms=waited * 1000, rate_limit_wait_ms=rate_waited * 1000,
                       failed_input_tokens=failed_in, failed_output_tokens=failed_out)

    async def _attempt(self, request: Request) -> Completion:
        started_at = datetime.now(UTC)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self.provider.complete(request)
        except TimeoutError:
            return Completion(
                text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
                latency_ms=(time.perf_counter() - start) * 1000, finish_reason=None,
                error=f"no complete answer within the {self.policy.timeout_s:g} s request timeout",
                error_kind="timeout", started_at=started_at,
            )

    async def aclose(self) -> None:
        """Close the wrapped provider."""
        close = getattr(self.provider, "aclose", None)
        if close is not None:
            await close()


def _gave_up(completion: Completion, attempts: int, policy: RetryPolicy) -> Completion:
    if completion.retry_after_s is not None and completion.retry_after_s > policy.max_retry_after_s:
        why = f"; Retry-After {completion.retry_after_s:.0f} s is over the {policy.max_retry_after_s:g} s limit"
    else:
        why = f"; gave up after {attempts} attempts"
    return replace(completion, error=f"{completion.error}{why}")


def over_budget(provider: str, worst: float, ledger: Ledger) -> Completion:
    """The (never stored) `Completion` of a call not started because its worst case, ${worst}, would pass the
    spending ceiling: the case stays unanswered, for a resume with a higher ceiling."""
    return Completion(
        text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None, latency_ms=0.0, finish_reason=None,
        error=(f"{provider}: not called: its worst case (${worst:.4f}) would pass the ${ledger.ceiling:g} ceiling "
               f"(${ledger.spent:.4f} spent, ${ledger.in_flight:.4f} in flight)"),
        error_kind=BUDGET, attempts=0,
    )
