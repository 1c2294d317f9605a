"""The harness checks itself: was the client fast enough to measure the latency it reports?

An evaluation client that is short of CPU reads every streamed chunk late, and the lateness lands in its time to
first token and latency figures: they measure the client, not the server. `LoopMonitor` runs beside the calls of a
shadow run (`harness.runner.shadow_run`, from the first call to the last answer) and of a load test's measured phase
(`harness.load.load_test`) and records:

- **event-loop lag**: a timer callback asks to run every `INTERVAL_S` (10 ms) and records how late it ran. Any
  callback of the loop, such as the read of a streamed chunk, waits as long; an idle loop is on time within about
  a millisecond (epoll's resolution). Samples go to a fixed log-spaced histogram (`LagHistogram`, 5% wide bins,
  3 KB however long the run), from which p50 and p99 are read as numpy's percentile reads them (so a single stray
  spike among a hundred samples is not the p99); the maximum is exact;
- **client CPU**: `time.process_time()` (every thread of this process: the event loop, the DuckDB writer, scorers;
  not a server the harness started, which is another process) over the same wall-clock span, and the event loop
  thread's own share (`time.thread_time()`). A CPU share near 1.0 on the loop thread means one core was spent.

The latency figures are `latency_reliable` when the loop lag p99 is at most `LAG_LIMIT_MS` (25 ms); above it the
client could not keep up (too much concurrency for this machine, a slow custom scorer, a blocked loop) and the run
is marked so in the store (runs and load_tests: `client_cpu_s`, `client_cpu_share`, `loop_lag_p50_ms`,
`loop_lag_p99_ms`, `loop_lag_max_ms`, `latency_reliable`), the report, the terminal summary and the gate, which will
not vouch for a latency ceiling measured that way. The limit is measured (`bench/loop_lag.py`, docs/benchmarks.md):
on a 2-core machine, other work (a process busy 15% of a core, one busy process per core, two per core, a thread of
the harness's own process holding the GIL) delays the loop's wake-ups by at most about 10 ms at p99, and runs on a
lightly loaded machine have been seen at 12-20 ms; a client that falls behind (a saturated loop, blocking work on
it) is late by tens to hundreds of milliseconds. A lag within the limit adds at most about that much to a latency
of hundreds of milliseconds or more. When no latency was measured (every call failed), there is nothing to judge:
`latency_reliable` is None, and nothing is said. Note that a client driving many streams that answer together
(a fixed-delay server, a batch of requests finishing in the same decoding step) handles their ends in one burst:
the lag then shows how late the last of them was read. The monitor itself costs one timer callback per 10 ms,
about 5 µs each: 0.05% of a core.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from typing import Any

# loop lag p99 above this: the client could not keep up; its latency figures are not trusted (docs/benchmarks.md,
# "Event-loop lag under load": other work on a 2-core machine stays under ~10 ms, light runs were seen at 12-20 ms)
LAG_LIMIT_MS = 25.0
INTERVAL_S = 0.010  # how often the monitor asks the loop to wake it

# runs / load_tests columns the check fills
COLUMNS = (
    "client_cpu_s", "client_cpu_share", "loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms", "latency_reliable",
)


class LagHistogram:
    """Counts of lag values in log-spaced bins (each `RATIO` times wider than the last, from `FLOOR_MS`), so that
    memory stays fixed however many samples arrive; quantiles are read to within half a bin (2.5%)."""

    FLOOR_MS = 0.01  # lags below 10 µs share the first bin
    RATIO = 1.05
    BINS = 400  # up to 0.01 ms * 1.05**400, about 3 hours

    __slots__ = ("counts", "max_ms", "n")

    def __init__(self) -> None:
        self.counts = [0] * self.BINS
        self.n = 0
        self.max_ms = 0.0

    def add(self, lag_ms: float) -> None:
        """Count one lag, in milliseconds (negative values count as 0)."""
        lag_ms = max(0.0, lag_ms)
        if lag_ms > self.max_ms:
            self.max_ms = lag_ms
        index = 0 if lag_ms <= self.FLOOR_MS else int(math.log(lag_ms / self.FLOOR_MS) / _LOG_RATIO) + 1
        self.counts[min(index, self.BINS - 1)] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The `q` quantile (0 to 1) of the lags counted, as numpy's `percentile` computes it (linear
        interpolation between the two nearest samples, so one stray spike among a hundred samples does not make
        the p99), each sample read as the middle of its bin and never above the largest lag seen. None when
        there are none."""
        if not self.n:
            return None
        position = q * (self.n - 1)
        low = int(position)
        a, b = self._nth(low), self._nth(min(low + 1, self.n - 1))
        return a + (b - a) * (position - low)

    def _nth(self, k: int) -> float:
        """The (0-based) `k`-th smallest sample, as the middle of its bin."""
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen > k:
                if index == 0:
                    return min(self.FLOOR_MS / 2, self.max_ms)
                return min(self.FLOOR_MS * self.RATIO ** (index - 0.5), self.max_ms)
        return self.max_ms


_LOG_RATIO = math.log(LagHistogram.RATIO)


@dataclass(frozen=True)
class SelfCheck:
    """What the monitor saw over one span: CPU used by this process and by the event loop's thread, wall time,
    the loop's lag and, where the caller counted them, how many latencies were measured in the span (`latencies`:
    answers that came back; None when not counted). `latency_reliable` is None when the span was too short for a
    single sample or no latency was measured."""

    wall_s: float
    client_cpu_s: float
    loop_cpu_s: float
    samples: int
    loop_lag_p50_ms: float | None
    loop_lag_p99_ms: float | None
    loop_lag_max_ms: float | None
    threshold_ms: float = LAG_LIMIT_MS
    latencies: int | None = None

    @property
    def client_cpu_share(self) -> float | None:
        """CPU seconds per wall-clock second, all threads (above 1.0 when more than one core was busy)."""
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else None

    @property
    def loop_cpu_share(self) -> float | None:
        """The event loop thread's CPU seconds per wall-clock second: near 1.0, it had no time to spare."""
        return self.loop_cpu_s / self.wall_s if self.wall_s > 0 else None

    @property
    def latency_reliable(self) -> bool | None:
        """Whether the loop woke on time (lag p99 at most the threshold); None with no sample, or when no latency
        was measured (every call failed): there are no figures to vouch for or against."""
        return lag_reliable(self.loop_lag_p99_ms, self.latencies, self.threshold_ms)

    def columns(self) -> dict[str, Any]:
        """The `runs` / `load_tests` columns."""
        return {
            "client_cpu_s": self.client_cpu_s, "client_cpu_share": self.client_cpu_share,
            "loop_lag_p50_ms": self.loop_lag_p50_ms, "loop_lag_p99_ms": self.loop_lag_p99_ms,
            "loop_lag_max_ms": self.loop_lag_max_ms, "latency_reliable": self.latency_reliable,
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything measured, for JSON."""
        return {**self.columns(), "wall_s": self.wall_s, "loop_cpu_s": self.loop_cpu_s,
                "loop_cpu_share": self.loop_cpu_share, "samples": self.samples, "threshold_ms": self.threshold_ms,
                "latencies": self.latencies}


def lag_reliable(p99_ms: float | None, latencies: int | None = None, threshold_ms: float = LAG_LIMIT_MS) -> bool | None:
    """The self-check's verdict on latency figures measured while the event loop's lag p99 was `p99_ms`: True at
    or under `threshold_ms`, False over it; None when there is no lag sample or `latencies` (the number measured,
    None when not counted) is 0."""
    if p99_ms is None or latencies == 0:
        return None
    return p99_ms <= threshold_ms


class LoopMonitor:
    """Samples the running event loop's lag and this process's CPU between `start()` and `stop()`, both called on
    the loop's thread (`stop` is synchronous, so it can run in a `finally` while the run is being cancelled).

    The sampler is a plain timer callback (`loop.call_at`), not a task: each wake-up costs a few microseconds."""

    def __init__(self, interval_s: float = INTERVAL_S, threshold_ms: float = LAG_LIMIT_MS) -> None:
        self.interval_s = interval_s
        self.threshold_ms = threshold_ms
        self.histogram = LagHistogram()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._start: tuple[float, float, float] | None = None
        self.result: SelfCheck | None = None

    def start(self) -> LoopMonitor:
        """Start sampling (inside a running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._start = (time.perf_counter(), time.process_time(), time.thread_time())
        self._schedule(self._loop.time())
        return self

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None and self._due is not None
        now = self._loop.time()
        self.histogram.add((now - self._due) * 1000)
        self._schedule(now)

    def stop(self, latencies: int | None = None) -> SelfCheck:
        """Stop sampling and return what was seen; `latencies`: how many latencies were measured over the span
        (answers that came back), so that a span where every call failed is not judged. A wake-up still pending
        counts if it is already late (a loop blocked until the end would otherwise leave no trace). Calling it again
        returns the same result, with `latencies` set if given."""
        if self.result is not None:
            if latencies is not None:
                self.result = replace(self.result, latencies=latencies)
            return self.result
        if self._start is None or self._loop is None:
            raise RuntimeError("LoopMonitor.stop() before start()")
        now, cpu, thread_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        if self._handle is not None:
            self._handle.cancel()
        if self._due is not None and self._loop.time() > self._due:
            self.histogram.add((self._loop.time() - self._due) * 1000)
        h = self.histogram
        self.result = SelfCheck(
            wall_s=now - self._start[0], client_cpu_s=cpu - self._start[1], loop_cpu_s=thread_cpu - self._start[2],
            samples=h.n, loop_lag_p50_ms=h.quantile(0.5), loop_lag_p99_ms=h.quantile(0.99),
            loop_lag_max_ms=h.max_ms if h.n else None, threshold_ms=self.threshold_ms, latencies=latencies,
        )
        return self.result

    async def __aenter__(self) -> LoopMonitor:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def merge(before: dict[str, Any] | None, now: SelfCheck | None) -> dict[str, Any]:
    """The columns of a run resumed after a stop: stored figures `before` (columns, possibly NULL) combined with
    this session's: CPU seconds add up, lags keep the worse of the two, and the latency is reliable only if it
    was in both sessions (a session with no sample leaves the other's verdict)."""
    mine = now.columns() if now is not None else dict.fromkeys(COLUMNS)
    if not before:
        return mine
    out: dict[str, Any] = {}
    for column in COLUMNS:
        a, b = _value(before.get(column)), mine.get(column)
        if a is None or b is None:
            out[column] = b if a is None else a
        elif column == "client_cpu_s":
            out[column] = a + b
        elif column == "latency_reliable":
            out[column] = bool(a) and bool(b)
        else:
            out[column] = max(a, b)
    return out


def _value(value: Any) -> Any:
    """SQL NULL as read through pandas (NaN, NA) as None."""
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except (TypeError, ValueError):  # pandas.NA compares to NA
        return None
    return value


def unreliable_reason(row: dict[str, Any]) -> str | None:
    """Why the latency figures of a `runs` or `load_tests` row cannot be trusted (its loop lag and CPU, and what
    to do), or None when they can or were not checked."""
    reliable = _value(row.get("latency_reliable"))
    if reliable is None or bool(reliable):
        return None
    p99, most = _value(row.get("loop_lag_p99_ms")), _value(row.get("loop_lag_max_ms"))
    share = _value(row.get("client_cpu_share"))
    lag = f"event-loop lag p99 {p99:.1f} ms" if p99 is not None else "event-loop lag"
    extra = f", max {most:.0f} ms" if most is not None else ""
    cpu = f"; client CPU {share:.0%} of a core" if share is not None else ""
    return (f"the harness could not keep up ({lag}{extra} > {LAG_LIMIT_MS:g} ms{cpu}), so its latency and TTFT "
            "figures include its own delay")


ADVICE = ("lower the concurrency, speed up slow custom scorers, or run the client on a faster or less busy machine; "
          "or measure latency with 'harness load' at a concurrency the client keeps up with")
