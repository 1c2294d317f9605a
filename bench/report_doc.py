"""docs/benchmarks.md from the numbers of `python -m bench.run` (docs/benchmarks.json), and the table printed at
the end."""

from __future__ import annotations

from typing import Any

NAMES = {
    "raw": "raw aiohttp", "sdk": "openai SDK", "provider": "harness provider alone", "harness": "harness end to end",
    "raw-json": "raw aiohttp, not streamed", "sdk-json": "openai SDK, not streamed",
    "promptfoo": "promptfoo", "inspect": "Inspect AI",
}


def _n(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _range(s: dict[str, Any] | None, digits: int = 2) -> str:
    """`median (min–max)` of a summary; just the value when there was one repetition."""
    if not s or s.get("median") is None:
        return "–"
    if s.get("n", 1) <= 1 or s["min"] == s["max"]:
        return _n(s["median"], digits)
    return f"{_n(s['median'], digits)} ({_n(s['min'], digits)}–{_n(s['max'], digits)})"


def targets_table(parts: dict[str, Any], names: list[str] | None = None) -> list[str]:
    lines = ["| measurement | target | measured | status | note |", "|---|---|---|---|---|"]
    for name, result in parts.items():
        if names is not None and name not in names:
            continue
        if result.get("error"):
            lines.append(f"| {name} | | | **failed**: {_cell(result['error'])} | |")
        for t in result.get("targets", []):
            status = t["status"] if t["met"] in (True, None) else f"**{t['status']}**"
            value = "–" if t["value"] is None else f"{_n(t['value'], 3 if t['unit'] == '×' else 2)} {t['unit']}"
            lines.append(f"| {t['measurement']} | {t['target']} | {value} | {status} | {_cell(t.get('note', ''))} |")
    return lines


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")[:400]


def header(data: dict[str, Any]) -> list[str]:
    m = data.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items())
    load = m.get("load_average")
    load_text = f"; load average at the start {load[0]:.1f}" if load else ""
    total = data.get("total_s")
    return [
        "# Benchmarks",
        "",
        "Is the harness ever the bottleneck? Each figure is measured by `make bench` (`python -m bench.run`), all in "
        "one run, beside the physical limit of this machine (a raw aiohttp client) and the official `openai` SDK. "
        "Targets are those of issue 8.",
        "",
        f"**Run:** {data.get('date', '–')}{' (quick)' if data.get('quick') else ''}, "
        f"{'whole run ' + _n(total / 60, 1) + ' min' if total else ''}"
        f"{' (within the 15-minute budget)' if data.get('within_budget') else ''}; "
        f"parts run: {', '.join(data.get('parts_run', []))}"
        f"{'; the peers took ' + _n(data['peers_s'] / 60, 1) + ' min more' if data.get('peers_s') else ''}.  ",
        *[f"**Measured again later:** {', '.join(u['parts'])} on {u['date']} (`python -m bench.run --only`).  "
          for u in data.get("updates") or []],
        f"**Machine:** {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {_n(m.get('memory_gb'), 1)} GB, "
        f"{m.get('platform', '')}, Python {m.get('python', '?')}{load_text}; git {m.get('git_revision') or '?'}.  ",
        f"**Packages:** {packages}.",
        "",
        "The machine is shared with other work (2 cores): every comparison is made pair by pair (in each repetition "
        "the contenders run back to back, in rotated order, and the ratio is taken within the repetition); figures "
        "are medians with the min–max of the repetitions in brackets. Every part starts with a warm-up. Client CPU is "
        "`time.process_time()` of the benchmark process over the timed section (all its threads, the harness's "
        "DuckDB writer included); the servers run in processes of their own.",
        "",
    ]


def _reps(n: int) -> str:
    return f"{n} repetition{'' if n == 1 else 's'}"


def dispatch_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Dispatch ceiling",
        "",
        ("Against a real server: " + r["base_url"] + f", model `{r.get('model')}`. " if r.get("base_url") else
         "A zero-latency OpenAI-compatible server (aiohttp, its own process, loopback; bench/servers.py): every "
         "streamed answer is 20 content chunks, a usage chunk and `[DONE]`, precomputed. ") +
        f"Requests per concurrency: {', '.join(f'{n:,} at c={c}' for c, n in r['requests'].items())}; a measurement "
        f"stops starting requests after {r['time_bound_s']:g} s (then the rate is over those sent). "
        f"{_reps(r['reps'])}. Contenders: the raw aiohttp client (one JSON decode a chunk, as vLLM's benchmark "
        "client); the `openai` SDK (`AsyncOpenAI.chat.completions.create(stream=True)`, iterating its chunk "
        "objects); the harness's provider alone (`plan_provider` → `build_provider` → `complete()`: transport and "
        "parsing only); the harness "
        "end to end (`load_suite` + `plan_provider` + `shadow_run` on a generated suite of receipts with an `exact` "
        "scorer, cache off, into a fresh DuckDB file: render, call, parse, score, journal, store).",
        "",
        "| c | client | requests/s | client CPU ms/request | CPU µs/chunk | server CPU busy | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, level in r["levels"].items():
        for name, x in level["contenders"].items():
            busy = x["server_cpu_busy"]["median"]
            lines.append(
                f"| {c} | {NAMES.get(name, name)} | {_range(x['requests_per_s'])} | "
                f"{_range(x['cpu_ms_per_request'], 3)} | {_range(x['cpu_us_per_chunk'], 1)} | "
                f"{'–' if busy is None else f'{busy:.0%}'} | {x['errors']}"
                f"{' ' + _cell(x['first_error'])[:120] if x['first_error'] else ''} |")
    lines += ["", "Ratios of requests/s, pair by pair, and the time each adds per request over the raw client "
              "(wall time per request, minus the raw client's):", "",
              "| c | harness / raw | harness / SDK | provider / raw | provider / SDK | SDK / raw | harness adds "
              "ms/request | provider adds | SDK adds |", "|---|---|---|---|---|---|---|---|---|"]
    for c, level in r["levels"].items():
        ratios, added = level["ratios"], level["added_ms_per_request"]
        lines.append(
            f"| {c} | {_range(ratios['harness/raw'], 3)} | {_range(ratios['harness/sdk'])} | "
            f"{_range(ratios['provider/raw'], 3)} | {_range(ratios['provider/sdk'])} | "
            f"{_range(ratios['sdk/raw'], 3)} | {_range(added['harness'], 3)} | {_range(added['provider'], 3)} | "
            f"{_range(added['sdk'], 3)} |")
    lines += ["", "The same by client CPU per request (the raw client's, or the SDK's, over the harness's): what the "
              "ratio of rates would be if each client had a core to itself; steadier than rates on a shared "
              "machine.", "",
              "| c | harness / raw | harness / SDK | provider / raw |", "|---|---|---|---|"]
    for c, level in r["levels"].items():
        cpu = level.get("cpu_ratios", {})
        lines.append(f"| {c} | {_range(cpu.get('harness/raw'), 3)} | {_range(cpu.get('harness/sdk'))} | "
                     f"{_range(cpu.get('provider/raw'), 3)} |")
    checks = {c: lv["contenders"].get("harness", {}).get("self_check") for c, lv in r["levels"].items()}
    checks = {c: v for c, v in checks.items() if v}
    if checks:
        lines += ["", "What the harness recorded about itself (its self-check) in the last run of each level: "
                  + "; ".join(
            f"c={c}: " + ", ".join(f"{k.split('.', 1)[1]} = {_n(v) if isinstance(v, float) else v}"
                                   for k, v in check.items()) for c, check in checks.items()) + "."]
    stopped = [f"c={c} {NAMES.get(n, n)}" for c, lv in r["levels"].items() for n, x in lv["contenders"].items()
               if x["stopped_early"]]
    if stopped:
        lines += ["", f"Stopped by the time bound before all requests were sent: {', '.join(stopped)}."]
    return [*lines, ""]


def latency_section(r: dict[str, Any]) -> list[str]:
    truth = r.get("truth")
    lines = [
        "## 7. Latency accuracy",
        "",
        (f"A paced server (bench/servers.py `paced`): the first content chunk {_n(truth['ttft_ms'], 0)} ms after the "
         f"request arrives, then one every {_n(truth['itl_ms'], 0)} ms, {r['chunks']} in all, on absolute deadlines; "
         "it stamps nothing, the truth is its schedule. " if truth else
         f"Against {r['base_url']} (no known truth: the figures are compared with the raw client's). ") +
        f"Driven open loop at {r['rate_per_s']:g} requests/s (launched on schedule whatever the answers do) for "
        f"{r['duration_s']:g} s, {_reps(r['reps'])}, by the raw aiohttp client, the harness's provider (its "
        "stored figures: `ttft_ms`, and inter-token = (`latency_ms` − `ttft_ms`) / (chunks − 1)) and the openai SDK. "
        "The raw client and the SDK are measured the same way (first content chunk; end of stream).",
        "",
        "| client | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms | "
        + ("TTFT p99 error | ITL p99 error | " if truth else "")
        + "client CPU ms/request | launched late, worst ms | errors |",
        "|---|---|---|---|---|" + ("---|---|" if truth else "") + "---|---|---|",
    ]
    for name, x in r["contenders"].items():
        errors = (f"{_range(x.get('ttft_p99_error'))} | {_range(x.get('itl_p99_error'))} | " if truth else "")
        lines.append(f"| {NAMES.get(name, name)} | {_range(x['ttft_p50'])} | {_range(x['ttft_p99'])} | "
                     f"{_range(x['itl_p50'], 3)} | {_range(x['itl_p99'], 3)} | {errors}"
                     f"{_range(x['cpu_ms_per_request'], 3)} | {_range(x['launch_late_max_ms'])} | {x['errors']} |")
    raw = r["contenders"].get("raw", {})
    if raw.get("chunk_gap_p99", {}).get("median") is not None:
        lines += ["", f"The raw client's gaps between consecutive chunks: p50 {_range(raw['chunk_gap_p50'], 3)} ms, "
                      f"p99 {_range(raw['chunk_gap_p99'], 3)} ms."]
    lines += ["", "Pair by pair, minus the raw client's (ms): " + "; ".join(
        f"{NAMES.get(name, name)}: TTFT p50 {_range(v['ttft_p50'])}, p99 {_range(v['ttft_p99'])}, inter-token p99 "
        f"{_range(v['itl_p99'], 3)}" for name, v in r["versus_raw"].items()) + ".", ""]
    return lines


def _threads(n: int) -> str:
    return "one thread (the other core left to the client)" if n == 1 else f"{n} threads"


def real_section(r: dict[str, Any]) -> list[str]:
    return [
        "## 2. Real model server",
        "",
        f"The bundled SmolLM2-135M under llama.cpp's server, started once with the harness's own command line "
        f"(`harness.server.server_command`) and {_threads(r.get('threads', 2))}, in {_n(r['server_start_s'], 1)} s; "
        f"the {r['cases']} shortest receipts of suites/invoices (JSON mode, "
        f"max_tokens {r['max_tokens']}, temperature 0, seed 0), one request at a time: the raw aiohttp client sends "
        "the same bodies one after another; the harness runs them end to end (`load_suite` + `shadow_run` into "
        f"DuckDB). {len(r['pairs'])} pairs, the order alternated.",
        "",
        "| raw client wall s | harness wall s | harness adds s | harness / raw, pair by pair | fastest / fastest |",
        "|---|---|---|---|---|",
        f"| {_range(r['raw_wall_s'])} | {_range(r['harness_wall_s'])} | {_range(r['added_s'], 3)} | "
        f"{_range(r['ratio'], 3)} | {_n(r.get('fastest_ratio'), 3)} |",
        "",
        "Output tokens per pair (raw, harness): " + ", ".join(
            f"{p['raw']['tokens']}/{p['harness']['tokens']}" for p in r["pairs"]) + ".",
        "",
    ]


def storage_section(r: dict[str, Any]) -> list[str]:
    return [
        "## 3. Storage",
        "",
        f"{r['records']:,} results (a `responses` row with a ~1.5 KB answer and its cache-key parts, and six `scores` "
        f"rows with details: {_n(r['kb_per_record'], 1)} KB of JSON a result, {r['rows']:,} rows) handed to the "
        "harness's writer as a run does (`Store.writer(journal=...)` → `BatchWriter.put_record`, journaled, batched on "
        "the writer thread), as fast as they can be queued; the clock stops when `close()` has written everything.",
        "",
        "| rows/s | results/s | wall s | put_record µs mean / p99 / max ms | longest time the writer made no progress "
        "| DuckDB file | bytes/row | bytes/result |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_n(r['rows_per_s'])} | {_n(r['records_per_s'])} | {_n(r['wall_s'])} | {_n(r['put_us_mean'], 1)} / "
        f"{_n(r['put_us_p99'], 1)} / {_n(r['put_ms_max'])} | {_n(r['longest_stall_s'])} s | {_n(r['file_mb'], 1)} MB "
        f"| {_n(r['bytes_per_row'], 0)} | {_n(r['bytes_per_record'], 0)} |",
        "",
    ]


def cache_section(r: dict[str, Any]) -> list[str]:
    return [
        "## 4. Cache",
        "",
        f"A run of {r['cases']:,} cases against the zero-latency server ({_n(r['first_run_s'])} s), then re-runs "
        "of the same suite with `cache_mode=\"replay\"` (`load_suite` + `shadow_run`, every answer from the cache: "
        f"{', '.join(str(c) for c in r['cached'])}).",
        "",
        "| re-run wall s | re-run client CPU s |",
        "|---|---|",
        f"| {_range(r['rerun_s'])} | {_range(r['rerun_cpu_s'])} |",
        "",
    ]


def report_section(r: dict[str, Any]) -> list[str]:
    load = r.get("browser_load_s")
    return [
        "## 5. Report",
        "",
        f"A synthetic run of {r['cases']:,} cases × {r['providers']} providers (invoices-like: ~600-character "
        "inputs, 4 scored fields) stored with the harness's Store, then `render_report` "
        "(`python -m bench.report_scale`).",
        "",
        "| render s | file MB | page load in Chromium s | building the synthetic run s |",
        "|---|---|---|---|",
        f"| {_n(r['render_s'])} | {_n(r['file_mb'])} | {'not measured' if load is None else _n(load)} | "
        f"{_n(r.get('synthetic_run_s'))} |",
        "",
        "The page holds every case gzipped (inflated by the browser), renders 50 cases a page, and filters all of them "
        "in the browser.",
        "",
        *_large_report(r.get("large")),
    ]


def _large_report(large: dict[str, Any] | None) -> list[str]:
    if not large:
        return []
    quick = large["cases"] < 100_000
    return [
        f"At scale: a synthetic run of {large['cases']:,} cases × {large['providers']} providers"
        + (" (a quick run; the full one renders 100,000)" if quick else "")
        + ", generated the same way and stored into a DuckDB file by a child process (`python -m bench.report_scale "
        "--child-build`), then rendered by a second child process of its own (`--child-render`) that opens the file, "
        "calls `render_report` and reports the render's time and its own peak resident set size: `VmHWM` from "
        "/proc/self/status, its imports and the open store included (the RSS before the render, in the table). Not "
        "`ru_maxrss`, which on Linux a child inherits from the process that started it, so that it would show the "
        "bench's own peak whenever that was higher. MiB are 2^20 bytes: the target, 1.5 GiB, is 1,536 MiB.",
        "",
        "| render s | peak RSS MiB | RSS before the render MiB | file MB | building the synthetic run s |",
        "|---|---|---|---|---|",
        f"| {_n(large['render_s'])} | {_n(large['peak_rss_mib'], 0)} | {_n(large.get('rss_before_render_mib'), 0)} | "
        f"{_n(large['file_mb'])} | {_n(large.get('synthetic_run_s'))} |",
        "",
    ]


def memory_section(r: dict[str, Any]) -> list[str]:
    if r.get("error"):
        return ["## 6. Memory", "", f"Failed: {_cell(r['error'])}", ""]
    phases = r.get("phases_s") or {}
    return [
        "## 6. Memory",
        "",
        f"A {r['cases']:,}-case run (`load_suite` + `shadow_run`, c=64, cache off) against the zero-latency server, "
        "in a child process; peak RSS is the child's own high-water mark (`VmHWM`; `ru_maxrss` would carry the "
        "parent's), and RSS is sampled every 100 ms to say in which "
        "phase the peak fell: loading the suite (every prompt rendered), setting the run up (the `cases` rows "
        "stored) until the first call, then the calls, the writer's last flush and the run's metrics."
        + (f" Note: {r['note']}." if r.get("note") else ""),
        "",
        "| RSS before MB | after `load_suite` | at the first call | at the end | peak loading / setting up / calls "
        "and after | peak (VmHWM) | run wall s | requests/s | DuckDB file MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {_n(r['rss_before_mb'], 0)} | {_n(r['rss_after_load_mb'], 0)} | {_n(r.get('rss_at_first_call_mb'), 0)} | "
        f"{_n(r['rss_end_mb'], 0)} | {_n(r.get('peak_loading_mb'), 0)} / {_n(r.get('peak_setup_mb'), 0)} / "
        f"{_n(r.get('peak_calls_mb'), 0)} | {_n(r['peak_rss_mb'], 0)} | {_n(r['wall_s'])} | "
        f"{_n(r['requests_per_s'])} | {_n(r['db_mb'], 0)} | {r['status']}, {r['requests']:,} answers, "
        f"{r['errors']} errors |",
        "",
        f"Phases (s from the child's start): suite loaded {_n(phases.get('loaded'))}, first call "
        f"{_n(phases.get('calls'))}, run ended {_n(phases.get('end'))}; the peak at {_n(r.get('peak_at_s'))} s.",
        "",
    ]


def startup_section(r: dict[str, Any]) -> list[str]:
    before = r.get("before")
    lines = [
        "## 0. Start-up", "",
        "Each command in a fresh process, as typed at a shell (`harness ...`, the console script), from the "
        "repository root: one warm-up run, then the median (min–max) of "
        f"{r.get('reps', 1)} runs. The 1-case run is a generated suite against the zero-latency server (cache "
        "off, a fresh DuckDB file each time, its HTML report written), so what it measures is start-up and "
        "writing the results, not the model. Python writes bytecode as it does by default (this machine sets "
        "PYTHONDONTWRITEBYTECODE; the benchmark leaves it out), so the package's modules are compiled once "
        "(bench/startup.py).", "",
    ]
    if before:
        lines += [f"*Before*: the same commands, run back to back with these, with the package of commit {before} "
                  "(`python -m bench.startup --before DIR`).", ""]
    lines += [
        "| command | wall s |" + (" before s |" if before else "") + " imports ms | costliest imports (ms spent in "
        "the package's own modules; what imported it) |",
        "|---|---|" + ("---|" if before else "") + "---|---|",
    ]
    for name, x in r.get("commands", {}).items():
        costly = "; ".join(
            f"{c['package']} {c['ms']:.0f}" + (f" ({c['imported_by']})" if not c["imported_by"].startswith("(")
                                                else " (by the command itself, or a function)")
            for c in x["imports"]["costliest"])
        old = f" {_range(x['before']['wall_s'])} |" if before and x.get("before") else (" – |" if before else "")
        lines.append(f"| `{name}` | {_range(x['wall_s'])} |{old} {x['imports']['total_ms']:.0f} | {_cell(costly)} |")
    if before:
        lines += ["", "Before, the costliest imports were: " + "; ".join(
            f"`{name}`: " + ", ".join(f"{c['package']} {c['ms']:.0f} ms" for c in x["before"]["imports"]["costliest"])
            for name, x in r.get("commands", {}).items() if x.get("before")) + "."]
    lines += ["", "Imports are timed in a separate run under `python -X importtime`, which adds its own overhead; "
              "`harness` is the package's own modules (pydantic models, the command modules)."]
    return [*lines, ""]


def peers_section(r: dict[str, Any]) -> list[str]:
    lines = ["## 8. Peers", ""]
    if r.get("error"):
        return [*lines, f"Failed: {_cell(r['error'])}", ""]
    lines += [
        r.get("method", ""),
        "",
        f"{r['cases']:,} cases at concurrency {r['concurrency']}, {_reps(r.get('reps', 1))} (the tools in "
        "rotated order).",
        "",
        "| tool | version | cases/s | client CPU ms/case | start-up s | wall s | cases passed | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r.get("tools", {}).items():
        label = "harness (`harness run`)" if name == "harness" else NAMES.get(name, name)
        lines.append(
            f"| {label} | {x.get('version') or '–'} | {_range(x.get('cases_per_s'))} "
            f"({_range(x.get('cases_per_s_with_startup'))} with start-up) | {_range(x.get('cpu_ms_per_case'), 3)} | "
            f"{_range(x.get('startup_s'))} | {_range(x.get('wall_s'))} | {_n(x.get('passed'))} | "
            f"{_cell(x.get('note'))} |")
    ratios = r.get("ratios", {})
    lines += ["", "Harness cases/s over each tool's, pair by pair: " + ", ".join(
        f"{NAMES.get(k.split('/')[1], k)} {_range(v)}×" for k, v in ratios.items()) + "."]
    before = r.get("before")
    if before:  # the same part run with an older harness package, recorded beside it (docs/benchmarks.json)
        with_startup = ", ".join(f"{NAMES.get(k, k)} {v:.1f}×" for k, v in before["with_startup_ratios"].items())
        lines += ["", f"Before, with the harness of commit {before['commit']}, measured on this machine the same "
                  f"way ({before.get('measured_at', '')}): start-up {_range(before['harness_startup_s'])} s, "
                  f"{_range(before['harness_cases_per_s'], 0)} cases/s past it; start-up included, the harness "
                  f"was {with_startup} as fast as the others."]
    return [*lines, ""]


PROXY_NAMES = {
    "direct": "direct to the upstream", "forwarder": "minimal aiohttp forwarder",
    "pass-through": "proxy, `--sample 0` (nothing copied)", "mirror-fast": "proxy, mirroring to a fast candidate",
    "mirror-slow": "proxy, mirroring to a slow candidate",
}


def _trio(x: dict[str, Any]) -> str:
    return " / ".join(_n(x.get(p)) for p in ("p50", "p95", "p99"))


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def proxy_section(r: dict[str, Any]) -> list[str]:
    """`harness proxy` against a direct call to the same zero-latency upstream (`bench.proxy_latency`)."""
    slow = r["slow_candidate"]
    contenders = r["contenders"]
    lines = [
        "## 9. Proxy",
        "",
        f"What `harness proxy` adds to the caller's latency. An open-loop client (aiohttp; requests sent on a fixed "
        f"schedule, {r['rate_per_s']:g} a second, whatever the answers do) asks for streamed chat completions from a "
        "zero-latency upstream (bench/servers.py `zero`, its own process), directly and through the proxy; each "
        "request's TTFT (its first content chunk) and total latency (the end of the body) count from its scheduled "
        "send time, so that queueing anywhere shows. Each proxy is `python -m harness.cli proxy` in a process of its "
        "own, as a user starts it: with `--sample 0` (passing through, nothing copied); mirroring every request "
        "(`--sample 1`) to a zero-latency candidate; and to a candidate that cannot keep up (`paced`: first token "
        f"after {_n(slow['ttft_ms'], 0)} ms, with `--queue {slow['queue']}`, so the queue fills and copies are "
        "dropped). Beside them, the floor for a proxy written this way: a minimal aiohttp forwarder (bench/"
        "proxy_latency.py `forward`: the request passed on, the answer streamed back as it comes, nothing else). "
        f"Blocks of {r['block_s']:g} s, {r['rounds']} rounds, every contender once a round in an order rotated round "
        f"by round, after a discarded {r['warmup_s']:g} s warm-up block of each. Percentiles are over all the requests "
        "of a contender's blocks; *added* is its percentile minus the direct one's, and round by round each block's "
        "p99 minus that of the direct block of its round (median, min–max). *Its CPU*: the user + system time of "
        "the contender's process (/proc/PID/stat, every thread) over its blocks, each to its last copy, per second "
        "of the blocks and per request. Every answer is compared byte for byte with the upstream's.",
        "",
        "| contender | requests | TTFT p50 / p95 / p99 ms | total p50 / p95 / p99 ms | added p50 / p99 TTFT ms | "
        "added p50 / p99 total ms | total p99 added, round by round | its CPU, of a core (ms/request) | copies "
        "mirrored / dropped | send lag p50 / p99 ms | errors | bytes identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in contenders.items():
        added = x.get("added_ms") or {}
        counts = x.get("counts") or {}
        cpu = ("–" if x.get("proxy_cpu_busy") is None else
               f"{_share(x['proxy_cpu_busy'])} ({_n(x['proxy_cpu_ms_per_request'], 3)})")
        copies = f"{counts.get('mirrored', 0):,} / {counts.get('dropped', 0):,}" if counts else "–"
        lines.append(
            f"| {PROXY_NAMES.get(name, name)} | {x['requests']:,} | {_trio(x['ttft_ms'])} | {_trio(x['total_ms'])} | "
            f"{_n(added.get('ttft_p50'))} / {_n(added.get('ttft_p99'))} | {_n(added.get('total_p50'))} / "
            f"{_n(added.get('total_p99'))} | {_range((x.get('added_p99_by_round') or {}).get('total'))} | {cpu} | "
            f"{copies} | {_n(x['send_lag_ms']['p50'])} / {_n(x['send_lag_ms']['p99'])} | {x['errors']} | "
            f"{x['same_bytes']:,} of {x['requests']:,} |")
    direct, fast, slow_x = contenders["direct"], contenders["mirror-fast"], contenders["mirror-slow"]
    lag = max(x["send_lag_ms"]["p99"] or 0 for x in contenders.values())
    worst = max(x["send_lag_ms"]["max"] or 0 for x in contenders.values())
    busy = fast.get("server_cpu_busy") or {}
    slow_counts = slow_x.get("counts") or {}
    load = r.get("load_average") or {}
    lines += [
        "",
        f"The slow candidate: {slow_counts.get('dropped', 0):,} of {slow_counts.get('chat', 0):,} copies dropped "
        f"(queue full) and {slow_counts.get('mirrored', 0):,} mirrored in its blocks; its callers' total p99 "
        f"{_n(slow_x['total_ms']['p99'])} ms against {_n(fast['total_ms']['p99'])} ms with the fast candidate and "
        f"{_n(direct['total_ms']['p99'])} ms direct, where the candidate itself takes {_n(slow['ttft_ms'], 0)} ms "
        "to its first token: "
        + ("the caller does not wait for it." if (slow_x["total_ms"]["p99"] or 0) < slow["ttft_ms"] / 10 else
           "**the callers waited for it**."),
        "",
        *_mirroring_cost(contenders),
        f"This machine has {r.get('cores') or '?'} cores, shared by the client (the benchmark's own process), the "
        "upstream, the candidate servers and the proxy under test (the others idle), so every figure here includes "
        "their contention for the CPUs. During the fast candidate's blocks the upstream was busy "
        f"{_share(busy.get('upstream'))} of a core, the fast candidate {_share(busy.get('candidate-fast'))}, the proxy "
        f"{_share(fast.get('proxy_cpu_busy'))} (its mirror process and DuckDB writer thread included) and the client "
        f"{_n(fast.get('client_cpu_ms_per_request'), 3)} ms of CPU a request. The client kept its schedule: send "
        f"lag p99 at most {_n(lag)} ms (worst {_n(worst)} ms) in any contender's blocks; TTFT and total include it "
        f"alike for every contender. Load average {_n((load.get('before') or [None])[0])} before, "
        f"{_n((load.get('after') or [None])[0])} after. The proxies stopped (SIGINT: drain, then exit) in "
        f"{_n(r.get('stop_s'))} s: "
        + "; ".join(f"{name}: {x['exit'].get('said', '')} (exit {x['exit'].get('exit_code')})"
                    for name, x in contenders.items() if x.get("exit")) + ".",
        "",
    ]
    return lines


def _mirroring_cost(contenders: dict[str, Any]) -> list[str]:
    """What copying costs the caller: the fast candidate's proxy against the one with `--sample 0`."""
    fast, alone, floor = contenders["mirror-fast"], contenders["pass-through"], contenders["forwarder"]
    try:
        p50 = fast["total_ms"]["p50"] - alone["total_ms"]["p50"]
        p99 = fast["total_ms"]["p99"] - alone["total_ms"]["p99"]
        floor_p99 = alone["added_ms"]["total_p99"] - floor["added_ms"]["total_p99"]
    except (KeyError, TypeError):
        return []
    return [
        f"Without mirroring the proxy adds {_n(alone['added_ms']['total_p99'])} ms to the total p99 "
        f"({_n(abs(floor_p99))} ms {'more' if floor_p99 >= 0 else 'less'} than the minimal forwarder, at "
        f"{_n(alone['proxy_cpu_ms_per_request'], 3)} against {_n(floor['proxy_cpu_ms_per_request'], 3)} ms of CPU a "
        f"request). Mirroring adds {_n(p50)} ms at p50 and {_n(p99)} ms at p99 on top, and takes the proxy's CPU to "
        f"{_n(fast['proxy_cpu_ms_per_request'], 3)} ms a request: the copies' work (the incumbent's answer parsed, "
        "scored and stored; the candidate's call made and its answer parsed) runs in the proxy's mirror process, "
        "not on the event loop that passes the bytes to the caller, which only samples, counts and hands each copy "
        "over as one frame on a socket; on 2 cores that work still competes with everything else for the CPUs. "
        "What remains of the added latency is the hop itself: an aiohttp server and client in one Python process, "
        "whose floor the minimal forwarder shows.",
        "",
    ]


VLLM = """## Against a real vLLM server

The dispatch (1) and latency (7) parts run unchanged against any OpenAI-compatible server: `--base-url` replaces
the local zero-latency and paced servers (nothing is started), and every contender (raw aiohttp, the SDK, the
harness's provider, the harness end to end) sends the same request: the generated receipts, `--max-tokens` output
tokens (default 128) with `ignore_eos` so every answer has that length, temperature 0. Run it on the GPU machine
itself (loopback), so that the network stays out of the figures:

```sh
vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 &            # on the GPU box
make bench BASE_URL=http://127.0.0.1:8000/v1 MODEL=Qwen/Qwen2.5-7B-Instruct
# or: .venv/bin/python -m bench.run --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
#         [--max-tokens 128] [--concurrency 64] [--rate 20] [--only dispatch]
```

Results go to `runs/bench/benchmarks.md` and `.json` (not to docs/). A key, if the server wants one, is read from
`OPENAI_COMPATIBLE_API_KEY` (or `VLLM_API_KEY`). Then take vLLM's own client at the same concurrency and output
length, and compare request throughput (and TTFT/ITL percentiles at the same request rate):

```sh
vllm bench serve --backend openai-chat --endpoint /v1/chat/completions --base-url http://127.0.0.1:8000 \\
    --model Qwen/Qwen2.5-7B-Instruct --dataset-name random --random-input-len 200 --random-output-len 128 \\
    --ignore-eos --num-prompts 2000 --max-concurrency 64
vllm bench serve ... --request-rate 20 --num-prompts 600      # the latency comparison, open loop
```

harness requests/s at c=64 over `vllm bench serve`'s "Request throughput (req/s)" is the ratio to report (the raw
client's figure beside it should be close to vLLM's, both being aiohttp clients). A measurement stops starting
requests after 8 s: on a slow model give it longer (`--measure-s 60`) or measure `--concurrency 64` only. At a
rate the server cannot keep up with, requests queue and TTFT grows for every client alike. The prompts differ from
vLLM's random tokens (about 200 tokens of receipt text each); vLLM's prefix cache serves their shared instruction
part.
"""


def llama_build_section(result: dict[str, Any]) -> list[str]:
    """llama.cpp built for the portable baseline against a native build (`python -m bench.llama_build --compare`)."""
    lines = ["## llama.cpp build: portable baseline against native", "",
             f"The bundled model through llama-cpp-python {result['version']} on {result['cpu']} "
             f"({result['machine']}, {result['cores']} cores), {result['prompt_tokens']}-token prompt and "
             f"{result['generated_tokens']} generated tokens, {result['rounds']} alternating rounds of "
             f"{result['reps']} repetitions; medians of the rounds' medians, the rounds' range in brackets. "
             f"Machine load average {result['load']:.1f} while measuring.", "",
             "| build | CMAKE_ARGS | prompt tokens/s | output tokens/s |", "|---|---|---|---|"]
    for build in result["builds"]:
        lines.append(f"| {build['name']} | `{build['flags'] or '(defaults)'}` | {build['prompt']:.0f} "
                     f"[{build['prompt_range'][0]:.0f}–{build['prompt_range'][1]:.0f}] | {build['output']:.0f} "
                     f"[{build['output_range'][0]:.0f}–{build['output_range'][1]:.0f}] |")
    lines += ["", result.get("note", ""), ""]
    return lines


def written_section(result: dict[str, Any]) -> list[str]:
    """A section measured by a script outside `make bench` and written up by hand (`python -m bench.loop_lag`), kept as
    it was recorded."""
    return [*result["markdown"].splitlines(), ""]


def markdown(data: dict[str, Any]) -> str:
    parts = data.get("parts", {})
    lines = header(data)
    lines += ["## Targets", "", *targets_table(parts), ""]
    sections = {
        "dispatch": dispatch_section, "real": real_section, "storage": storage_section, "cache": cache_section,
        "report": report_section, "memory": memory_section, "latency": latency_section, "peers": peers_section,
        "llama_build": llama_build_section, "loop_lag": written_section, "proxy": proxy_section,
        "startup": startup_section,
    }
    for name in ("startup", "dispatch", "real", "storage", "cache", "report", "memory", "latency", "loop_lag", "peers",
                 "proxy", "llama_build"):
        result = parts.get(name)
        if result is None:
            continue
        if result.get("error") and name != "memory" and name != "peers":
            lines += [f"## {name}", "", f"Failed: {_cell(result['error'])}", ""]
            continue
        try:
            section = sections[name](result)
        except (KeyError, TypeError, AttributeError) as exc:  # a part of an older layout: say so, do not fail
            section = [f"## {name}", "", f"(not shown: {type(exc).__name__}: {exc})", ""]
        date = result.get("measured_at")
        if date and str(date)[:16] != str(data.get("date", ""))[:16]:
            section.insert(2, f"*Measured {date}.*\n")
        lines += section
    lines += [VLLM]
    return "\n".join(lines).rstrip() + "\n"


def terminal(data: dict[str, Any], names: list[str]) -> str:
    """The targets of the parts run, as a Markdown table (readable as is in a terminal)."""
    total = data.get("total_s") or 0
    return "\n".join([
        "", f"make bench: {data.get('date')}, {total:.0f} s"
        f"{'' if data.get('within_budget', True) else ' (over the 15-minute budget)'}", "",
        *targets_table(data.get("parts", {}), names)])
