"""The OpenAI-compatible provider against a real local HTTP server speaking the OpenAI wire format."""

from __future__ import annotations

import asyncio

import pytest
from openai_server import OpenAIServer, Reply

from harness.errors import ProviderError
from harness.providers.base import Request
from harness.providers.openai_client import OpenAICompatible, OpenAISDK
from harness.providers.plan import plan_provider, split_id
from harness.suite.spec import ProviderSpec

SCHEMA = {"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"]}


def _request(schema=SCHEMA) -> Request:
    return Request(messages=[{"role": "user", "content": "what is the total of this receipt"}],
                   params={"temperature": 0.0, "max_tokens": 50, "seed": 0, "top_p": None},
                   response_schema=schema, json_output=True)


def _complete(server: OpenAIServer, request: Request, **kwargs):
    async def go():
        provider = OpenAICompatible("local:test", "test-model", server.base_url, "sk-test-secret",
                                    max_retries=0, **kwargs)
        try:
            return await provider.complete(request), provider
        finally:
            await provider.aclose()
    return asyncio.run(go())


def test_streams_text_and_records_measurements():
    with OpenAIServer(lambda body: Reply(text='{"total": "9.00"}', chunks=5, delay_s=0.05)) as server:
        completion, _ = _complete(server, _request())
    assert completion.error is None
    assert completion.text == '{"total": "9.00"}'
    assert completion.finish_reason == "stop"
    assert completion.model == "test-model"
    assert completion.input_tokens == 7 and completion.output_tokens == 5
    assert completion.usage_source == "provider"
    assert 50 <= completion.ttft_ms <= completion.latency_ms
    body = server.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert body["temperature"] == 0.0 and body["max_tokens"] == 50 and body["seed"] == 0
    assert "top_p" not in body
    assert server.headers[0]["authorization"] == "Bearer sk-test-secret"


def test_no_usage_in_stream_counts_chunks_as_estimate():
    with OpenAIServer(lambda body: Reply(text="abcdefgh", chunks=4, usage=False)) as server:
        completion, _ = _complete(server, _request(schema=None))
    assert completion.output_tokens == 4
    assert completion.input_tokens is None
    assert completion.usage_source == "estimated"
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_length_finish_reason_is_kept():
    with OpenAIServer(lambda body: Reply(text="{\"total\": \"12", finish_reason="length")) as server:
        completion, _ = _complete(server, _request())
    assert completion.finish_reason == "length"
    assert completion.error is None


@pytest.mark.parametrize(("status", "kind"), [(500, "http_500"), (429, "http_429"), (401, "http_401")])
def test_http_errors_are_recorded_not_raised(status, kind):
    reply = Reply(status=status, error_message=f"failure {status}", headers={"Retry-After": "0"})
    with OpenAIServer(lambda body: reply) as server:
        completion, _ = _complete(server, _request())
    assert completion.error_kind == kind
    assert completion.error == f"HTTP {status}: failure {status}"
    assert completion.text == ""


@pytest.mark.parametrize("transport", ["openai-compatible", "openai", "azure"])
def test_a_plain_text_error_body_is_kept_on_every_path(transport):
    """A proxy's or a crashed worker's HTTP 500 in plain text: the SDK path stored only "Error code: 500"."""
    body = "upstream exploded: worker 3 died\n(request 7f3a)"
    with OpenAIServer(lambda _: Reply(status=500, plain_body=body)) as server:
        if transport == "openai-compatible":
            completion, _ = _complete(server, _request())
        else:
            async def go():
                url = server.base_url.removesuffix("/v1") if transport == "azure" else server.base_url
                provider = OpenAISDK(f"{transport}:m", "m", url, "sk-test-secret",
                                     azure_api_version="2024-10-21" if transport == "azure" else None)
                try:
                    return await provider.complete(_request())
                finally:
                    await provider.aclose()
            completion = asyncio.run(go())
    assert completion.error_kind == "http_500"
    assert completion.error == "HTTP 500: upstream exploded: worker 3 died (request 7f3a)"


def test_broken_stream_is_recorded():
    with OpenAIServer(lambda body: Reply(text="x" * 40, chunks=8, break_stream=True)) as server:
        completion, _ = _complete(server, _request())
    assert completion.error_kind == "bad_response"
    assert completion.text.startswith("xxxxx")


def test_connection_refused_is_recorded():
    with OpenAIServer() as server:
        url = server.base_url
    completion, _ = _complete(type("S", (), {"base_url": url})(), _request())
    assert completion.error_kind == "connection"


def test_falls_back_to_llama_cpp_schema_form_on_422():
    def responder(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(status=422, error_message="response_format.type: Input should be 'text' or 'json_object'")
        return Reply(text='{"total": "1"}')

    with OpenAIServer(responder) as server:
        completion, provider = _complete(server, _request())
    assert completion.error is None and completion.text == '{"total": "1"}'
    assert provider.schema_style == "json_object_schema"
    assert server.requests[1]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_plans_skip_with_reasons_and_never_keep_keys_in_repr():
    incumbent = ProviderSpec(id="openai:gpt-4o-mini", role="incumbent")
    skipped = plan_provider(incumbent, env={})
    assert (skipped.status, skipped.reason) == ("skipped", "OPENAI_API_KEY is not set")
    ready = plan_provider(incumbent, env={"OPENAI_API_KEY": "sk-live-123"})
    assert ready.status == "ready" and ready.base_url == "https://api.openai.com/v1"
    assert "sk-live-123" not in repr(ready)
    assert plan_provider(ProviderSpec(id="anthropic:claude-3-5-haiku", role="incumbent"), env={}).reason == (
        "ANTHROPIC_API_KEY is not set"
    )


def test_local_candidate_uses_a_given_server_or_plans_one():
    spec = ProviderSpec(id="local:smollm2-135m", role="candidate")
    managed = plan_provider(spec, env={})
    assert managed.server is not None and managed.server.engine == "llama_cpp" and managed.base_url is None
    external = plan_provider(spec, env={"VLLM_BASE_URL": "http://gpu-box:8000"})
    assert external.server is None and external.base_url == "http://gpu-box:8000/v1"
    flag = plan_provider(spec, env={"VLLM_BASE_URL": "http://ignored:1"}, base_url="http://127.0.0.1:9/v1/")
    assert flag.base_url == "http://127.0.0.1:9/v1"


def test_vllm_without_vllm_installed_is_skipped_with_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    plan = plan_provider(ProviderSpec(id="vllm:Qwen/Qwen2.5-7B-Instruct", role="candidate"), env={})
    assert plan.status == "skipped"
    assert "vllm is not installed" in plan.reason and "VLLM_BASE_URL" in plan.reason


def test_unknown_kind():
    with pytest.raises(ProviderError, match="unknown kind 'gpt'"):
        split_id("gpt:4o")


def test_server_specific_params_travel_in_the_body():
    request = Request(messages=[{"role": "user", "content": "hi"}],
                      params={"temperature": 0.2, "top_k": 40, "repetition_penalty": 1.1})
    with OpenAIServer(lambda body: Reply(text="ok")) as server:
        completion, _ = _complete(server, request)
    assert completion.error is None
    body = server.requests[0]
    assert (body["temperature"], body["top_k"], body["repetition_penalty"]) == (0.2, 40, 1.1)


def test_error_messages_never_carry_the_key():
    message = "Incorrect API key provided: sk-test-secret. Find your key at https://user:pw@example.com/keys"
    with OpenAIServer(lambda body: Reply(status=401, error_message=message)) as server:
        completion, _ = _complete(server, _request())
    assert completion.error_kind == "http_401"
    assert "sk-test-secret" not in completion.error and "user:pw" not in completion.error
    assert completion.error.startswith("HTTP 401: Incorrect API key provided: ***")


def test_redact_masks_key_shapes():
    from harness.providers.base import redact

    assert redact("key sk-proj-***abcd and Bearer abc123 and api_key=xyz") == "key *** and Bearer *** and api_key=***"
    assert redact("http://bob:hunter2@host:8000/v1") == "http://***@host:8000/v1"
    assert redact("my token is custom-secret-value", "custom-secret-value") == "my token is ***"


def test_given_server_is_asked_which_model_it_serves():
    from harness.providers.plan import match_served_model, served_models

    with OpenAIServer(model="Qwen/Qwen2.5-0.5B-Instruct") as server:
        served = served_models(server.base_url)
        local = plan_provider(ProviderSpec(id="local:smollm2-135m", role="candidate"), env={},
                              base_url=server.base_url)
        vllm = plan_provider(ProviderSpec(id="vllm:meta-llama/Llama-3.1-8B", role="candidate"), env={},
                             base_url=server.base_url)
    assert served == ["Qwen/Qwen2.5-0.5B-Instruct"]
    assert match_served_model(local, served).request_model == "Qwen/Qwen2.5-0.5B-Instruct"
    skipped = match_served_model(vllm, served)
    assert skipped.status == "skipped"
    assert "serves Qwen/Qwen2.5-0.5B-Instruct, not 'meta-llama/Llama-3.1-8B'" in skipped.reason


def test_server_without_any_response_format_is_asked_without_one():
    def responder(body):
        if "response_format" in body:
            return Reply(status=400, error_message="unsupported parameter: response_format")
        return Reply(text='{"total": "2"}')

    with OpenAIServer(responder) as server:
        completion, provider = _complete(server, _request())
    assert completion.error is None and completion.text == '{"total": "2"}'
    assert provider.schema_style == "none"
    assert [r.get("response_format", {}).get("type") for r in server.requests] == ["json_schema", "json_object", None]


def test_timeout_is_recorded():
    with OpenAIServer(lambda body: Reply(text="late", delay_s=1.5)) as server:
        completion, _ = _complete(server, _request(), timeout=0.3)
    assert completion.error_kind == "timeout"
    assert completion.error == "request timed out"
    assert completion.latency_ms < 1400


def test_concurrent_rejections_move_to_the_next_form_once():
    """llama.cpp's Python server answers a json_schema response format with HTTP 500; eight requests in
    flight all fall back to its json_object form, and none is sent without a response format."""
    def responder(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(status=500, error_message="response_format.type: Input should be 'text' or 'json_object'",
                         delay_s=0.1)
        return Reply(text='{"total": "1"}')

    async def go(server):
        provider = OpenAICompatible("local:test", "m", server.base_url, max_retries=0)
        try:
            return await asyncio.gather(*(provider.complete(_request()) for _ in range(8))), provider
        finally:
            await provider.aclose()

    with OpenAIServer(responder) as server:
        completions, provider = asyncio.run(go(server))
    assert all(c.error is None for c in completions)
    assert provider.schema_style == "json_object_schema"
    assert all("response_format" in body for body in server.requests)


def test_public_url_and_redact_keep_hosts_and_drop_credentials():
    from harness.providers.base import public_url, redact

    assert public_url("https://user:pw@pk-llm.internal:8443/v1?api-key=abc&x=1") == "https://pk-llm.internal:8443/v1?x=1"
    assert public_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    text = "at https://pk-llm.internal/v1: Incorrect API key sk-proj-****abcd; https://g.dev/v1?key=AIzaSy123&alt=sse"
    assert redact(text) == "at https://pk-llm.internal/v1: Incorrect API key ***; https://g.dev/v1?key=***&alt=sse"
