"""`make bench`: is the harness ever the bottleneck? Each part measured side by side in one run, against the
physical limit of this machine (a raw aiohttp client), the official `openai` SDK and, with `--peers`, other
evaluation tools; the results go to docs/benchmarks.md (a table with each target, met or missed and by how much)
and docs/benchmarks.json.

Parts (`--only PART`, repeatable): startup, dispatch, latency, real, storage, cache, report, memory, proxy, peers
(peers only with `--peers`). `--quick` is a smoke run with small numbers (written to runs/bench/ unless `--out` says
otherwise). `--base-url URL --model NAME` runs the dispatch and latency parts against a server of your own (vLLM on
a GPU) instead of the local ones. Every load loop is bounded in count and time; only loopback servers are started.

Noise: the machine is shared, so each comparison is made pair by pair: in every repetition the contenders run
back to back (their order rotated), the ratio is taken within the repetition, and the median of the ratios is
reported with their min-max. A warm-up precedes every part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import clients, proxy_latency, report_doc, report_scale, servers, startup, workload
from bench.common import (
    ROOT,
    load_results,
    log,
    machine,
    peak_rss_kib,
    percentile,
    rss_mb,
    stop_process,
    summary,
    target,
    write_docs,
)

PARTS = ("startup", "dispatch", "latency", "real", "storage", "cache", "report", "memory", "proxy", "peers")
RUN_ORDER = ("startup", "storage", "cache", "report", "dispatch", "latency", "real", "proxy", "memory", "peers")
BUDGET_S = 15 * 60  # the whole `make bench`, peers excluded

# the targets
TARGET_VS_RAW = 0.5  # harness requests/s over the raw aiohttp client's, concurrency 64, streaming
TARGET_VS_SDK = 6.0  # over the openai SDK's
TARGET_ADDED_MS = 1.0  # added latency per request at concurrency 1
TARGET_TTFT_P99_MS = 2.0  # harness TTFT p99 minus the raw client's, 100 req/s
TARGET_REAL_RATIO = 1.02  # harness wall time over the raw client's against llama.cpp
TARGET_ROWS_S = 10_000.0
TARGET_CACHE_S = 2.0
TARGET_RSS_MB = 1000.0


# --------------------------------------------------------------------------------------------------- settings


class Settings:
    """Sizes of each part, full or quick."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.quick = quick
        self.base_url: str | None = args.base_url
        self.model: str = args.model or servers.MODEL
        self.api_key = os.environ.get("OPENAI_COMPATIBLE_API_KEY") or os.environ.get("VLLM_API_KEY")
        self.max_tokens: int = args.max_tokens
        self.reps = args.reps or (1 if quick else 3)
        # dispatch: (concurrency, requests) and the time bound of one measurement
        self.levels = [(1, 100), (64, 400)] if quick else [(1, 300), (8, 1000), (64, 2000), (256, 2000)]
        if args.concurrency:
            self.levels = [(c, n) for c, n in self.levels if c in args.concurrency] or [
                (c, 2000 if not quick else 400) for c in args.concurrency]
        self.measure_s = args.measure_s or (3.0 if quick else 8.0)
        self.warmup_requests = 50 if quick else 200
        # latency: open loop
        self.rate = args.rate
        self.latency_s = 2.0 if quick else 5.0
        self.ttft_ms, self.itl_ms = 20.0, 1.0
        # real model server
        self.real_cases = 2 if quick else 3
        self.real_max_tokens = 8 if quick else 24
        self.real_threads = 1
        self.real_reps = 1 if quick else 7
        # storage, cache, report, memory
        self.storage_records = 2000 if quick else 25_000
        self.cache_cases = 200 if quick else 1000
        self.report_cases = 1000 if quick else 10_000
        self.report_large_cases = 2000 if quick else 100_000  # rendered in a child process, peak RSS measured
        self.memory_cases = args.memory_cases or (2000 if quick else 100_000)
        self.memory_concurrency = 64
        self.peer_cases = 200 if quick else 2000
        self.started = time.perf_counter()
        self.budget_s = args.budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()


# ------------------------------------------------------------------------------------------------ utilities


@contextlib.contextmanager
def server_for(settings: Settings, kind: str, **options: Any) -> Iterator[tuple[str, servers.ServerProcess | None]]:
    """The base URL to benchmark against: `--base-url` if given, else a benchmark server of `kind` on loopback."""
    if settings.base_url:
        yield settings.base_url, None
        return
    with servers.ServerProcess(kind, **options) as server:
        yield server.base_url, server


def request_params(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(suite params, provider params): 20 output tokens from the zero-latency server; against a real server,
    `--max-tokens` with `ignore_eos`, so that every answer is that long (as `vllm bench serve --ignore-eos`)."""
    if settings.base_url:
        return {"temperature": 0.0, "max_tokens": settings.max_tokens, "seed": 0}, {"ignore_eos": True}
    return dict(workload.PARAMS), {}


# ------------------------------------------------------------------------------------------------- dispatch


async def part_dispatch(settings: Settings, tmp: Path) -> dict[str, Any]:
    """1. Dispatch ceiling: N requests at each concurrency through the raw client, the SDK, the harness's provider
    alone and the harness end to end (`shadow_run`), against the zero-latency server (or `--base-url`)."""
    from harness.suite.load import load_suite

    params, extra = request_params(settings)
    n_max = max(n for _, n in settings.levels)
    with server_for(settings, "zero") as (url, server):
        suite_dir = workload.write_suite(tmp / "dispatch", n_max, base_url=url, model=settings.model, params=params,
                                         provider_params=extra)
        suite = load_suite(suite_dir)
        streamed = [clients.body_for(settings.model, c.messages, {**params, **extra}, True) for c in suite.cases]
        plain = [clients.body_for(settings.model, c.messages, {**params, **extra}, False) for c in suite.cases]
        dbs = iter(range(10**6))

        async def measure(name: str, concurrency: int, n: int) -> dict[str, Any]:
            server_cpu = server.cpu_s() if server else None
            if name == "harness":
                db = tmp / f"dispatch-{next(dbs)}.duckdb"
                out = await workload.harness_run(suite_dir, url, concurrency, n, db, max_s=settings.measure_s,
                                                 extra=extra)
                out["self_check"] = workload.self_check(db, out.get("run_id"))
                for leftover in tmp.glob(db.name + "*"):
                    leftover.unlink()
            elif name == "provider":
                spec = workload.candidate(suite, url, concurrency, extra)
                async with clients.HarnessProvider(suite, spec) as provider:
                    out = await clients.closed_loop(provider.send_index, n, concurrency, settings.measure_s)
            else:
                bodies = plain if name.endswith("-json") else streamed
                async with clients.contender(name.removesuffix("-json"), url, concurrency,
                                             api_key=settings.api_key) as client:
                    out = await clients.closed_loop(lambda i: client.send(bodies[i % len(bodies)]), n, concurrency,
                                                    settings.measure_s)
            if server is not None and server_cpu is not None:
                out["server_cpu_busy"] = (server.cpu_s() - server_cpu) / out["wall_s"]
            return out

        log("dispatch: warm-up")
        for name in ("raw", "sdk", "provider", "harness"):
            await measure(name, 8, settings.warmup_requests)
        levels: dict[str, Any] = {}
        for concurrency, n in settings.levels:
            names = ["raw", "sdk", "provider", "harness"]
            if concurrency == 64:
                names += ["raw-json", "sdk-json"]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for rep in range(settings.reps):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    out = await measure(name, concurrency, n)
                    runs[name].append(out)
                    log(f"dispatch c={concurrency} rep {rep + 1}: {name:<9} {out['requests_per_s']:8.0f} req/s  "
                        f"{out['cpu_ms_per_request']:.3f} ms CPU/req  errors {out['errors']}")
            levels[str(concurrency)] = _dispatch_level(runs, n)
    return _dispatch_targets({"levels": levels, "requests": dict(settings.levels), "reps": settings.reps,
                              "time_bound_s": settings.measure_s, "base_url": settings.base_url,
                              "model": settings.model})


def _dispatch_level(runs: dict[str, list[dict[str, Any]]], n: int) -> dict[str, Any]:
    level: dict[str, Any] = {"contenders": {}, "ratios": {}}
    for name, outs in runs.items():
        level["contenders"][name] = {
            "requests_per_s": summary([o["requests_per_s"] for o in outs]),
            "cpu_ms_per_request": summary([o["cpu_ms_per_request"] for o in outs]),
            "cpu_us_per_chunk": summary([o["cpu_us_per_chunk"] for o in outs]),
            "ms_per_request_wall": summary([o["ms_per_request_wall"] for o in outs]),
            "server_cpu_busy": summary([o.get("server_cpu_busy") for o in outs]),
            "requests": [o["requests"] for o in outs], "errors": sum(o["errors"] for o in outs),
            "first_error": next((o["first_error"] for o in outs if o["first_error"]), None),
            "stopped_early": any(o["requests"] < n for o in outs),
        }
        if name == "harness":
            level["contenders"][name]["passed"] = [o.get("passed") for o in outs]
            level["contenders"][name]["self_check"] = outs[-1].get("self_check")

    def pairwise(a: str, b: str, key: str = "requests_per_s") -> dict[str, Any]:
        return summary([x[key] / y[key] if x[key] and y[key] else None for x, y in zip(runs[a], runs[b],
                                                                                       strict=True)])

    level["ratios"]["harness/raw"] = pairwise("harness", "raw")
    level["ratios"]["harness/sdk"] = pairwise("harness", "sdk")
    level["ratios"]["provider/raw"] = pairwise("provider", "raw")
    level["ratios"]["provider/sdk"] = pairwise("provider", "sdk")
    level["ratios"]["sdk/raw"] = pairwise("sdk", "raw")
    # the same comparisons by client CPU per request (raw's over the other's): what the rate ratio would be with a
    # core to each client, and much steadier than rates on a shared machine
    level["cpu_ratios"] = {
        "harness/raw": pairwise("raw", "harness", "cpu_ms_per_request"),
        "harness/sdk": pairwise("sdk", "harness", "cpu_ms_per_request"),
        "provider/raw": pairwise("raw", "provider", "cpu_ms_per_request"),
    }
    level["added_ms_per_request"] = {
        name: summary([x["ms_per_request_wall"] - y["ms_per_request_wall"]
                       for x, y in zip(runs[name], runs["raw"], strict=True)])
        for name in ("harness", "provider", "sdk")
    }
    return level


def _cpu_note(level: dict[str, Any] | None, pair: str) -> str:
    if not level:
        return ""
    ratio = level["cpu_ratios"][pair]
    note = f"by client CPU per request: {ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})"
    if pair == "harness/raw":
        cpu = {name: x["cpu_ms_per_request"]["median"] for name, x in level["contenders"].items()}
        note += (f"; ms of CPU a request: harness {cpu['harness']:.3f}, its provider alone {cpu['provider']:.3f}, "
                 f"raw {cpu['raw']:.3f}")
    return note


def _dispatch_targets(result: dict[str, Any]) -> dict[str, Any]:
    levels = result["levels"]
    c64, c1 = levels.get("64"), levels.get("1")
    result["targets"] = [
        target("dispatch: harness / raw aiohttp requests/s, c=64, streamed",
               c64["ratios"]["harness/raw"]["median"] if c64 else None, ">=", TARGET_VS_RAW, "×",
               note=_cpu_note(c64, "harness/raw")),
        target("dispatch: harness / openai SDK requests/s, c=64, streamed",
               c64["ratios"]["harness/sdk"]["median"] if c64 else None, ">=", TARGET_VS_SDK, "×",
               note=_cpu_note(c64, "harness/sdk")),
        target("dispatch: latency the harness adds per request, c=1",
               c1["added_ms_per_request"]["harness"]["median"] if c1 else None, "<=", TARGET_ADDED_MS, "ms"),
    ]
    return result


# -------------------------------------------------------------------------------------------------- latency


async def part_latency(settings: Settings, tmp: Path) -> dict[str, Any]:
    """7. Latency accuracy: the paced server (first token after 20 ms, then a chunk every 1 ms) driven open loop at
    a fixed rate by the raw client, the harness's provider and the SDK; what each measured against the truth."""
    from harness.suite.load import load_suite

    params, extra = request_params(settings)
    options = {} if settings.base_url else {"ttft_ms": settings.ttft_ms, "itl_ms": settings.itl_ms}
    with server_for(settings, "paced", **options) as (url, _server):
        suite_dir = workload.write_suite(tmp / "latency", 500, base_url=url, model=settings.model, params=params,
                                         provider_params=extra)
        suite = load_suite(suite_dir)
        bodies = [clients.body_for(settings.model, c.messages, {**params, **extra}, True) for c in suite.cases]
        # enough connections that no request waits for one: rate x the longest plausible answer time
        pool = max(64, int(settings.rate * 2))

        async def drive(name: str, duration_s: float) -> dict[str, Any]:
            spec = workload.candidate(suite, url, pool, extra)
            async with clients.contender(name, url, pool, suite=suite, spec=spec, api_key=settings.api_key) as client:
                if name == "provider":
                    send = client.send_index
                else:
                    def send(i: int, client: Any = client) -> Any:
                        return client.send(bodies[i % len(bodies)], timed=True)
                cpu = time.process_time()
                outcomes, late_ms = await clients.open_loop(send, settings.rate, duration_s)
                cpu = time.process_time() - cpu
            ok = [o for o in outcomes if o.ok and o.ttft_ms is not None]
            ttft = [o.ttft_ms for o in ok]
            itl = [(o.latency_ms - o.ttft_ms) / (o.chunks - 1) for o in ok if o.chunks > 1]
            gaps = [g for o in ok for g in (o.gaps_ms or ())]
            return {
                "requests": len(outcomes), "errors": len(outcomes) - len(ok),
                "first_error": next((o.error for o in outcomes if not o.ok), None),
                "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
                "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
                "chunk_gap_p50": percentile(gaps, 50), "chunk_gap_p99": percentile(gaps, 99),
                "launch_late_max_ms": late_ms, "cpu_ms_per_request": cpu * 1000 / max(1, len(outcomes)),
            }

        names = ["raw", "provider", "sdk"]
        log("latency: warm-up")
        for name in names:
            await drive(name, 0.5)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(settings.reps):
            for name in names[rep % 3:] + names[:rep % 3]:
                out = await drive(name, settings.latency_s)
                runs[name].append(out)
                log(f"latency rep {rep + 1}: {name:<8} TTFT p50 {out['ttft_p50'] or 0:6.2f} p99 "
                    f"{out['ttft_p99'] or 0:6.2f} ms  ITL p50 {out['itl_p50'] or 0:5.2f} p99 {out['itl_p99'] or 0:5.2f}"
                    f" ms  errors {out['errors']}")
    truth = None if settings.base_url else {"ttft_ms": settings.ttft_ms, "itl_ms": settings.itl_ms}
    contenders = {}
    for name, outs in runs.items():
        entry: dict[str, Any] = {"requests": sum(o["requests"] for o in outs), "errors": sum(o["errors"] for o in outs),
                                 "first_error": next((o["first_error"] for o in outs if o["first_error"]), None)}
        for key in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "chunk_gap_p50", "chunk_gap_p99",
                    "launch_late_max_ms", "cpu_ms_per_request"):
            entry[key] = summary([o[key] for o in outs])
        if truth:
            for key, true in (("ttft_p50", truth["ttft_ms"]), ("ttft_p99", truth["ttft_ms"]),
                              ("itl_p50", truth["itl_ms"]), ("itl_p99", truth["itl_ms"])):
                entry[key + "_error"] = summary([o[key] - true if o[key] is not None else None for o in outs])
        contenders[name] = entry

    def versus_raw(name: str, key: str) -> dict[str, Any]:
        return summary([x[key] - y[key] if x[key] is not None and y[key] is not None else None
                        for x, y in zip(runs[name], runs["raw"], strict=True)])

    result = {
        "rate_per_s": settings.rate, "duration_s": settings.latency_s, "reps": settings.reps, "truth": truth,
        "chunks": servers.CHUNKS, "contenders": contenders, "base_url": settings.base_url,
        "versus_raw": {name: {key: versus_raw(name, key) for key in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")}
                       for name in ("provider", "sdk")},
    }
    result["targets"] = [target(f"latency: harness TTFT p99 minus raw client's, {settings.rate:g} req/s",
                                result["versus_raw"]["provider"]["ttft_p99"]["median"], "<=", TARGET_TTFT_P99_MS,
                                "ms")]
    return result


# ------------------------------------------------------------------------------------------ real model server


async def part_real(settings: Settings, tmp: Path) -> dict[str, Any]:
    """2. The same few receipts through the harness and through the raw client, one at a time, against the bundled
    model under llama.cpp's server (started once); the ratio of wall times, pair by pair."""
    from harness.providers.plan import ServerPlan
    from harness.suite.load import load_suite

    suite_dir = workload.write_real_suite(tmp / "real", ROOT / "suites" / "invoices", settings.real_cases,
                                          settings.real_max_tokens)
    suite = load_suite(suite_dir)
    plan = ServerPlan(engine="llama_cpp", model="smollm2-135m", served_name="smollm2-135m")
    start = time.perf_counter()
    with llama_server(plan, tmp, settings.real_threads) as url:
        started_s = time.perf_counter() - start
        params = suite.spec.params.model_dump()
        bodies = [clients.body_for("smollm2-135m", c.messages, {**params, "response_format": {"type": "json_object"}},
                                   True) for c in suite.cases]
        dbs = iter(range(1000))

        async def raw() -> dict[str, Any]:
            async with clients.RawClient(url, 1) as client:
                begin = time.perf_counter()
                outs = [await client.send(body) for body in bodies]
                wall = time.perf_counter() - begin
            return {"wall_s": wall, "errors": sum(not o.ok for o in outs), "tokens": sum(o.chunks for o in outs),
                    "first_error": next((o.error for o in outs if not o.ok), None)}

        async def harness() -> dict[str, Any]:
            out = await workload.harness_run(suite_dir, url, 1, len(bodies), tmp / f"real-{next(dbs)}.duckdb",
                                             max_s=600)
            return {"wall_s": out["wall_s"], "errors": out["errors"], "tokens": out["chunks"],
                    "first_error": out["first_error"]}

        log("real: warm-up")
        # the last case: before every pass the server has just seen it (llama.cpp reuses the previous prompt's
        # prefix), whichever client ran the pass before; its first answer also compiles the JSON grammar
        async with clients.RawClient(url, 1) as client:
            await client.send(bodies[-1])
        pairs = []
        for rep in range(settings.real_reps):
            first, second = (raw, harness) if rep % 2 == 0 else (harness, raw)
            a, b = await first(), await second()
            r, h = (a, b) if first is raw else (b, a)
            pairs.append({"raw": r, "harness": h, "ratio": h["wall_s"] / r["wall_s"]})
            log(f"real rep {rep + 1}: raw {r['wall_s']:.2f} s ({r['tokens']} tokens), harness {h['wall_s']:.2f} s "
                f"({h['tokens']} tokens), ratio {pairs[-1]['ratio']:.3f}")
    ratio = summary([p["ratio"] for p in pairs])
    fastest = min(p["harness"]["wall_s"] for p in pairs) / min(p["raw"]["wall_s"] for p in pairs)
    return {
        "cases": len(bodies), "max_tokens": settings.real_max_tokens, "server_start_s": started_s,
        "threads": settings.real_threads,
        "raw_wall_s": summary([p["raw"]["wall_s"] for p in pairs]),
        "harness_wall_s": summary([p["harness"]["wall_s"] for p in pairs]),
        "added_s": summary([p["harness"]["wall_s"] - p["raw"]["wall_s"] for p in pairs]),
        "ratio": ratio, "pairs": pairs,
        "fastest_ratio": fastest,
        "targets": [target("real model (llama.cpp): harness / raw client wall time", ratio["median"], "<=",
                           TARGET_REAL_RATIO, "×", digits=3,
                           note=f"fastest harness run over fastest raw run: {fastest:.3f}× (the machine's other "
                                "work only ever adds time)")],
    }


@contextlib.contextmanager
def llama_server(plan: Any, tmp: Path, threads: int) -> Iterator[str]:
    """The bundled model under llama.cpp's server as the harness starts it (`harness.server.server_command` and
    `server_env`), with `threads` threads: one leaves the other core to the client, and a server whose threads
    wait for each other at every token suffers far less from the machine's other work with one."""
    from harness.providers.server import free_port, server_command, server_env

    port = free_port()
    with open(tmp / "llama.log", "wb") as out:
        process = subprocess.Popen(server_command(plan, port, threads=threads), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=server_env(plan))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/models", timeout=2) as answer:
                if answer.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not start: {(tmp / 'llama.log').read_text()[-500:]}")
            time.sleep(0.25)
        yield url
    finally:
        stop_process(process)


# -------------------------------------------------------------------------------------------------- storage


def part_storage(settings: Settings, tmp: Path) -> dict[str, Any]:
    """3. Result rows into DuckDB through the harness's write path (`Store.writer()`, `put_record`, journaled as a run
    does), with rows shaped like the runner's: a response of a few KB of text and its scores."""
    from harness.store.db import Store

    n = settings.storage_records
    records = list(workload.result_records(n))
    rows = sum(len(v) for record in records for v in record.values())
    text_kb = sum(len(json.dumps(r, default=str)) for r in records[:100]) / 100 / 1000
    path = tmp / "storage.duckdb"
    with Store(path) as store:
        run_id = store.start_run({"suite": "bench-storage", "n_cases": n})
        for record in records:
            for table in record.values():
                for row in table:
                    row["run_id"] = run_id
        writer = store.writer(journal=store.journal_path(run_id))
        progress: list[tuple[float, int]] = []
        stop = threading.Event()

        def watch() -> None:  # how far the writer has got, every 20 ms: the longest time it made no progress
            while not stop.wait(0.02):
                progress.append((time.perf_counter(), getattr(writer, "rows_written", 0)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        puts: list[float] = []
        start = time.perf_counter()
        cpu = time.process_time()
        for record in records:
            t = time.perf_counter()
            writer.put_record(record)
            puts.append(time.perf_counter() - t)
        queued = time.perf_counter() - start
        writer.close()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        stop.set()
        watcher.join()
        stored = store.con.execute("SELECT (SELECT count(*) FROM responses) + (SELECT count(*) FROM scores)"
                                   ).fetchall()[0][0]
    size = sum(p.stat().st_size for p in tmp.glob("storage.duckdb*"))
    stall = 0.0
    last_change = progress[0][0] if progress else start
    for i in range(1, len(progress)):
        if progress[i][1] != progress[i - 1][1]:
            stall = max(stall, progress[i][0] - last_change)
            last_change = progress[i][0]
    rows_s = rows / wall
    return {
        "records": n, "rows": rows, "rows_stored": stored, "kb_per_record": text_kb, "wall_s": wall,
        "queue_s": queued, "rows_per_s": rows_s, "records_per_s": n / wall, "cpu_s": cpu,
        "put_us_mean": statistics.fmean(puts) * 1e6, "put_us_p99": percentile(puts, 99) * 1e6,
        "put_ms_max": max(puts) * 1000, "longest_stall_s": stall, "file_mb": size / 1e6,
        "bytes_per_row": size / rows, "bytes_per_record": size / n,
        "targets": [target("storage: result rows/s into DuckDB (responses + scores)", rows_s, ">=", TARGET_ROWS_S,
                           "rows/s", note=f"{n / wall:,.0f} responses/s with their scores")],
    }


# ---------------------------------------------------------------------------------------------------- cache


async def part_cache(settings: Settings, tmp: Path) -> dict[str, Any]:
    """4. A run of 1,000 cases against the zero-latency server, then re-runs of it with the cache (`replay`)."""
    n = settings.cache_cases
    with servers.ServerProcess("zero") as server:
        suite_dir = workload.write_suite(tmp / "cache", n, base_url=server.base_url)
        db = tmp / "cache.duckdb"
        first = await workload.harness_run(suite_dir, server.base_url, 64, n, db, cache_mode="replay")
        reruns = []
        for _ in range(settings.reps):
            out = await workload.harness_run(suite_dir, server.base_url, 64, n, db, cache_mode="replay")
            reruns.append(out)
            log(f"cache: re-run of {n} cases {out['wall_s']:.2f} s, {out['cached']} from the cache")
    wall = summary([o["wall_s"] for o in reruns])
    return {
        "cases": n, "first_run_s": first["wall_s"], "rerun_s": wall, "cached": [o["cached"] for o in reruns],
        "rerun_cpu_s": summary([o["cpu_s"] for o in reruns]),
        "targets": [target(f"cache: re-run of {n:,} cached cases, wall time", wall["median"], "<=", TARGET_CACHE_S,
                           "s")],
    }


# --------------------------------------------------------------------------------------------------- report


def part_report(settings: Settings, tmp: Path) -> dict[str, Any]:
    """5. The report of a synthetic 10,000-case x 3-provider run, and the render time and peak RSS of a
    100,000-case one in a child process (`bench.report_scale`)."""
    return report_scale.measure_part(settings.report_cases, settings.report_large_cases)


# --------------------------------------------------------------------------------------------------- memory


def part_memory(settings: Settings, tmp: Path, done: dict[str, Any]) -> dict[str, Any]:
    """6. Peak RSS of a 100,000-case run against the zero-latency server, in a child process (`--child memory`).
    Sized down, and said so, only when the whole bench would otherwise pass its 15 minutes."""
    n = settings.memory_cases
    note = ""
    rate = None
    with contextlib.suppress(KeyError, TypeError):
        rate = done["dispatch"]["levels"]["64"]["contenders"]["harness"]["requests_per_s"]["median"]
    if rate is None:
        with contextlib.suppress(KeyError, TypeError):
            rate = settings.cache_cases / done["cache"]["first_run_s"]
    allowed = settings.remaining() - 60  # what is left of the 15 minutes, less a margin for writing up
    if not settings.quick and rate and allowed > 0:
        fits = int(rate * 0.85 * (allowed - 15))  # 15 s: writing the suite and loading it
        if fits < n:
            note = (f"sized down from {n:,} to {max(fits, 1000):,} cases: at the {rate:.0f} cases/s the harness did "
                    f"at c=64, {n:,} would take {n / rate:.0f} s, and {allowed:.0f} s of the 15 minutes were left")
            n = max(fits, 1000)
    with servers.ServerProcess("zero") as server:
        start = time.perf_counter()
        suite_dir = workload.write_suite(tmp / "memory", n, base_url=server.base_url)
        written_s = time.perf_counter() - start
        command = [sys.executable, "-m", "bench.run", "--child", "memory", "--child-suite", str(suite_dir),
                   "--base-url", server.base_url, "--child-db", str(tmp / "memory.duckdb"),
                   "--child-concurrency", str(settings.memory_concurrency)]
        limit = max(60.0, settings.remaining() - 30) if not settings.quick else 120.0
        log(f"memory: {n:,} cases at c={settings.memory_concurrency}, time bound {limit:.0f} s")
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=limit + 30, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"cases": n, "error": f"the child did not finish in {limit + 30:.0f} s",
                    "targets": [target(f"memory: peak RSS, {n:,}-case run", None, "<=", TARGET_RSS_MB, "MB")]}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"cases": n, "error": proc.stderr[-2000:],
                "targets": [target(f"memory: peak RSS, {n:,}-case run", None, "<=", TARGET_RSS_MB, "MB")]}
    out = json.loads(lines[-1][7:])
    out.update(cases=n, suite_written_s=written_s, note=note)
    if n < 100_000 and not settings.quick:
        # a straight line through the RSS before loading and the peak: what 100,000 cases would need
        out["extrapolated_100k_mb"] = out["rss_before_mb"] + (out["peak_rss_mb"] - out["rss_before_mb"]) * 100_000 / n
    out["targets"] = memory_targets(out)
    return out


def memory_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The memory target, with where the peak fell (the phase and how far above the loaded suite it rose)."""
    peak = out["peak_rss_mb"]
    notes = [out.get("note") or ""]
    if out.get("extrapolated_100k_mb"):
        notes.append(f"extrapolated to 100,000 cases: {out['extrapolated_100k_mb']:.0f} MB")
    phases = {"loading the suite": out.get("peak_loading_mb"), "setting the run up (storing the cases rows)":
              out.get("peak_setup_mb"), "the calls and after": out.get("peak_calls_mb")}
    known = {k: v for k, v in phases.items() if v is not None}
    if known:
        phase = max(known, key=lambda k: known[k])
        notes.append(f"highest while {phase}: {known[phase]:,.0f} MB, against {out['rss_before_mb']:,.0f} MB before "
                     f"loading and {out['rss_after_load_mb']:,.0f} MB with the suite loaded")
    return [target(f"memory: peak RSS of a {out['cases']:,}-case run", peak, "<=", TARGET_RSS_MB, "MB", digits=0,
                   note="; ".join(x for x in notes if x))]


def child_memory(args: argparse.Namespace) -> int:
    """The memory run itself, in its own process: RSS before loading, after loading the suite, at the end, and the
    peak (VmHWM: this process's own, where `ru_maxrss` would carry its parent's); the run's wall time and
    throughput. Prints one `RESULT {json}` line."""
    import harness.run.runner  # noqa: F401  (everything a run imports, before the first measurement)
    from harness.suite.load import load_suite

    marks: dict[str, float | None] = {"rss_before_mb": rss_mb()}
    samples: list[tuple[float, float]] = []  # (seconds from the start, RSS MB) every 100 ms
    phases: dict[str, float] = {}
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append((time.perf_counter() - start, rss_mb() or 0.0))

    def load(path: Path) -> Any:
        suite = load_suite(path)
        marks["rss_after_load_mb"] = rss_mb()
        phases["loaded"] = time.perf_counter() - start
        return suite

    def started(run_id: str, todo: int) -> None:  # cases stored, the first call about to go
        marks["rss_at_first_call_mb"] = rss_mb()
        phases["calls"] = time.perf_counter() - start

    threading.Thread(target=sample, daemon=True).start()
    out = asyncio.run(workload.harness_run(Path(args.child_suite), args.base_url, args.child_concurrency, 10**9,
                                           Path(args.child_db), max_s=args.child_max_s, load=load,
                                           on_started=started))
    stop.set()
    phases["end"] = time.perf_counter() - start

    def peak(begin: float, end: float) -> float | None:
        inside = [mb for t, mb in samples if begin <= t <= end]
        return max(inside) if inside else None

    marks["peak_loading_mb"] = peak(0, phases.get("loaded", 0))
    marks["peak_setup_mb"] = peak(phases.get("loaded", 0), phases.get("calls", 0))  # storing the cases
    marks["peak_calls_mb"] = peak(phases.get("calls", 0), phases["end"])  # calls, writer, metrics, finish
    if samples:
        marks["peak_at_s"] = max(samples, key=lambda x: x[1])[0]
    marks["phases_s"] = phases
    marks["rss_end_mb"] = rss_mb()
    peak_rss = peak_rss_kib() * 1024 / 1e6  # VmHWM: this process's own peak, not its parent's
    size = sum(p.stat().st_size for p in Path(args.child_db).parent.glob(Path(args.child_db).name + "*"))
    print("RESULT " + json.dumps({
        **marks, "peak_rss_mb": peak_rss, "wall_s": out["wall_s"],
        "requests": out["requests"], "errors": out["errors"], "passed": out["passed"], "status": out["status"],
        "requests_per_s": out["requests_per_s"], "cpu_ms_per_request": out["cpu_ms_per_request"],
        "db_mb": size / 1e6,
    }), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------- proxy


def part_proxy(settings: Settings, tmp: Path) -> dict[str, Any]:
    """9. What `harness proxy` adds to the caller's TTFT and total latency at 200 requests/s against the
    zero-latency upstream, beside direct calls, mirroring to a fast and to a slow candidate and with `--sample 0`
    (`bench.proxy_latency`: every server and proxy in a process of its own, all stopped on the way out)."""
    return proxy_latency.measure(proxy_latency.Sizes.quick() if settings.quick else proxy_latency.Sizes())


# ---------------------------------------------------------------------------------------------------- peers


async def part_peers(settings: Settings, tmp: Path, done: dict[str, Any]) -> dict[str, Any]:
    """8. The same cases through Inspect AI and promptfoo (installed into throwaway environments) and the harness,
    against the zero-latency server at concurrency 64, caching off."""
    from bench.peers import run_peers

    return await run_peers(settings, tmp, done)


# ------------------------------------------------------------------------------------------------- the docs


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=PARTS, metavar="PART",
                        help=f"run only this part (repeatable): {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small numbers (minutes, not 15)")
    parser.add_argument("--peers", action="store_true",
                        help="also run Inspect AI and promptfoo (installed into throwaway environments)")
    parser.add_argument("--base-url", help="benchmark this OpenAI-compatible server (e.g. vLLM on a GPU) instead of "
                                           "the local ones: the dispatch and latency parts")
    parser.add_argument("--model", help="with --base-url: the model to ask for (one the server serves)")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="with --base-url: output tokens per answer (sent with ignore_eos; default 128)")
    parser.add_argument("--concurrency", type=int, action="append", help="dispatch: only these concurrencies")
    parser.add_argument("--measure-s", type=float,
                        help="dispatch: stop starting requests after this many seconds a measurement (default 8)")
    parser.add_argument("--rate", type=float, default=100.0, help="latency: requests a second (default 100)")
    parser.add_argument("--reps", type=int, help="repetitions of each comparison (default 3; 1 with --quick)")
    parser.add_argument("--memory-cases", type=int, help="cases of the memory run (default 100,000)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="folder for benchmarks.md and benchmarks.json (default docs/; runs/bench/ with "
                                      "--quick or --base-url)")
    parser.add_argument("--child", choices=("memory",), help=argparse.SUPPRESS)
    parser.add_argument("--child-suite", help=argparse.SUPPRESS)
    parser.add_argument("--child-db", help=argparse.SUPPRESS)
    parser.add_argument("--child-concurrency", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--child-max-s", type=float, default=900.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.base_url and not args.model and not args.child:
        parser.error("--base-url needs --model (a model the server serves)")
    return args


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [p for p in RUN_ORDER if p in args.only]
    if args.base_url:
        return ["dispatch", "latency"]
    return [p for p in RUN_ORDER if p != "peers" or args.peers]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "memory":
        return child_memory(args)
    settings = Settings(args)
    parts = selected(args)
    if args.base_url:
        bad = [p for p in parts if p not in ("dispatch", "latency")]
        if bad:
            log(f"--base-url measures dispatch and latency only; not running {', '.join(bad)}")
            parts = [p for p in parts if p in ("dispatch", "latency")]
    out = Path(args.out) if args.out else (ROOT / "runs" / "bench" if args.quick or args.base_url else ROOT / "docs")
    previous = load_results(out / "benchmarks.json") if not args.quick else {}
    existing = previous if args.only else {}
    data: dict[str, Any] = {**existing, "parts": dict(existing.get("parts", {}))}
    started = datetime.now(UTC)
    merging = bool(existing.get("date"))  # --only: these parts replace theirs in the last full run's files
    if not merging:
        data.update(machine=machine(), date=started.isoformat(timespec="seconds"), quick=args.quick,
                    base_url=args.base_url, parts_run=parts, updates=[])
        # what is measured outside `make bench` (`python -m bench.llama_build --record`, the loop-lag write-up)
        # stays in the files: a full run replaces only its own parts
        for name, result in previous.get("parts", {}).items():
            if name not in PARTS:
                data["parts"].setdefault(name, result)
    done: dict[str, Any] = {}
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as folder:
        tmp = Path(folder)
        for part in parts:
            log(f"== {part} ({settings.elapsed():.0f} s so far)")
            begin = time.perf_counter()
            try:
                if part == "startup":
                    result = startup.measure(5 if not settings.quick else 1)
                elif part == "storage":
                    result = part_storage(settings, tmp)
                elif part == "report":
                    result = part_report(settings, tmp)
                elif part == "memory":
                    result = part_memory(settings, tmp, done)
                elif part == "proxy":
                    result = part_proxy(settings, tmp)
                elif part == "peers":
                    result = asyncio.run(part_peers(settings, tmp, done))
                else:
                    result = asyncio.run(globals()[f"part_{part}"](settings, tmp))
            except Exception as exc:  # one part failing must not lose the others
                import traceback

                traceback.print_exc()
                result = {"error": f"{type(exc).__name__}: {exc}", "targets": []}
            result["seconds"] = time.perf_counter() - begin
            result["measured_at"] = started.isoformat(timespec="seconds")
            done[part] = result
            data["parts"][part] = result
            for leftover in tmp.iterdir():  # each part's files go when it is done: the disk is small
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
    peers_s = done.get("peers", {}).get("seconds", 0.0)
    if merging:
        data.setdefault("updates", []).append({"parts": parts, "date": started.isoformat(timespec="seconds"),
                                               "seconds": settings.elapsed()})
    else:
        # the 15-minute budget is for `make bench` without the peers, whose installs alone can take minutes
        data["total_s"] = settings.elapsed() - peers_s
        data["peers_s"] = peers_s or None
        data["within_budget"] = data["total_s"] <= BUDGET_S
    md = write_docs(data, out)
    print(report_doc.terminal(data, parts))
    print(f"\nwritten: {md} and {md.with_suffix('.json')}  ({settings.elapsed():.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
