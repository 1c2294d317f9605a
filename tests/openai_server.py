"""A local HTTP server that speaks the OpenAI chat-completions wire format, for tests.

Real HTTP on loopback, real SSE streaming (`data: {...}` lines ending with `data: [DONE]`), real error bodies
and status codes. What it answers is decided by a `responder(body) -> Reply` that each test supplies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One answer: text streamed in `chunks` pieces, or an HTTP error with `status`."""

    text: str = ""
    status: int = 200
    chunks: int = 4
    delay_s: float = 0.0
    finish_reason: str = "stop"
    usage: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "boom"
    plain_body: str | None = None  # with an error `status`: this text as a text/plain body instead of JSON
    break_stream: bool = False  # a malformed JSON event half-way, then the stream stops
    truncate: bool = False  # half the text, then the connection closes with no final events
    error_event: bool = False  # an error event in the stream half-way (as APIs send on overload)
    stall_s: float = 0.0  # a pause after the first piece of text
    # Per token, when the request asks for logprobs: [its logprob, the logprobs of alternatives...]. The tokens
    # are spread over the pieces of text in order, as evenly as they go; each gets up to `top_logprobs` of the
    # likeliest of its numbers as its top_logprobs, as a server does.
    logprobs: list[list[float]] | None = None


class LoopbackServer:
    """A wire-format test server on a loopback port, serving in a thread for the length of a `with` block.
    It records each request's JSON body, lowercased headers and query string, and the bodies it answered in full."""

    default_model = "test-model"
    url_suffix = "/v1"

    def __init__(
        self, responder: Callable[[dict[str, Any]], Reply] | None = None, model: str | None = None, port: int = 0
    ):
        self.responder = responder or (lambda body: Reply(text='{"ok": true}'))
        self.model = model or self.default_model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.queries: list[str] = []
        self.completed: list[dict[str, Any]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.url_suffix}"

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class OpenAIServer(LoopbackServer):
    """`with OpenAIServer(responder) as srv:` serves on `srv.base_url` (ending in /v1) in a thread."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                path = self.path.split("?", 1)[0]
                azure = path.startswith("/openai/deployments/") and path.endswith("/chat/completions")
                if azure:  # Azure OpenAI: the deployment in the path, the API version in the query
                    body.setdefault("model", path.split("/")[3])
                    server.queries.append(self.path.split("?", 1)[1] if "?" in self.path else "")
                if path != "/v1/chat/completions" and not azure:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                reply = server.responder(body)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200 and reply.plain_body is not None:
                    self._plain(reply.status, reply.plain_body, reply.headers)
                    return
                if reply.status != 200:
                    err = {"error": {"message": reply.error_message, "type": "server_error", "code": reply.status}}
                    self._json(reply.status, err, reply.headers)
                    return
                if body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, _completion(body, reply))

            def _plain(self, status: int, text: str, headers: dict[str, str]) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model")}
                pieces = _split(reply.text, reply.chunks)
                tokens = _token_logprobs(body, reply, len(pieces))
                extra = {"logprobs": None} if tokens is not None else {}
                self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "finish_reason": None, **extra}]})
                for i, piece in enumerate(pieces):
                    if i == len(pieces) // 2 and (reply.break_stream or reply.truncate or reply.error_event):
                        if reply.break_stream:
                            self.wfile.write(b"data: {not json\n\n")
                        elif reply.error_event:
                            self._event({"error": {"message": reply.error_message, "type": "server_error"}})
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if tokens is not None:
                        extra = {"logprobs": {"content": tokens[i], "refusal": None}}
                    self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None,
                                                       **extra}]})
                    if i == 0 and reply.stall_s:
                        time.sleep(reply.stall_s)
                if tokens is not None:
                    extra = {"logprobs": None}
                self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason,
                                                   **extra}]})
                if reply.usage and (body.get("stream_options") or {}).get("include_usage"):
                    self._event({**base, "choices": [], "usage": _usage(body, reply)})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True
                server.completed.append(body)

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

            def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _split(text: str, n: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _token_logprobs(body: dict[str, Any], reply: Reply, pieces: int) -> list[list[dict[str, Any]]] | None:
    """The OpenAI `logprobs.content` entries of each piece of text, or None when the request did not ask for
    logprobs or the reply has none to give."""
    if not body.get("logprobs") or reply.logprobs is None or not pieces:
        return None
    top = int(body.get("top_logprobs") or 0)
    entries = []
    for number, (chosen, *others) in enumerate(reply.logprobs):
        token = f"t{number}"
        ranked = sorted([(chosen, token), *((v, f"{token}-alt{k}") for k, v in enumerate(others))], reverse=True)
        entries.append({
            "token": token, "logprob": chosen, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for v, t in ranked[:top]],
        })
    per_piece, left = divmod(len(entries), pieces)
    out, start = [], 0
    for i in range(pieces):
        end = start + per_piece + (1 if i < left else 0)
        out.append(entries[start:end])
        start = end
    return out


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(_split(reply.text, reply.chunks))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    tokens = _token_logprobs(body, reply, 1)
    logprobs = {"content": tokens[0], "refusal": None} if tokens is not None else None
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": reply.finish_reason, "logprobs": logprobs}],
        "usage": _usage(body, reply),
    }
