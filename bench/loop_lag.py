"""Event-loop lag under background load: the figure the self-check judges latency by (harness.selfcheck).

`python -m bench.loop_lag [--seconds 8] [--reps 3] [--only LOAD] [--client-share 0.1]` runs `LoopMonitor` (the
self-check's own sampler: a timer every 10 ms, its lateness in a log-spaced histogram, p99 read from it) on an event
loop for `--seconds`, `--reps` times under each load (`LOADS`):

- idle: nothing started by this script;
- light: one background process busy 15 ms of every 100 ms (15% of a core); light-fine: 1.5 ms of every 10 ms;
- heavy: one busy process per core; overloaded (only with `--only overloaded`): two per core;
- thread-light, thread-busy: a thread of this process busy 15% of the time, or all the time: it holds the GIL,
  which the loop's thread then waits for (as it would for a scorer or a writer thread of the harness's own).

Each load is measured with the loop otherwise idle and with the loop itself working for `--client-share` of its
time (0 and 0.1 by default: work due every 2 ms on a fixed schedule, queueing when the loop falls behind, as a
client reads streamed chunks), since a loop that works loses the scheduler's preference for a process that mostly
sleeps.

It prints each measurement as a JSON line on stderr, then all of them as JSON and a Markdown table on stdout: per
load, the loop lag p50/p99/max (median of the repetitions, their range in brackets), the background work's CPU
(processes: their user + system time; threads: this process's CPU less the loop thread's; over the wall time, in
cores) and the load average. The machine's other work is not stopped: read the load average beside each figure.
A load starts 0.5 s before its measurement and is stopped after it; repetitions are interleaved across loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from harness.selfcheck import LAG_LIMIT_MS, LoopMonitor


def _burn(share: float, period_s: float, stop: threading.Event | None = None) -> None:
    """Busy-loop for `share` of every `period_s` and sleep the rest (`share` 1.0: busy all the time), until killed
    or `stop` is set."""
    busy = share * period_s
    while stop is None or not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        if share < 1.0:
            time.sleep(max(0.0, period_s - (time.perf_counter() - start)))


def _fork(share: float, period_s: float) -> int:
    pid = os.fork()
    if pid == 0:  # the child burns until killed
        try:
            _burn(share, period_s)
        finally:
            os._exit(0)
    return pid


def _reap(pids: list[int]) -> float:
    """Kill the background processes; returns the CPU seconds (user + system) they used."""
    cpu = 0.0
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        _, _, usage = os.wait4(pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


@dataclass(frozen=True)
class Load:
    """Background work: `count` processes (or threads of this process, which compete for the GIL) each busy for
    `share` of every `period_s`; `per_core`: `count` per core."""

    where: str  # "process" or "thread"
    count: int
    share: float
    period_s: float
    per_core: bool = False
    note: str = ""


LOADS: dict[str, Load] = {
    "idle": Load("process", 0, 0.0, 0.1, note="nothing started by the script"),
    "light": Load("process", 1, 0.15, 0.1, note="1 process, busy 15 ms of every 100 ms"),
    "light-fine": Load("process", 1, 0.15, 0.01, note="1 process, busy 1.5 ms of every 10 ms"),
    "heavy": Load("process", 1, 1.0, 0.1, per_core=True, note="1 busy process per core"),
    "overloaded": Load("process", 2, 1.0, 0.1, per_core=True, note="2 busy processes per core"),
    "thread-light": Load("thread", 1, 0.15, 0.1, note="a thread of this process, busy 15 ms of every 100 ms"),
    "thread-busy": Load("thread", 1, 1.0, 0.1, note="a busy thread of this process (holds the GIL)"),
}
CLIENT_PERIOD_S = 0.002


async def _client(share: float, period_s: float) -> None:
    """Stands for a client handling streamed chunks as they arrive: a piece of work (`share` x `period_s` of CPU on
    the loop's thread) due every `period_s` on a fixed schedule, whatever the loop does. A loop that gets less CPU
    than that falls behind and the work queues, as chunks queue in a client's sockets."""
    busy = share * period_s
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        due += period_s
        await asyncio.sleep(max(0.0, due - loop.time()))


async def _monitor(seconds: float, client_share: float) -> dict[str, Any]:
    client = asyncio.ensure_future(_client(client_share, CLIENT_PERIOD_S)) if client_share > 0 else None
    monitor = LoopMonitor().start()
    await asyncio.sleep(seconds)
    check = monitor.stop()
    if client is not None:
        client.cancel()
    return {"p50_ms": check.loop_lag_p50_ms, "p99_ms": check.loop_lag_p99_ms, "max_ms": check.loop_lag_max_ms,
            "samples": check.samples, "loop_cpu_share": round(check.loop_cpu_share or 0.0, 3)}


def measure(name: str, seconds: float, client_share: float = 0.0) -> dict[str, Any]:
    """One measurement of the loop lag under load `name` (a key of `LOADS`), `seconds` long, with the loop itself
    busy for `client_share` of its time (in 2 ms periods)."""
    load = LOADS[name]
    count = load.count * (os.cpu_count() or 1) if load.per_core else load.count
    pids: list[int] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()
    before = time.thread_time()  # the background threads' CPU is this process's, less the loop thread's
    process_before = time.process_time()
    if load.where == "process":
        pids = [_fork(load.share, load.period_s) for _ in range(count)]
    else:
        threads = [threading.Thread(target=_burn, args=(load.share, load.period_s, stop), daemon=True)
                   for _ in range(count)]
        for thread in threads:
            thread.start()
    started = time.perf_counter()
    try:
        time.sleep(0.5 if count else 0.0)
        result = asyncio.run(_monitor(seconds, client_share))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        cpu = _reap(pids) if pids else (time.process_time() - process_before) - (time.thread_time() - before)
    return {**result, "load": name, "client_share": client_share, "background": count,
            "background_cores": round(cpu / wall, 3) if count else 0.0,
            "load_average": round(os.getloadavg()[0], 2)}


def markdown(results: dict[str, list[dict[str, Any]]]) -> str:
    """A table: per load (and the loop's own work), the background CPU and the loop lag p50/p99/max: the median
    of the repetitions, their range in brackets."""
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    lines = ["| load, loop's own work | background CPU (cores) | lag p50 ms | lag p99 ms | lag max ms | load average |",
             "|---|---|---|---|---|---|"]
    for load, runs in results.items():
        lines.append(
            f"| {load} | {cell([r['background_cores'] for r in runs])} | {cell([r['p50_ms'] for r in runs])} | "
            f"{cell([r['p99_ms'] for r in runs])} | {cell([r['max_ms'] for r in runs])} | "
            f"{cell([r['load_average'] for r in runs])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="measurements per load, interleaved (default 3)")
    parser.add_argument("--client-share", type=float, action="append",
                        help="share of the loop's own time spent working, as a client's chunk handling (repeatable; "
                             "default 0 and 0.1)")
    parser.add_argument("--only", action="append", choices=list(LOADS), help="measure only this load (repeatable)")
    args = parser.parse_args(argv)
    loads = args.only or [name for name in LOADS if name != "overloaded"]
    shares = args.client_share or [0.0, 0.1]
    results: dict[str, list[dict[str, Any]]] = {f"{load}, client {share:.0%}": [] for share in shares
                                                for load in loads}
    for _ in range(args.reps):  # interleaved, so that a change in the machine's other work spreads over every load
        for share in shares:
            for load in loads:
                row = measure(load, args.seconds, share)
                results[f"{load}, client {share:.0%}"].append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
                      "threshold_ms": LAG_LIMIT_MS, "seconds": args.seconds,
                      "loads": {name: LOADS[name].note for name in loads}, "results": results}, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
