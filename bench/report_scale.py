"""Benchmark: the report of a synthetic run of 10,000 cases x 3 providers (render time, file size, page load) and
of 100,000 cases x 3 providers (render time and peak memory, in a process of its own).

Writes the stored rows with the harness's own Store (DuckDB), then times `render_report`: at 10,000 cases in this
process, with the HTML file's size and the page's load time in headless Chromium; at 100,000 cases, one child
process (`python -m bench.report_scale --child-build DB N`) stores the run into a DuckDB file and another
(`python -m bench.report_scale --child-render DB RUN_ID REPORTS`) opens it, renders it and reports the render's
time and its own peak resident set size (VmHWM, its imports included; not `ru_maxrss`, which a child inherits
from its parent on Linux), so that the peak is the render's and not the bench's.
Part 5 of `make bench` (`python -m bench.run`), which writes the results to `docs/benchmarks.json` and
`docs/benchmarks.md`; alone: `python -m bench.report_scale [N_CASES [LARGE_CASES]]` (updates that part of both
files).
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ROOT, peak_rss_kib, record_part, rss_mb, target
from harness.report.html import render_report
from harness.store.db import Store

PROVIDERS = [("openai:gpt-4o-mini", "incumbent"), ("anthropic:claude-haiku-4-5", "candidate"),
             ("local:smollm2-135m", "candidate")]
FIELDS = ("company", "date", "address", "total")
BUDGET_S = 10.0  # render time budget for 10,000 cases x 3 providers on a 2-core machine (issue 8)
BUDGET_MB = 25.0  # file size budget (issue 8)
BUDGET_LOAD_S = 3.0  # opening the page in a browser until every case is loaded and the first page shown
LARGE_CASES = 100_000  # the large run (issue 17); `--quick` renders fewer
LARGE_BUDGET_S = 15.0  # render time budget for 100,000 cases x 3 providers (issue 17)
LARGE_BUDGET_RSS_MIB = 1536.0  # peak RSS of the process rendering them, 1.5 GiB (issue 17)


def synthetic_run(store: Store, n_cases: int, seed: int = 0) -> str:
    """A completed invoices-like run: receipts of ~600 characters, answers of ~200, 4 scored fields each."""
    rng = random.Random(seed)
    run_id = store.start_run({"suite": "synthetic", "n_cases": n_cases, "task": "extraction"})
    store.insert("run_providers", [
        {"run_id": run_id, "provider": p, "role": role, "status": "ready"} for p, role in PROVIDERS
    ])
    words = [f"{w}{rng.randint(0, 99)}" for w in ("JALAN", "TAMAN", "SDN", "BHD", "KEDAI", "RM", "TOTAL", "GST")]
    cases, responses, scores = [], [], []
    for i in range(n_cases):
        total = f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
        gold = {"company": f"KEDAI {i} SDN BHD", "date": f"{1 + i % 28:02d}/0{1 + i % 9}/2019",
                "address": " ".join(rng.choices(words, k=8)), "total": total}
        text = "\n".join(" ".join(rng.choices(words, k=8)) for _ in range(12))
        cases.append({"run_id": run_id, "case_id": f"case-{i:05d}", "position": i, "source_line": i + 1,
                      "input": {"text": text}, "gold": gold,
                      "messages": [{"role": "user", "content": "Extract the fields.\n" + text}]})
        for j, (provider, _) in enumerate(PROVIDERS):
            error = "HTTP 500: boom" if rng.random() < 0.01 else None
            answer = dict(gold)
            wrong = [f for f in FIELDS if rng.random() < (0.05 if j == 0 else 0.15 * j)]
            for f in wrong:
                answer[f] = "WRONG " + answer[f]
            responses.append({
                "run_id": run_id, "case_id": f"case-{i:05d}", "provider": provider,
                "text": None if error else json.dumps(answer), "error": error,
                "error_kind": "http_500" if error else None, "latency_ms": rng.lognormvariate(6 + j, 0.5),
                "ttft_ms": rng.lognormvariate(4 + j, 0.5), "input_tokens": 300, "output_tokens": 60,
                "cached": False, "cost_usd": 0.0001 if j == 0 else None, "attempts": 1,
            })
            if error:
                continue
            for f in FIELDS:
                ok = f not in wrong
                scores.append({"run_id": run_id, "case_id": f"case-{i:05d}", "provider": provider, "scorer": "fields",
                               "metric": f"field.{f}", "value": float(ok), "passed": ok,
                               "detail": {"gold": gold[f], "pred": answer[f], "outcome": "correct" if ok else "wrong"}})
            for metric, ok in (("valid_json", True), ("case_pass", not wrong)):
                scores.append({"run_id": run_id, "case_id": f"case-{i:05d}", "provider": provider, "scorer": "fields",
                               "metric": metric, "value": float(ok), "passed": ok, "detail": {}})
    store.insert("cases", cases)
    store.insert("responses", responses)
    store.insert("scores", scores)
    store.finish_run(run_id, "completed")
    return run_id


def measure(n_cases: int = 10_000, browser: bool = True) -> dict:
    """Build the synthetic run, time `render_report` on it, and measure the page (and its load in Chromium, where
    playwright and Chromium are installed and `browser`)."""
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        start = time.perf_counter()
        run_id = synthetic_run(store, n_cases)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        path = render_report(store, run_id, Path(tmp) / "reports")
        seconds = time.perf_counter() - start
        size = path.stat().st_size
        load_s = _browser_load(path) if browser else None
    return {
        "benchmark": "report_scale", "cases": n_cases, "providers": len(PROVIDERS), "render_s": round(seconds, 2),
        "file_mb": round(size / 1e6, 2), "budget_s": BUDGET_S, "budget_mb": BUDGET_MB,
        "browser_load_s": load_s, "budget_load_s": BUDGET_LOAD_S, "synthetic_run_s": round(build_s, 2),
        "within_budget": seconds <= BUDGET_S and size / 1e6 <= BUDGET_MB
        and (load_s is None or load_s <= BUDGET_LOAD_S),
        "machine": f"{platform.machine()}, {platform.python_version()}", "date": datetime.now(UTC).date().isoformat(),
    }


def measure_large(n_cases: int = LARGE_CASES) -> dict:
    """A synthetic run of `n_cases` x 3 providers built into a temporary DuckDB file by one child process
    (`--child-build`), then its report rendered by another (`--child-render`): the render's time and the peak RSS
    of the process that renders, its own and nothing else's (neither this process's nor the builder's)."""
    with tempfile.TemporaryDirectory(prefix="shadow-report-") as tmp:
        db = Path(tmp) / "large.duckdb"
        built = _child(["--child-build", str(db), str(n_cases)], f"building the synthetic run of {n_cases:,} cases")
        child = _child(["--child-render", str(db), built["run_id"], str(Path(tmp) / "reports")],
                       f"the render of {n_cases:,} cases")
    return {"cases": n_cases, "providers": len(PROVIDERS), "synthetic_run_s": built["synthetic_run_s"], **child,
            "budget_s": LARGE_BUDGET_S, "budget_rss_mib": LARGE_BUDGET_RSS_MIB}


def _child(arguments: list[str], what: str) -> dict:
    """Run `python -m bench.report_scale ARGUMENTS` from the repository root; the JSON line it prints last."""
    proc = subprocess.run([sys.executable, "-m", "bench.report_scale", *arguments], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_build(db: str, n_cases: int) -> dict:
    """In the first child: the synthetic run stored into `db`; its id and how long building it took."""
    start = time.perf_counter()
    with Store(db) as store:
        run_id = synthetic_run(store, n_cases)
    return {"run_id": run_id, "synthetic_run_s": round(time.perf_counter() - start, 2)}


def _child_render(db: str, run_id: str, reports: str) -> dict:
    """In the second child: open the stored run and render its report; the render's time, the file's size, and
    this process's RSS before the render (its imports and the open store) and its peak (VmHWM, in MiB)."""
    with Store(db) as store:
        before_mib = (rss_mb() or 0.0) * 1e6 / 2**20
        start = time.perf_counter()
        path = render_report(store, run_id, reports)
        seconds = time.perf_counter() - start
    return {"render_s": round(seconds, 2), "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
            "rss_before_render_mib": round(before_mib, 1), "file_mb": round(path.stat().st_size / 1e6, 2)}


def targets(result: dict) -> list[dict]:
    """The report part's rows of the targets table."""
    rows = [
        target(f"report: render of {result['cases']:,} cases × {result['providers']} providers", result["render_s"],
               "<=", BUDGET_S, "s"),
        target("report: file size", result["file_mb"], "<=", BUDGET_MB, "MB"),
        target("report: page load in Chromium", result["browser_load_s"], "<=", BUDGET_LOAD_S, "s",
               note="" if result["browser_load_s"] is not None else "no Chromium/playwright here"),
    ]
    large = result.get("large")
    if large:
        size = f"{large['cases']:,} cases × {large['providers']} providers"
        note = f"a quick run: {LARGE_CASES:,} cases in the full one" if large["cases"] < LARGE_CASES else ""
        rows += [target(f"report: render of {size}", large["render_s"], "<=", LARGE_BUDGET_S, "s", note=note),
                 target(f"report: peak RSS rendering {size}", large["peak_rss_mib"], "<=", LARGE_BUDGET_RSS_MIB,
                        "MiB", digits=0,
                        note="; ".join(x for x in (note, f"{large['rss_before_render_mib']:,.0f} MiB before the render "
                                                         "(imports, the store open)") if x))]
    return rows


def measure_part(n_cases: int = 10_000, large_cases: int | None = LARGE_CASES) -> dict:
    """The report part of `make bench`: `measure` at `n_cases` and `measure_large` at `large_cases`, with
    targets."""
    result = measure(n_cases, browser=True)
    if large_cases:
        result["large"] = measure_large(large_cases)
    result["targets"] = targets(result)
    result["within_budget"] = all(row["met"] is not False for row in result["targets"])
    return result


def main(n_cases: int = 10_000, large_cases: int = LARGE_CASES) -> dict:
    """Measure, and record the numbers as the `report` part of docs/benchmarks.json and .md (as `python -m
    bench.run --only report` does, with the same targets)."""
    result = measure_part(n_cases, large_cases)
    record_part("report", result)
    return result


def _browser_load(path: Path) -> float | None:
    """Seconds from opening the report in headless Chromium until all cases are loaded and a page is shown;
    None when playwright or Chromium is not installed."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-cases-loaded] #cases .case", timeout=60_000)
        seconds = time.perf_counter() - start
        browser.close()
    return round(seconds, 2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child-build"] and len(sys.argv) == 4:
        print(json.dumps(_child_build(sys.argv[2], int(sys.argv[3]))))
        sys.exit(0)
    if sys.argv[1:2] == ["--child-render"] and len(sys.argv) == 5:
        print(json.dumps(_child_render(*sys.argv[2:])))
        sys.exit(0)
    sizes = [int(a) for a in sys.argv[1:3]]
    outcome = main(*sizes)
    print(json.dumps(outcome))
    sys.exit(0 if outcome["within_budget"] else 1)
