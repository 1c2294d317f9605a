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
COUNT_METRICS = frozenset({
    "quotes.hallucinated", "confused_pairs", "items.n_gold", "items.n_pred", "items.matched", "items.invalid_outputs",
    "items.unanswered",
})


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
    row_names = list(dict.fromkeys(
        [*field_names, *(name for entry in by_case.values() for name in entry["fields"] if name not in field_names)]
    ))
    failed = []
    for entry in by_case.values():
        entry["passed"] = bool(entry["passed"])
    for case in cases.itertuples():
        outcomes = {p: by_case.get((case.case_id, p)) for p in order}
        if not any(o is None or not o["passed"] for o in outcomes.values()):
            continue
        failed.append(_failed_case(case, outcomes, order, row_names, _items_key(run)))
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
        **_metric_sections(store.table("metrics", run_id), order),
        "context_note": _context_note(cases),
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
            if detail.get("scorer_error"):
                entry["fields"][f"scorer {s.scorer}"] = {
                    "pred": detail["scorer_error"], "ok": False, "outcome": "scorer error",
                }
        elif s.metric == "valid_json" and not s.passed:
            entry["problem"] = detail.get("problem")
        elif s.metric.startswith("field."):
            entry["fields"][s.metric.removeprefix("field.")] = {
                "pred": detail.get("pred"), "ok": bool(s.passed), "outcome": detail.get("outcome"),
            }
        elif s.metric.startswith("clause."):
            hallucinated = detail.get("grounded") is False
            quote = detail.get("quote")
            entry["fields"]["clause: " + s.metric.removeprefix("clause.")] = {
                "pred": (quote if quote else "present, no quote") if detail.get("pred_present") else "absent",
                "ok": bool(s.passed) and not hallucinated,
                "outcome": "hallucinated quote" if hallucinated else detail.get("outcome"),
            }
        elif s.metric == "items.f1":
            missing, extra = detail.get("missing") or [], detail.get("extra") or []
            entry["fields"]["line items"] = {
                "pred": {"matched": f"{detail.get('tp')} of {detail.get('n_gold')}", "missing": missing,
                         "extra": extra},
                "ok": bool(s.passed), "outcome": detail.get("problem") or f"F1 {s.value:.2f}",
            }
    return per


def _items_key(run: dict[str, Any]) -> str:
    """The gold key of the run's line items (a `line_items` scorer's `key`)."""
    try:
        specs = json.loads(run.get("scorers") or "[]")
    except (TypeError, ValueError):
        specs = []
    return next((s.get("key", "line_items") for s in specs if s.get("kind") == "line_items"), "line_items")


def _metric_sections(metrics: pd.DataFrame, order: list[str]) -> dict[str, Any]:
    """The run-level metrics for the report: headline numbers per provider, clause types, confused labels."""
    out: dict[str, Any] = {"metric_table": [], "category_table": [], "confused": []}
    if metrics.empty:
        return out
    metrics = metrics.assign(detail=metrics["detail"].map(lambda d: json.loads(d) if isinstance(d, str) else {}))
    cell = {(r.provider, r.scorer, r.metric): r for r in metrics.itertuples()}
    headline = [
        (scorer, metric) for scorer, metric in dict.fromkeys(zip(metrics["scorer"], metrics["metric"], strict=True))
        if not metric.startswith(("presence.", "answers.")) or metric.startswith("presence.micro")
    ]
    for scorer, metric in headline:
        values = [cell.get((p, scorer, metric)) for p in order]
        if all(v is None or _missing(v.value) for v in values):
            continue
        out["metric_table"].append({"name": f"{scorer} · {metric}", "count": metric in COUNT_METRICS, "cells": [
            None if v is None or _missing(v.value) else v.value for v in values
        ]})
    categories = [m.removeprefix("presence.") for m in dict.fromkeys(metrics["metric"])
                  if m.startswith("presence.") and not m.startswith("presence.micro")]
    for category in categories:
        row = []
        for p in order:
            found = [r for (prov, _, m), r in cell.items() if prov == p and m == f"presence.{category}"]
            row.append(found[0].detail if found else None)
        out["category_table"].append({"category": category, "cells": row})
    for p in order:
        found = [r for (prov, _, m), r in cell.items() if prov == p and m == "confused_pairs"]
        if found and found[0].detail.get("pairs"):
            out["confused"].append({"provider": p, "pairs": found[0].detail["pairs"][:10]})
    return out


def _context_note(cases: pd.DataFrame) -> str | None:
    """One line on long inputs cut to fit the context, when any were."""
    if "context" not in cases or cases["context"].isna().all():
        return None
    records = [json.loads(c) for c in cases["context"].dropna()]
    cut = [r for r in records if r.get("truncated")]
    if not cut:
        return None
    first = cut[0]
    kept = sum(end - start for start, end in first["kept"])
    return (f"{len(cut)} of {len(cases)} inputs were cut to fit the context: '{first['field']}' to {kept:,} "
            f"characters ({first['strategy']}); recall on clauses inside the part shown is given apart.")


def _failed_case(
    case: Any, outcomes: dict[str, Any], order: list[str], field_names: list[str], items_key: str
) -> dict[str, Any]:
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
        rows.append({"field": name, "gold": _gold_cell(name, gold, items_key), "cells": cells})
    return {
        "case_id": case.case_id, "position": case.position, "line": case.source_line,
        "input": inputs, "prompt": prompt, "gold": gold, "rows": rows, "outcomes": outcomes,
    }


def _gold_cell(name: str, gold: Any, items_key: str = "line_items") -> Any:
    """What the failed-case table shows as gold for a field, a clause type or the line items."""
    if not isinstance(gold, dict):
        return None
    if name.startswith("clause: "):
        entry = gold.get(name.removeprefix("clause: ")) or {}
        if not entry.get("present"):
            return "absent"
        spans = [s.get("text", "") for s in entry.get("spans") or []]
        answer = entry.get("answer")
        head = f"present ({answer})" if answer and answer not in ("Yes", "No") else "present"
        return head + (": " + spans[0][:600] if spans else "")
    if name == "line items":
        return gold.get(items_key)
    if name.startswith("scorer "):
        return None
    return gold.get(name)


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
