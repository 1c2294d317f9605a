"""From traffic to suite: a proxy run's captured requests written as a suite folder, so that live disagreements
become an offline regression suite that `harness run` takes like any other.

The folder holds `cases.jsonl` (each request's chat messages, sent as they are through `prompt.messages_field`,
with the incumbent's answer as gold), `incumbent.jsonl` (the incumbent's answers as a production log, which the
suite's `log:` incumbent replays: `providers.logs`), `suite.toml` (an `agreement` scorer, the proxy's candidates,
the generation parameters most requests asked for) and `README.md` (where it came from).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.scoring.agreement import SCHEMA_FIELD
from harness.store import queries
from harness.store.db import Store

LOG_FILE = "incumbent.jsonl"
UNLIMITED_TOKENS = 4096  # max_tokens of an exported suite whose calls set none


@dataclass(frozen=True)
class Exported:
    """What `export_suite` wrote: the folder, how many cases, the incumbent's log, the requests left out."""

    path: Path
    cases: int
    log: Path
    skipped: int  # requests the incumbent did not answer usably: no reference to judge against


def export_suite(store: Store, run_id: str | None, out: Path, *, only_disagreements: bool = False) -> Exported:
    """Write proxy run `run_id` (None: the latest) of `store` as a suite folder `out`, which must not exist.
    `only_disagreements`: only the requests where a candidate did not pass. Raises HarnessError for a run that
    is not a proxy run, a folder that exists, or a run with nothing to export."""
    run_id = run_id or queries.latest_proxy_run(store)
    if run_id is None:
        raise HarnessError(f"{store.path} has no proxy run to export; record one with `harness proxy`")
    run = store.run(run_id)
    if run.get("reference") != "incumbent":
        raise HarnessError(f"run {run_id} is a run of suite '{run['suite']}', not a proxy run: only traffic captured "
                           "by `harness proxy` is exported")
    if out.exists():
        raise HarnessError(f"{out} exists; give --out a new folder (nothing is overwritten)")
    incumbents = queries.providers_with_role(store, run_id, "incumbent")
    if not incumbents:
        raise HarnessError(f"proxy run {run_id} captured no request; send traffic through the proxy first")
    incumbent = incumbents[0]
    rows = queries.captured_traffic(store, run_id, incumbent)
    kept = [row for row in rows if row["gold"] is not None and row["error"] is None
            and (not only_disagreements or len(row["failed_by"]))]
    if not kept:
        what = "no request where a candidate disagreed" if only_disagreements else "no request the incumbent answered"
        raise HarnessError(f"proxy run {run_id} has {what}: nothing to export")
    cases, log, params, schemas = [], [], Counter(), Counter()
    for row in kept:
        inputs = json.loads(row["input"])
        case: dict[str, Any] = {"id": row["case_id"], "messages": json.loads(row["messages"]),
                                "gold": json.loads(row["gold"])}
        if inputs.get(SCHEMA_FIELD) is not None:
            case[SCHEMA_FIELD] = inputs[SCHEMA_FIELD]
            schemas[json.dumps(inputs[SCHEMA_FIELD], sort_keys=True)] += 1
        cases.append(case)
        params[json.dumps(inputs.get("params") or {}, sort_keys=True)] += 1
        log.append(_log_line(row, inputs))
    out.mkdir(parents=True)
    _write_jsonl(out / "cases.jsonl", cases)
    _write_jsonl(out / LOG_FILE, log)
    schema = json.loads(schemas.most_common(1)[0][0]) if len(schemas) == 1 and schemas.total() == len(kept) else None
    if schema is not None:
        (out / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    json_output = all(not isinstance(case["gold"], str) for case in cases)
    usual = json.loads(params.most_common(1)[0][0])
    candidates = [row for row in queries.provider_specs(store, run_id) if row.get("role") == "candidate"]
    (out / "suite.toml").write_text(_suite_toml(out.name, run_id, run, incumbent, candidates, usual, json_output,
                                                schema is not None, len(kept), only_disagreements))
    (out / "README.md").write_text(_readme(out.name, run_id, run, incumbent, len(kept), len(rows) - len(kept)))
    return Exported(path=out, cases=len(kept), log=out / LOG_FILE, skipped=len(rows) - len(kept))


def _log_line(row: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The incumbent's answer as a production log line (an OpenAI chat.completion, whichever API it came from)."""
    usage = {"prompt_tokens": _int(row["input_tokens"]), "completion_tokens": _int(row["output_tokens"])}
    response = {
        "object": "chat.completion", "model": row["model"] or inputs.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": row["text"]},
                     "finish_reason": row["finish_reason"]}],
        "usage": {k: v for k, v in usage.items() if v is not None},
    }
    line = {"case_id": row["case_id"], "request": {"model": inputs.get("model"),
                                                   "messages": json.loads(row["messages"])},
            "response": response, "latency_ms": _float(row["latency_ms"]), "ttft_ms": _float(row["ttft_ms"])}
    if row["started_at"] is not None:
        line["timestamp"] = row["started_at"].isoformat()
    return {k: v for k, v in line.items() if v is not None}


def _suite_toml(name: str, run_id: str, run: dict[str, Any], incumbent: str, candidates: list[dict[str, Any]],
                params: dict[str, Any], json_output: bool, schema: bool, n: int, only: bool) -> str:
    what = "requests where a candidate disagreed" if only else "requests"
    description = (f"{n} {what} captured by harness proxy run {run_id} ({incumbent}); the incumbent's answers "
                   "are the reference")
    lines = [
        f"name = {_toml(name)}",
        f"description = {_toml(description)}",
        'task = "traffic"',
        "",
        "[cases]",
        'source = "cases.jsonl"',
        "",
        "[prompt]",
        'messages_field = "messages"  # each case carries the chat messages the app sent',
        "",
        "[output]",
        f'format = "{"json" if json_output else "text"}"',
    ]
    if schema:
        lines.append('schema_file = "schema.json"')
    lines += ["", "[[scorers]]", 'kind = "agreement"  # the same answer as the incumbent\'s, after normalisation', "",
              "[[providers]]", f'id = "log:{LOG_FILE}"  # {incumbent}, as it answered in production',
              'role = "incumbent"']
    for candidate in candidates or [{"id": "local:smollm2-135m"}]:
        lines += ["", "[[providers]]", f"id = {_toml(candidate['id'])}", 'role = "candidate"']
        if candidate.get("base_url"):
            lines.append(f"base_url = {_toml(candidate['base_url'])}")
    # a call that set no limit had the API's own (long) one: the candidate must not be cut short where it was not
    lines += ["", "[params]", f"temperature = {float(params.get('temperature', 0.0))}",
              f"max_tokens = {int(params.get('max_tokens', UNLIMITED_TOKENS))}"]
    return "\n".join(lines) + "\n"


def _readme(name: str, run_id: str, run: dict[str, Any], incumbent: str, n: int, skipped: int) -> str:
    left = f" {skipped} requests the incumbent did not answer usably were left out." if skipped else ""
    return (f"# {name}\n\nCaptured live traffic: {n} requests passed through `harness proxy` (run {run_id}, "
            f"started {run.get('started_at')}) to {incumbent}, whose answers are the reference (gold) and are "
            f"replayed as the incumbent from `{LOG_FILE}`.{left}\n\nThe messages are the application's own, after "
            "the proxy's `--redact` patterns. Run it with `harness run` on this folder.\n")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def _toml(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _int(value: Any) -> int | None:
    return None if value is None or value != value else int(value)


def _float(value: Any) -> float | None:
    return None if value is None or value != value else float(value)
