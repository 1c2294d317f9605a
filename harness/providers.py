"""Providers: one interface (`Provider.complete`) over every chat API the harness talks to.

A provider is named `kind:model`. `plan_provider` turns a suite's provider entry into a `ProviderPlan`:
ready (with the endpoint to call, or the local server to start first) or skipped (with the reason, e.g. a
missing API key). API keys live only in the plan and the client; they are never stored or printed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import json
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import openai

from harness.errors import ProviderError
from harness.suite import ProviderSpec

KINDS = ("local", "vllm", "openai-compatible", "openai", "anthropic", "azure")

DEFAULT_CONCURRENCY = {"local": 1, "vllm": 64, "openai-compatible": 16, "openai": 8, "anthropic": 8, "azure": 8}


@dataclass(frozen=True)
class Request:
    """What is sent: chat messages, generation parameters, and the JSON schema the output must follow."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_schema: dict[str, Any] | None = None
    json_output: bool = False


@dataclass(frozen=True)
class Completion:
    """What came back, with the measurements of the call. `error` is set when the call failed."""

    text: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_ms: float | None
    latency_ms: float
    finish_reason: str | None
    error: str | None = None
    error_kind: str | None = None
    cached: bool = False
    usage_source: str | None = None  # "provider", or "estimated" when the server reported no usage
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Provider(Protocol):
    """Anything that can answer a `Request`. Implementations never raise for a failed call: they
    return a `Completion` with `error` set, so that one bad case never stops a run."""

    name: str

    async def complete(self, request: Request) -> Completion: ...


class OpenAICompatible:
    """A streaming chat client for the OpenAI wire format (OpenAI, vLLM, llama.cpp, Ollama, TGI...).

    The stream is read through the SDK's raw response and each SSE line is decoded once with `json`,
    not through the SDK's per-chunk pydantic objects, which cost far more CPU than the request itself.
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
        timeout: float = 600.0,
        max_retries: int = 2,
    ) -> None:
        self.name = name
        self.token_count_url = token_count_url
        self.model = model
        self.base_url = base_url
        self.schema_style = schema_style
        self.usage_in_stream = usage_in_stream
        self._api_key = api_key
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
            if value is not None:
                # server-specific parameters (top_k, min_p, repetition_penalty...) travel in the body as is
                (body if key in _sdk_parameters() else extra)[key] = value
        if extra:
            body["extra_body"] = extra
        if self.usage_in_stream:
            body["stream_options"] = {"include_usage": True}
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
                        break
                    chunk = json.loads(data)
                    if "error" in chunk and not chunk.get("choices"):
                        raise _StreamError(str(chunk["error"]))
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
        except Exception as exc:  # every failure becomes a recorded error on this case
            kind, message = describe_error(exc)
            message = redact(message, self._api_key)
            return Completion(
                text="".join(parts), model=model or self.model, input_tokens=None, output_tokens=None,
                ttft_ms=ttft, latency_ms=(time.perf_counter() - start) * 1000, finish_reason=finish,
                error=message, error_kind=kind, started_at=started_at,
            )
        latency_ms = (time.perf_counter() - start) * 1000
        usage_source = "provider" if usage else None
        input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
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
            started_at=started_at,
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


_STYLES = ["json_schema", "json_object_schema", "none"]
_FALLBACK = {"json_schema": "json_object_schema", "json_object_schema": "none"}


@functools.cache
def _sdk_parameters() -> frozenset[str]:
    """The keyword arguments the installed openai SDK's chat.completions.create accepts."""
    from openai.resources.chat.completions import AsyncCompletions

    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self", "extra_body"}


class _StreamError(Exception):
    pass


_SECRET_PATTERNS = [
    re.compile(r"\b(sk|sk-proj|sk-ant|pk|rk)-[A-Za-z0-9_\-*.…]{3,}"),  # key-like tokens, masked ones included
    re.compile(r"(?i)\b(bearer|api[_-]?key|x-api-key|authorization)([\"']?\s*[:=]?\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"),  # user:password@ in URLs
]


def redact(text: str, *secrets: str | None) -> str:
    """`text` with API keys, bearer tokens and URL credentials replaced by `***`, for storing or printing."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub("***", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_PATTERNS[2].sub("***", text)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Classify an exception from a call as (kind, one-line message) for the responses table."""
    if isinstance(exc, openai.APIStatusError):
        detail = _error_detail(exc)
        return f"http_{exc.status_code}", f"HTTP {exc.status_code}: {detail}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return "connection", f"connection failed: {type(cause).__name__}: {cause}".strip()
    if isinstance(exc, _StreamError):
        return "stream_error", f"error in stream: {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return "bad_response", f"malformed chunk in stream: {exc.msg}"
    return "client_error", f"{type(exc).__name__}: {exc}"


def _error_detail(exc: openai.APIStatusError) -> str:
    try:
        body = exc.response.read() if not exc.response.is_closed else b""
        text = body.decode("utf-8", "replace") if body else ""
    except Exception:
        text = ""
    try:
        parsed = json.loads(text) if text else exc.body
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed)
            if isinstance(err, dict):
                return str(err.get("message") or err)[:300]
            return str(err)[:300]
    except (json.JSONDecodeError, TypeError):
        pass
    return (text or exc.message or "").strip().replace("\n", " ")[:300]


@dataclass
class ServerPlan:
    """A local model server the harness must start before the provider can be called."""

    engine: str  # "llama_cpp" or "vllm"
    model: str  # GGUF path for llama.cpp; a model name or path for vLLM
    served_name: str


@dataclass
class ProviderPlan:
    """How a suite's provider entry will run: ready (maybe after starting a server) or skipped."""

    spec: ProviderSpec
    kind: str
    model: str
    status: str  # "ready" or "skipped"
    reason: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    server: ServerPlan | None = None
    schema_style: str = "json_schema"
    usage_in_stream: bool = True
    served_model: str | None = None  # the name sent as `model`, when the server's differs from `model`
    checked: bool = False  # whether a given server was asked which models it serves

    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def concurrency(self) -> int:
        return self.spec.concurrency or DEFAULT_CONCURRENCY[self.kind]

    def describe_endpoint(self) -> str:
        """Where calls go, for provenance: a URL, or the server the harness starts."""
        if self.server is not None:
            return f"managed {self.server.engine} server ({self.server.model})"
        return redact(self.base_url or "")

    @property
    def request_model(self) -> str:
        """The `model` sent in each request."""
        if self.served_model:
            return self.served_model
        return self.server.served_name if self.server else self.model


def split_id(provider_id: str) -> tuple[str, str]:
    """`"openai:gpt-4o-mini"` -> `("openai", "gpt-4o-mini")`. Raises ProviderError for an unknown kind."""
    kind, _, model = provider_id.partition(":")
    if kind not in KINDS or not model:
        raise ProviderError(
            f"provider '{provider_id}': unknown kind '{kind}'; use one of {', '.join(KINDS)} as 'kind:model'"
        )
    return kind, model


def plan_provider(
    spec: ProviderSpec, env: dict[str, str] | None = None, base_url: str | None = None
) -> ProviderPlan:
    """Decide how to run `spec`. `base_url` (the CLI's --base-url) points local/vllm candidates at a
    running server. Never raises for missing keys or software: those give a skipped plan with the reason."""
    env = dict(os.environ if env is None else env)
    kind, model = split_id(spec.id)
    plan = ProviderPlan(spec=spec, kind=kind, model=model, status="ready")

    if kind in ("local", "vllm"):
        url = spec.base_url or base_url or env.get("VLLM_BASE_URL")
        if url:
            plan.base_url = _v1(url)
            plan.api_key = env.get("VLLM_API_KEY")
            return plan
        if kind == "local":
            plan.server = ServerPlan(engine="llama_cpp", model=model, served_name=model)
            plan.schema_style = "json_object_schema"
            return plan
        if importlib.util.find_spec("vllm") is None:
            return _skip(plan, "vllm is not installed (pip install 'shadow-harness[gpu]') and VLLM_BASE_URL is not set")
        plan.server = ServerPlan(engine="vllm", model=model, served_name=model)
        return plan

    if kind == "openai-compatible":
        url = spec.base_url or env.get("OPENAI_COMPATIBLE_BASE_URL")
        if not url:
            return _skip(plan, "no base URL: set base_url for this provider or OPENAI_COMPATIBLE_BASE_URL")
        plan.base_url = url
        plan.api_key = env.get("OPENAI_COMPATIBLE_API_KEY")
        return plan

    if kind == "openai":
        key = env.get("OPENAI_API_KEY")
        if not key:
            return _skip(plan, "OPENAI_API_KEY is not set")
        plan.base_url = spec.base_url or env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        plan.api_key = key
        return plan

    key_var = {"anthropic": "ANTHROPIC_API_KEY", "azure": "AZURE_OPENAI_API_KEY"}[kind]
    if not env.get(key_var):
        return _skip(plan, f"{key_var} is not set")
    return _skip(plan, f"the '{kind}' provider is not available in this version of the harness")


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> list[str] | None:
    """The model ids an OpenAI-compatible server lists at /models, or None if it cannot tell."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return [m["id"] for m in json.loads(response.read())["data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def match_served_model(plan: ProviderPlan, served: list[str] | None) -> ProviderPlan:
    """Fit a self-hosted plan (`local:`/`vllm:` with a base URL) to the model its server serves.

    `local:` uses the server's model when it serves exactly one; `vllm:` must name a served model.
    A mismatch that cannot be resolved skips the provider with the names the server offers.
    """
    if plan.kind not in ("local", "vllm") or plan.server is not None or not served or plan.model in served:
        return plan
    if plan.kind == "local" and len(served) == 1:
        plan.served_model = served[0]
        return plan
    offered = ", ".join(served[:5])
    return _skip(plan, f"the server at {redact(plan.base_url or '')} serves {offered}, not '{plan.model}'; "
                       f"name the candidate {plan.kind}:<one of those>")


def resolve_served_models(plans: list[ProviderPlan]) -> None:
    """Ask each given self-hosted server (`local:`/`vllm:` with a base URL) what it serves and fit its plan
    to that (see `match_served_model`). Done once: a plan already fitted is left alone."""
    for plan in plans:
        if plan.status == "ready" and plan.server is None and plan.kind in ("local", "vllm") and not plan.checked:
            match_served_model(plan, served_models(plan.base_url or "", plan.api_key))
            plan.checked = True


def _skip(plan: ProviderPlan, reason: str) -> ProviderPlan:
    plan.status = "skipped"
    plan.reason = reason
    return plan


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def build_provider(plan: ProviderPlan) -> OpenAICompatible:
    """The client for a ready plan whose endpoint is known (after any server was started)."""
    if plan.status != "ready" or not plan.base_url:
        raise ProviderError(f"provider '{plan.name}' is not ready: {plan.reason or 'no endpoint'}")
    model = plan.request_model
    token_count_url = None
    if plan.server is not None and plan.server.engine == "llama_cpp":
        token_count_url = plan.base_url.removesuffix("/v1") + "/extras/tokenize/count"
    return OpenAICompatible(
        plan.name, model, plan.base_url, plan.api_key,
        schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, token_count_url=token_count_url,
    )
