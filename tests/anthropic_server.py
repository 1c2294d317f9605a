"""A local HTTP server that speaks the Anthropic Messages API wire format, for tests.

Real HTTP on loopback, real SSE streaming (`event: <type>` / `data: {...}` pairs: message_start, content_block_start,
ping, content_block_delta..., content_block_stop, message_delta, message_stop), the real error body
`{"type": "error", "error": {...}, "request_id": ...}` with the real status codes, and the request checks that matter
(an API key, `max_tokens`, `messages`, no `system` role inside `messages`). What it answers is decided by a
`responder(body) -> Reply` that each test supplies (`Reply` is the one from tests/openai_server.py).

`srv.base_url` is `http://127.0.0.1:PORT` with no `/v1`: the `anthropic` SDK appends `/v1/messages` itself, so pass
it as `anthropic.Anthropic(base_url=srv.base_url, api_key="sk-ant-test")`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from openai_server import LoopbackServer, Reply, _split

REQUEST_ID = "req_test"
MESSAGE_ID = "msg_test"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


@dataclass
class AnthropicReply(Reply):
    """A `Reply` that also reports `cached_tokens` of the prompt as read from the prompt cache."""

    cached_tokens: int = 0


class AnthropicServer(LoopbackServer):
    """`with AnthropicServer(responder) as srv:` serves on `srv.base_url` (no /v1; the SDK adds it) in a thread."""

    default_model = "claude-test"
    url_suffix = ""

    def _model_info(self) -> dict[str, Any]:
        return {"type": "model", "id": self.model, "display_name": self.model, "created_at": "2025-01-01T00:00:00Z"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.rstrip("/")
                if not _authorized(self.headers):
                    self._error(401, "x-api-key header is required")
                elif path == "/v1/models":
                    model = server.model
                    self._json(200, {"data": [server._model_info()], "has_more": False, "first_id": model,
                                     "last_id": model})
                elif path == f"/v1/models/{server.model}":
                    self._json(200, server._model_info())
                else:
                    self._error(404, "Not Found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = None
                server.requests.append(body if isinstance(body, dict) else {})
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if urlsplit(self.path).path.rstrip("/") != "/v1/messages":
                    self._error(404, "Not Found")
                    return
                if not _authorized(self.headers):
                    self._error(401, "x-api-key header is required")
                    return
                problem = _invalid(body)
                if problem:
                    self._error(400, problem)
                    return
                assert isinstance(body, dict)
                reply = server.responder(body)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    self._error(reply.status, reply.error_message, reply.headers)
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, _message(body, reply), reply.headers)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.send_header("request-id", REQUEST_ID)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.close_connection = True
                pieces = _split(reply.text, reply.chunks)
                start = {**_message(body, reply), "content": [], "stop_reason": None, "stop_sequence": None}
                start["usage"] = {**start["usage"], "output_tokens": 1}
                self._event("message_start", {"type": "message_start", "message": start})
                self._event("content_block_start",
                            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                self._event("ping", {"type": "ping"})
                broken = reply.break_stream or reply.truncate or reply.error_event
                for i, piece in enumerate(pieces[: len(pieces) // 2] if broken else pieces):
                    self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": piece}})
                    if i == 0 and reply.stall_s:
                        time.sleep(reply.stall_s)
                if reply.break_stream:
                    self._write(b"event: content_block_delta\ndata: {not json\n\n")
                    return
                if reply.error_event:
                    error = {"type": "overloaded_error", "message": reply.error_message}
                    self._event("error", {"type": "error", "error": error})
                    return
                if reply.truncate:
                    return
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
                self._event("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                    "usage": {"output_tokens": len(pieces)},
                })
                self._event("message_stop", {"type": "message_stop"})

            def _event(self, name: str, payload: dict[str, Any]) -> None:
                self._write(f"event: {name}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n")

            def _write(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
                self._json(status, {"type": "error", "error": error, "request_id": REQUEST_ID}, headers)

            def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", REQUEST_ID)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _authorized(headers: Any) -> bool:
    """An API key, as `x-api-key` or (as anthropic SDK 2.x sends it) `authorization: Bearer <key>`."""
    bearer = headers.get("authorization", "")
    return bool(headers.get("x-api-key")) or (bearer.lower().startswith("bearer ") and bool(bearer[7:].strip()))


def _invalid(body: Any) -> str | None:
    """The message of the 400 the real API would answer `body` with, or None when it would accept it."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    for name in ("max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["messages"], list):
        return "messages: Input should be a valid list"
    for i, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return (f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level `system` '
                    'parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    return None


def _text(content: Any) -> str:
    """The text of a `system` or message `content`: a string, or a list of blocks (text, tool_result, ...)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(block) for block in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"]
        return _text(content.get("content"))
    return ""


def _stop_reason(reply: Reply) -> str:
    return STOP_REASONS.get(reply.finish_reason, reply.finish_reason)


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    """Word counts; as on the real API, `input_tokens` leaves out what was read from the cache."""
    words = len(_text(body.get("system")).split())
    words += sum(len(_text(m.get("content")).split()) for m in body.get("messages", []))
    cached = min(words, getattr(reply, "cached_tokens", 0))
    return {"input_tokens": words - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": len(_split(reply.text, reply.chunks))}


def _message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": MESSAGE_ID, "type": "message", "role": "assistant", "model": body.get("model"),
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": _stop_reason(reply), "stop_sequence": None,
        "usage": _usage(body, reply),
    }
