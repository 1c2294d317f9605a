"""The HTML failure report: one static file per run, readable offline, every model output escaped.

`render_report(store, run_id, reports_dir)` writes `reports/<suite>/<run_id>/index.html` and returns its path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness.scorers import field_metrics, summarize
from harness.store import Store

MAX_FAILED_CASES = 500


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,  # model output, inputs and gold values are untrusted
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms"] = _fmt_ms
    env.filters["pct"] = _fmt_pct
    env.filters["num"] = _fmt_num
    env.filters["usd"] = _fmt_usd
    env.filters["pretty"] = _pretty
    env.filters["when"] = _fmt_when
    return env


def _fmt_usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _provider_note(row: dict[str, Any]) -> dict[str, str] | None:
    """One line on what a provider did beyond its answers: log matching, retries, rate limits."""
    stats = json.loads(row["stats"]) if isinstance(row.get("stats"), str) else {}
    stats = stats.get("this_session", stats)
    parts = []
    if stats.get("summary"):
        parts.append(f"log {stats.get('log')}: {stats['summary']}")
    if stats.get("calls"):
        parts.append(f"{stats['calls']} calls, {stats.get('retries', 0)} retries, "
                     f"{stats.get('rate_limited', 0)} rate-limited answers")
    if stats.get("concurrency_cuts"):
        parts.append(f"concurrency cut {stats['concurrency_cuts']} times on rate limits "
                     f"(lowest {stats.get('concurrency_lowest')} of {row.get('concurrency')})")
    return {"provider": row["provider"], "text": "; ".join(parts)} if parts else None


def report_data(store: Store, run_id: str) -> dict[str, Any]:
    """Everything the report shows, as plain data (also useful for tests and other renderers)."""
    run = store.run(run_id)
    providers = store.table("run_providers", run_id)
    responses = store.table("responses", run_id)
    scores = store.table("scores", run_id)
    cases = store.table("cases", run_id).sort_values("position")
    n_cases = len(cases)

    ready = providers[providers["status"] == "ready"]
    order = list(ready.sort_values("role", ascending=False)["provider"])  # incumbent first
    roles = dict(zip(providers["provider"], providers["role"], strict=True))
    summary = summarize(responses, scores, n_cases) if not responses.empty else pd.DataFrame()
    summary_rows = []
    for name in order:
        match = summary[summary["provider"] == name] if not summary.empty else summary
        row = match.iloc[0].to_dict() if len(match) else {"provider": name, "cases": n_cases, "answered": 0}
        summary_rows.append({**row, "role": roles.get(name)})

    failed_calls = responses[responses["error"].notna()].groupby("provider").size().to_dict()
    fields = field_metrics(scores, failed_calls) if not scores.empty else pd.DataFrame()
    field_names = list(dict.fromkeys(fields["field"])) if not fields.empty else []
    field_table = [
        {"field": f, "cells": [_field_cell(fields, p, f) for p in order]} for f in field_names
    ]

    by_case = _index(responses, scores)
    failed = []
    for entry in by_case.values():
        entry["passed"] = bool(entry["passed"])
    for case in cases.itertuples():
        outcomes = {p: by_case.get((case.case_id, p)) for p in order}
        if not any(o is None or not o["passed"] for o in outcomes.values()):
            continue
        failed.append(_failed_case(case, outcomes, order, field_names))
    incumbents = [p for p in order if roles.get(p) == "incumbent"]
    if incumbents:
        # regressions first: the incumbent passes, a candidate does not
        inc = incumbents[0]
        failed.sort(key=lambda c: (not (c["outcomes"][inc] or {}).get("passed"), c["position"]))
    return {
        "run": run,
        "providers": providers.to_dict("records"),
        "skipped": providers[providers["status"] == "skipped"].to_dict("records"),
        "order": order,
        "roles": roles,
        "summary": summary_rows,
        "notes": [note for note in (_provider_note(row) for row in providers.to_dict("records")) if note],
        "field_names": field_names,
        "field_table": field_table,
        "failed": failed[:MAX_FAILED_CASES],
        "n_failed": len(failed),
        "n_cases": n_cases,
        "db_path": str(store.path),
    }


def render_report(store: Store, run_id: str, reports_dir: str | Path = "reports") -> Path:
    """Write the run's report and return the path of its index.html."""
    data = report_data(store, run_id)
    out = Path(reports_dir) / str(data["run"]["suite"]) / run_id / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    html = _environment().get_template("report.html.j2").render(**data)
    out.write_text(html, encoding="utf-8")
    return out


def _index(responses: pd.DataFrame, scores: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    per: dict[tuple[str, str], dict[str, Any]] = {}
    for r in responses.itertuples():
        per[(r.case_id, r.provider)] = {
            "text": r.text, "error": r.error if isinstance(r.error, str) else None,
            "latency_ms": r.latency_ms, "passed": None, "fields": {}, "problem": None,
        }
    for s in scores.itertuples():
        entry = per.get((s.case_id, s.provider))
        if entry is None:
            continue
        detail = json.loads(s.detail) if isinstance(s.detail, str) else {}
        if s.metric == "case_pass":  # with several scorers, a case passes when all of them pass
            entry["passed"] = bool(s.passed) and entry["passed"] is not False
        elif s.metric == "valid_json" and not s.passed:
            entry["problem"] = detail.get("problem")
        elif s.metric.startswith("field."):
            entry["fields"][s.metric.removeprefix("field.")] = {
                "pred": detail.get("pred"), "ok": bool(s.passed), "outcome": detail.get("outcome"),
            }
    return per


def _failed_case(case: Any, outcomes: dict[str, Any], order: list[str], field_names: list[str]) -> dict[str, Any]:
    gold = json.loads(case.gold) if isinstance(case.gold, str) else case.gold
    inputs = json.loads(case.input) if isinstance(case.input, str) else case.input
    messages = json.loads(case.messages) if isinstance(case.messages, str) else []
    prompt = messages[-1]["content"] if messages else ""
    rows = []
    for name in field_names:
        cells = []
        for p in order:
            o = outcomes.get(p)
            f = (o or {}).get("fields", {}).get(name)
            cells.append(f or {"pred": None, "ok": False, "outcome": "no answer" if o is None else "error"})
        rows.append({"field": name, "gold": gold.get(name) if isinstance(gold, dict) else None, "cells": cells})
    return {
        "case_id": case.case_id, "position": case.position, "line": case.source_line,
        "input": inputs, "prompt": prompt, "gold": gold, "rows": rows, "outcomes": outcomes,
    }


def _field_cell(fields: pd.DataFrame, provider: str, name: str) -> dict[str, Any] | None:
    match = fields[(fields["provider"] == provider) & (fields["field"] == name)]
    return match.iloc[0].to_dict() if len(match) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt_ms(value: Any) -> str:
    if _missing(value):
        return "–"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _fmt_pct(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * value:.1f}%"


def _fmt_num(value: Any) -> str:
    return "–" if _missing(value) else f"{int(value):,}"


def _fmt_when(value: Any) -> str:
    if _missing(value) or value is pd.NaT:
        return "–"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1)
