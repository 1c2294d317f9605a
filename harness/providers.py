"""Providers: one interface (`Provider.complete`) over every chat API the harness talks to.

A provider is named `kind:model`. `plan_provider` turns a suite's provider entry into a `ProviderPlan`:
ready (with the endpoint to call, or the local server to start first) or skipped (with the reason, e.g. a
missing API key). API keys live only in the plan and the client; they are never stored or printed.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.util
import json
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anthropic
import httpx2
import openai

from harness.errors import ProviderError
from harness.suite import ProviderSpec

KINDS = ("local", "vllm", "openai-compatible", "openai", "anthropic", "azure", "log")

DEFAULT_CONCURRENCY = {
    "local": 1, "vllm": 64, "openai-compatible": 16, "openai": 8, "anthropic": 8, "azure": 8, "log": 64,
}
# seconds per attempt: a self-hosted server may queue requests behind others; an API answers or fails sooner
DEFAULT_TIMEOUT_S = {"local": 600.0, "vllm": 600.0, "openai-compatible": 300.0}
API_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 4
AZURE_API_VERSION = "2024-10-21"


@dataclass(frozen=True)
class Request:
    """What is sent: chat messages, generation parameters, and the JSON schema the output must follow."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_schema: dict[str, Any] | None = None
    json_output: bool = False
    case_id: str | None = None  # not sent; lets a log replay find the case's logged answer
    logprobs: bool = False  # ask for each token's log-probability and its top two alternatives


@dataclass(frozen=True)
class Completion:
    """What came back, with the measurements of the call. `error` is set when the call failed."""

    text: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_ms: float | None
    latency_ms: float | None
    finish_reason: str | None
    error: str | None = None
    error_kind: str | None = None
    cached: bool = False
    usage_source: str | None = None  # "provider", "estimated" (server reported none) or "log"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    cached_input_tokens: int | None = None  # the part of input_tokens read from the provider's prompt cache
    cache_write_tokens: int | None = None  # the part of input_tokens written to it (Anthropic)
    retry_after_s: float | None = None  # what the server asked us to wait, on a failed call
    attempts: int = 1
    retry_wait_ms: float = 0.0  # time spent waiting between attempts, not part of latency_ms
    rate_limit_wait_ms: float = 0.0  # the part of retry_wait_ms spent after rate-limit (429) answers
    source: str = "call"  # "call", "cache" (a stored answer to the same request) or "log" (production logs)
    # from the tokens' log-probabilities, where they were asked for and the server gave them (else None)
    logprob_mean: float | None = None
    logprob_min: float | None = None
    margin_mean: float | None = None  # mean gap between the two likeliest tokens, over tokens that had two
    logprob_tokens: int | None = None


class Provider(Protocol):
    """Anything that can answer a `Request`. Implementations never raise for a failed call: they
    return a `Completion` with `error` set, so that one bad case never stops a run."""

    name: str

    async def complete(self, request: Request) -> Completion: ...


class StreamError(Exception):
    """The server sent an error event in the middle of a stream."""


class TruncatedStream(Exception):
    """The stream ended before the answer did."""


class HTTPStatusError(Exception):
    """The server answered with an HTTP error status (from a client that reads the wire itself, with no SDK
    exception to carry it): the status, the headers (for Retry-After) and the body as text."""

    def __init__(self, status: int, headers: Mapping[str, str], body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


def failed_completion(exc: BaseException, *secrets: str | None, **measured: Any) -> Completion:
    """The `Completion` of a call that raised `exc`: its kind, one-line message (secrets redacted) and any
    Retry-After the server sent, plus what was `measured` before it failed (text so far, latency...)."""
    kind, message, retry_after = describe_error(exc)
    defaults: dict[str, Any] = {
        "text": "", "model": None, "input_tokens": None, "output_tokens": None, "ttft_ms": None,
        "latency_ms": 0.0, "finish_reason": None,
    }
    return Completion(
        **{**defaults, **measured}, error=redact(message, *secrets), error_kind=kind, retry_after_s=retry_after
    )


_SECRET_PATTERNS = [
    # key-like tokens: OpenAI/Anthropic keys, masked ones included ("sk-proj-****abcd"); long pk-/rk- tokens
    re.compile(r"\b(?:sk-proj|sk-ant|sk)-[A-Za-z0-9_\-*.…]{3,}|\b(?:pk|rk)-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)\b(bearer|api[_-]?key|x-api-key|authorization)([\"']?\s*[:=]?\s*[\"']?)[^\s\"',}&]+"),
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"),  # user:password@ in URLs
    re.compile(r"(?i)([?&](?:key|api[-_]?key|token|access_token|sig|code)=)[^&\s\"']+"),  # ?key=... in URLs
]


KEY_VARIABLES = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "VLLM_API_KEY", "OPENAI_COMPATIBLE_API_KEY",
)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with API keys, bearer tokens and URL credentials replaced by `***`, for storing or printing:
    `secrets`, the keys in the environment variables the harness reads, and anything shaped like a key."""
    for secret in (*secrets, *(os.environ.get(name) for name in KEY_VARIABLES)):
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub("***", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _SECRET_PATTERNS[2].sub("***", text)
    return _SECRET_PATTERNS[3].sub(lambda m: f"{m.group(1)}***", text)


def public_url(url: str) -> str:
    """`url` without what may carry a credential (user:password@, query parameters such as `key=`), so that it
    can be stored, compared and shown; the rest (scheme, host, port, path) is kept exactly."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if not _SECRET_PATTERNS[3].search(f"?{k}=x")]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def describe_error(exc: BaseException) -> tuple[str, str, float | None]:
    """Classify an exception from a call (openai or anthropic SDK, aiohttp, or the HTTP layer under the SDKs) as
    (kind, one-line message, seconds the server asked to wait before retrying)."""
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        retry_after = parse_retry_after(exc.response.headers)
        return f"http_{exc.status_code}", f"HTTP {exc.status_code}: {_error_detail(exc)}", retry_after
    if isinstance(exc, HTTPStatusError):
        detail = error_detail(exc.body, fallback=f"Error code: {exc.status}")
        return f"http_{exc.status}", f"HTTP {exc.status}: {detail}", parse_retry_after(exc.headers)
    # TimeoutError: aiohttp's (its total timeout, and ServerTimeoutError, a ClientConnectionError too)
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return "timeout", "request timed out", None
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError | httpx2.TransportError
                  | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        # aiohttp: refused or dropped connections, bodies cut short, answers that are not valid HTTP
        cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError) else exc
        cause = cause or exc
        return "connection", f"connection failed: {type(cause).__name__}: {cause}".strip(), None
    if isinstance(exc, StreamError):
        return "stream_error", f"error in stream: {exc}", None
    if isinstance(exc, TruncatedStream):
        return "truncated", str(exc), None
    if isinstance(exc, json.JSONDecodeError):
        return "bad_response", f"malformed chunk in stream: {exc.msg}", None
    return "client_error", f"{type(exc).__name__}: {exc}", None


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None if absent."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    with contextlib.suppress(TypeError, ValueError):
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(exc: Any) -> str:
    try:
        body = exc.response.read() if not exc.response.is_closed else b""
        text = body.decode("utf-8", "replace") if body else ""
    except Exception:
        text = ""
    return error_detail(text, exc.body, exc.message)


def error_detail(text: str, parsed: Any = None, fallback: str | None = None) -> str:
    """The server's message in an HTTP error body `text` (its `error.message` when the body is OpenAI-style JSON),
    on one line, at most 300 characters. `parsed` stands for the body when `text` is empty; `fallback` is said
    when there is nothing else."""
    if not text and isinstance(parsed, str):  # the SDKs keep a body that is not JSON as a string
        text, parsed = parsed, None
    try:
        parsed = json.loads(text) if text else parsed
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed)
            if isinstance(err, dict):
                return str(err.get("message") or err)[:300]
            return str(err)[:300]
    except (json.JSONDecodeError, TypeError):
        pass
    return (text or fallback or "").strip().replace("\n", " ")[:300]


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
    max_tokens_param: str = "max_tokens"
    api_version: str | None = None  # Azure OpenAI
    log_path: str | None = None  # `log:` providers: the production log file

    @property
    def timeout(self) -> float:
        """Seconds one attempt may take, first byte to last token."""
        return self.spec.timeout or DEFAULT_TIMEOUT_S.get(self.kind, API_TIMEOUT_S)

    @property
    def max_attempts(self) -> int:
        """Attempts per case, the first call included."""
        return self.spec.max_attempts or DEFAULT_MAX_ATTEMPTS

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
        if self.log_path is not None:
            return f"log file {self.log_path}"
        return public_url(self.base_url or "")

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
    spec: ProviderSpec, env: dict[str, str] | None = None, base_url: str | None = None, suite_dir: Path | None = None
) -> ProviderPlan:
    """Decide how to run `spec`. `base_url` (the CLI's --base-url) points local/vllm candidates at a
    running server; a `log:` path is looked up in the current folder, then in `suite_dir`.
    Never raises for missing keys or software: those give a skipped plan with the reason. A `log:` file
    that does not exist raises ProviderError (it is bad input, not a missing credential)."""
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
        plan.max_tokens_param = "max_completion_tokens"  # the o-series and gpt-5 models refuse max_tokens
        return plan

    if kind == "anthropic":
        key = env.get("ANTHROPIC_API_KEY")
        if not key:
            return _skip(plan, "ANTHROPIC_API_KEY is not set")
        plan.base_url = spec.base_url or env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        plan.api_key = key
        return plan

    if kind == "azure":
        key = env.get("AZURE_OPENAI_API_KEY")
        endpoint = spec.base_url or env.get("AZURE_OPENAI_ENDPOINT")
        if not key:
            return _skip(plan, "AZURE_OPENAI_API_KEY is not set")
        if not endpoint:
            return _skip(plan, "no endpoint: set base_url for this provider or AZURE_OPENAI_ENDPOINT "
                               "(https://<resource>.openai.azure.com)")
        plan.base_url = endpoint
        plan.api_key = key
        plan.api_version = (
            spec.api_version or env.get("AZURE_OPENAI_API_VERSION") or env.get("OPENAI_API_VERSION")
            or AZURE_API_VERSION
        )
        plan.max_tokens_param = "max_completion_tokens"
        return plan

    # log: answers come from a production log file, no API is called
    path = Path(model).expanduser()
    if not path.is_absolute() and not path.exists() and suite_dir is not None and (suite_dir / path).exists():
        path = suite_dir / path
    if not path.is_file():
        raise ProviderError(f"provider '{spec.id}': no log file {model} (looked in the current folder"
                            f"{' and ' + str(suite_dir) if suite_dir else ''}); give the path of a JSONL log")
    plan.log_path = str(path)
    return plan


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


def build_provider(plan: ProviderPlan) -> Provider:
    """The client for a ready plan whose endpoint is known (after any server was started)."""
    if plan.status != "ready" or not (plan.base_url or plan.log_path):
        raise ProviderError(f"provider '{plan.name}' is not ready: {plan.reason or 'no endpoint'}")
    if plan.kind == "log":
        from harness.replay import LogReplay

        return LogReplay(plan.name, plan.log_path or "")
    if plan.kind == "anthropic":
        from harness.anthropic_client import AnthropicMessages

        return AnthropicMessages(plan.name, plan.model, plan.api_key, plan.base_url, timeout=plan.timeout)
    from harness.openai_client import OpenAICompatible, OpenAISDK

    if plan.kind in ("openai", "azure"):
        # the APIs: the SDK handles their endpoints, Azure's API versions and api-key header
        return OpenAISDK(
            plan.name, plan.request_model, plan.base_url or "", plan.api_key,
            schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, timeout=plan.timeout,
            max_tokens_param=plan.max_tokens_param, azure_api_version=plan.api_version,
        )
    # self-hosted servers (local, vllm, openai-compatible): the lean aiohttp client, so that the client is never
    # the bottleneck of a fast server
    token_count_url = None
    if plan.server is not None and plan.server.engine == "llama_cpp":
        token_count_url = (plan.base_url or "").removesuffix("/v1") + "/extras/tokenize/count"
    return OpenAICompatible(
        plan.name, plan.request_model, plan.base_url or "", plan.api_key,
        schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, token_count_url=token_count_url,
        timeout=plan.timeout, max_tokens_param=plan.max_tokens_param,
    )
