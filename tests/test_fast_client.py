"""The aiohttp transport (`OpenAICompatible`, for local/vllm/openai-compatible) against real loopback servers:
the same requests as the SDK transport (`OpenAISDK`, for openai/azure), its key handling, errors, timeouts, and
its one session per provider."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from openai_server import OpenAIServer, Reply

from harness.providers.base import Request
from harness.providers.openai_client import OpenAICompatible, OpenAISDK, _environment_proxy
from harness.providers.plan import plan_provider
from harness.providers.registry import build_provider
from harness.suite.spec import ProviderSpec

SCHEMA = {"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"]}
KEY = "sk-fast-secret-0123"
MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Total of 2 × 4,50 €?"}]

REQUESTS = {
    "schema": Request(messages=MESSAGES, params={"temperature": 0.0, "max_tokens": 50, "seed": 0, "top_p": None},
                      response_schema=SCHEMA, json_output=True),
    "json mode": Request(messages=MESSAGES, params={"temperature": 0.7}, json_output=True),
    "server params": Request(messages=MESSAGES, params={"temperature": 0.2, "top_k": 40, "min_p": 0.05,
                                                        "repetition_penalty": 1.1, "stop": ["\n\n"]}),
    "logprobs": Request(messages=MESSAGES, params={"max_tokens": 8}, logprobs=True),
    "plain": Request(messages=MESSAGES, params={}),
}


def _run(provider, *requests: Request):
    async def go():
        try:
            return [await provider.complete(r) for r in requests]
        finally:
            await provider.aclose()
    return asyncio.run(go())


@pytest.mark.parametrize("options", [
    {}, {"usage_in_stream": False}, {"max_tokens_param": "max_completion_tokens"},
    {"schema_style": "json_object_schema"}, {"schema_style": "none"},
])
def test_sends_exactly_the_body_and_key_the_sdk_sent(options):
    sent = {}
    for cls in (OpenAICompatible, OpenAISDK):
        with OpenAIServer(lambda body: Reply(text='{"total": "9.00"}')) as server:
            completions = _run(cls("local:test", "test-model", server.base_url, KEY, **options),
                               *REQUESTS.values())
        assert all(c.error is None and c.text == '{"total": "9.00"}' for c in completions)
        sent[cls] = server.requests
        assert all(h["authorization"] == f"Bearer {KEY}" for h in server.headers)
    assert sent[OpenAICompatible] == sent[OpenAISDK]
    assert sent[OpenAICompatible][2]["top_k"] == 40  # not under extra_body: merged into the body, as the SDK does


def test_same_completion_through_both_transports():
    reply = Reply(text='{"total": "9.00"}', chunks=3, logprobs=[[-0.1, -2.5], [-1.2, -0.4], [-0.05]])
    got = {}
    for cls in (OpenAICompatible, OpenAISDK):
        with OpenAIServer(lambda body: reply) as server:
            (completion,) = _run(cls("local:test", "test-model", server.base_url), REQUESTS["logprobs"])
        got[cls] = completion
    fast, sdk = got[OpenAICompatible], got[OpenAISDK]
    fields = ("text", "model", "input_tokens", "output_tokens", "finish_reason", "usage_source", "error",
              "logprob_mean", "logprob_min", "margin_mean", "logprob_tokens")
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(sdk, f) for f in fields}
    assert fast.logprob_tokens == 3 and 0 < fast.ttft_ms <= fast.latency_ms


def test_no_key_no_authorization_header():
    with OpenAIServer(lambda body: Reply(text="ok")) as server:
        (completion,) = _run(OpenAICompatible("local:test", "m", server.base_url), REQUESTS["plain"])
    assert completion.error is None
    assert "authorization" not in server.headers[0]


def test_the_key_appears_in_no_error_even_when_the_server_echoes_it():
    echoed = f"Incorrect API key provided: {KEY} (Authorization: Bearer {KEY})"
    replies = [Reply(status=401, error_message=echoed), Reply(status=500, error_message=echoed),
               Reply(text="abcdefgh", error_event=True, error_message=echoed)]
    for reply in replies:
        with OpenAIServer(lambda body, reply=reply: reply) as server:
            (completion,) = _run(OpenAICompatible("local:test", "m", server.base_url, KEY), REQUESTS["plain"])
        assert completion.error and KEY not in completion.error
        assert "Incorrect API key provided: ***" in completion.error
    assert completion.error_kind == "stream_error" and completion.text == "abcd"


def test_http_errors_keep_the_kind_message_and_retry_after():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    cases = [
        (Reply(status=429, error_message="slow down", headers={"Retry-After": when}), "http_429", 28, 30.5),
        (Reply(status=429, headers={"retry-after-ms": "1500", "Retry-After": "9"}), "http_429", 1.5, 1.5),
        (Reply(status=503, error_message="overloaded", headers={"Retry-After": "2"}), "http_503", 2, 2),
    ]
    for reply, kind, low, high in cases:
        with OpenAIServer(lambda body, reply=reply: reply) as server:
            (completion,) = _run(OpenAICompatible("local:test", "m", server.base_url), REQUESTS["plain"])
        assert completion.error_kind == kind
        assert completion.error == f"HTTP {reply.status}: {reply.error_message}"
        assert low <= completion.retry_after_s <= high


def test_connection_refused():
    with OpenAIServer() as server:
        url = server.base_url
    (completion,) = _run(OpenAICompatible("local:test", "m", url), REQUESTS["plain"])
    assert completion.error_kind == "connection"
    assert completion.error.startswith("connection failed: ")
    assert completion.retry_after_s is None


def test_the_timeout_bounds_an_attempt_even_on_a_stalled_stream():
    with OpenAIServer(lambda body: Reply(text="abcdefgh", chunks=4, stall_s=3)) as server:
        start = time.perf_counter()
        (completion,) = _run(OpenAICompatible("local:test", "m", server.base_url, timeout=0.5), REQUESTS["plain"])
        elapsed = time.perf_counter() - start
    assert completion.error_kind == "timeout" and completion.error == "request timed out"
    assert completion.text == "ab" and completion.ttft_ms is not None  # what arrived before the stall is kept
    assert 450 <= completion.latency_ms < 1500 and elapsed < 2


def test_a_line_longer_than_aiohttp_s_line_limit_is_read_whole():
    text = "x" * 300_000  # one event of 300 kB: aiohttp's readline refuses lines over 128 KiB
    with OpenAIServer(lambda body: Reply(text=text, chunks=1)) as server:
        (completion,) = _run(OpenAICompatible("local:test", "m", server.base_url), REQUESTS["plain"])
    assert completion.error is None and completion.text == text


def _app(pieces: list[bytes], connections: set) -> web.Application:
    """A server that streams `pieces` as separate writes (the way a chunked stream arrives: events cut anywhere),
    and records each request's client address: one per connection."""

    async def chat(request: web.Request) -> web.StreamResponse:
        connections.add(request.transport.get_extra_info("peername"))
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _serving(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"


def test_events_cut_anywhere_and_any_line_ending_are_read():
    events = (b': keep-alive comment\r\n\r\n'
              b'data: {"model":"served","choices":[{"index":0,"delta":{"role":"assistant","content":"h\xc3\xa9"},'
              b'"finish_reason":null}]}\r\n\r\n'
              b'event: message\rdata: {"choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":null}]}\r\r'
              b'data:{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
              b'data: [DONE]')  # no line end after the last event
    # cut inside "data:", inside the JSON, inside a two-byte UTF-8 character, and between \r and \n
    cuts = [3, 60, events.index(b"\xc3") + 1, events.index(b"}\r\n\r\n") + 2, len(events) - 4]
    assert cuts == sorted(cuts)
    pieces = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]

    async def go():
        runner, url = await _serving(_app(pieces, set()))
        provider = OpenAICompatible("local:test", "m", url)
        try:
            return await provider.complete(REQUESTS["plain"])
        finally:
            await provider.aclose()
            await runner.cleanup()

    completion = asyncio.run(go())
    assert completion.error is None
    assert (completion.text, completion.model, completion.finish_reason) == ("héllo", "served", "stop")
    assert (completion.input_tokens, completion.output_tokens, completion.usage_source) == (3, 2, "provider")


def test_one_session_per_provider_reused_across_requests_and_closed_by_aclose():
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"]
    connections: set = set()

    async def go():
        runner, url = await _serving(_app(events, connections))
        provider = OpenAICompatible("local:test", "m", url)
        try:
            sequential = [await provider.complete(REQUESTS["plain"]) for _ in range(5)]
            after_sequential = len(connections)
            concurrent = await asyncio.gather(*(provider.complete(REQUESTS["plain"]) for _ in range(8)))
            session = provider._session
            await provider.aclose()
            closed = session is not None and session.closed
            again = await provider.complete(REQUESTS["plain"])  # a closed provider opens a new session
            await provider.aclose()
            return sequential + concurrent + [again], after_sequential, closed
        finally:
            await runner.cleanup()

    completions, after_sequential, closed = asyncio.run(go())
    assert all(c.error is None and c.text == "ok" for c in completions)
    assert after_sequential == 1  # five requests one after another: one kept-alive connection
    assert len(connections) <= 1 + 8 + 1  # eight at once need at most eight; the reopened session one more
    assert closed


def test_one_attempt_per_call():
    with pytest.raises(ValueError, match="Resilient"):
        OpenAICompatible("local:test", "m", "http://127.0.0.1:9/v1", max_retries=2)


def test_self_hosted_kinds_get_the_aiohttp_client_and_apis_the_sdk():
    env = {"VLLM_BASE_URL": "http://127.0.0.1:9", "OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:9/v1",
           "OPENAI_API_KEY": "sk-x" * 4, "AZURE_OPENAI_API_KEY": "k" * 10, "AZURE_OPENAI_ENDPOINT": "https://x.test"}
    kinds = {"local:m": OpenAICompatible, "vllm:m": OpenAICompatible, "openai-compatible:m": OpenAICompatible,
             "openai:gpt-4o-mini": OpenAISDK, "azure:prod": OpenAISDK}
    for provider_id, cls in kinds.items():
        provider = build_provider(plan_provider(ProviderSpec(id=provider_id, role="candidate"), env=env))
        assert type(provider) is cls, provider_id
        asyncio.run(provider.aclose())


def test_proxies_from_the_environment_as_the_sdk_reads_them(monkeypatch):
    import yarl

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy(yarl.URL("http://gpu-box:8000/v1/chat/completions")) is None
    monkeypatch.setenv("HTTP_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.internal")
    assert _environment_proxy(yarl.URL("http://gpu-box:8000/v1")) == "http://proxy.corp:3128"
    assert _environment_proxy(yarl.URL("http://127.0.0.1:8000/v1")) is None
    assert _environment_proxy(yarl.URL("http://vllm.internal/v1")) is None
    assert _environment_proxy(yarl.URL("https://gpu-box/v1")) is None  # no HTTPS_PROXY
