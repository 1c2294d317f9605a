"""What every provider speaks: `Request` in, `Completion` out (a failure is a Completion with `error` and
`error_kind`, never an exception), the `Provider` protocol, and reading failures: exceptions and HTTP error
bodies into (kind, one-line message, Retry-After), with API keys redacted from every message.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


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
    # usage the provider reported for earlier failed attempts of this answer (a cut stream, a timeout after tokens
    # were sent), billed although retried: `Resilient` adds them up, the cost of the answer includes them
    failed_input_tokens: int = 0
    failed_output_tokens: int = 0


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
    if isinstance(exc, _loaded(_SDKS, "APIStatusError")):
        retry_after = parse_retry_after(exc.response.headers)
        return f"http_{exc.status_code}", f"HTTP {exc.status_code}: {_error_detail(exc)}", retry_after
    if isinstance(exc, HTTPStatusError):
        detail = error_detail(exc.body, fallback=f"Error code: {exc.status}")
        return f"http_{exc.status}", f"HTTP {exc.status}: {detail}", parse_retry_after(exc.headers)
    # TimeoutError: aiohttp's (its total timeout, and ServerTimeoutError, a ClientConnectionError too)
    if isinstance(exc, (TimeoutError, *_loaded(_SDKS, "APITimeoutError"), *_loaded(("httpx2",), "TimeoutException"))):
        return "timeout", "request timed out", None
    sdk_connection = _loaded(_SDKS, "APIConnectionError")
    # aiohttp: refused or dropped connections, bodies cut short, answers that are not valid HTTP
    if isinstance(exc, (*sdk_connection, *_loaded(("httpx2",), "TransportError"),
                        *_loaded(("aiohttp",), "ClientConnectionError", "ClientPayloadError", "ClientResponseError"))):
        cause = exc.__cause__ if isinstance(exc, sdk_connection) else exc
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


_SDKS = ("openai", "anthropic")


def _loaded(modules: tuple[str, ...], *names: str) -> tuple[type, ...]:
    """The classes `names` of those `modules` already imported. An exception can only be of a library's type once
    that library is loaded, so classifying one never imports an SDK (the anthropic SDK alone takes a second)."""
    return tuple(getattr(sys.modules[m], n) for m in modules if m in sys.modules for n in names)


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
