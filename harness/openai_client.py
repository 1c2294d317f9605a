"""The OpenAI chat-completions wire format: OpenAI, Azure OpenAI, vLLM, llama.cpp, Ollama, TGI, Together...

The stream is read through the SDK's raw response and each SSE line is decoded once with `json`, not through
the SDK's per-chunk pydantic objects, which cost far more CPU than the request itself.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import openai

from harness.providers import Completion, Request, StreamError, TruncatedStream, failed_completion

DEFAULT_TIMEOUT_S = 600.0


class OpenAICompatible:
    """A streaming chat client for the OpenAI wire format. One `complete` call is one attempt: retries are
    `harness.resilience.Resilient`'s job, so the SDK's own retries are off unless `max_retries` says otherwise.
    With `azure_api_version`, `base_url` is an Azure OpenAI endpoint and `model` the deployment name."""

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str,
        api_key: str | None = None,
        *,
        schema_style: str = "json_schema",
        usage_in_stream: bool = True,
        token_count_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 0,
        max_tokens_param: str = "max_tokens",
        azure_api_version: str | None = None,
    ) -> None:
        self.name = name
        self.token_count_url = token_count_url
        self.model = model
        self.base_url = base_url
        self.schema_style = schema_style
        self.usage_in_stream = usage_in_stream
        self.max_tokens_param = max_tokens_param
        self._api_key = api_key
        if azure_api_version:
            self._client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=base_url, api_key=api_key, api_version=azure_api_version,
                timeout=timeout, max_retries=max_retries,
            )
        else:
            self._client = openai.AsyncOpenAI(
                base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=max_retries
            )

    def request_body(self, request: Request, schema_style: str | None = None) -> dict[str, Any]:
        """The JSON body for `request` (without `model`, `messages` and `stream`), asking for structured
        output in `schema_style` (default: the style this server was last seen to accept)."""
        style = schema_style or self.schema_style
        body: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in request.params.items():
            if value is None:
                continue
            if key == "max_tokens":
                key = self.max_tokens_param
            # server-specific parameters (top_k, min_p, repetition_penalty...) travel in the body as is
            (body if key in _sdk_parameters() else extra)[key] = value
        if extra:
            body["extra_body"] = extra
        if self.usage_in_stream:
            body["stream_options"] = {"include_usage": True}
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 2
        if request.response_schema is not None and style == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.response_schema},
            }
        elif request.response_schema is not None and style == "json_object_schema":
            # llama-cpp-python's server takes the schema inside a json_object response format.
            body["response_format"] = {"type": "json_object", "schema": request.response_schema}
        elif request.json_output and style != "none":
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: Request) -> Completion:
        """Send `request` with streaming on; measure time to first token and total latency.

        A server that rejects the OpenAI `json_schema` response format (an HTTP error naming response_format;
        llama.cpp's Python server answers 500) is asked again with the schema inside a `json_object` response
        format, the form that server takes, and if that is rejected too, with no response format. Later
        requests start from the form that worked.
        """
        style = self.schema_style
        completion = await self._complete(request, style)
        while (
            completion.error_kind in ("http_400", "http_422", "http_500")
            and (request.response_schema is not None or request.json_output)
            and style in _FALLBACK
            and "response_format" in (completion.error or "")
        ):
            style = _FALLBACK[style]
            # concurrent requests all fail on the same form: move the shared choice on once, not once each
            if _STYLES.index(style) > _STYLES.index(self.schema_style):
                self.schema_style = style
            completion = await self._complete(request, style)
        return completion

    async def _complete(self, request: Request, style: str) -> Completion:
        started_at = datetime.now(UTC)
        start = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        model: str | None = None
        chunks = 0
        done = False
        tally = LogprobTally() if request.logprobs else None
        body = self.request_body(request, style)
        try:
            async with self._client.chat.completions.with_streaming_response.create(
                model=self.model, messages=request.messages, stream=True, **body
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk and not chunk.get("choices"):
                        raise StreamError(str(chunk["error"]))
                    model = chunk.get("model") or model
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if ttft is None:
                                ttft = (time.perf_counter() - start) * 1000
                            parts.append(content)
                            chunks += 1
                        finish = choice.get("finish_reason") or finish
                        if tally is not None and (logprobs := choice.get("logprobs")):
                            tally.add(logprobs.get("content"))
            if finish is None:
                # [DONE] with no finish_reason: llama-cpp-python's server cuts a running answer short this way
                # when another request arrives (unless started with --interrupt_requests false)
                raise TruncatedStream("the stream ended before the answer did (no finish_reason"
                                      + (", [DONE] sent early)" if done else ", no [DONE])"))
        except Exception as exc:  # every failure becomes a recorded error on this case
            return failed_completion(
                exc, self._api_key, text="".join(parts), model=model or self.model, ttft_ms=ttft,
                latency_ms=(time.perf_counter() - start) * 1000, finish_reason=finish, started_at=started_at,
            )
        latency_ms = (time.perf_counter() - start) * 1000
        usage_source = "provider" if usage else None
        input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if not usage:
            # No usage in the stream (llama.cpp's Python server): such servers send one token a chunk.
            output_tokens, usage_source = chunks, "estimated"
            if self.token_count_url:
                input_tokens = await asyncio.to_thread(self._count_tokens, request.messages)
        return Completion(
            text="".join(parts),
            model=model or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            ttft_ms=ttft,
            latency_ms=latency_ms,
            finish_reason=finish,
            usage_source=usage_source,
            cached_input_tokens=cached,
            started_at=started_at,
            **(tally.figures() if tally is not None else {}),
        )

    def _count_tokens(self, messages: list[dict[str, str]]) -> int | None:
        """Tokens of the messages' text by the server's tokenizer (chat-template tokens not included)."""
        body = json.dumps({"input": "\n".join(m["content"] for m in messages)}).encode()
        req = urllib.request.Request(self.token_count_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return int(json.loads(response.read())["count"])
        except (OSError, ValueError, KeyError):
            return None

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


class LogprobTally:
    """Running figures over the log-probabilities of streamed tokens, fed one chunk's
    `choices[i].logprobs.content` at a time: a list of {token, logprob, bytes, top_logprobs: [{token,
    logprob, bytes}, ...]}."""

    __slots__ = ("count", "lowest", "margin_total", "margins", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.lowest = math.inf
        self.count = 0
        self.margin_total = 0.0
        self.margins = 0

    def add(self, entries: list[dict[str, Any]] | None) -> None:
        """Take one chunk's token entries."""
        for entry in entries or ():
            value = entry.get("logprob")
            if value is None:
                continue
            self.total += value
            self.count += 1
            if value < self.lowest:
                self.lowest = value
            top = entry.get("top_logprobs")
            if top and len(top) > 1:
                self.margin_total += _top_margin(top)
                self.margins += 1

    def figures(self) -> dict[str, Any]:
        """`logprob_mean`, `logprob_min`, `margin_mean` and `logprob_tokens` for a Completion; empty when no
        token had a log-probability (the server gave none)."""
        if not self.count:
            return {}
        return {
            "logprob_mean": self.total / self.count,
            "logprob_min": self.lowest,
            "margin_mean": self.margin_total / self.margins if self.margins else None,
            "logprob_tokens": self.count,
        }


def _top_margin(top: list[dict[str, Any]]) -> float:
    """The gap between the two likeliest of a token's alternatives (listed likeliest first, but not trusted to be)."""
    if len(top) == 2:
        return abs(top[0]["logprob"] - top[1]["logprob"])
    first, second = sorted((t["logprob"] for t in top), reverse=True)[:2]
    return first - second


_STYLES = ["json_schema", "json_object_schema", "none"]
_FALLBACK = {"json_schema": "json_object_schema", "json_object_schema": "none"}


@functools.cache
def _sdk_parameters() -> frozenset[str]:
    """The keyword arguments the installed openai SDK's chat.completions.create accepts."""
    from openai.resources.chat.completions import AsyncCompletions

    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self", "extra_body"}
