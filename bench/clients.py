"""The clients the benchmarks drive: a raw aiohttp client (the physical limit of this machine), the official
`openai` SDK, and the harness's own code paths (its provider alone, and `shadow_run` end to end).

Two ways of driving each:
- closed loop (`closed_loop`): `n` requests, `concurrency` in flight, each worker sending its next request as
  soon as its previous answer is in; stopped early once `max_s` seconds have passed. Throughput and the client
  process's CPU time (`time.process_time`, every thread of this process, the harness's DuckDB writer included;
  the servers run in other processes) over the timed section.
- open loop (`open_loop`): requests launched on a fixed schedule (`rate` a second for `duration_s`), whatever
  the answers do, each timed by the client under test: time to first content and end of stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, str]]


@dataclass
class Outcome:
    """One request as the client saw it: whether it succeeded, content chunks received, and (open loop) times in
    ms from the request being sent: first content, and end of stream."""

    ok: bool
    chunks: int = 0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    gaps_ms: list[float] | None = None  # raw client only: the gap before each content chunk after the first
    error: str | None = None


Send = Callable[[int], Awaitable[Outcome]]


async def closed_loop(send: Send, n: int, concurrency: int, max_s: float) -> dict[str, Any]:
    """Send requests 0..n-1 through `send` with `concurrency` in flight; no request is started after `max_s`."""
    next_index = iter(range(n))
    done = {"requests": 0, "errors": 0, "chunks": 0}
    first_error: list[str] = []
    start = time.perf_counter()
    deadline = start + max_s

    async def worker() -> None:
        for i in next_index:
            if time.perf_counter() > deadline:
                return
            outcome = await send(i)
            done["requests"] += 1
            done["chunks"] += outcome.chunks
            if not outcome.ok:
                done["errors"] += 1
                if not first_error:
                    first_error.append(outcome.error or "failed")

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return measured(done, time.perf_counter() - start, time.process_time() - cpu, first_error)


def measured(done: dict[str, int], wall: float, cpu: float, errors: Sequence[str] = ()) -> dict[str, Any]:
    """Throughput and CPU figures of a timed section."""
    requests, chunks = done["requests"], done["chunks"]
    return {
        **done,
        "wall_s": wall,
        "cpu_s": cpu,
        "requests_per_s": requests / wall if wall else None,
        "cpu_ms_per_request": cpu * 1000 / requests if requests else None,
        "cpu_us_per_chunk": cpu * 1e6 / chunks if chunks else None,
        "ms_per_request_wall": wall * 1000 / requests if requests else None,
        "first_error": errors[0] if errors else None,
    }


async def open_loop(send: Send, rate: float, duration_s: float) -> tuple[list[Outcome], float]:
    """Launch request i at start + i / rate for `duration_s` seconds, whatever the answers are doing; returns
    every outcome and the worst launch lateness (ms): how late the client's own loop started a request."""
    loop = asyncio.get_running_loop()
    n = int(rate * duration_s)
    start = loop.time() + 0.05
    tasks = []
    late = 0.0
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, (loop.time() - due) * 1000)
        tasks.append(asyncio.create_task(send(i)))
    return list(await asyncio.gather(*tasks)), late


def body_for(model: str, messages: Messages, params: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The chat-completions request body the raw client sends (what the harness sends, less what it adds)."""
    body = {"model": model, "messages": messages, **{k: v for k, v in params.items() if v is not None},
            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class RawClient:
    """A raw aiohttp client, as vLLM's own benchmark client: one JSON encode per request, one JSON decode per
    streamed event, nothing else. Use as `async with RawClient(url, concurrency) as raw:`."""

    def __init__(self, base_url: str, concurrency: int, api_key: str | None = None) -> None:
        import yarl

        self.url = yarl.URL(base_url.rstrip("/") + "/chat/completions")
        self.concurrency = concurrency
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.session: Any = None

    async def __aenter__(self) -> RawClient:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0)  # the callers never have more in flight than they mean to
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=600), headers=self.headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def send(self, body: dict[str, Any], timed: bool = False) -> Outcome:
        """One request; streamed when `body["stream"]`. With `timed`, the time of each content chunk is kept."""
        start = time.perf_counter()
        chunks = 0
        first = last = None
        gaps: list[float] | None = [] if timed else None
        try:
            async with self.session.post(self.url, data=json.dumps(body).encode()) as response:
                if response.status != 200:
                    return Outcome(False, error=f"HTTP {response.status}: {(await response.text())[:200]}")
                if not body.get("stream"):
                    answer = json.loads(await response.read())
                    text = answer["choices"][0]["message"]["content"]
                    return Outcome(bool(text), latency_ms=(time.perf_counter() - start) * 1000)  # no chunks
                finished = done = False
                buffer = b""
                # whatever bytes have arrived, split into lines: no per-line read call. Read to the end of the body
                # (past [DONE]), so that the connection goes back to the pool for the next request.
                async for data in response.content.iter_any():
                    if done:
                        continue
                    now = time.perf_counter()
                    lines = (buffer + data).split(b"\n")
                    buffer = lines.pop()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            end = now
                            break
                        for choice in json.loads(payload).get("choices") or ():
                            if (choice.get("delta") or {}).get("content"):
                                if first is None:
                                    first = now
                                elif gaps is not None:
                                    gaps.append((now - last) * 1000)
                                last = now
                                chunks += 1
                            if choice.get("finish_reason"):
                                finished = True
            if not done:
                end = time.perf_counter()
        except Exception as exc:  # a failed request is counted, never raised
            return Outcome(False, chunks=chunks, error=f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(
            finished and chunks > 0, chunks=chunks, ttft_ms=None if first is None else (first - start) * 1000,
            latency_ms=(end - start) * 1000, gaps_ms=gaps, error=None if finished else "no finish_reason",
        )


class SdkClient:
    """The official `openai` SDK as an application would use it: `chat.completions.create(stream=True)`, iterating
    its parsed chunk objects."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "bench", max_retries=0, timeout=600)

    async def __aenter__(self) -> SdkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def send(self, body: dict[str, Any], timed: bool = False) -> Outcome:
        args = dict(body)
        stream = args.pop("stream", False)
        extra = {k: args.pop(k) for k in list(args) if k in ("ignore_eos",)}
        if extra:
            args["extra_body"] = extra
        start = time.perf_counter()
        chunks = 0
        first = None
        finished = False
        try:
            if not stream:
                answer = await self.client.chat.completions.create(**args)
                text = answer.choices[0].message.content
                return Outcome(bool(text), latency_ms=(time.perf_counter() - start) * 1000)
            response = await self.client.chat.completions.create(stream=True, **args)
            async for chunk in response:
                for choice in chunk.choices:
                    if choice.delta.content:
                        if first is None:
                            first = time.perf_counter()
                        chunks += 1
                    if choice.finish_reason:
                        finished = True
            end = time.perf_counter()
        except Exception as exc:
            return Outcome(False, chunks=chunks, error=f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(finished and chunks > 0, chunks=chunks,
                       ttft_ms=None if first is None else (first - start) * 1000, latency_ms=(end - start) * 1000)


class HarnessProvider:
    """The harness's provider alone: the plan of a suite's provider entry (`harness.providers.plan_provider`),
    the client `build_provider` makes of it, and its `complete(request)` for each case's request as the runner
    builds it (`harness.runner.request_for`). No retries, cache, scoring or storing: the transport and parsing."""

    def __init__(self, suite: Any, spec: Any) -> None:
        from harness.providers.plan import plan_provider, resolve_served_models
        from harness.providers.registry import build_provider
        from harness.run.runner import request_for

        self.plan = plan_provider(spec)
        resolve_served_models([self.plan])
        if self.plan.status != "ready":
            raise RuntimeError(f"{spec.id} cannot run: {self.plan.reason}")
        self.provider = build_provider(self.plan)
        self.requests = [request_for(suite, case, self.plan) for case in suite.cases]

    async def __aenter__(self) -> HarnessProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        close = getattr(self.provider, "aclose", None)
        if close is not None:
            await close()

    async def send_index(self, i: int) -> Outcome:
        completion = await self.provider.complete(self.requests[i % len(self.requests)])
        chunks = completion.output_tokens or 0
        return Outcome(completion.error is None, chunks=chunks, ttft_ms=completion.ttft_ms,
                       latency_ms=completion.latency_ms, error=completion.error)


@contextlib.asynccontextmanager
async def contender(kind: str, base_url: str, concurrency: int, suite: Any = None, spec: Any = None,
                    api_key: str | None = None):
    """A client of `kind` ("raw", "sdk" or "provider"), opened for the length of the block."""
    if kind == "raw":
        async with RawClient(base_url, concurrency, api_key) as client:
            yield client
    elif kind == "sdk":
        async with SdkClient(base_url, api_key) as client:
            yield client
    elif kind == "provider":
        async with HarnessProvider(suite, spec) as client:
            yield client
    else:
        raise ValueError(kind)


def _main() -> None:
    """`python -m bench.clients BASE_URL --requests N --concurrency C [--no-stream]`: the raw client alone in a
    process of its own (the peers part times it from start-up, as it times the other tools). Prints a JSON line."""
    import argparse

    from bench.servers import MODEL

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("base_url")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    body = body_for(args.model, [{"role": "user", "content": "Read this receipt. " * 30}],
                    {"temperature": 0.0, "max_tokens": 20}, not args.no_stream)

    async def run() -> dict[str, Any]:
        async with RawClient(args.base_url, args.concurrency) as client:
            return await closed_loop(lambda i: client.send(body), args.requests, args.concurrency, 600.0)

    out = asyncio.run(run())
    print(json.dumps({"ok": out["requests"] - out["errors"], **{k: out[k] for k in ("requests_per_s", "cpu_s")}}))


if __name__ == "__main__":
    _main()
