"""Loopback OpenAI-compatible servers for the benchmarks, each in its own process.

- `zero`: a zero-latency server. Every answer is precomputed bytes: streamed (SSE: 20 content chunks, the last
  with `finish_reason`, then a usage chunk and `data: [DONE]`, written at once) or, when the request does not ask
  for a stream, one `chat.completion` JSON body. What it answers is the same for every request, so the server
  costs as little CPU as aiohttp allows and the client is what is measured.
- `paced`: the first content chunk after `ttft_ms`, then one chunk every `itl_ms` (each written and flushed on
  its own), on a schedule taken from when the request arrived: chunk i is due at arrival + ttft + i * itl (absolute
  deadlines, so lateness does not accumulate). It stamps nothing itself: the truth a client is judged against is
  this schedule.

Both answer `GET /v1/models`. Run one with `python -m bench.servers zero --port 8001` (until Ctrl-C), or from
Python with `ServerProcess("zero")`, which starts it on a free loopback port and stops it on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.common import ROOT, cpu_s, stop_process

MODEL = "bench-model"
CHUNKS = 20
# the 20 content pieces of every answer; joined and stripped they are the gold answer of the generated suites
WORDS = [
    "The", " invoice", " total", " is", " 327", ".00", " ringgit", ",", " paid", " in", " cash", " at", " SOON",
    " HUAT", " MACHINERY", " on", " 11", "/01", "/2019", ".",
]
ANSWER = "".join(WORDS).strip()
PROMPT_TOKENS = 150


def _chunk(content: str | None, finish: str | None, created: int) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(chunks: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks, "total_tokens": PROMPT_TOKENS + chunks}


def sse_events(chunks: int = CHUNKS) -> list[bytes]:
    """The SSE events of one streamed answer: `chunks` content chunks (the last with finish_reason "stop"),
    a usage chunk with no choices (as vLLM sends with stream_options.include_usage), and [DONE]."""
    created = int(time.time())
    words = [WORDS[i % len(WORDS)] for i in range(chunks)]
    events = []
    for i, word in enumerate(words):
        finish = "stop" if i == chunks - 1 else None
        events.append(b"data: " + json.dumps(_chunk(word, finish, created)).encode() + b"\n\n")
    usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": MODEL,
             "choices": [], "usage": _usage(chunks)}
    events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def completion_body(chunks: int = CHUNKS) -> bytes:
    """The non-streamed answer: the same text as one `chat.completion` object."""
    text = "".join(WORDS[i % len(WORDS)] for i in range(chunks))
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": _usage(chunks),
    }).encode()


def _wants_stream(body: bytes) -> bool:
    if b'"stream": true' in body or b'"stream":true' in body:
        return True
    if b'"stream"' not in body:
        return False
    try:
        return bool(json.loads(body).get("stream"))
    except ValueError:
        return False


def _models_app_routes(web: Any) -> list[Any]:
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode()

    async def list_models(request: Any) -> Any:
        return web.Response(body=models, content_type="application/json")

    return [web.get("/v1/models", list_models)]


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def zero_app() -> Any:
    """The zero-latency server's aiohttp application."""
    from aiohttp import web

    stream_body = b"".join(sse_events())
    json_body = completion_body()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not _wants_stream(body):
            return web.Response(body=json_body, content_type="application/json")
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(stream_body)
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat), *_models_app_routes(web)])
    return app


def paced_app(ttft_ms: float, itl_ms: float, chunks: int = CHUNKS) -> Any:
    """The paced server's aiohttp application: chunk i (from 0) due at arrival + ttft + i * itl."""
    from aiohttp import web

    events = sse_events(chunks)
    content, tail = events[:chunks], b"".join(events[chunks:])

    async def chat(request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        await request.read()
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        for i, event in enumerate(content):
            due = arrived + (ttft_ms + i * itl_ms) / 1000
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(event + (tail if i == chunks - 1 else b""))
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat), *_models_app_routes(web)])
    return app


def serve(kind: str, port: int, ttft_ms: float = 20.0, itl_ms: float = 1.0, chunks: int = CHUNKS) -> None:
    """Serve `kind` on 127.0.0.1:`port` until SIGTERM or Ctrl-C; prints `ready <port>` once listening."""
    from aiohttp import web

    app = zero_app() if kind == "zero" else paced_app(ttft_ms, itl_ms, chunks)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        # a deep backlog: 256 clients connecting at once must not wait for SYN retries
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
        await site.start()
        print(f"ready {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A benchmark server in a child process on a free loopback port: `with ServerProcess("zero") as s: s.base_url`.
    `cpu_s()` is the CPU time the server process has used so far (user + system, from /proc)."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        self.options = options
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", "bench.servers", self.kind, "--port", str(self.port)]
        for key, value in self.options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                        cwd=ROOT)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"the {self.kind} benchmark server did not start (said {line!r})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(self.base_url + "/models", timeout=2) as answer:
                if answer.status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.kind} benchmark server on port {self.port} does not answer")

    def cpu_s(self) -> float | None:
        return cpu_s(self.process.pid) if self.process is not None else None

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a benchmark OpenAI-compatible server on loopback")
    parser.add_argument("kind", choices=("zero", "paced"))
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="paced: delay before the first chunk")
    parser.add_argument("--itl-ms", type=float, default=1.0, help="paced: delay between chunks")
    parser.add_argument("--chunks", type=int, default=CHUNKS, help="paced: content chunks per answer")
    args = parser.parse_args()
    serve(args.kind, args.port, args.ttft_ms, args.itl_ms, args.chunks)
