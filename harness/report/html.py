"""The HTML failure report: one static file per run, readable offline, every model output escaped.

`render_report(store, run_id, reports_dir)` writes `reports/<suite>/<run_id>/index.html` and returns its path.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pandas as pd

from harness.analysis.outcomes import (
    agreement,
    paired_category,
    paired_counts,
    same_answer,
    shown_status,
    wilson_interval,
)
from harness.analysis.summary import field_metrics, summarize
from harness.scoring.registry import metric_info
from harness.selfcheck import ADVICE, LAG_LIMIT_MS, unreliable_reason
from harness.selfcheck import COLUMNS as SELFCHECK_COLUMNS
from harness.store import queries
from harness.store.db import Store

FIRST_PAGE = 50  # failed cases rendered into the page itself; the script pages through the rest
TEXT_LIMIT = 4000  # characters of an output (or gold) kept for a failed case
PASSING_TEXT_LIMIT = 300  # for a case every provider passed
PASSING_INPUT_LIMIT = 1500
INPUT_LIMIT = 6000  # characters of the prompt kept for a failed case (the page shows it collapsed)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,  # model output, inputs and gold values are untrusted
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms"] = _fmt_ms
    env.filters["lag"] = _fmt_lag
    env.filters["pct"] = _fmt_pct
    env.filters["num"] = _fmt_num
    env.filters["usd"] = _fmt_usd
    env.filters["pretty"] = _pretty
    env.filters["when"] = _fmt_when
    env.filters["safe_svg"] = _safe_svg
    return env


def _safe_svg(svg: str) -> markupsafe.Markup:
    """Mark a chart built by harness.charts as markup; anything else is escaped. Its text (provider, field and
    label names) was escaped by matplotlib's SVG writer."""
    if not (isinstance(svg, str) and svg.lstrip().startswith("<svg") and "<script" not in svg.lower()):
        return markupsafe.escape(svg)
    return markupsafe.Markup(svg)


def _fmt_usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    stats = json.loads(row["stats"]) if isinstance(row.get("stats"), str) else {}
    return stats.get("this_session", stats) if isinstance(stats, dict) else {}


def run_counts(responses: pd.DataFrame, stats: dict[str, Any]) -> dict[str, float]:
    """A provider's calls, retries and waits over every invocation of the run: its stored answers that were called
    for (cache hits made no call) plus the answers a resume deleted to call for again (`stats.forgotten`). Calls in
    flight when a process was killed left no trace and are not counted."""
    called = responses[~responses["cached"].fillna(False).astype(bool)] if len(responses) else responses
    attempts = called["attempts"].fillna(1) if len(called) else pd.Series(dtype=float)
    forgotten = stats.get("forgotten") or {}
    return {
        "calls": int(attempts.sum()) + int(forgotten.get("calls", 0)),
        "retries": int((attempts - 1).clip(lower=0).sum()) + int(forgotten.get("retries", 0)),
        "rate_limit_wait_ms": (float(called["rate_limit_wait_ms"].fillna(0).sum()) if len(called) else 0.0)
        + float(forgotten.get("rate_limit_wait_ms", 0)),
    }


def _provider_note(row: dict[str, Any], counts: dict[str, float] | None = None) -> dict[str, str] | None:
    """One line on what a provider did beyond its answers: log matching, calls and retries (over every invocation
    of a resumed run), rate limits."""
    stats = _stats(row)
    parts = []
    if stats.get("summary"):
        parts.append(f"log {stats.get('log')}: {stats['summary']}")
    calls = (counts or {}).get("calls") or stats.get("calls")
    if calls and "calls" in stats:
        retries = (counts or {}).get("retries", stats.get("retries", 0))
        over = f" over {stats['invocations']} invocations" if stats.get("invocations", 1) > 1 else ""
        parts.append(f"{calls} calls, {retries} retries{over}, {stats.get('rate_limited', 0)} rate-limited answers")
    if stats.get("concurrency_cuts"):
        parts.append(f"concurrency cut {stats['concurrency_cuts']} times on rate limits "
                     f"(lowest {stats.get('concurrency_lowest')} of {row.get('concurrency')})")
    return {"provider": row["provider"], "text": "; ".join(parts)} if parts else None


def report_data(store: Store, run_id: str) -> dict[str, Any]:
    """Everything the report shows, as plain data (also useful for tests and other renderers)."""
    run = store.run(run_id)
    run["status"], run["status_reason"] = shown_status(run["status"], run.get("status_reason"))
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
    counts = {
        p["provider"]: run_counts(responses[responses["provider"] == p["provider"]] if len(responses) else responses,
                                  _stats(p))
        for p in providers.to_dict("records")
    }
    for name in order:
        match = summary[summary["provider"] == name] if not summary.empty else summary
        row = match.iloc[0].to_dict() if len(match) else {  # no answer stored: every case is a failure
            "provider": name, "cases": n_cases, "answered": 0, "errors": 0, "passed": 0, "cached": 0,
            "pass_rate": 0.0 if n_cases else float("nan"),
        }
        if name in counts:  # over every invocation of a resumed run, as the note below the table says
            row.update(retries=counts[name]["retries"], rate_limit_wait_ms=counts[name]["rate_limit_wait_ms"])
        summary_rows.append(_with_intervals({**row, "role": roles.get(name)}, responses, n_cases))

    failed_calls = responses[responses["error"].notna()].groupby("provider").size().to_dict()
    fields = field_metrics(scores, failed_calls) if not scores.empty else pd.DataFrame()
    field_names = list(dict.fromkeys(fields["field"])) if not fields.empty else []
    field_table = [
        {"field": f, "cells": [_field_cell(fields, p, f) for p in order]} for f in field_names
    ]

    items_key = line_items_key(run)
    by_case = case_index(responses, scores)
    row_names = list(dict.fromkeys(
        [*field_names, *(name for entry in by_case.values() for name in entry["fields"] if name not in field_names)]
    ))
    for entry in by_case.values():
        entry["passed"] = bool(entry["passed"])
    incumbent = next((p for p in order if roles.get(p) == "incumbent"), None)
    candidates = [p for p in order if p != incumbent]
    statuses: dict[str, dict[str, str]] = {}
    records, failed = [], []
    for case in cases.itertuples():
        outcomes = {p: by_case.get((case.case_id, p)) for p in order}
        status = {p: _status(o) for p, o in outcomes.items()}
        statuses[case.case_id] = status
        category = (
            {c: paired_category(status[incumbent] == "pass", status[c] == "pass") for c in candidates}
            if incumbent else {}
        )
        failing = any(v != "pass" for v in status.values())
        detail = _failed_case(case, outcomes, order, row_names, items_key) if failing else None
        if detail is not None:
            detail["category"] = category
            failed.append(detail)
        records.append(_record(case, outcomes, status, category, detail))
    failed.sort(key=lambda c: (not any(v == "regression" for v in c["category"].values()), c["position"]))
    records.sort(key=lambda r: (not any(v == "regression" for v in (r["cat"] or {}).values()),
                                all(v == "pass" for v in r["st"].values()), r["pos"]))

    return {
        "run": run,
        "providers": providers.to_dict("records"),
        "skipped": providers[providers["status"] == "skipped"].to_dict("records"),
        "order": order,
        "roles": roles,
        "incumbent": incumbent,
        "summary": summary_rows,
        "notes": [note for note in (_provider_note(row, counts.get(row["provider"]))
                                    for row in providers.to_dict("records")) if note],
        "field_names": field_names,
        "field_table": field_table,
        **_metric_sections(store.table("metrics", run_id), order),
        "context_note": _context_note(cases),
        "paired": _paired(statuses, incumbent, candidates, by_case),
        "taxonomy": _taxonomy(by_case, order, statuses),
        "charts": _charts(responses, fields, store.table("metrics", run_id), order),
        "failed": failed[:FIRST_PAGE],
        "n_failed": len(failed),
        "n_cases": n_cases,
        "cases_data": _encode(records),
        "filter_where": sorted({w for r in records for ws in r["w"].values() for w in ws}),
        "filter_kinds": sorted({k for r in records for ks in r["k"].values() for k in ks}),
        "db_path": str(store.path),
        "decision": _decision_section(store, run),
        "load_tests": _load_tests(store, run),
        "selfcheck": selfcheck_summary(run),
        "lag_limit_ms": LAG_LIMIT_MS,
    }


def selfcheck_summary(row: dict[str, Any]) -> dict[str, Any] | None:
    """The client's self-check of a `runs` (or `load_tests`) row for display: CPU, loop lag and whether its latency
    figures can be trusted (`reason` says why not); None for a run that made no call or predates the check."""
    values = {k: None if _missing(row.get(k)) or row.get(k) is pd.NA else row.get(k) for k in SELFCHECK_COLUMNS}
    if all(v is None for v in values.values()):
        return None
    reliable = values["latency_reliable"]
    reason = unreliable_reason(row)
    return {
        **values,
        "latency_reliable": None if reliable is None else bool(reliable),
        "reason": reason,
        "reason_sentence": reason[:1].upper() + reason[1:] if reason else None,
        "advice": ADVICE,
        "threshold_ms": LAG_LIMIT_MS,
    }


def _decision_section(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    """Cost, cascade and decision for the report, from the suite folder's profile.toml; or why there are none."""
    from harness.analysis.cost import curve
    from harness.analysis.decide import analyse
    from harness.errors import HarnessError
    from harness.report.charts import cascade_chart, cost_chart
    from harness.suite.load import load_suite
    from harness.suite.profile import find_profile
    from harness.suite.spec import GateSpec

    folder = Path(str(run.get("suite_path") or ""))
    try:
        profile = find_profile(folder) if run.get("suite_path") else None
        if profile is None:
            return {"note": f"No workload profile ({folder / 'profile.toml'}): add one to see the monthly cost "
                            "of each option, the break-even volume, the hybrid curve and the recommendation "
                            "(suites/README.md, \"Workload profile\")."}
        policy = load_suite(folder).spec.gate if (folder / "suite.toml").is_file() else GateSpec()
        a = analyse(store, run["run_id"], profile, policy)
    except HarnessError as exc:
        return {"note": f"No cost or decision for this run: {exc}"}
    pick, cross = a.cascade_pick, a.cascade_crossfit
    points = curve(a.model, a.volume, a.hybrid_api_cost_per_case)
    section: dict[str, Any] = {
        "analysis": a,
        "assumptions": a.profile.assumptions(),
        "cost_chart": cost_chart(points, a.volume, a.break_even, chart_id="cost"),
        "cascade_rows": [],
        "cascade_chart": None,
    }
    c = a.cascade_curve
    if c is not None and len(c):
        picked = None
        if pick is not None:
            match = c.index[c["threshold"] == pick["threshold"]]
            picked = int(c.index.get_loc(match[0])) if len(match) else None
        section["cascade_chart"] = cascade_chart(
            list(c["routed_share"]), list(c["quality"]), list(c["quality_low"]), list(c["quality_high"]),
            c.attrs.get("incumbent_quality"), float(c.attrs.get("margin", 0.0)), picked, chart_id="cascade",
            crossfit=None if cross is None or cross.folds < 2 else (
                cross.routed_share, cross.quality, cross.quality_low, cross.quality_high),
        )
        step = max(1, len(c) // 12)
        keep = sorted({*range(0, len(c), step), len(c) - 1, *([picked] if picked is not None else [])})
        section["cascade_rows"] = [{**c.iloc[i].to_dict(), "picked": i == picked, "label": _threshold(c.iloc[i])}
                                   for i in keep]
    return section


def _threshold(row: pd.Series) -> str:
    value = float(row["threshold"])
    return "invalid only" if value == -math.inf else "everything" if value == math.inf else f"< {value:.4g}"


def _load_tests(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The latest completed `harness load` of each provider on this run's suite."""
    return [{**row, "unreliable": unreliable_reason(row)} for row in queries.latest_loads(store, run["suite"])]


def _status(outcome: dict[str, Any] | None) -> str:
    if outcome is None:
        return "missing"
    if outcome["error"]:
        return "error"
    return "pass" if outcome["passed"] else "fail"


def _with_intervals(row: dict[str, Any], responses: pd.DataFrame, n_cases: int) -> dict[str, Any]:
    """A summary row with the 95% interval of its pass rate, and tokens and cost per 1,000 cases."""
    passed = row.get("passed")
    interval = wilson_interval(int(passed), n_cases) if passed is not None and not _missing(passed) else None
    row["pass_rate_ci"] = interval
    mine = responses[(responses["provider"] == row["provider"]) & responses["error"].isna()] if len(responses) else None
    if mine is not None and len(mine):
        live = mine[~mine["cached"].fillna(False).astype(bool)]
        # unknown when any answer lacks a count: a partial sum would pass for the whole
        tokens = mine["input_tokens"] + mine["output_tokens"]
        row["tokens_per_1k"] = float(tokens.mean()) * 1000 if tokens.notna().all() else None
        priced = live["cost_usd"].dropna()
        row["cost_per_1k"] = float(priced.mean()) * 1000 if len(priced) else None
    else:
        row["tokens_per_1k"] = row["cost_per_1k"] = None
    return row


def _paired(
    statuses: dict[str, dict[str, str]], incumbent: str | None, candidates: list[str], by_case: dict[Any, Any]
) -> list[dict[str, Any]]:
    """Per candidate: the paired outcome counts against the incumbent, and agreement of the answers."""
    if incumbent is None:
        return []
    out = []
    for candidate in candidates:
        texts_a = {c: o["text"] for (c, p), o in by_case.items() if p == incumbent and not o["error"]}
        texts_b = {c: o["text"] for (c, p), o in by_case.items() if p == candidate and not o["error"]}
        agreeing, both = agreement(texts_a, texts_b, same_answer)
        out.append({"candidate": candidate, "counts": paired_counts(statuses, incumbent, candidate),
                    "agree": agreeing, "both_answered": both})
    return out


def _taxonomy(by_case: dict[Any, Any], order: list[str], statuses: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Failure counts by kind and by field/label/clause type, per provider (a case counts once per label);
    a case with no stored answer counts as `no answer`."""
    kinds = {p: Counter() for p in order}
    where = {p: Counter() for p in order}
    for (_, provider), entry in by_case.items():
        if provider in kinds and (entry["error"] or not entry["passed"]):
            kinds[provider].update(set(entry["kinds"]))
            where[provider].update(set(entry["where"]))
    for status in statuses.values():
        for provider, value in status.items():
            if value == "missing":
                kinds[provider]["no answer"] += 1
    kind_names = sorted({k for c in kinds.values() for k in c}, key=lambda k: -sum(c[k] for c in kinds.values()))
    where_names = sorted({w for c in where.values() for w in c}, key=lambda w: -sum(c[w] for c in where.values()))
    return {
        "kinds": [{"name": k, "cells": [kinds[p][k] for p in order]} for k in kind_names],
        "where": [{"name": w, "cells": [where[p][w] for p in order]} for w in where_names[:40]],
        "where_total": len(where_names),
    }


def _charts(responses: pd.DataFrame, fields: pd.DataFrame, metrics: pd.DataFrame, order: list[str]) -> list[dict]:
    """Inline SVG charts: latency per provider, and the score per field, clause type or label per provider."""
    from harness.report.charts import latency_chart, metric_bars  # matplotlib takes seconds to import: only here

    out = []
    if len(responses):
        live = responses[responses["error"].isna() & ~responses["cached"].fillna(False).astype(bool)]
        latencies = {p: [v / 1000 for v in live[live["provider"] == p]["latency_ms"].dropna()] for p in order}
        svg = latency_chart(latencies, title="Latency per answer (s)")
        if svg:
            out.append({"id": "chart-latency", "title": "Latency", "svg": svg})
    rows, values, title = _score_rows(fields, metrics, order)
    if rows:
        svg = metric_bars(rows, order, values, title=title)
        if svg:
            out.append({"id": "chart-scores", "title": title, "svg": svg})
    return out


def _score_rows(fields: pd.DataFrame, metrics: pd.DataFrame, order: list[str]) -> tuple[list[str], list, str]:
    if not fields.empty:
        names = list(dict.fromkeys(fields["field"]))
        values = [[_value(fields, p, f, "accuracy") for p in order] for f in names]
        return names, values, "Accuracy per field"
    if metrics.empty:
        return [], [], ""
    presence = metrics[metrics["metric"].str.startswith("presence.") & ~metrics["metric"].str.startswith(
        "presence.micro")]
    if len(presence):
        names = [m.removeprefix("presence.") for m in dict.fromkeys(presence["metric"])]
        values = [[_metric_value(presence, p, f"presence.{n}") for p in order] for n in names]
        return names, values, "Presence F1 per clause type"
    per_class = metrics[metrics["metric"] == "per_class"]
    if len(per_class):
        details = {r.provider: json.loads(r.detail) for r in per_class.itertuples() if isinstance(r.detail, str)}
        names = list(dict.fromkeys(label for d in details.values() for label in d))
        values = [[(details.get(p) or {}).get(n, {}).get("f1") for p in order] for n in names]
        return names, values, "F1 per label"
    return [], [], ""


def _value(frame: pd.DataFrame, provider: str, name: str, column: str) -> float | None:
    match = frame[(frame["provider"] == provider) & (frame["field"] == name)]
    return None if match.empty or _missing(match.iloc[0][column]) else float(match.iloc[0][column])


def _metric_value(frame: pd.DataFrame, provider: str, metric: str) -> float | None:
    match = frame[(frame["provider"] == provider) & (frame["metric"] == metric)]
    return None if match.empty or _missing(match.iloc[0]["value"]) else float(match.iloc[0]["value"])


def _record(
    case: Any, outcomes: dict[str, Any], status: dict[str, str], category: dict[str, str], detail: dict | None
) -> dict[str, Any]:
    """One case for the page's script: statuses, failure kinds and places, outputs; details when it failed."""
    limit = TEXT_LIMIT if detail is not None else PASSING_TEXT_LIMIT
    record: dict[str, Any] = {
        "id": case.case_id, "pos": int(case.position), "line": None if _missing(case.source_line) else int(
            case.source_line),
        "cat": category or None, "st": status,
        "k": {p: sorted(set(o["kinds"])) if o else ["no answer"] for p, o in outcomes.items() if status[p] != "pass"},
        "w": {p: sorted(set(o["where"])) for p, o in outcomes.items() if o and status[p] != "pass"},
        "o": {p: _cut(o["text"], limit) if o else None for p, o in outcomes.items()},
        "e": {p: o["error"] for p, o in outcomes.items() if o and o["error"]},
        "lat": {p: o["latency_ms"] for p, o in outcomes.items() if o and not _missing(o["latency_ms"])},
    }
    if detail is None:  # enough of a passing case for the text search to find it by its input or gold
        messages = json.loads(case.messages) if isinstance(case.messages, str) else []
        record["in"] = _cut(messages[-1]["content"] if messages else "", PASSING_INPUT_LIMIT)
        record["gold"] = _cut(_pretty(json.loads(case.gold) if isinstance(case.gold, str) else case.gold),
                              PASSING_TEXT_LIMIT)
    else:
        record["in"] = _cut(detail["prompt"], INPUT_LIMIT)
        record["gold"] = _cut(_pretty(detail["gold"]), TEXT_LIMIT)
        record["rows"] = [
            [r["field"], _cut(_pretty(r["gold"]), 2000) if r["gold"] is not None else "",
             [[_cut(_pretty(c["pred"]), 2000) if c["pred"] is not None else "", bool(c["ok"]), c["outcome"]]
              for c in r["cells"]]]
            for r in detail["rows"]
        ]
    return record


def _cut(text: Any, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit:,} more characters]"


def _encode(records: list[dict[str, Any]]) -> str:
    """The cases for the page's script: JSON, gzipped and base64-encoded (the browser inflates it with
    DecompressionStream), so a 10,000-case report stays small enough to attach to a CI run."""
    raw = json.dumps(records, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def render_report(store: Store, run_id: str, reports_dir: str | Path = "reports") -> Path:
    """Write the run's report and return the path of its index.html."""
    data = report_data(store, run_id)
    out = Path(reports_dir) / str(data["run"]["suite"]) / run_id / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    html = environment().get_template("report.html.j2").render(**data)
    out.write_text(html, encoding="utf-8")
    return out


def case_index(responses: pd.DataFrame, scores: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (case, provider): the answer, whether it passed, its field rows, and for a failure its kinds
    (wrong, missing, extra, invalid_output, hallucinated quote, error kind...) and where it failed (field,
    gold label, clause type, line items)."""
    per: dict[tuple[str, str], dict[str, Any]] = {}
    for r in responses.itertuples():
        error = r.error if isinstance(r.error, str) else None
        per[(r.case_id, r.provider)] = {
            "text": r.text, "error": error, "latency_ms": r.latency_ms, "passed": None, "fields": {},
            "problem": None, "where": [],
            "kinds": [f"error: {r.error_kind or 'call failed'}"] if error else [],
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
                entry["kinds"].append("scorer error")
            elif "gold" in detail and "pred" in detail and not s.passed:  # a label
                entry["kinds"].append("invalid label" if detail.get("pred") == "(invalid)" else "wrong label")
                entry["where"].append(f"label: {detail.get('gold')}")
        elif s.metric == "valid_json" and not s.passed:
            entry["problem"] = detail.get("problem")
            entry["kinds"].append("invalid JSON")
        elif s.metric.startswith("field."):
            name = s.metric.removeprefix("field.")
            entry["fields"][name] = {"pred": detail.get("pred"), "ok": bool(s.passed), "outcome": detail.get("outcome")}
            if not s.passed and detail.get("outcome") != "invalid_output":
                outcome = str(detail.get("outcome"))
                entry["kinds"].append(outcome if outcome.endswith(" values") else f"{outcome} value")
                entry["where"].append(name)
        elif s.metric.startswith("clause."):
            category = s.metric.removeprefix("clause.")
            hallucinated = detail.get("grounded") is False
            quote = detail.get("quote")
            ok = bool(s.passed) and not hallucinated
            entry["fields"]["clause: " + category] = {
                "pred": (quote if quote else "present, no quote") if detail.get("pred_present") else
                        (f"absent, yet quoted: {quote if isinstance(quote, str) else ' | '.join(quote)}" if quote
                         else "absent"),
                "ok": ok, "outcome": "hallucinated quote" if hallucinated else detail.get("outcome"),
            }
            if not ok:
                outcome = detail.get("outcome")
                entry["kinds"].append("hallucinated clause quote" if hallucinated else
                                      {"fp": "clause not there", "fn": "clause missed"}.get(outcome, str(outcome)))
                entry["where"].append(category)
        elif s.metric == "items.f1":
            missing, extra = detail.get("missing") or [], detail.get("extra") or []
            entry["fields"]["line items"] = {
                "pred": {"matched": f"{detail.get('tp')} of {detail.get('n_gold')}", "missing": missing,
                         "extra": extra},
                "ok": bool(s.passed), "outcome": detail.get("problem") or f"F1 {s.value:.2f}",
            }
            if missing:
                entry["kinds"].append("missing item")
            if extra:
                entry["kinds"].append("extra item")
            if missing or extra:
                entry["where"].append("line items")
        elif s.metric.startswith("item_field.") and s.value is not None and s.value < 1:
            entry["kinds"].append("wrong item field")
            entry["where"].append("line items: " + s.metric.removeprefix("item_field."))
    return per


def line_items_key(run: dict[str, Any]) -> str:
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
        out["metric_table"].append({"name": f"{scorer} · {metric}", "count": metric_info(metric).count, "cells": [
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
        rows.append({"field": name, "gold": gold_cell(name, gold, items_key), "cells": cells})
    return {
        "case_id": case.case_id, "position": case.position, "line": case.source_line,
        "input": inputs, "prompt": prompt, "gold": gold, "rows": rows, "outcomes": outcomes,
    }


def gold_cell(name: str, gold: Any, items_key: str = "line_items") -> Any:
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


def _fmt_lag(value: Any) -> str:
    """Event-loop lag: a tenth of a millisecond where that is what there is to see."""
    if _missing(value):
        return "–"
    return f"{value:.1f} ms" if value < 100 else _fmt_ms(value)


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
