"""Benchmark: the report of a synthetic 10,000-case x 3-provider run: build time and file size.

Writes the stored rows with the harness's own Store (DuckDB), then times `render_report` and reports the
HTML file's size. Results go to `docs/benchmarks.json` (machine-readable) and the "Report at scale" section
of `docs/benchmarks.md`. Run with `make bench` (or `python bench/report_scale.py [N_CASES]`).
"""

from __future__ import annotations

import json
import platform
import random
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.report import render_report  # noqa: E402
from harness.store import Store  # noqa: E402

PROVIDERS = [("openai:gpt-4o-mini", "incumbent"), ("anthropic:claude-haiku-4-5", "candidate"),
             ("local:smollm2-135m", "candidate")]
FIELDS = ("company", "date", "address", "total")
BUDGET_S = 15.0  # render time budget for 10,000 cases x 3 providers on a 2-core machine
BUDGET_MB = 10.0  # file size budget: small enough to attach to a CI run
BUDGET_LOAD_S = 3.0  # opening the page in a browser until every case is loaded and the first page shown


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


def main(n_cases: int = 10_000) -> dict:
    """Build the synthetic run, render its report, and record the numbers."""
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        run_id = synthetic_run(store, n_cases)
        start = time.perf_counter()
        path = render_report(store, run_id, Path(tmp) / "reports")
        seconds = time.perf_counter() - start
        size = path.stat().st_size
        load_s = _browser_load(path)
    result = {
        "benchmark": "report_scale", "cases": n_cases, "providers": len(PROVIDERS), "render_s": round(seconds, 2),
        "file_mb": round(size / 1e6, 2), "budget_s": BUDGET_S, "budget_mb": BUDGET_MB,
        "browser_load_s": load_s, "budget_load_s": BUDGET_LOAD_S,
        "within_budget": seconds <= BUDGET_S and size / 1e6 <= BUDGET_MB
        and (load_s is None or load_s <= BUDGET_LOAD_S),
        "machine": f"{platform.machine()}, {platform.python_version()}", "date": datetime.now(UTC).date().isoformat(),
    }
    _record(result)
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


def _record(result: dict) -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    store = docs / "benchmarks.json"
    data = json.loads(store.read_text()) if store.exists() else {}
    data["report_scale"] = result
    store.write_text(json.dumps(data, indent=1) + "\n")
    section = (
        "## Report at scale\n\n"
        f"A synthetic run of {result['cases']:,} cases × {result['providers']} providers (invoices-like: "
        "~600-character inputs, 4 scored fields) through the harness's own store and `render_report`, on "
        f"{result['machine']} ({result['date']}):\n\n"
        "| render time | file size | page load in Chromium | budget |\n|---|---|---|---|\n"
        f"| {result['render_s']} s | {result['file_mb']} MB | {result['browser_load_s'] or 'not measured'} s "
        f"| ≤ {result['budget_s']:.0f} s, ≤ {result['budget_mb']:.0f} MB, ≤ {result['budget_load_s']:.0f} s: "
        f"{'met' if result['within_budget'] else '**missed**'} |\n\n"
        "The page holds every case gzipped (inflated by the browser), renders 50 cases a page, and filters all of "
        "them in the browser. Reproduce with `make bench`.\n"
    )
    md = docs / "benchmarks.md"
    header = "# Benchmarks\n\nMeasured by `make bench`; numbers from the machine named.\n\n"
    text = md.read_text() if md.exists() else header
    if "## Report at scale" in text:
        text = re.sub(r"## Report at scale\n.*?(?=\n## |\Z)", section.rstrip("\n") + "\n", text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text)


if __name__ == "__main__":
    outcome = main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print(json.dumps(outcome))
    sys.exit(0 if outcome["within_budget"] else 1)
