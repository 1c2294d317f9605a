"""Latency under load: one provider driven at a fixed concurrency with the suite's own requests (`harness load`).

What is sent. The request a shadow run would send for each case (`runner.request_for`: the suite's messages,
parameters and output schema), to one provider of the suite, with no response cache and no retries: a load test
measures the server, so every call goes to it and a failed call is counted, recorded with its error kind, and not
tried again. Each call is bounded by the provider's timeout (`timeout` in suite.toml; 600 s for `local:`/`vllm:`).
An answer whose stream ends without a finish reason counts as failed (`truncated`): llama-cpp-python's server
ends a running answer that way when another request arrives. A `local:` model with no URL is started under
llama.cpp first, as for a run; `--base-url` points at a server of your own (vLLM on a GPU box). The provider's
own `concurrency` and `max_attempts` do not apply.

How it is driven. `concurrency` workers each take the next case in suite order (cycling back to the first when
the cases run out) and send it as soon as their previous answer is in, so exactly `concurrency` requests are in
flight while the test runs (a closed loop, as vLLM's and llama.cpp's benchmarks do at fixed concurrency). No new
request is started once `duration_s` has passed since the first one was sent or `max_requests` have been sent,
whichever comes first; the ones in flight then finish.

Warm-up. Before the clock starts, `min(concurrency, 4)` requests (the suite's last cases, so that the measured
requests begin with prompts the server has not just seen) are sent at once and awaited. They are left out of
every figure and are not stored in `load_requests`: a server's first requests load weights into memory, compile
a JSON schema's grammar, capture CUDA graphs or fill caches, and would otherwise land in the p99. If every
warm-up request fails the test stops with the error, since nothing useful can be measured. `warmup=0` turns it off.

What is recorded per request (`load_requests`): the case, the order sent (`seq`), when it was sent (`sent_s`,
seconds after the first measured request), time to first token (first streamed text), end-to-end latency (request
sent to last token), the tokens the server reported (output tokens are estimated from the chunks by servers that
report no usage), the error if any, and time per output token after the first:
`tpot_ms = (latency_ms - ttft_ms) / (output_tokens - 1)`, defined when more than one token came back.

What is summarised (`load_tests`, one row): `elapsed_s` runs from the first measured request sent to the last
answer received, the drain of the final in-flight requests included. `requests` counts every measured request
(`errors` of them failed). Throughput counts successful answers only: `requests_per_s = (requests - errors) /
elapsed_s` and `output_tokens_per_s` = the output tokens of those answers / `elapsed_s`. The p50/p95/p99 of time to
first token, time per output token and latency are over the successful requests (numpy's percentile, linear
interpolation between the two nearest requests), NULL when there are none. `host` (JSON) says where the load was
generated: hostname, platform, CPU count, the GPUs `nvidia-smi -L` lists, and whether the server ran on this host
(a managed server or a loopback URL): GPUs of a remote server are not seen. Status is `completed`, or `interrupted`
when the test was cancelled (Ctrl-C), with what was measured until then; requests cancelled in flight are not
recorded. A row is written only once the measured phase has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import platform
import re
import socket
import subprocess
import time
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, ProviderError
from harness.providers.base import Completion, Provider, Request, failed_completion
from harness.providers.openai_client import OpenAICompatible
from harness.providers.plan import ProviderPlan, plan_provider, resolve_served_models
from harness.providers.registry import build_provider
from harness.providers.server import ManagedServer
from harness.run.runner import request_for
from harness.selfcheck import LoopMonitor
from harness.store.db import BatchWriter, Store, new_run_id
from harness.suite.load import Suite
from harness.suite.spec import ProviderSpec
from harness.terminal import printable

MAX_CONCURRENCY = 1024
MAX_DURATION_S = 24 * 3600.0
DEFAULT_WARMUP = 4  # at most this many warm-up requests (never more than the concurrency)
PERCENTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "latency")


async def load_test(
    suite: Suite,
    provider: str | ProviderSpec,
    store: Store,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    warmup: int | None = None,
    base_url: str | None = None,
    run_id: str | None = None,
    server_log_dir: Path | None = None,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Drive `provider` (a provider id of `suite`, or a `ProviderSpec` such as the CLI's `--candidate`) with
    `concurrency` requests in flight for `duration_s` seconds or `max_requests` requests, whichever ends first,
    and store the measurements beside the suite's run (see the module docstring for what is measured and how).

    `warmup` requests (default min(concurrency, 4)) are sent first and left out. `base_url` points `local:`/`vllm:`
    providers at a running server (else a `local:` model is started, its log in `server_log_dir`). `run_id` is the
    shadow run the test stands beside (default: the suite's latest in `store`, if any). `progress(1)` is called as
    each measured request finishes.

    Returns the stored `load_tests` row as a dict (`host` parsed), plus `error_kinds` ({kind: count}), which is
    not stored in that row (it is in `load_requests`). Raises HarnessError for bad arguments, and
    ProviderError for a provider the suite does not have, one that cannot run (e.g. a missing key) or one that
    failed every warm-up request. On cancellation (Ctrl-C) what was measured is stored as `interrupted` and the
    cancellation goes on.
    """
    warmup = _check_arguments(concurrency, duration_s, max_requests, warmup)
    plan = _plan(suite, provider, base_url)
    await asyncio.to_thread(resolve_served_models, [plan])
    if plan.status != "ready":
        raise ProviderError(printable(f"provider '{plan.name}' cannot run: {plan.reason}", one_line=True))
    if run_id is None:
        run_id = store.latest_run(suite.name)
    host = await asyncio.to_thread(host_info)
    async with contextlib.AsyncExitStack() as stack:
        if plan.server is not None:
            server = await stack.enter_async_context(ManagedServer(plan.server, log_dir=server_log_dir))
            plan.base_url = server.base_url
        client = build_provider(plan)
        stack.push_async_callback(client.aclose)
        if isinstance(client, OpenAICompatible):
            # no extra tokenize call per answer (llama.cpp reports no usage): it would load the server measured
            client.token_count_url = None
        host["server_on_this_host"] = _server_on_this_host(plan)
        requests = [(case.id, request_for(suite, case, plan)) for case in suite.cases]
        await _warm_up(client, plan, requests, warmup)
        fixed = {
            "load_id": new_run_id(), "run_id": run_id, "suite": suite.name, "suite_hash": suite.hash,
            "provider": plan.name, "model": plan.request_model, "endpoint": plan.describe_endpoint(),
            "concurrency": concurrency, "duration_s": float(duration_s), "max_requests": max_requests,
            "warmup": warmup, "host": host,
        }
        test = _LoadTest(
            fixed["load_id"], client, requests, plan.timeout, concurrency, duration_s, max_requests,
            store.writer(), progress,
        )
        try:
            await test.run()
        except (asyncio.CancelledError, KeyboardInterrupt):
            _store(store, test, fixed, "interrupted")  # synchronous: the loop is being torn down
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                test.writer.close()
            raise
        row = await asyncio.to_thread(_store, store, test, fixed, "completed")
    return {**row, "error_kinds": dict(test.error_kinds)}




def load_summary_text(row: dict[str, Any]) -> str:
    """A few lines for the terminal: what was driven, throughput, TTFT/TPOT/latency percentiles and errors; names
    a server gave (its model, error kinds) are stripped of terminal control sequences (`terminal.printable`)."""
    status = "" if row.get("status") == "completed" else f" ({row.get('status')}: figures up to the stop)"
    limit = f", at most {row['max_requests']} requests" if row.get("max_requests") else ""
    requests, errors = row.get("requests") or 0, row.get("errors") or 0
    share = f" ({errors / requests:.1%})" if requests else ""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted((row.get("error_kinds") or {}).items()))
    lines = [
        f"load test {row['load_id']}{status}: {row['provider']} at {row.get('endpoint')}",
        f"  concurrency {row['concurrency']}, {_num(row.get('duration_s'))} s asked{limit}, "
        f"{_num(row.get('elapsed_s'))} s measured",
        f"  requests    {requests:,}, errors {errors:,}{share}{': ' + kinds if kinds and errors else ''}",
        f"  throughput  {_num(row.get('requests_per_s'))} requests/s, "
        f"{_num(row.get('output_tokens_per_s'))} output tokens/s",
    ]
    for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("latency", "latency")):
        cells = "  ".join(f"p{p} {_ms(row.get(f'{metric}_p{p}_ms')):>9}" for p in PERCENTILES)
        lines.append(f"  {label:<10}  {cells}")
    return printable("\n".join(lines))


def host_info() -> dict[str, Any]:
    """Where the load is generated: hostname, platform, CPU count and the GPUs `nvidia-smi -L` lists
    (an empty list when there is no nvidia-smi or it does not answer within 5 s)."""
    return {
        "hostname": socket.gethostname(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "gpus": _gpus(),
    }


def _gpus() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_gpu_list(out)


_GPU_LINE = re.compile(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?\s*$")


def parse_gpu_list(text: str) -> list[str]:
    """GPU names from `nvidia-smi -L` output ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"), UUIDs dropped."""
    return [m.group(1) for line in text.splitlines() if (m := _GPU_LINE.match(line.strip()))]


def _check_arguments(concurrency: int, duration_s: float, max_requests: int | None, warmup: int | None) -> int:
    """Validate the bounds; returns the number of warm-up requests to send."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise HarnessError(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, not {concurrency!r}")
    if (
        isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not math.isfinite(duration_s)
        or not 0 < duration_s <= MAX_DURATION_S
    ):
        raise HarnessError(
            f"duration must be more than 0 and at most {MAX_DURATION_S:.0f} s (24 h), not {duration_s!r}"
        )
    if max_requests is not None and (
        isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1
    ):
        raise HarnessError(f"max_requests must be a whole number, 1 or more, not {max_requests!r}")
    if warmup is None:
        return min(concurrency, DEFAULT_WARMUP)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= MAX_CONCURRENCY:
        raise HarnessError(f"warmup must be a whole number from 0 to {MAX_CONCURRENCY}, not {warmup!r}")
    return warmup


def _plan(suite: Suite, provider: str | ProviderSpec, base_url: str | None) -> ProviderPlan:
    if isinstance(provider, ProviderSpec):
        spec = provider
    else:
        found = [spec for spec in suite.spec.providers if spec.id == provider]
        if not found:
            ids = ", ".join(spec.id for spec in suite.spec.providers)
            raise ProviderError(f"suite {suite.name} has no provider '{provider}'; its providers are {ids}")
        spec = found[0]
    plan = plan_provider(spec, base_url=base_url, suite_dir=suite.path)
    if plan.kind == "log":
        raise ProviderError(f"provider '{plan.name}' answers from a log file: there is no server to load test")
    if plan.status != "ready":
        raise ProviderError(printable(f"provider '{plan.name}' cannot run: {plan.reason}", one_line=True))
    return plan


def _server_on_this_host(plan: ProviderPlan) -> bool:
    """Whether the server runs where the load is generated (so the GPUs in `host` are its GPUs)."""
    if plan.server is not None:
        return True
    host = urllib.parse.urlsplit(plan.base_url or "").hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _call(client: Provider, request: Request, timeout_s: float) -> Completion:
    """One attempt, bounded by `timeout_s` from request to last token; never raises for a failed call. An answer
    whose stream ended without a finish reason counts as failed (`truncated`)."""
    started_at = datetime.now(UTC)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            completion = await client.complete(request)
    except TimeoutError:
        return Completion(
            text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
            latency_ms=(time.perf_counter() - start) * 1000, finish_reason=None,
            error=f"no complete answer within the {timeout_s:g} s request timeout", error_kind="timeout",
            started_at=started_at,
        )
    except Exception as exc:  # a provider should not raise; if one does, it is this request's error
        return failed_completion(exc, latency_ms=(time.perf_counter() - start) * 1000, started_at=started_at)
    if completion.error is None and completion.finish_reason is None:
        # [DONE] with no finish_reason: the server cut the answer short (llama-cpp-python's server does this to a
        # running request when another one arrives); a fast non-answer must not count as throughput
        return replace(completion, error="the stream ended without a finish_reason: the server cut the answer short",
                       error_kind="truncated")
    return completion


async def _warm_up(client: Provider, plan: ProviderPlan, requests: list[tuple[str, Request]], n: int) -> None:
    """Send `n` requests at once (the suite's last cases) and wait for them; ProviderError if all of them fail."""
    if n == 0:
        return
    picked = [requests[(len(requests) - 1 - i) % len(requests)][1] for i in range(n)]
    answers = await asyncio.gather(*(_call(client, request, plan.timeout) for request in picked))
    if all(answer.error for answer in answers):
        raise ProviderError(printable(
            f"provider '{plan.name}' at {plan.describe_endpoint()} failed all {n} warm-up requests "
            f"({answers[0].error_kind}: {answers[0].error}); nothing was measured", one_line=True,
        ))


def tpot_ms(ttft_ms: float | None, latency_ms: float | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first: (latency - TTFT) / (output tokens - 1), when more than one token."""
    if ttft_ms is None or latency_ms is None or output_tokens is None or output_tokens < 2:
        return None
    return (latency_ms - ttft_ms) / (output_tokens - 1)


class _LoadTest:
    """The measured phase: closed-loop workers, a row per finished request streamed to the store's writer, and
    compact arrays of the successful requests' figures for the percentiles (24 bytes a request)."""

    def __init__(
        self,
        load_id: str,
        client: Provider,
        requests: list[tuple[str, Request]],
        timeout_s: float,
        concurrency: int,
        duration_s: float,
        max_requests: int | None,
        writer: BatchWriter,
        progress: Callable[[int], Any] | None,
    ) -> None:
        self.client = client
        self.requests = requests
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.writer = writer
        self.progress = progress
        self.load_id = load_id
        self.values = {metric: array("d") for metric in METRICS}
        self.sent = 0
        self.finished = 0
        self.errors = 0
        self.error_kinds: Counter[str] = Counter()
        self.output_tokens = 0
        self.tokens_known = False
        self.t0: float | None = None
        self.last_done: float | None = None
        self.started_at: datetime | None = None
        self.monitor: LoopMonitor | None = None  # the client's self-check over the measured phase

    async def run(self) -> None:
        self.t0 = time.perf_counter()
        self.started_at = datetime.now(UTC)
        self.monitor = LoopMonitor().start()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self._worker())
        except ExceptionGroup as failed:  # a worker's error (the store's writer failing): raise it as itself
            raise failed.exceptions[0] from None
        finally:
            self.monitor.stop()

    def _more(self) -> bool:
        assert self.t0 is not None
        if self.max_requests is not None and self.sent >= self.max_requests:
            return False
        return time.perf_counter() - self.t0 < self.duration_s

    async def _worker(self) -> None:
        while self._more():
            seq = self.sent
            self.sent += 1
            case_id, request = self.requests[seq % len(self.requests)]
            sent = time.perf_counter()
            completion = await _call(self.client, request, self.timeout_s)
            self._record(seq, case_id, sent, completion)

    def _record(self, seq: int, case_id: str, sent: float, c: Completion) -> None:
        assert self.t0 is not None
        self.last_done = time.perf_counter()
        tpot = tpot_ms(c.ttft_ms, c.latency_ms, c.output_tokens) if not c.error else None
        self.writer.put("load_requests", {
            "load_id": self.load_id, "seq": seq, "case_id": case_id, "sent_s": sent - self.t0,
            "ttft_ms": c.ttft_ms, "tpot_ms": tpot, "latency_ms": c.latency_ms, "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens, "error_kind": c.error_kind if c.error else None, "error": c.error,
        })
        self.finished += 1
        if c.error:
            self.errors += 1
            self.error_kinds[c.error_kind or "unknown"] += 1
        else:
            for metric, value in (("ttft", c.ttft_ms), ("tpot", tpot), ("latency", c.latency_ms)):
                if value is not None:
                    self.values[metric].append(value)
            if c.output_tokens is not None:
                self.output_tokens += c.output_tokens
                self.tokens_known = True
        if self.progress:
            self.progress(1)

    def summary(self) -> dict[str, Any]:
        """The measured columns of the `load_tests` row."""
        elapsed = self.last_done - self.t0 if self.last_done is not None and self.t0 is not None else None
        ok = self.finished - self.errors
        rate = elapsed is not None and elapsed > 0
        row: dict[str, Any] = {
            "elapsed_s": elapsed, "started_at": self.started_at, "requests": self.finished, "errors": self.errors,
            "requests_per_s": ok / elapsed if rate else None,
            "output_tokens_per_s": self.output_tokens / elapsed if rate and self.tokens_known else None,
        }
        if self.monitor is not None:  # judged only if some latency was measured: not when every request failed
            row.update(self.monitor.stop(latencies=len(self.values["latency"])).columns())
        for metric in METRICS:
            values = np.frombuffer(self.values[metric], dtype=np.float64) if len(self.values[metric]) else None
            quantiles = np.percentile(values, PERCENTILES) if values is not None else [None] * len(PERCENTILES)
            for p, q in zip(PERCENTILES, quantiles, strict=True):
                row[f"{metric}_p{p}_ms"] = None if q is None else float(q)
        return row


def _store(store: Store, test: _LoadTest, fixed: dict[str, Any], status: str) -> dict[str, Any]:
    """Flush the request rows, then write the `load_tests` row; returns it (with `host` as a dict)."""
    test.writer.close()
    row = {**fixed, **test.summary(), "ended_at": datetime.now(UTC), "status": status}
    if row["started_at"] is None:
        row["started_at"] = row["ended_at"]
    store.insert("load_tests", [{**row, "host": json.dumps(row["host"])}])
    return row


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"
