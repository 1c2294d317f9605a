"""What `harness proxy` adds to the caller's latency: an open-loop client sends streamed chat completions at a fixed
rate to a zero-latency upstream, directly and through the proxy, in short blocks interleaved round by round, and
compares TTFT and total latency (p50/p95/p99, from each request's scheduled send time).

Contenders (each server and proxy a process of its own, all on loopback):
- `direct`: the upstream itself (bench/servers.py `zero`);
- `forwarder`: a minimal aiohttp forwarder (`forward` below: the request passed on, the answer streamed back as it
  comes, nothing else): what any aiohttp hop costs on this machine, the floor for a proxy written this way;
- `pass-through`: `harness proxy --sample 0` (nothing copied);
- `mirror-fast`: `harness proxy --sample 1`, every chat request copied to a zero-latency candidate;
- `mirror-slow`: `harness proxy --sample 1 --queue 50`, copies to a `paced` candidate whose first token comes after
  `slow_ttft_ms`: it cannot keep up at this rate, its queue fills and copies are dropped; the caller must not wait.
The proxies are started as a user starts one (`python -m harness.cli proxy ... --candidate vllm:bench-model
--base-url CANDIDATE`).

Each round runs every contender for one block (`block_s` seconds at `rate` requests/s), in an order rotated round by
round, so that the machine's other work hits all alike; a warm-up block of each comes first and is discarded. Per
block: the CPU of the contender's processes (utime + stime from /proc/PID/stat, every thread, the proxy's mirror
process included, until the block's last copy is done), the proxy's `/shadow/status` counts (requests, mirrored,
dropped), and how late the client's own loop sent each request (send lag): the client, the upstream, the candidates
and the proxies share this machine's cores. Every answer is also compared byte for byte with the upstream's (the
zero-latency server sends the same bytes to every request).

Part `proxy` of `make bench` (`python -m bench.run --only proxy`); alone: `python -m bench.proxy_latency
[--quick] [--record]` (`--record` merges the result into docs/benchmarks.json and .md). Every process it starts
is stopped on the way out, errors, Ctrl-C and SIGTERM included (the proxies with SIGINT first, as a user stops one,
so that they drain and exit); should this process die at once, the kernel sends its children SIGTERM
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import servers
from bench.common import ROOT, cpu_s, load_results, log, percentile, record_part, stop_process, summary, target

RATE = 200.0  # requests a second (the issue's)
TARGET_ADDED_P99_MS = 1.0  # p99 the proxy may add to TTFT and to total latency, mirroring on
SLOW_TTFT_MS = 500.0  # the slow candidate's time to first token
SLOW_QUEUE = 50  # the slow proxy's queue per candidate: small, so that it fills at once
CONTENDERS = ("direct", "forwarder", "pass-through", "mirror-fast", "mirror-slow")
STOP_S = 40.0  # a proxy drains for up to 30 s after SIGINT; then it is killed


@dataclass
class Sizes:
    """How much to measure: `rounds` rounds of one `block_s` block per contender, after `warmup_s` of each."""

    rate: float = RATE
    block_s: float = 3.0
    rounds: int = 5
    warmup_s: float = 2.0
    slow_ttft_ms: float = SLOW_TTFT_MS
    queue: int = SLOW_QUEUE

    @classmethod
    def quick(cls) -> Sizes:
        return cls(block_s=1.5, rounds=2, warmup_s=1.0)


# ------------------------------------------------------------------------------------------------ processes


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child between fork and exec)
    """In a child before exec: SIGTERM when the benchmark process dies, however it dies (PR_SET_PDEATHSIG), so that
    no server or proxy outlives it (a proxy takes SIGTERM as Ctrl-C: it drains and exits)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class ProxyProcess:
    """`harness proxy` in a process of its own, on a free loopback port, as a user starts it."""

    name: str
    upstream: str
    candidate: str
    folder: Path
    options: list[str] = field(default_factory=list)
    port: int = field(default_factory=servers.free_port)
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_s: float | None = None  # from the start of the process to its first answer on /shadow/status
    interrupted: bool = False
    began: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "harness.cli", "proxy", "--upstream", self.upstream, "--candidate",
                   f"vllm:{servers.MODEL}", "--base-url", self.candidate, "--port", str(self.port),
                   "--db", str(self.folder / f"{self.name}.duckdb"), "--status-every", "3600", *self.options]
        self.began = time.perf_counter()
        with open(self.log_path, "wb") as out:
            # its own process group: a Ctrl-C at the terminal reaches it once, from `stop`, not twice
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=ROOT, preexec_fn=_die_with_parent, process_group=0)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the {self.name} proxy exited before it was ready: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.status()
                self.started_s = time.perf_counter() - self.began
                return
            time.sleep(0.1)
        raise RuntimeError(f"the {self.name} proxy did not answer /shadow/status in {timeout_s:.0f} s: "
                           f"{self.log_tail()}")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/shadow/status", timeout=5) as answer:
            return json.loads(answer.read())

    def cpu_s(self) -> float | None:
        return cpu_s(self.process.pid) if self.process is not None else None

    def log_tail(self, n: int = 600) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:].strip()
        return ""

    def outcome(self) -> str:
        """What the proxy said when it stopped: `proxy run RUN_ID completed` (or degraded, failed: why)."""
        lines = [x.strip() for x in self.log_tail(4000).splitlines() if x.strip()]
        said = [x for x in lines if x.startswith("proxy run ") and "listening" not in x]
        return (said or lines or [""])[-1]

    def interrupt(self) -> None:
        """Ctrl-C, once: the proxy drains its copies in flight (for up to 30 s) and exits. A second would stop it
        at once, the copies in flight lost."""
        if self.process is not None and self.process.poll() is None and not self.interrupted:
            self.process.send_signal(signal.SIGINT)
            self.interrupted = True

    def stop(self) -> None:
        """`interrupt`, wait for the proxy to exit, and SIGKILL it if it has not within STOP_S."""
        self.interrupt()
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.exit_code = process.returncode


class Server(servers.ServerProcess):
    """A benchmark server of bench/servers.py that also goes when this process dies, however it dies (SIGTERM from
    the kernel: PR_SET_PDEATHSIG), so that a killed benchmark leaves no server behind."""

    def start(self) -> Server:
        command = [sys.executable, "-m", "bench.servers", self.kind, "--port", str(self.port)]
        for key, value in self.options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                        cwd=ROOT, preexec_fn=_die_with_parent)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once it listens
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"the {self.kind} benchmark server did not start (said {line!r})")
        return self


HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                 "host", "content-length"})


def forward(upstream: str, port: int) -> None:
    """The minimal aiohttp forwarder on 127.0.0.1:`port` until SIGTERM: each request passed on to `upstream` (a
    base URL ending in /v1) with its body and headers, the answer streamed back piece by piece as it arrives; no
    reading, copying or counting. Prints `ready` once listening."""
    import aiohttp
    from aiohttp import web

    async def main() -> None:
        session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
                                        connector=aiohttp.TCPConnector(limit=0))

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
            url = upstream + request.path.removeprefix("/v1")
            async with session.request(request.method, url, data=body, headers=headers,
                                       allow_redirects=False) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                async for piece in answer.content.iter_any():
                    await response.write(piece)
                await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    asyncio.run(main())


@dataclass
class Forwarder:
    """`forward` in a process of its own on a free loopback port."""

    upstream: str
    port: int = field(default_factory=servers.free_port)
    process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.proxy_latency", "--forward", self.upstream, "--port", str(self.port)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT, preexec_fn=_die_with_parent,
            process_group=0)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"the forwarder did not start (said {line!r})")

    def cpu_s(self) -> float | None:
        return cpu_s(self.process.pid) if self.process is not None else None

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)


# --------------------------------------------------------------------------------------------------- client


@dataclass
class Sample:
    """One request as the caller saw it, in ms from its scheduled send time (`lag`: when it was actually sent)."""

    lag: float
    ttft: float | None
    total: float | None
    ok: bool
    same_bytes: bool
    error: str | None = None


async def _request(session: Any, url: str, data: bytes, scheduled: float, expected: bytes | None) -> Sample:
    """One streamed chat completion: TTFT at the first content chunk, total at the end of the body."""
    sent = time.perf_counter()
    lag = (sent - scheduled) * 1000
    first = None
    body = bytearray()
    try:
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
            async for piece in response.content.iter_any():
                arrived = time.perf_counter()
                body += piece
                if first is None:  # the first event with a non-empty content delta, once its line is complete
                    for line in bytes(body).split(b"\n")[:-1]:
                        if line.startswith(b"data: {"):
                            choices = json.loads(line[6:]).get("choices") or ()
                            if any((c.get("delta") or {}).get("content") for c in choices):
                                first = arrived
                                break
            end = time.perf_counter()
            status = response.status
    except Exception as exc:  # a failed request is counted, never raised
        return Sample(lag, None, None, False, False, f"{type(exc).__name__}: {exc}"[:300])
    ok = status == 200 and first is not None and body.rstrip().endswith(b"data: [DONE]")
    return Sample(lag, None if first is None else (first - scheduled) * 1000, (end - scheduled) * 1000, ok,
                  expected is None or bytes(body) == expected,
                  None if ok else f"HTTP {status}: {bytes(body[:200])!r}")


async def open_loop(session: Any, url: str, data: bytes, rate: float, seconds: float,
                    expected: bytes | None) -> list[Sample]:
    """Request i scheduled at start + i / rate, sent then whatever the answers are doing (open loop)."""
    n = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.01
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_request(session, url, data, due, expected)))
    return list(await asyncio.gather(*tasks))


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def _block_figures(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    return {"ttft_p99": percentile([s.ttft for s in ok], 99), "total_p99": percentile([s.total for s in ok], 99)}


# ------------------------------------------------------------------------------------------------ measuring


async def _drive(targets: dict[str, str], hops: dict[str, Any], proxies: dict[str, ProxyProcess], sizes: Sizes,
                 others: dict[str, Any]) -> dict[str, Any]:
    """Warm-up blocks, then `sizes.rounds` rounds of one block per contender; every request's `Sample` and, per
    block, its p99s, CPU (`hops`: the contender's own process; `others`: the servers) and the proxy's counts."""
    import gc

    import aiohttp

    body = json.dumps({"model": servers.MODEL, "messages": [{"role": "user", "content": "Read this receipt. " * 30}],
                       "temperature": 0.0, "max_tokens": 20, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                            timeout=aiohttp.ClientTimeout(total=60)) for name in CONTENDERS}
    samples: dict[str, list[Sample]] = {name: [] for name in CONTENDERS}
    blocks: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    try:
        # the upstream's answer, byte for byte: what every caller must receive
        async with sessions["direct"].post(targets["direct"] + "/chat/completions", data=body) as response:
            expected = await response.read()

        async def settle(name: str) -> None:
            """After a proxy's block: until its candidate queue is empty (the slow one's takes a while), so that
            the next block does not pay for this one's copies."""
            proxy = proxies.get(name)
            if proxy is None:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = await asyncio.to_thread(proxy.status)
                if not any(c.get("queued") for c in status.get("candidates", [])):
                    break
                await asyncio.sleep(0.1)
            if name == "mirror-slow":
                await asyncio.sleep(sizes.slow_ttft_ms / 1000 + 0.1)  # the copies taken from the queue answer
            await asyncio.sleep(0.2)  # the proxy's writer flushes what the block left

        def cpu_now(name: str) -> dict[str, float | None]:
            hop = hops.get(name)
            return {"proxy": hop.cpu_s() if hop is not None else None,
                    **{key: server.cpu_s() for key, server in others.items()}, "client": time.process_time()}

        async def block(name: str, seconds: float, keep: bool, round_number: int) -> None:
            proxy = proxies.get(name)
            before = await asyncio.to_thread(proxy.status) if proxy else None
            gc.collect()
            cpu = cpu_now(name)
            begin = time.perf_counter()
            out = await open_loop(sessions[name], targets[name] + "/chat/completions", body, sizes.rate, seconds,
                                  expected)
            wall = time.perf_counter() - begin
            used = cpu_now(name)
            await settle(name)
            # counted once settled: the mirror process reports what it took a moment after the caller's side
            after = await asyncio.to_thread(proxy.status) if proxy else None
            # the proxy's CPU to the last copy of the block's requests (the slow candidate's queue emptied)
            hop = hops.get(name)
            used["proxy"] = hop.cpu_s() if hop is not None else None
            if not keep:
                return
            samples[name] += out
            entry: dict[str, Any] = {
                "round": round_number, "requests": len(out), "wall_s": wall, "errors": sum(not s.ok for s in out),
                **_block_figures(out),
                "cpu_s": {k: None if used[k] is None or cpu[k] is None else used[k] - cpu[k] for k in cpu}}
            if before and after:
                entry["counts"] = {k: after["counts"][k] - before["counts"].get(k, 0) for k in after["counts"]}
            blocks[name].append(entry)
            proxy_cpu = entry["cpu_s"]["proxy"]
            log(f"proxy round {round_number + 1}: {name:<12} TTFT p99 {entry['ttft_p99'] or 0:6.2f} ms, total p99 "
                f"{entry['total_p99'] or 0:6.2f} ms, errors {entry['errors']}"
                + (f", its CPU {proxy_cpu / wall:.0%} of a core" if proxy_cpu is not None else "")
                + (f", dropped {entry['counts']['dropped']}" if entry.get("counts") else ""))

        log(f"proxy: warm-up, {sizes.warmup_s:g} s each")
        for name in CONTENDERS:
            await block(name, sizes.warmup_s, False, -1)
        for r in range(sizes.rounds):
            order = CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[:r % len(CONTENDERS)]
            for name in order:
                await block(name, sizes.block_s, True, r)
    finally:
        for session in sessions.values():
            await session.close()
    return {"samples": samples, "blocks": blocks}


def _summarise(drive: dict[str, Any], proxies: dict[str, ProxyProcess]) -> dict[str, Any]:
    samples, blocks = drive["samples"], drive["blocks"]
    contenders: dict[str, Any] = {}
    for name in CONTENDERS:
        out = samples[name]
        ok = [s for s in out if s.ok]
        wall = sum(b["wall_s"] for b in blocks[name])
        cpu = {k: sum(b["cpu_s"][k] or 0.0 for b in blocks[name]) for k in blocks[name][0]["cpu_s"]}
        entry: dict[str, Any] = {
            "requests": len(out), "errors": len(out) - len(ok),
            "first_error": next((s.error for s in out if not s.ok), None),
            "same_bytes": sum(s.same_bytes for s in out),
            "ttft_ms": _stats([s.ttft for s in ok]), "total_ms": _stats([s.total for s in ok]),
            "send_lag_ms": _stats([s.lag for s in out]),
            "wall_s": wall, "requests_per_s": len(out) / wall if wall else None,
            "client_cpu_ms_per_request": cpu["client"] * 1000 / max(1, len(out)),
            "server_cpu_busy": {k: cpu[k] / wall for k in cpu if k not in ("proxy", "client")} if wall else None,
        }
        if name != "direct":
            entry.update(proxy_cpu_s=cpu["proxy"], proxy_cpu_busy=cpu["proxy"] / wall if wall else None,
                         proxy_cpu_ms_per_request=cpu["proxy"] * 1000 / max(1, len(out)))
        proxy = proxies.get(name)
        if proxy is not None:
            counts: dict[str, int] = {}
            for b in blocks[name]:
                for k, v in (b.get("counts") or {}).items():
                    counts[k] = counts.get(k, 0) + v
            entry.update(counts=counts, options=proxy.options, proxy_start_s=proxy.started_s)
        contenders[name] = entry
    direct = contenders["direct"]
    by_round = {b["round"]: b for b in blocks["direct"]}
    for name in CONTENDERS[1:]:
        x = contenders[name]
        x["added_ms"] = {f"{metric}_{p}": (x[f"{metric}_ms"][p] - direct[f"{metric}_ms"][p]
                                           if x[f"{metric}_ms"][p] is not None and direct[f"{metric}_ms"][p] is not None
                                           else None)
                         for metric in ("ttft", "total") for p in ("p50", "p95", "p99")}
        # the same, round by round (each block against the direct block of its round): the spread
        x["added_p99_by_round"] = {
            metric: summary([b[f"{metric}_p99"] - by_round[b["round"]][f"{metric}_p99"]
                             if b[f"{metric}_p99"] is not None and by_round[b["round"]][f"{metric}_p99"] is not None
                             else None for b in blocks[name]])
            for metric in ("ttft", "total")}
    return contenders


def _targets(contenders: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    rows = []
    direct = contenders["direct"]
    for name, label in (("mirror-fast", "mirroring to a fast candidate"),
                        ("mirror-slow", "mirroring to a slow candidate (queue full, copies dropped)")):
        x = contenders[name]
        for metric, what in (("ttft", "TTFT"), ("total", "total latency")):
            key = f"{metric}_p99"
            by_round = x["added_p99_by_round"][metric]
            notes = []
            if x["added_ms"][key] is not None:
                notes.append(f"p99 direct {direct[f'{metric}_ms']['p99']:.2f} ms, through the proxy "
                             f"{x[f'{metric}_ms']['p99']:.2f} ms")
            if by_round["median"] is not None:
                notes.append(f"round by round {by_round['median']:.2f} ({by_round['min']:.2f}–{by_round['max']:.2f})")
            floor = [(other, contenders[other]["added_ms"][key]) for other in ("pass-through", "forwarder")]
            notes.append("added without mirroring: " + ", ".join(
                f"{'`--sample 0`' if other == 'pass-through' else 'a minimal aiohttp forwarder'} "
                f"{'–' if value is None else f'{value:.2f}'} ms" for other, value in floor))
            if name == "mirror-slow" and metric == "ttft":
                counts = x.get("counts", {})
                notes.append(f"{counts.get('dropped', 0):,} of {counts.get('chat', 0):,} copies dropped")
            rows.append(target(f"proxy: {what} p99 added, {rate:g} req/s, {label}", x["added_ms"][key], "<=",
                               TARGET_ADDED_P99_MS, "ms", note="; ".join(notes)))
    return rows


def measure(sizes: Sizes | None = None) -> dict[str, Any]:
    """Start the servers and the proxies, drive them, stop everything; the part's result with its targets."""
    sizes = sizes or Sizes()
    began = time.perf_counter()
    load_before = os.getloadavg()
    in_main = _main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None

    def terminate(signum: int, frame: Any) -> None:  # SIGTERM: the same way out as Ctrl-C, processes stopped
        raise SystemExit(128 + signum)

    if in_main:
        signal.signal(signal.SIGTERM, terminate)
    proxies: dict[str, ProxyProcess] = {}
    try:
        # the folder goes last, the proxies (their DuckDB files in it) first, then the servers they call
        with tempfile.TemporaryDirectory(prefix="shadow-bench-proxy-") as folder, contextlib.ExitStack() as stack:
            tmp = Path(folder)
            upstream = stack.enter_context(Server("zero"))
            fast = stack.enter_context(Server("zero"))
            slow = stack.enter_context(Server("paced", ttft_ms=sizes.slow_ttft_ms, itl_ms=1.0))
            forwarder = Forwarder(upstream.base_url)
            stack.callback(forwarder.stop)
            stack.callback(_stop_all, proxies)
            for name, candidate, options in (
                    ("pass-through", fast, ["--sample", "0"]), ("mirror-fast", fast, ["--sample", "1"]),
                    ("mirror-slow", slow, ["--sample", "1", "--queue", str(sizes.queue)])):
                proxies[name] = ProxyProcess(name, upstream.base_url, candidate.base_url, tmp, options)
            log(f"proxy: starting {len(proxies)} proxies and the forwarder")
            for proxy in proxies.values():
                proxy.start()
            forwarder.start()
            for proxy in proxies.values():
                proxy.wait_ready()
            targets = {"direct": upstream.base_url, "forwarder": forwarder.base_url,
                       **{name: p.base_url for name, p in proxies.items()}}
            drive = asyncio.run(_drive(targets, {"forwarder": forwarder, **proxies}, proxies, sizes,
                                       {"upstream": upstream, "candidate-fast": fast, "candidate-slow": slow}))
            final = {name: p.status() for name, p in proxies.items()}
            stopping = time.perf_counter()
            _stop_all(proxies)
            stop_s = time.perf_counter() - stopping
            contenders = _summarise(drive, proxies)
            for name, proxy in proxies.items():
                contenders[name]["final_status"] = {"counts": final[name].get("counts"), "candidates": [
                    {k: c.get(k) for k in ("provider", "judged", "disagreements", "queued")}
                    for c in final[name].get("candidates", [])]}
                contenders[name]["exit"] = {"exit_code": proxy.exit_code, "said": proxy.outcome()}
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    result = {
        "rate_per_s": sizes.rate, "block_s": sizes.block_s, "rounds": sizes.rounds, "warmup_s": sizes.warmup_s,
        "chunks": servers.CHUNKS, "slow_candidate": {"ttft_ms": sizes.slow_ttft_ms, "itl_ms": 1.0,
                                                     "queue": sizes.queue},
        "order": "rotated round by round", "contenders": contenders, "stop_s": stop_s,
        "load_average": {"before": load_before, "after": os.getloadavg()}, "cores": os.cpu_count(),
        "wall_s": time.perf_counter() - began,
    }
    result["targets"] = _targets(contenders, sizes.rate)
    return result


def _stop_all(proxies: dict[str, ProxyProcess]) -> None:
    """SIGINT to every proxy still running first (they drain side by side), then wait for each."""
    for proxy in proxies.values():
        proxy.interrupt()
    for proxy in proxies.values():
        proxy.stop()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 1.5 s blocks")
    parser.add_argument("--rate", type=float, default=RATE, help=f"requests a second (default {RATE:g})")
    parser.add_argument("--block-s", type=float, help="seconds a block (default 3)")
    parser.add_argument("--rounds", type=int, help="rounds of blocks (default 5)")
    parser.add_argument("--record", action="store_true",
                        help="merge the result into docs/benchmarks.json and .md as the `proxy` part")
    parser.add_argument("--forward", metavar="UPSTREAM", help=argparse.SUPPRESS)  # the forwarder's process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.forward:
        forward(args.forward.rstrip("/"), args.port)
        return 0
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes.rate = args.rate
    if args.block_s:
        sizes.block_s = args.block_s
    if args.rounds:
        sizes.rounds = args.rounds
    started = datetime.now(UTC)
    result = measure(sizes)
    result["measured_at"] = started.isoformat(timespec="seconds")
    result["seconds"] = result["wall_s"]
    from bench import report_doc

    print("\n".join(report_doc.proxy_section(result)))
    print("\n".join(report_doc.targets_table({"proxy": result})))
    if args.record:
        if not load_results(ROOT / "docs" / "benchmarks.json"):
            log("no docs/benchmarks.json of the current layout to merge into; not recorded")
            return 1
        print(f"written: {record_part('proxy', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
