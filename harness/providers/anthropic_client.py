"""Anthropic's native Messages API, streamed through the official `anthropic` SDK.

Like the OpenAI client, the SSE stream is read raw and each event decoded once with `json`. System messages
go into the top-level `system` field, as the API wants; token usage comes from the stream's `message_start`
and `message_delta` events.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import anthropic

from harness.providers.base import Completion, Request, StreamError, TruncatedStream, failed_completion
from harness.providers.plan import ProviderPlan

DEFAULT_MAX_TOKENS = 1024

# Anthropic has no seed; stop sequences have their own name.
_RENAMED = {"stop": "stop_sequences"}
_DROPPED = frozenset({"seed", "frequency_penalty", "presence_penalty", "logprobs", "n"})


class AnthropicMessages:
    """A streaming client for `POST /v1/messages`. One `complete` call is one attempt (see `Resilient`)."""

    def __init__(
        self,
        name: str,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        *,
        timeout: float = 600.0,
        max_retries: int = 0,
    ) -> None:
        self.name = name
        self.model = model
        self.schema_style = "output_format"
        self._api_key = api_key
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    def request_body(self, request: Request, schema_style: str | None = None) -> dict[str, Any]:
        """The keyword arguments for `messages.create` (without `stream`) for `request`."""
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] in ("system", "developer"))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m for m in request.messages if m["role"] not in ("system", "developer")],
        }
        if system:
            body["system"] = system
        extra: dict[str, Any] = {}
        for key, value in request.params.items():
            if value is None or key in _DROPPED:
                continue
            key = _RENAMED.get(key, key)
            if key == "stop_sequences" and isinstance(value, str):
                value = [value]
            if key in ("max_tokens", "stop_sequences", "metadata", "service_tier"):
                body[key] = value
            else:  # temperature, top_p, top_k: accepted by the API, not named by this SDK version
                extra[key] = value
        body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if extra:
            body["extra_body"] = extra
        if request.response_schema is not None and (schema_style or self.schema_style) == "output_format":
            body["output_config"] = {"format": {"type": "json_schema", "schema": request.response_schema}}
        return body

    async def complete(self, request: Request) -> Completion:
        """Send `request` streamed; a model or account that rejects structured output (an HTTP 400 naming
        the output format) is asked again without it, and later requests start without it."""
        completion = await self._complete(request, self.schema_style)
        if (
            completion.error_kind == "http_400"
            and request.response_schema is not None
            and self.schema_style == "output_format"
            and any(word in (completion.error or "") for word in ("output_config", "output_format"))
        ):
            self.schema_style = "none"
            completion = await self._complete(request, "none")
        return completion

    async def _complete(self, request: Request, style: str) -> Completion:
        started_at = datetime.now(UTC)
        start = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        model: str | None = None
        stopped = False
        try:
            async with self._client.messages.with_streaming_response.create(
                stream=True, **self.request_body(request, style)
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
                    kind = event.get("type")
                    if kind == "message_start":
                        message = event.get("message") or {}
                        model = message.get("model") or model
                        usage.update(message.get("usage") or {})
                    elif kind == "content_block_delta":
                        delta = event.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            if ttft is None:
                                ttft = (time.perf_counter() - start) * 1000
                            parts.append(delta["text"])
                    elif kind == "message_delta":
                        finish = (event.get("delta") or {}).get("stop_reason") or finish
                        usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
                    elif kind == "message_stop":
                        stopped = True
                        break
                    elif kind == "error":
                        raise StreamError(json.dumps(event.get("error") or event))
            if not stopped:
                raise TruncatedStream("the stream ended before the answer did (no message_stop event)")
        except Exception as exc:  # every failure becomes a recorded error on this case
            # a stream cut after message_start was billed for its input (and what it wrote): keep its usage
            return failed_completion(
                exc, self._api_key, text="".join(parts), model=model or self.model, ttft_ms=ttft,
                latency_ms=(time.perf_counter() - start) * 1000, finish_reason=finish, started_at=started_at,
                **(_usage(usage) if usage.get("input_tokens") is not None else {}),
            )
        return Completion(
            text="".join(parts),
            model=model or self.model,
            ttft_ms=ttft,
            latency_ms=(time.perf_counter() - start) * 1000,
            finish_reason=finish,
            started_at=started_at,
            **_usage(usage),
        )

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


def from_plan(plan: ProviderPlan) -> AnthropicMessages:
    """The client of a ready `anthropic:` plan."""
    return AnthropicMessages(plan.name, plan.model, plan.api_key, plan.base_url, timeout=plan.timeout)


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """`Completion` token fields from the stream's usage. The harness counts all input tokens; Anthropic's
    `input_tokens` leaves out cache reads and writes."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    fresh = usage.get("input_tokens")
    return {
        "input_tokens": None if fresh is None else fresh + cache_read + cache_write,
        "output_tokens": usage.get("output_tokens"), "usage_source": "provider" if usage else None,
        "cached_input_tokens": cache_read, "cache_write_tokens": cache_write,
    }
