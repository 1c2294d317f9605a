"""Reading captured traffic: a request body the proxy passed through, and the upstream's answer as the bytes it
sent (JSON, or server-sent events with the time each piece arrived), into the harness's `Request` and
`Completion`. Both OpenAI chat completions and the Anthropic Messages API; nothing here touches the network.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harness.providers.base import Completion, Request, error_detail
from harness.providers.logs import anthropic_answer, normalize_messages, openai_answer

APIS = ("openai", "anthropic")

# generation parameters carried over from a captured request to the candidate's copy of it
_OPENAI_PARAMS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
_ANTHROPIC_PARAMS = ("temperature", "top_p")


@dataclass(frozen=True)
class Captured:
    """What a captured request asked: the model, the chat messages (normalised: `logs.normalize_messages`), the
    generation parameters the candidate's copy is sent, the JSON schema the answer must follow, if any."""

    api: str
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    stream: bool
    response_schema: dict[str, Any] | None = None
    json_output: bool = False

    def request(self, case_id: str) -> Request:
        """The `Request` a candidate is sent for this capture."""
        return Request(messages=self.messages, params=self.params, response_schema=self.response_schema,
                       json_output=self.json_output, case_id=case_id)


CHAT_PATHS = {"/v1/chat/completions": "openai", "/chat/completions": "openai", "/v1/messages": "anthropic"}


def api_of(path: str) -> str | None:
    """Which API a request path is a chat call of ("openai", "anthropic"), or None for any other path (the
    Assistants API's `/v1/threads/.../messages`, `/v1/messages/count_tokens`, `/v1/models`...)."""
    return CHAT_PATHS.get(path.rstrip("/"))


def is_anthropic(path: str, headers: Any) -> bool:
    """Whether a request is for the Anthropic API, whatever its path and method: its SDKs send `anthropic-version`
    with every request, and its paths start with `/v1/messages` (count_tokens, batches). Everything else is the
    OpenAI API's."""
    return "anthropic-version" in headers or path == "/v1/messages" or path.startswith("/v1/messages/")


class Unsupported(ValueError):
    """A chat request whose copy would not ask the candidate the same thing: tools or functions offered, several
    choices asked for (`n`), images or audio in the messages. It is passed through and not mirrored."""


def parse_request(api: str, body: bytes) -> Captured:
    """The `Captured` of a chat request body. Raises ValueError when it is not one (not JSON, no model or
    messages, messages of the wrong shape), `Unsupported` when it is one the proxy does not copy."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ValueError("no model")
    if data.get("tools") or data.get("functions") or (isinstance(data.get("n"), int) and data["n"] > 1):
        raise Unsupported("tools, functions or several choices")
    if any(isinstance(m, dict) and isinstance(m.get("content"), list)
           and any(isinstance(b, dict) and b.get("type") not in ("text", None) for b in m["content"])
           for m in data.get("messages") or []):
        raise Unsupported("images, audio or tool results in the messages")
    messages = normalize_messages(data.get("messages"), data.get("system") if api == "anthropic" else None)
    if not messages:
        raise ValueError("no messages")
    names = _OPENAI_PARAMS if api == "openai" else _ANTHROPIC_PARAMS
    params = {name: data[name] for name in names if data.get(name) is not None}
    limit = data.get("max_completion_tokens") or data.get("max_tokens")
    if isinstance(limit, int):
        params["max_tokens"] = limit
    schema, json_output = None, False
    fmt = data.get("response_format")
    if api == "openai" and isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            found = fmt["json_schema"].get("schema")
            schema = found if isinstance(found, dict) else None
            json_output = True
        elif fmt.get("type") == "json_object":
            json_output = True
    return Captured(api=api, model=data["model"], messages=messages, params=params, stream=bool(data.get("stream")),
                    response_schema=schema, json_output=json_output)


def decoded(chunks: list[tuple[float, bytes]], encoding: str | None) -> list[tuple[float, bytes]] | None:
    """The pieces of a body as sent, decompressed (gzip or deflate) piece by piece so each keeps its arrival
    time; None for a coding the proxy cannot read."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return chunks
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS)
    try:
        out = [(t, inflate.decompress(piece)) for t, piece in chunks]
        out.append((chunks[-1][0] if chunks else 0.0, inflate.flush()))
    except zlib.error:
        return None
    return out


def parse_answer(
    api: str, status: int, content_type: str | None, chunks: list[tuple[float, bytes]], started: float,
    started_at: datetime,
) -> Completion:
    """The upstream's answer as a `Completion`: `chunks` are the body's pieces with the `time.perf_counter()` at
    which each arrived, `started` the time the request was received. TTFT is the arrival of the first piece
    with answer text; latency the arrival of the last piece. A status other than 200 is a failed completion
    with the server's message, as a client would record it."""
    end = chunks[-1][0] if chunks else started
    measured: dict[str, Any] = {"latency_ms": (end - started) * 1000, "started_at": started_at}
    body = b"".join(piece for _, piece in chunks)
    if status != 200:
        return Completion(text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
                          finish_reason=None, error=f"HTTP {status}: {error_detail(body.decode('utf-8', 'replace'))}",
                          error_kind=f"http_{status}", **measured)
    if "text/event-stream" in (content_type or ""):
        return _from_events(api, chunks, started, measured)
    try:
        data = json.loads(body)
        answer = openai_answer(data) if api == "openai" else anthropic_answer(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return _bad(f"answer is not a chat completion: {exc}", measured)
    return Completion(ttft_ms=measured["latency_ms"], usage_source="provider" if answer["output_tokens"] else None,
                      **answer, **measured)


def _from_events(api: str, chunks: list[tuple[float, bytes]], started: float, measured: dict[str, Any]) -> Completion:
    """A streamed answer, event by event, in either API's event format."""
    text: list[str] = []
    state: dict[str, Any] = {"model": None, "input": None, "output": None, "cached": None, "finish": None,
                             "error": None, "done": False}
    ttft = None
    buffer = b""
    for arrived, piece in chunks:
        buffer += piece
        *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            before = len(text)
            try:
                _event(api, event, text, state)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                return _bad(f"malformed event in stream: {exc}", measured, "".join(text))
            if ttft is None and len(text) > before and any(text[before:]):
                ttft = (arrived - started) * 1000
    answer = "".join(text)
    if state["error"]:
        return Completion(text=answer, model=state["model"], input_tokens=state["input"],
                          output_tokens=state["output"], ttft_ms=ttft, finish_reason=None,
                          error=f"error in stream: {state['error']}", error_kind="stream_error", **measured)
    if not state["done"]:
        return Completion(text=answer, model=state["model"], input_tokens=state["input"],
                          output_tokens=state["output"], ttft_ms=ttft, finish_reason=None,
                          error="the stream ended before the answer did", error_kind="truncated", **measured)
    return Completion(text=answer, model=state["model"], input_tokens=state["input"], output_tokens=state["output"],
                      cached_input_tokens=state["cached"], ttft_ms=ttft, finish_reason=state["finish"],
                      usage_source="provider" if state["output"] is not None else None, **measured)


def _event(api: str, event: bytes, text: list[str], state: dict[str, Any]) -> None:
    data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data:
        return
    if api == "openai":
        if data == b"[DONE]":
            state["done"] = True
            return
        payload = json.loads(data)
        if "error" in payload:
            state["error"] = error_detail("", payload)
            return
        state["model"] = payload.get("model") or state["model"]
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                text.append(content)
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            state["input"] = usage.get("prompt_tokens")
            state["output"] = usage.get("completion_tokens")
            state["cached"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return
    payload = json.loads(data)
    kind = payload.get("type")
    if kind == "message_start":
        message = payload.get("message") or {}
        state["model"] = message.get("model")
        usage = message.get("usage") or {}
        fresh = usage.get("input_tokens")
        read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
        state["input"] = None if fresh is None else fresh + (read or 0) + (written or 0)
        state["cached"] = read
    elif kind == "content_block_delta":
        delta = payload.get("delta") or {}
        if delta.get("type") == "text_delta":
            text.append(delta.get("text") or "")
    elif kind == "message_delta":
        state["finish"] = (payload.get("delta") or {}).get("stop_reason") or state["finish"]
        output = (payload.get("usage") or {}).get("output_tokens")
        state["output"] = output if output is not None else state["output"]
    elif kind == "message_stop":
        state["done"] = True
    elif kind == "error":
        state["error"] = error_detail("", payload)


def _bad(message: str, measured: dict[str, Any], text: str = "") -> Completion:
    return Completion(text=text, model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
                      finish_reason=None, error=message[:300], error_kind="bad_response", **measured)
