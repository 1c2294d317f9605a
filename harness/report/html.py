"""The HTML failure report: one static file per run, readable offline, every model output escaped.

`render_report(store, run_id, reports_dir)` writes `reports/<suite>/<run_id>/index.html` and returns its path.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pandas as pd

from harness.analysis.intervals import wilson_interval
from harness.analysis.judging import JudgeSummary, judge_summaries
from harness.analysis.outcomes import (
    ERROR,
    FAIL,
    NO_ANSWER,
    PASS,
    OutcomeTable,
    agreement,
    outcome_table,
    paired_category,
)
from harness.analysis.summary import field_metrics_from_counts, summarize
from harness.report.charts import cascade_chart, cost_chart, latency_chart, metric_bars
from harness.scoring.parse import canonical_answer
from harness.scoring.registry import metric_info
from harness.selfcheck import ADVICE, LAG_LIMIT_MS, unreliable_reason
from harness.selfcheck import COLUMNS as SELFCHECK_COLUMNS
from harness.store import queries
from harness.store.cases import case_fields, cell_names, page_records
from harness.store.db import Store
from harness.store.queries import shown_status

FIRST_PAGE = 50  # failed cases rendered into the page itself; the script pages through the rest
TEXT_LIMIT = 4000  # characters of an output (or gold) kept for a failed case
PASSING_TEXT_LIMIT = 300  # for a case every provider passed
PASSING_INPUT_LIMIT = 1500
INPUT_LIMIT = 6000  # characters of the prompt kept for a failed case (the page shows it collapsed)
CELL_LIMIT = 2000  # characters of a field table's cell
LIMITS = {"text": TEXT_LIMIT, "passing_text": PASSING_TEXT_LIMIT, "input": INPUT_LIMIT,
          "passing_input": PASSING_INPUT_LIMIT, "cell": CELL_LIMIT}
RECORDS_AT_ONCE = 5_000  # cases read from DuckDB and compressed at a time
COMPRESSION = 4  # zlib level: 2.5 times as fast as the default 6, for a file about 14% larger


def environment() -> jinja2.Environment:
    """The report templates' environment: autoescaped, strict, with the report's filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,  # model output, inputs and gold values are untrusted
        undefined=jinja2.StrictUndefined,
        bytecode_cache=_bytecode_cache(),
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


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Jinja's own cache of compiled templates, in a folder of this user's under the temporary directory (made
    0700 and checked by Jinja): compiling the report's templates takes a fifth of a second a report. Keyed by
    each template's source, so an edited template is compiled again. None where no such folder can be made."""
    try:
        return jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError):
        return None


def _safe_svg(svg: str) -> markupsafe.Markup:
    """Mark a chart built by harness.charts as markup; anything else is escaped. Its text (provider, field and
    label names) was escaped by harness.report.charts."""
    if not (isinstance(svg, str) and svg.lstrip().startswith("<svg") and "<script" not in svg.lower()):
        return markupsafe.escape(svg)
    return markupsafe.Markup(svg)


def _fmt_usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    stats = json.loads(row["stats"]) if isinstance(row.get("stats"), str) else {}
    return stats.get("this_session", stats) if isinstance(stats, dict) else {}


def run_counts(outcomes: pd.DataFrame, stats: dict[str, Any]) -> dict[str, float]:
    """A provider's calls, retries and waits over every invocation of the run: its stored answers (rows of its
    outcome table) that were called for (cache hits made no call) plus the answers a resume deleted to call for
    again (`stats.forgotten`). Calls in flight when a process was killed left no trace and are not counted."""
    stored = outcomes[outcomes["status"] != NO_ANSWER] if len(outcomes) else outcomes
    called = stored[~stored["cached"].fillna(False).astype(bool)] if len(stored) else stored
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
    """Everything the report shows, as plain data (also useful for tests and other renderers); the cases for the
    page's script are `cases_data` (gzipped JSON, base64)."""
    run = store.run(run_id)
    run["status"], run["status_reason"] = shown_status(run["status"], run.get("status_reason"))
    providers = store.table("run_providers", run_id)
    table = outcome_table(store, run_id)
    frame = table.frame
    n_cases = len(table.cases)
    order = list(table.providers.ready)  # incumbent first
    roles = table.providers.roles
    summary = summarize(frame, n_cases)
    counts = {p["provider"]: run_counts(frame[frame["provider"] == p["provider"]], _stats(p))
              for p in providers.to_dict("records")}
    summary_rows = []
    for name in order:
        match = summary[summary["provider"] == name] if not summary.empty else summary
        row = match.iloc[0].to_dict() if len(match) else {  # no answer stored: every case is a failure
            "provider": name, "cases": n_cases, "answered": 0, "errors": 0, "passed": 0, "cached": 0,
            "pass_rate": 0.0 if n_cases else float("nan"),
        }
        if name in counts:  # over every invocation of a resumed run, as the note below the table says
            row.update(retries=counts[name]["retries"], rate_limit_wait_ms=counts[name]["rate_limit_wait_ms"])
        summary_rows.append(_with_intervals({**row, "role": roles.get(name)}, frame, n_cases))

    failed_calls = frame[frame["status"] == ERROR].groupby("provider").size().to_dict()
    fields = field_metrics_from_counts(queries.field_counts(store, run_id), failed_calls)
    field_names = list(dict.fromkeys(fields["field"])) if not fields.empty else []
    field_table = [
        {"field": f, "cells": [_field_cell(fields, p, f) for p in order]} for f in field_names
    ]
    row_names = list(dict.fromkeys([*field_names, *cell_names(store, run_id)]))
    incumbent = next((p for p in order if roles.get(p) == "incumbent"), None)
    candidates = [p for p in order if p != incumbent]
    ranked = _ranked_cases(table, incumbent, candidates)
    failing = [c for c, is_failing in ranked if is_failing]
    taxonomy = table.taxonomy()
    judges = judge_summaries(store, run_id)
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
        **_judged_metrics(_metric_sections(store.table("metrics", run_id), order), judges),
        "judges": judges,
        "context_note": _context_note(store, run_id),
        "paired": _paired(store, table, incumbent, candidates),
        "taxonomy": _taxonomy(taxonomy, order),
        "charts": _charts(frame, fields, store.table("metrics", run_id), order),
        "failed": _failed_cases(store, table, failing[:FIRST_PAGE], order, row_names, incumbent, candidates),
        "n_failed": len(failing),
        "n_cases": n_cases,
        "cases_data": _encode(store, run, [c for c, _ in ranked], order, incumbent, row_names),
        "filter_where": sorted({w for p in order for w in taxonomy[p]["places"]}),
        "filter_kinds": sorted({k for p in order for k in taxonomy[p]["kinds"]}),
        "db_path": str(store.path),
        "decision": _decision_section(store, run),
        "load_tests": _load_tests(store, run),
        "selfcheck": selfcheck_summary(run),
        "lag_limit_ms": LAG_LIMIT_MS,
    }


def _ranked_cases(table: OutcomeTable, incumbent: str | None,
                  candidates: list[str]) -> list[tuple[str, bool]]:
    """(case id, whether some provider failed it) for every case, as the page lists them: regressions first, then
    the other failing cases, then those every provider passed, each in suite order."""
    statuses = table.statuses()
    failing = (statuses != PASS).any(axis=1) if len(statuses.columns) else pd.Series(False, index=statuses.index)
    regression = pd.Series(False, index=statuses.index)
    if incumbent is not None and candidates:
        regression = (statuses[incumbent] == PASS) & (statuses[candidates] != PASS).any(axis=1)
    ranked = pd.DataFrame({"regression": regression, "failing": failing, "position": range(len(statuses))},
                          index=statuses.index)
    ranked = ranked.sort_values(["regression", "failing", "position"], ascending=[False, False, True])
    return list(zip(ranked.index, ranked["failing"].astype(bool), strict=True))


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


def _with_intervals(row: dict[str, Any], outcomes: pd.DataFrame, n_cases: int) -> dict[str, Any]:
    """A summary row with the 95% interval of its pass rate, and tokens and cost per 1,000 cases."""
    passed = row.get("passed")
    interval = wilson_interval(int(passed), n_cases) if passed is not None and not _missing(passed) else None
    row["pass_rate_ci"] = interval
    mine = outcomes[(outcomes["provider"] == row["provider"]) & outcomes["status"].isin([PASS, FAIL])]
    if len(mine):
        live = mine[~mine["cached"].fillna(False).astype(bool)]
        # unknown when any answer lacks a count: a partial sum would pass for the whole
        tokens = mine["input_tokens"] + mine["output_tokens"]
        row["tokens_per_1k"] = float(tokens.mean()) * 1000 if tokens.notna().all() else None
        priced = live["cost_usd"].dropna()
        row["cost_per_1k"] = float(priced.mean()) * 1000 if len(priced) else None
    else:
        row["tokens_per_1k"] = row["cost_per_1k"] = None
    return row


def _paired(store: Store, table: OutcomeTable, incumbent: str | None,
            candidates: list[str]) -> list[dict[str, Any]]:
    """Per candidate: the paired outcome counts against the incumbent, and agreement of the answers."""
    if incumbent is None:
        return []
    out = []
    texts = {p: _texts(store, table.run_id, p) for p in [incumbent, *candidates]}
    canonical: dict[str, Any] = {}  # the incumbent's answers are compared with every candidate's

    def same(a: str, b: str) -> bool:
        if a == b:
            return True
        if a not in canonical:
            canonical[a] = canonical_answer(a)
        return canonical[a] == canonical_answer(b)

    for candidate in candidates:
        agreeing, both = agreement(texts[incumbent], texts[candidate], same)
        out.append({"candidate": candidate, "counts": table.paired_counts(incumbent, candidate),
                    "agree": agreeing, "both_answered": both})
    return out


def _texts(store: Store, run_id: str, provider: str) -> dict[str, str]:
    """Case id -> the answer of `provider`, for the cases it answered without error."""
    rows = queries.answers(store, run_id, provider=provider)
    rows = rows[rows["error"].isna()]
    return dict(zip(rows["case_id"], rows["text"].fillna(""), strict=True))


def _taxonomy(taxonomy: dict[str, dict[str, Counter]], order: list[str]) -> dict[str, Any]:
    """Failure counts by kind and by field/label/clause type, per provider (`OutcomeTable.taxonomy`: a case
    counts once per label; a case with no stored answer counts as `no answer`)."""
    kinds = {p: taxonomy[p]["kinds"] for p in order}
    where = {p: taxonomy[p]["places"] for p in order}
    kind_names = sorted({k for c in kinds.values() for k in c}, key=lambda k: -sum(c[k] for c in kinds.values()))
    where_names = sorted({w for c in where.values() for w in c}, key=lambda w: -sum(c[w] for c in where.values()))
    return {
        "kinds": [{"name": k, "cells": [kinds[p][k] for p in order]} for k in kind_names],
        "where": [{"name": w, "cells": [where[p][w] for p in order]} for w in where_names[:40]],
        "where_total": len(where_names),
    }


def _charts(outcomes: pd.DataFrame, fields: pd.DataFrame, metrics: pd.DataFrame, order: list[str]) -> list[dict]:
    """Inline SVG charts: latency per provider, and the score per field, clause type or label per provider."""
    out = []
    live = outcomes[outcomes["status"].isin([PASS, FAIL]) & ~outcomes["cached"].fillna(False).astype(bool)]
    if len(live):
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


def _cut(text: Any, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit:,} more characters]"


def _encode(store: Store, run: dict[str, Any], case_ids: list[str], order: list[str], incumbent: str | None,
            names: list[str]) -> str:
    """The cases for the page's script (`store.cases.page_records`, in `case_ids` order): a JSON array, gzipped and
    base64-encoded (the browser inflates it with DecompressionStream), so a 10,000-case report stays small enough
    to attach to a CI run. Read and compressed a slice of cases at a time, so that memory stays flat."""
    packer = zlib.compressobj(COMPRESSION, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # a gzip stream
    # zlib lets go of the GIL: one thread compresses a slice while DuckDB builds the next
    with ThreadPoolExecutor(1) as pool:
        parts = [pool.submit(packer.compress, b"[")]
        first = True
        for start in range(0, len(case_ids), RECORDS_AT_ONCE):
            records = page_records(store, run["run_id"], case_ids[start:start + RECORDS_AT_ONCE], order=order,
                                   incumbent=incumbent, names=names, items_key=line_items_key(run), limits=LIMITS)
            text = ",".join(records)
            if text:
                parts.append(pool.submit(packer.compress, (b"" if first else b",") + text.encode()))
                first = False
        parts.append(pool.submit(packer.compress, b"]"))
        parts.append(pool.submit(packer.flush))
        parts = [part.result() for part in parts]
    return base64.b64encode(b"".join(parts)).decode("ascii")


def render_report(store: Store, run_id: str, reports_dir: str | Path = "reports") -> Path:
    """Write the run's report and return the path of its index.html."""
    data = report_data(store, run_id)
    out = Path(reports_dir) / str(data["run"]["suite"]) / run_id / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    html = environment().get_template("report.html.j2").render(**data)
    out.write_text(html, encoding="utf-8")
    return out


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


def trust_note(summary: JudgeSummary) -> str:
    """How far a judge can be trusted, in a few words, to stand beside each of its numbers."""
    human = summary.human
    if human is None or not human.n:
        return "judge unvalidated"
    kappa = "undefined" if human.kappa is None else f"{human.kappa:.2f}"
    return f"judge agrees with humans {human.accuracy:.0%}, kappa {kappa}, n = {human.n}"


def _judged_metrics(sections: dict[str, Any], judges: list[JudgeSummary]) -> dict[str, Any]:
    """`sections` with each judge scorer's metrics named with how far its judge can be trusted."""
    notes = {j.scorer: trust_note(j) for j in judges}
    for row in sections["metric_table"]:
        scorer = row["name"].split(" · ", 1)[0]
        if scorer in notes:
            row["name"] = f"{row['name']} ({notes[scorer]})"
    return sections


def _context_note(store: Store, run_id: str) -> str | None:
    """One line on long inputs cut to fit the context, when any were."""
    n_cases, cut = queries.context_cuts(store, run_id)
    if not cut:
        return None
    first = cut[0]
    kept = sum(end - start for start, end in first["kept"])
    return (f"{len(cut)} of {n_cases} inputs were cut to fit the context: '{first['field']}' to {kept:,} "
            f"characters ({first['strategy']}); recall on clauses inside the part shown is given apart.")


def _failed_cases(store: Store, table: OutcomeTable, case_ids: list[str], order: list[str], names: list[str],
                  incumbent: str | None, candidates: list[str]) -> list[dict[str, Any]]:
    """The failed cases `case_ids` in full, as the page shows them before its script runs: input, gold, the
    field table (rows `names`, a cell per provider in `order`) and each provider's answer."""
    if not case_ids:
        return []
    rows = queries.cases_of(store, table.run_id, case_ids).set_index("case_id")
    answers = queries.answers(store, table.run_id, case_ids=case_ids).set_index(["case_id", "provider"])
    cells = case_fields(store, table.run_id, case_ids)
    cell_of = {(c.case_id, c.provider, c.name): {"pred": json.loads(c.pred) if isinstance(c.pred, str) else None,
                                                 "ok": bool(c.ok), "outcome": c.outcome}
               for c in cells.itertuples()}
    items_key = line_items_key(store.run(table.run_id))
    out = []
    for case_id in case_ids:
        case = rows.loc[case_id]
        gold = json.loads(case["gold"]) if isinstance(case["gold"], str) else case["gold"]
        messages = json.loads(case["messages"]) if isinstance(case["messages"], str) else []
        outcomes: dict[str, dict[str, Any] | None] = {}
        for p in order:
            o = table.of(p).loc[case_id] if case_id in table.of(p).index else None
            if o is None or o["status"] == NO_ANSWER:
                outcomes[p] = None
                continue
            text = answers.loc[(case_id, p), "text"] if (case_id, p) in answers.index else None
            outcomes[p] = {"passed": o["status"] == PASS, "error": o["error"] if isinstance(o["error"], str) else None,
                           "text": text if isinstance(text, str) else "", "problem": o["problem"],
                           "latency_ms": None if _missing(o["latency_ms"]) else float(o["latency_ms"])}
        status = {p: PASS if o and o["passed"] else "x" for p, o in outcomes.items()}
        table_rows = [{"field": name, "gold": gold_cell(name, gold, items_key), "cells": [
            cell_of.get((case_id, p, name)) or {
                "pred": None, "ok": False, "outcome": "no answer" if outcomes[p] is None else "error"}
            for p in order]} for name in names]
        out.append({
            "case_id": case_id, "position": int(case["position"]), "line": case["source_line"],
            "input": json.loads(case["input"]) if isinstance(case["input"], str) else case["input"],
            "prompt": messages[-1]["content"] if messages else "", "gold": gold, "rows": table_rows,
            "outcomes": outcomes,
            "category": {c: paired_category(status[incumbent] == PASS, status[c] == PASS) for c in candidates}
            if incumbent else {},
        })
    return out


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
