"""The OpenAI chat-completions wire format: OpenAI, Azure OpenAI, vLLM, llama.cpp, Ollama, TGI, Together...

Two transports behind one behaviour (the same request body, measurements, structured-output fallback and errors):

- `OpenAICompatible`, for the self-hosted kinds (`local`, `vllm`, `openai-compatible`): a lean aiohttp client,
  one `ClientSession` per provider with a keep-alive pool. A GPU server answers thousands of requests a second;
  a client that spends milliseconds of CPU on each would be the bottleneck and falsify latency figures.
- `OpenAISDK`, for `openai` and `azure`: the official SDK, for what it does well there (Azure endpoints, API
  versions and the `api-key` header, base URLs, its error types); these APIs answer tens of requests a second.

Both read the stream the same lean way: raw bytes split into lines, non-`data:` lines skipped, one `json` decode
per event, nothing else allocated per chunk; the SDK's per-chunk pydantic objects are never built. Client CPU per
streamed request, measured (20 chunks, 64 concurrent, a zero-latency server on loopback, 2 cores): a bare aiohttp
loop 0.29-0.38 ms, `OpenAICompatible` 0.29 ms (about 1,900 requests/s), the SDK over httpx even with this lean
parsing 2.6 ms (about 300 requests/s; with its pydantic chunks, about 7 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import yarl

from harness.providers.base import Completion, HTTPStatusError, Request, StreamError, TruncatedStream, failed_completion
from harness.providers.plan import ProviderPlan

if TYPE_CHECKING:
    import openai

DEFAULT_TIMEOUT_S = 600.0
# after [DONE], how long to wait for the server to end the body, so that the connection can be kept for the next
# request (a body left unread closes it); servers end it at once
_DRAIN_S = 0.5


class _OpenAIWire:
    """What both transports share: the request body, the structured-output fallback, and turning a read stream
    into a `Completion`. A subclass sends the request and feeds the stream's bytes to `_read_events`."""

    # parameters the OpenAI API does not have go under `extra_body`, as the SDK takes them (and reading the SDK's
    # parameter list imports it: the aiohttp transport sends every parameter at the top level without asking)
    EXTRA_BODY = False

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
        max_tokens_param: str = "max_tokens",
    ) -> None:
        self.name = name
        self.token_count_url = token_count_url
        self.model = model
        self.base_url = base_url
        self.schema_style = schema_style
        self.usage_in_stream = usage_in_stream
        self.max_tokens_param = max_tokens_param
        self.timeout = timeout
        self._api_key = api_key

    def request_body(self, request: Request, schema_style: str | None = None) -> dict[str, Any]:
        """The JSON body for `request` (without `model`, `messages` and `stream`), asking for structured
        output in `schema_style` (default: the style this server was last seen to accept). Parameters the
        OpenAI API does not have are under `extra_body` where the transport is the SDK (`EXTRA_BODY`), which sends
        them at the top level; other transports get them at the top level already."""
        style = schema_style or self.schema_style
        body: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in request.params.items():
            if value is None:
                continue
            if key == "max_tokens":
                key = self.max_tokens_param
            # server-specific parameters (top_k, min_p, repetition_penalty...) travel in the body as is
            (extra if self.EXTRA_BODY and key not in _sdk_parameters() else body)[key] = value
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
        raise NotImplementedError

    def _failed(self, exc: Exception, stream: _Stream) -> Completion:
        return failed_completion(
            exc, self._api_key, text="".join(stream.parts), model=stream.model or self.model, ttft_ms=stream.ttft,
            latency_ms=(time.perf_counter() - stream.start) * 1000, finish_reason=stream.finish,
            started_at=stream.started_at,
            # usage sent before the failure (a stream cut after its usage chunk): what was billed
            **({"input_tokens": stream.usage["prompt_tokens"], "output_tokens": stream.usage.get("completion_tokens"),
                "usage_source": "provider"} if stream.usage.get("prompt_tokens") is not None else {}),
        )

    async def _completed(self, request: Request, stream: _Stream) -> Completion:
        usage = stream.usage
        usage_source = "provider" if usage else None
        input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if not usage:
            # No usage in the stream (llama.cpp's Python server): such servers send one token a chunk.
            output_tokens, usage_source = stream.chunks, "estimated"
            if self.token_count_url:
                input_tokens = await asyncio.to_thread(self._count_tokens, request.messages)
        return Completion(
            text="".join(stream.parts),
            model=stream.model or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            ttft_ms=stream.ttft,
            latency_ms=stream.latency_ms,
            finish_reason=stream.finish,
            usage_source=usage_source,
            cached_input_tokens=cached,
            started_at=stream.started_at,
            **(stream.tally.figures() if stream.tally is not None else {}),
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


class OpenAICompatible(_OpenAIWire):
    """A streaming chat client for OpenAI-compatible servers (vLLM, llama.cpp, TGI, Ollama...) over aiohttp.

    One `complete` call is one attempt: retries are `harness.resilience.Resilient`'s job. `timeout` bounds an
    attempt from request to last byte. The API key, if any, is sent as `Authorization: Bearer`; proxies are
    taken from the environment (HTTP(S)_PROXY, NO_PROXY) as the SDK takes them. One `aiohttp.ClientSession`
    per provider, opened on the first call inside the running loop and closed by `aclose`.
    """

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
        max_tokens_param: str = "max_tokens",
        max_retries: int = 0,
    ) -> None:
        if max_retries:
            raise ValueError("OpenAICompatible makes one attempt per call: wrap it in harness.resilience.Resilient")
        super().__init__(
            name, model, base_url, api_key, schema_style=schema_style, usage_in_stream=usage_in_stream,
            token_count_url=token_count_url, timeout=timeout, max_tokens_param=max_tokens_param,
        )
        parts = urllib.parse.urlsplit(base_url)
        self._url = yarl.URL(urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions")))
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: str | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The provider's session, opened in the running loop on first use (and again after `aclose`)."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # No connection limit: one below the caller's concurrency would queue requests inside the client, where
        # the wait would be counted as the server's latency. Idle connections are kept alive for the next request.
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        self._loop = asyncio.get_running_loop()
        self._proxy = _environment_proxy(self._url)
        return self._session

    async def _complete(self, request: Request, style: str) -> Completion:
        stream = _Stream(request.logprobs)
        payload = {"model": self.model, "messages": request.messages, "stream": True,
                   **self.request_body(request, style)}
        try:
            session = self._session
            if session is None or session.closed or self._loop is not asyncio.get_running_loop():
                session = self._open()
            async with session.post(self._url, data=_dumps(payload), proxy=self._proxy) as response:
                if response.status >= 400:
                    text = (await response.read()).decode("utf-8", "replace")
                    raise HTTPStatusError(response.status, response.headers, text)
                content = response.content
                await _read_events(content.iter_any(), stream)
                if stream.done and not content.at_eof():
                    await _drain(content)
            stream.end()
        except Exception as exc:  # every failure becomes a recorded error on this case
            return self._failed(exc, stream)
        return await self._completed(request, stream)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


class OpenAISDK(_OpenAIWire):
    """A streaming chat client for OpenAI and Azure OpenAI through the official SDK. One `complete` call is one
    attempt: retries are `harness.resilience.Resilient`'s job, so the SDK's own retries are off unless
    `max_retries` says otherwise. With `azure_api_version`, `base_url` is an Azure OpenAI endpoint and `model`
    the deployment name. The stream is read from the SDK's raw response (see the module's docstring)."""

    EXTRA_BODY = True

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
        super().__init__(
            name, model, base_url, api_key, schema_style=schema_style, usage_in_stream=usage_in_stream,
            token_count_url=token_count_url, timeout=timeout, max_tokens_param=max_tokens_param,
        )
        import openai  # here: the SDK takes most of a second to import, and only `openai:`/`azure:` need it

        if azure_api_version:
            self._client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=base_url, api_key=api_key, api_version=azure_api_version,
                timeout=timeout, max_retries=max_retries,
            )
        else:
            self._client = openai.AsyncOpenAI(
                base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=max_retries
            )

    async def _complete(self, request: Request, style: str) -> Completion:
        stream = _Stream(request.logprobs)
        body = self.request_body(request, style)
        try:
            async with self._client.chat.completions.with_streaming_response.create(
                model=self.model, messages=request.messages, stream=True, **body
            ) as response:
                await _read_events(response.iter_bytes(), stream)
            stream.end()
        except Exception as exc:  # every failure becomes a recorded error on this case
            return self._failed(exc, stream)
        return await self._completed(request, stream)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


class _Stream:
    """One answer as its events arrive: text so far, time to first token, usage, finish reason, logprobs."""

    __slots__ = ("chunks", "done", "finish", "latency_ms", "model", "parts", "start", "started_at", "tally", "ttft",
                 "usage")

    def __init__(self, logprobs: bool) -> None:
        self.started_at = datetime.now(UTC)
        self.start = time.perf_counter()
        self.ttft: float | None = None
        self.latency_ms = 0.0
        self.parts: list[str] = []
        self.usage: dict[str, Any] = {}
        self.finish: str | None = None
        self.model: str | None = None
        self.chunks = 0
        self.done = False
        self.tally = LogprobTally() if logprobs else None

    def event(self, data: bytes) -> bool:
        """Take one `data:` field's value; True at `[DONE]`. Raises StreamError for an error event."""
        data = data.strip()
        if data == b"[DONE]":
            self.done = True
            return True
        chunk = json.loads(data.decode("utf-8", "replace"))
        if "error" in chunk and not chunk.get("choices"):
            raise StreamError(str(chunk["error"]))
        model = chunk.get("model")
        if model:
            self.model = model
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                if self.ttft is None:
                    self.ttft = (time.perf_counter() - self.start) * 1000
                self.parts.append(content)
                self.chunks += 1
            finish = choice.get("finish_reason")
            if finish:
                self.finish = finish
            if self.tally is not None and (logprobs := choice.get("logprobs")):
                self.tally.add(logprobs.get("content"))
        return False

    def end(self) -> None:
        """The stream is over: raise TruncatedStream if the answer was not finished."""
        if self.finish is None:
            # [DONE] with no finish_reason: llama-cpp-python's server cuts a running answer short this way
            # when another request arrives (unless started with --interrupt_requests false)
            raise TruncatedStream("the stream ended before the answer did (no finish_reason"
                                  + (", [DONE] sent early)" if self.done else ", no [DONE])"))


async def _read_events(reads: AsyncIterator[bytes], stream: _Stream) -> None:
    """Feed `stream` the `data:` lines of a server-sent-events body read as `reads` (bytes as they arrive), up to
    `[DONE]` or the end of the body. Lines end with \\n, \\r\\n or \\r and may be split across reads."""
    tail = b""
    async for data in reads:
        if not data:
            continue
        if tail:
            data = tail + data
        lines = data.splitlines()
        tail = b"" if data[-1] in _EOL else lines.pop()
        for line in lines:
            if line[:5] == b"data:" and stream.event(line[5:]):
                stream.latency_ms = (time.perf_counter() - stream.start) * 1000
                return
    if tail[:5] == b"data:":  # a last line with no line end
        stream.event(tail[5:])
    stream.latency_ms = (time.perf_counter() - stream.start) * 1000


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows [DONE] (the end of a chunked body), briefly, so the connection returns to the pool."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            while await content.readany():
                pass


def _dumps(payload: dict[str, Any]) -> bytes:
    # as httpx encodes a json= body for the SDK
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _environment_proxy(url: yarl.URL) -> str | None:
    """The proxy for `url` from HTTP_PROXY/HTTPS_PROXY/ALL_PROXY and NO_PROXY, as httpx (the SDK) reads them."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(url.host or "", proxies):
        return None
    proxy = proxies.get(url.scheme) or proxies.get("all")
    return proxy if proxy is None or "://" in proxy else f"http://{proxy}"


_EOL = (10, 13)  # \n, \r


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
            value = entry.get("logprob") if isinstance(entry, dict) else None
            if not isinstance(value, int | float):  # a malformed entry costs the signal, never the answer
                continue
            self.total += value
            self.count += 1
            if value < self.lowest:
                self.lowest = value
            top = entry.get("top_logprobs")
            margin = _top_margin(top) if isinstance(top, list) and len(top) > 1 else None
            if margin is not None:
                self.margin_total += margin
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


def _top_margin(top: list[Any]) -> float | None:
    """The gap between the two likeliest of a token's alternatives (listed likeliest first, but not trusted to be);
    None when fewer than two carry a number."""
    values = sorted((t["logprob"] for t in top if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)),
                    reverse=True)
    return values[0] - values[1] if len(values) > 1 else None


_STYLES = ["json_schema", "json_object_schema", "none"]
_FALLBACK = {"json_schema": "json_object_schema", "json_object_schema": "none"}


@functools.cache
def _sdk_parameters() -> frozenset[str]:
    """The keyword arguments the installed openai SDK's chat.completions.create accepts."""
    from openai.resources.chat.completions import AsyncCompletions

    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self", "extra_body"}


def sdk_from_plan(plan: ProviderPlan) -> OpenAISDK:
    """The client of a ready `openai:` or `azure:` plan: the SDK handles the APIs' endpoints, Azure's API versions
    and api-key header."""
    return OpenAISDK(
        plan.name, plan.request_model, plan.base_url or "", plan.api_key,
        schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, timeout=plan.timeout,
        max_tokens_param=plan.max_tokens_param, azure_api_version=plan.api_version,
    )


def compatible_from_plan(plan: ProviderPlan) -> OpenAICompatible:
    """The client of a ready self-hosted plan (`local:`, `vllm:`, `openai-compatible:`): the lean aiohttp client,
    so that the client is never the bottleneck of a fast server."""
    token_count_url = None
    if plan.server is not None and plan.server.engine == "llama_cpp":
        token_count_url = (plan.base_url or "").removesuffix("/v1") + "/extras/tokenize/count"
    return OpenAICompatible(
        plan.name, plan.request_model, plan.base_url or "", plan.api_key,
        schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, token_count_url=token_count_url,
        timeout=plan.timeout, max_tokens_param=plan.max_tokens_param,
    )
