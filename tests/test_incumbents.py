"""The incumbent providers against local servers speaking their real wire formats: Anthropic's Messages API
(through the anthropic SDK), Azure OpenAI deployments, and OpenAI itself."""

from __future__ import annotations

import asyncio
import random

from anthropic_server import AnthropicReply, AnthropicServer
from openai_server import OpenAIServer, Reply

from harness.providers.base import Request
from harness.providers.plan import plan_provider
from harness.providers.registry import build_provider
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.suite.spec import ProviderSpec

SCHEMA = {"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"],
          "additionalProperties": False}
REQUEST = Request(
    messages=[{"role": "system", "content": "You extract fields."}, {"role": "user", "content": "total of 9.00"}],
    params={"temperature": 0.0, "max_tokens": 64, "seed": 0, "top_p": None},
    response_schema=SCHEMA, json_output=True,
)
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, timeout_s=5)


def _complete(plan, request=REQUEST, resilient=False):
    async def go():
        provider = build_provider(plan)
        if resilient:
            provider = Resilient(provider, FAST, AdaptiveLimiter(2), rng=random.Random(0))
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _anthropic_plan(server: AnthropicServer, model: str = "claude-haiku-4-5"):
    env = {"ANTHROPIC_API_KEY": "sk-ant-secret-123", "ANTHROPIC_BASE_URL": server.base_url}
    return plan_provider(ProviderSpec(id=f"anthropic:{model}", role="incumbent"), env=env)


def test_anthropic_streams_through_the_native_messages_api():
    reply = AnthropicReply(text='{"total": "9.00"}', chunks=3, cached_tokens=2)
    with AnthropicServer(lambda body: reply) as server:
        completion = _complete(_anthropic_plan(server))
    assert completion.error is None
    assert completion.text == '{"total": "9.00"}'
    assert completion.finish_reason == "end_turn"
    assert completion.model == "claude-haiku-4-5"
    body = server.requests[0]
    assert body["system"] == "You extract fields."
    assert body["messages"] == [{"role": "user", "content": "total of 9.00"}]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.0 and body["stream"] is True
    assert "seed" not in body and "top_p" not in body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    # the server counts 6 words of input, 2 of them read from the prompt cache; the harness counts all input
    assert completion.input_tokens == 6 and completion.cached_input_tokens == 2
    assert completion.output_tokens == 3 and completion.usage_source == "provider"
    assert completion.ttft_ms is not None and completion.ttft_ms <= completion.latency_ms
    headers = server.headers[0]
    assert "sk-ant-secret-123" in (headers.get("x-api-key", "") + headers.get("authorization", ""))


def test_anthropic_rate_limits_and_overload_are_retried():
    replies = [AnthropicReply(status=429, headers={"retry-after": "0.2"}), AnthropicReply(status=529),
               AnthropicReply(text="ok")]
    with AnthropicServer(lambda body: replies.pop(0)) as server:
        completion = _complete(_anthropic_plan(server), resilient=True)
    assert completion.text == "ok" and completion.attempts == 3
    assert completion.rate_limit_wait_ms >= 200
    assert len(server.requests) == 3


def test_anthropic_stream_failures_are_recorded_with_their_kind():
    for reply, kind in [(AnthropicReply(text="abcdefgh", error_event=True), "stream_error"),
                        (AnthropicReply(text="abcdefgh", truncate=True), "truncated"),
                        (AnthropicReply(text="abcdefgh", break_stream=True), "bad_response"),
                        (AnthropicReply(status=401, error_message="invalid x-api-key"), "http_401")]:
        with AnthropicServer(lambda body, reply=reply: reply) as server:
            completion = _complete(_anthropic_plan(server))
        assert completion.error_kind == kind, completion.error
        assert "sk-ant-secret-123" not in completion.error


def test_anthropic_without_structured_output_falls_back_to_the_prompt():
    def respond(body):
        if "output_config" in body:
            return AnthropicReply(status=400, error_message="output_config.format: not supported by this model")
        return AnthropicReply(text='{"total": "9.00"}')

    with AnthropicServer(respond) as server:
        completion = _complete(_anthropic_plan(server, "claude-3-haiku-20240307"))
    assert completion.error is None and completion.text == '{"total": "9.00"}'
    assert "output_config" in server.requests[0] and "output_config" not in server.requests[1]


def test_azure_calls_the_deployment_with_its_api_version_and_key_header():
    with OpenAIServer(lambda body: Reply(text='{"total": "9.00"}')) as server:
        endpoint = server.base_url.removesuffix("/v1")
        env = {"AZURE_OPENAI_API_KEY": "azure-secret-key-1", "AZURE_OPENAI_ENDPOINT": endpoint}
        plan = plan_provider(ProviderSpec(id="azure:prod-4o-mini", role="incumbent"), env=env)
        completion = _complete(plan)
    assert completion.error is None and completion.text == '{"total": "9.00"}'
    assert server.queries == ["api-version=2024-10-21"]
    assert server.headers[0]["api-key"] == "azure-secret-key-1"
    body = server.requests[0]
    assert body["model"] == "prod-4o-mini"
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


def test_openai_sends_max_completion_tokens_and_its_key_as_bearer():
    with OpenAIServer(lambda body: Reply(text="ok")) as server:
        env = {"OPENAI_API_KEY": "sk-openai-secret", "OPENAI_BASE_URL": server.base_url}
        completion = _complete(plan_provider(ProviderSpec(id="openai:gpt-4o-mini", role="incumbent"), env=env))
    assert completion.error is None
    assert server.requests[0]["max_completion_tokens"] == 64 and "max_tokens" not in server.requests[0]
    assert server.headers[0]["authorization"] == "Bearer sk-openai-secret"


def test_missing_keys_and_endpoints_skip_with_the_reason():
    cases = {
        "anthropic:claude-haiku-4-5": ({}, "ANTHROPIC_API_KEY is not set"),
        "azure:prod": ({}, "AZURE_OPENAI_API_KEY is not set"),
        "openai:gpt-4o": ({}, "OPENAI_API_KEY is not set"),
    }
    for provider_id, (env, reason) in cases.items():
        plan = plan_provider(ProviderSpec(id=provider_id, role="incumbent"), env=env)
        assert (plan.status, plan.reason) == ("skipped", reason)
    plan = plan_provider(ProviderSpec(id="azure:prod", role="incumbent"), env={"AZURE_OPENAI_API_KEY": "k" * 10})
    assert plan.status == "skipped" and "AZURE_OPENAI_ENDPOINT" in plan.reason


def test_azure_api_version_from_the_suite_or_environment():
    spec = ProviderSpec(id="azure:prod", role="incumbent", base_url="https://x.openai.azure.com",
                        api_version="2025-01-01-preview")
    env = {"AZURE_OPENAI_API_KEY": "k" * 10, "OPENAI_API_VERSION": "2024-06-01"}
    assert plan_provider(spec, env=env).api_version == "2025-01-01-preview"
    spec = spec.model_copy(update={"api_version": None})
    assert plan_provider(spec, env=env).api_version == "2024-06-01"
