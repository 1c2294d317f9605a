"""Retries, Retry-After, timeouts and the adaptive concurrency limit, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from openai_server import OpenAIServer, Reply

from harness.providers.base import Request, parse_retry_after
from harness.providers.openai_client import OpenAICompatible
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy, is_retryable

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5)


def _request(text: str = "total?") -> Request:
    return Request(messages=[{"role": "user", "content": text}], params={"max_tokens": 20})


def _run(server: OpenAIServer, requests: list[Request], policy: RetryPolicy = FAST, concurrency: int = 1):
    async def go():
        client = OpenAICompatible("openai:test", "test-model", server.base_url, "sk-test")
        provider = Resilient(client, policy, AdaptiveLimiter(concurrency), rng=random.Random(0))
        try:
            return await asyncio.gather(*(provider.complete(r) for r in requests)), provider
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _scripted(*replies: Reply):
    """A responder that gives `replies` in order, then the last one forever."""
    queue = list(replies)
    lock = threading.Lock()

    def respond(body):
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]

    return respond


def test_429_with_retry_after_is_waited_out_and_recorded_apart_from_latency():
    replies = _scripted(Reply(status=429, headers={"retry-after": "0.3"}), Reply(text="ok"))
    with OpenAIServer(replies) as server:
        (completion,), provider = _run(server, [_request()])
    assert completion.error is None and completion.text == "ok"
    assert completion.attempts == 2 and len(server.requests) == 2
    assert 300 <= completion.rate_limit_wait_ms <= 600
    assert completion.retry_wait_ms == completion.rate_limit_wait_ms
    assert completion.latency_ms < 300  # the wait is not latency
    assert provider.stats.rate_limited == 1 and provider.stats.retries == 1


def test_server_errors_and_cut_streams_are_retried_until_an_answer():
    replies = _scripted(Reply(status=500), Reply(status=503), Reply(text="abcdef", truncate=True), Reply(text="fine"))
    with OpenAIServer(replies) as server:
        (completion,), _ = _run(server, [_request()])
    assert completion.error is None and completion.text == "fine"
    assert completion.attempts == 4
    assert completion.rate_limit_wait_ms == 0 and completion.retry_wait_ms > 0


def test_retries_are_bounded_and_the_last_error_is_kept():
    with OpenAIServer(lambda body: Reply(status=503, error_message="overloaded")) as server:
        (completion,), provider = _run(server, [_request()])
    assert len(server.requests) == FAST.max_attempts
    assert completion.attempts == FAST.max_attempts
    assert completion.error_kind == "http_503"
    assert completion.error == "HTTP 503: overloaded; gave up after 4 attempts"
    assert provider.stats.gave_up == 1


def test_client_errors_and_malformed_answers_are_not_retried():
    for reply, kind in [(Reply(status=400, error_message="bad request"), "http_400"),
                        (Reply(text="abcdefgh", break_stream=True), "bad_response")]:
        with OpenAIServer(lambda body, reply=reply: reply) as server:
            (completion,), _ = _run(server, [_request()])
        assert completion.error_kind == kind
        assert len(server.requests) == 1 and completion.attempts == 1


def test_a_truncated_stream_is_an_error_not_a_short_answer():
    with OpenAIServer(lambda body: Reply(text="abcdefgh", truncate=True)) as server:
        (completion,), _ = _run(server, [_request()], RetryPolicy(max_attempts=1, timeout_s=5))
    assert completion.error_kind == "truncated"
    assert completion.text == "abcd"  # what arrived is kept for the record


def test_an_error_event_in_the_stream_is_retried():
    replies = _scripted(Reply(text="abcdefgh", error_event=True, error_message="overloaded"), Reply(text="ok"))
    with OpenAIServer(replies) as server:
        (completion,), _ = _run(server, [_request()])
    assert completion.text == "ok" and completion.attempts == 2


def test_the_per_request_timeout_bounds_a_stalled_stream():
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, timeout_s=0.5)
    with OpenAIServer(lambda body: Reply(text="abcdefgh", stall_s=3)) as server:
        start = time.perf_counter()
        (completion,), _ = _run(server, [_request()], policy)
        elapsed = time.perf_counter() - start
    assert completion.error_kind == "timeout"
    assert "0.5 s request timeout" in completion.error
    assert completion.attempts == 2 and len(server.requests) == 2
    assert elapsed < 2.5


def test_a_retry_after_beyond_the_limit_is_not_waited_for():
    with OpenAIServer(lambda body: Reply(status=429, headers={"retry-after": "3600"})) as server:
        (completion,), _ = _run(server, [_request()])
    assert len(server.requests) == 1
    assert completion.error.endswith("Retry-After 3600 s is over the 300 s limit")


def test_parse_retry_after_forms():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_which_errors_are_retried():
    assert all(is_retryable(k) for k in ("http_429", "http_500", "http_529", "timeout", "connection", "truncated"))
    assert not any(is_retryable(k) for k in (None, "http_400", "http_401", "http_404", "bad_response", "not_in_log"))


def test_backoff_grows_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=10, base_delay_s=1, max_delay_s=8)
    rng = random.Random(1)
    delays = [policy.delay(n, None, rng) for n in range(1, 7)]
    for n, delay in enumerate(delays, start=1):
        cap = min(8, 2 ** (n - 1))
        assert cap / 2 <= delay <= cap
    assert policy.delay(1, 5.0, rng) >= 5.0
    assert policy.delay(10, None, rng) is None


def test_concurrency_halves_on_429_and_climbs_back():
    """A server that rate-limits when more than 2 requests are in flight: the limit comes down to what it
    takes, every request is answered in the end, and the limit grows again once calls succeed."""
    lock = threading.Lock()
    state = {"in_flight": 0, "peak_after_cut": 0}

    def respond(body):
        with lock:
            state["in_flight"] += 1
            busy = state["in_flight"] > 2
        try:
            if busy:
                return Reply(status=429, headers={"retry-after-ms": "20"})
            time.sleep(0.05)
            return Reply(text="ok")
        finally:
            with lock:
                state["in_flight"] -= 1

    with OpenAIServer(respond) as server:
        completions, provider = _run(server, [_request(f"case {i}") for i in range(40)],
                                     RetryPolicy(max_attempts=20, base_delay_s=0.01, timeout_s=5), concurrency=8)
    assert all(c.error is None for c in completions)
    limiter = provider.limiter
    assert limiter.lowest <= 2 and limiter.cuts >= 1
    assert limiter.limit > limiter.lowest  # recovered after the cut
    assert sum(c.rate_limit_wait_ms for c in completions) > 0


def test_limiter_cuts_once_for_a_burst_sent_under_the_same_limit():
    async def go():
        limiter = AdaptiveLimiter(8)
        entered = asyncio.Event()
        release = asyncio.Event()
        count = 0

        async def call():
            nonlocal count
            async with limiter.slot() as report:
                count += 1
                if count == 4:
                    entered.set()
                await release.wait()
                report("http_429")

        tasks = [asyncio.create_task(call()) for _ in range(4)]
        await entered.wait()
        release.set()
        await asyncio.gather(*tasks)
        return limiter

    limiter = asyncio.run(go())
    assert limiter.limit == 4 and limiter.cuts == 1
