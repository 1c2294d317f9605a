"""Generated suites for the benchmarks, and the harness end to end (`shadow_run`) as `harness run` calls it.

A generated suite is an ordinary suite folder (suite.toml, cases.jsonl, prompt.j2; see suites/README.md):
receipts-like inputs of about 600 characters, an `exact` scorer whose gold is the answer the zero-latency server
gives (so every case passes: the scorer's real path, not its error path), and one `openai-compatible:` candidate
whose `base_url` and `concurrency` the benchmark sets for each measurement. No incumbent.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from bench.servers import ANSWER, CHUNKS, MODEL

WORDS = ("JALAN", "TAMAN", "SDN", "BHD", "KEDAI", "RM", "TOTAL", "GST", "CASH", "QTY", "ROUNDING", "CHANGE")
PARAMS = {"temperature": 0.0, "max_tokens": CHUNKS, "seed": 0}


def receipt(rng: random.Random, i: int) -> str:
    """About 600 characters of receipt-like OCR text."""
    lines = [f"KEDAI {i} SDN BHD", f"NO.{rng.randint(1, 99)} JALAN PUTRA {rng.randint(1, 9)}, 81200 JOHOR BAHRU"]
    while sum(len(x) + 1 for x in lines) < 560:
        lines.append(" ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(6)))
    lines.append(f"TOTAL : {rng.randint(1, 999)}.{rng.randint(0, 99):02d}")
    return "\n".join(lines)


def write_suite(
    folder: Path, n_cases: int, *, base_url: str = "http://127.0.0.1:9/v1", model: str = MODEL, gold: str = ANSWER,
    params: dict[str, Any] | None = None, provider_params: dict[str, Any] | None = None, seed: int = 0,
) -> Path:
    """A suite of `n_cases` generated receipts in `folder` (created), one `openai-compatible:<model>` candidate."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "cases.jsonl", "w") as out:
        for i in range(n_cases):
            out.write(json.dumps({"id": f"case-{i:06d}", "text": receipt(rng, i), "gold": gold}) + "\n")
    (folder / "prompt.j2").write_text(
        "Read this receipt and say, in one sentence, what the total is, where and when it was paid.\n\n"
        "Receipt:\n{{ text }}\n"
    )
    params = params or PARAMS
    lines = [
        'name = "bench"', 'description = "generated receipts for make bench"', 'version = "1"',
        'task = "classification"', "", "[cases]", 'source = "cases.jsonl"', "", "[prompt]", 'template = "prompt.j2"',
        'system = "You read receipts."', "", "[output]", 'format = "text"', "", "[[scorers]]", 'kind = "exact"', "",
        "[params]", *(f"{k} = {json.dumps(v)}" for k, v in params.items()), "", "[[providers]]",
        f'id = "openai-compatible:{model}"', 'role = "candidate"', f'base_url = "{base_url}"',
        "logprobs = false   # the raw client and the SDK do not ask for them either",
        "max_attempts = 1",
    ]
    if provider_params:
        lines.append("params = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in provider_params.items()) + " }")
    (folder / "suite.toml").write_text("\n".join(lines) + "\n")
    return folder


def candidate(suite: Any, base_url: str, concurrency: int, params: dict[str, Any] | None = None) -> Any:
    """The suite's candidate entry, pointed at `base_url` with `concurrency` calls in flight (and `params` added
    to its own)."""
    spec = suite.spec.providers[0]
    update: dict[str, Any] = {"base_url": base_url, "concurrency": concurrency}
    if params:
        update["params"] = {**spec.params, **params}
    return spec.model_copy(update=update)


async def harness_run(
    suite_dir: Path, base_url: str, concurrency: int, n: int, db: Path, *, cache_mode: str = "off",
    max_s: float = 600.0, load: Any = None, extra: dict[str, Any] | None = None, on_started: Any = None,
) -> dict[str, Any]:
    """The harness end to end, as `harness run` does it: load the suite (rendering every prompt), plan the provider,
    `shadow_run` (call, parse, score, journal, store in DuckDB, aggregate metrics). The store is opened (and
    migrated) before the clock starts. Stopped (marked interrupted) after `max_s` seconds."""
    import asyncio

    from bench.clients import measured
    from harness.providers.plan import plan_provider
    from harness.run.runner import shadow_run
    from harness.store.db import Store
    from harness.suite.load import load_suite

    with Store(db) as store:
        start = time.perf_counter()
        cpu = time.process_time()
        suite = load(suite_dir) if load else load_suite(suite_dir)
        plan = plan_provider(candidate(suite, base_url, concurrency, extra))
        status = "completed"
        run_id = None

        def started(new_run_id: str, todo: int) -> None:
            nonlocal run_id
            run_id = new_run_id
            if on_started is not None:
                on_started(new_run_id, todo)

        try:
            async with asyncio.timeout(max_s):
                result = await shadow_run(suite, [plan], store, limit=n, cache_mode=cache_mode, on_started=started)
            run_id = result.run_id
        except TimeoutError:
            status = f"stopped after {max_s:.0f} s"
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        counts = store.con.execute(
            "SELECT count(*), count(error), sum(CASE WHEN source = 'cache' THEN 1 ELSE 0 END), "
            "coalesce(sum(output_tokens), 0) FROM responses WHERE run_id = ?", [run_id],
        ).fetchall()[0]
        passed = store.con.execute(
            "SELECT count(*) FROM scores WHERE run_id = ? AND metric = 'case_pass' AND passed", [run_id]
        ).fetchall()[0][0]
    requests, errors, cached, tokens = counts
    first_error = None
    if errors:
        with Store(db, read_only=True) as store:
            first_error = store.con.execute(
                "SELECT error FROM responses WHERE run_id = ? AND error IS NOT NULL LIMIT 1", [run_id]
            ).fetchall()[0][0]
    out = measured({"requests": requests, "errors": errors, "chunks": int(tokens)}, wall, cpu,
                   [first_error] if first_error else [])
    return {**out, "passed": passed, "cached": cached or 0, "status": status, "run_id": run_id}


def self_check(db: Path, run_id: str | None) -> dict[str, Any]:
    """What the harness recorded about its own health during run `run_id`, where it records any: columns of
    `runs` and `run_providers` whose names speak of CPU, event-loop lag, saturation or reliability. Empty when the
    harness records none (the bench does not depend on their names)."""
    import duckdb

    if run_id is None or not db.exists():
        return {}
    words = ("lag", "cpu", "saturat", "reliab", "self", "client")
    found: dict[str, Any] = {}
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in ("runs", "run_providers"):
            cursor = con.execute(f"SELECT * FROM {table} WHERE run_id = ?", [run_id])
            names = [d[0] for d in cursor.description]
            for row in cursor.fetchall():
                for name, value in zip(names, row, strict=True):
                    if value is not None and any(w in name.lower() for w in words):
                        found[f"{table}.{name}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    finally:
        con.close()
    return found


def write_real_suite(folder: Path, source: Path, n_cases: int, max_tokens: int) -> Path:
    """The `n_cases` shortest receipts of suite `source` (invoices) with its prompt and fields scorer, for the bundled
    model at a server the benchmark started: `local:smollm2-135m`, one request at a time, JSON mode (no schema:
    llama.cpp's Python server refuses the json_schema form, and the harness's fallback would cost a request),
    `max_tokens` short."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = (source / "cases.jsonl").read_text().splitlines()
    # the shortest receipts: llama.cpp's prompt processing on 2 shared cores is most of each answer's time
    lines = sorted(rows, key=lambda line: len(json.loads(line)["text"]))[:n_cases]
    (folder / "cases.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "prompt.j2").write_text((source / "prompt.j2").read_text())
    (folder / "suite.toml").write_text(f"""name = "bench-real"
version = "1"
task = "extraction"

[cases]
source = "cases.jsonl"

[prompt]
template = "prompt.j2"
system = "You extract fields from receipts. Answer with one JSON object and nothing else."

[output]
format = "json"

[[scorers]]
kind = "fields"
dayfirst = true
[scorers.fields]
company = "text"
date = "date"
address = "text"
total = "amount"

[params]
temperature = 0.0
max_tokens = {max_tokens}
seed = 0

[[providers]]
id = "local:smollm2-135m"
role = "candidate"
concurrency = 1
structured_output = "json"
max_attempts = 1
""")
    return folder


def result_records(n: int, seed: int = 0) -> Any:
    """`n` records as the runner hands them to the store (`_Recorder.record`): a `responses` row with an answer of
    about 1.5 KB and its cache key parts, and the fields scorer's six `scores` rows with their details."""
    from datetime import UTC, datetime

    rng = random.Random(seed)
    fields = ("company", "date", "address", "total")
    now = datetime.now(UTC)
    for i in range(n):
        case_id = f"case-{i:06d}"
        gold = {"company": f"KEDAI {i} SDN BHD", "date": f"{1 + i % 28:02d}/0{1 + i % 9}/2019",
                "address": receipt(rng, i)[:120].replace("\n", " "), "total": f"{rng.randint(1, 999)}.00"}
        answer = dict(gold, notes=receipt(rng, i + n) + " " + receipt(rng, i + 2 * n)[:300])
        text = json.dumps(answer)
        response = {
            "run_id": None, "case_id": case_id, "provider": "vllm:Qwen/Qwen2.5-7B-Instruct", "text": text,
            "model": "Qwen/Qwen2.5-7B-Instruct", "input_tokens": 412, "output_tokens": 380,
            "cached_input_tokens": None, "cache_write_tokens": None, "usage_source": "provider",
            "ttft_ms": rng.uniform(20, 80), "latency_ms": rng.uniform(800, 2000), "finish_reason": "stop",
            "error": None, "error_kind": None, "cached": False, "started_at": now, "attempts": 1,
            "retry_wait_ms": 0.0, "rate_limit_wait_ms": 0.0, "source": "call", "cost_usd": None,
            "cache_key": f"{rng.getrandbits(256):064x}",
            "cache_parts": {"provider": "vllm@http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5-7B-Instruct",
                            "params": {"max_tokens": 400, "seed": 0, "temperature": 0.0},
                            "response_format": f"{rng.getrandbits(64):016x}", "messages": f"{rng.getrandbits(64):016x}",
                            "logprobs": True},
            "cached_from": None, "logprob_mean": -0.12, "logprob_min": -3.4, "margin_mean": 4.1, "logprob_tokens": 380,
        }
        keys = {"run_id": None, "case_id": case_id, "provider": response["provider"], "scorer": "fields"}
        scores = [{**keys, "metric": "valid_json", "value": 1.0, "passed": True, "detail": {}}]
        for name in fields:
            ok = rng.random() > 0.2
            scores.append({**keys, "metric": f"field.{name}", "value": float(ok), "passed": ok,
                           "detail": {"gold": gold[name], "pred": answer[name] if ok else "WRONG",
                                      "outcome": "correct" if ok else "wrong"}})
        scores.append({**keys, "metric": "case_pass", "value": 1.0, "passed": True, "detail": {}})
        yield {"responses": [response], "scores": scores}
