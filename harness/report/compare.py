"""What changed between two stored runs of one suite: "did the new prompt or model version make it worse?".

`compare_runs(store, run_a, run_b, provider=None)` returns a `Comparison` (plain data); `render_comparison`
writes it as `reports/<suite>/compare-<RUN_A>-vs-<RUN_B>.html` (autoescaped, no network, inline CSS).
Run A is the baseline, run B the new one: a delta is B minus A.

How it decides:
- Both runs must be of the same suite name (`HarnessError` otherwise). A different suite hash (cases, prompt,
  config or schema changed) is allowed and reported in `warnings`, as are a run that did not complete and
  shared cases whose gold differs between the runs (a flip may then be the gold's doing, not the model's).
- Only the cases both runs hold (by case id) are compared; `only_in_a` / `only_in_b` list the others.
- A provider is in a run when it was `ready` there (a skipped provider made no calls). Providers ready in both
  runs are compared (`provider=` picks one of them); the others are listed as `added` (only in B) or
  `removed` (only in A).
- A case passes when every scorer's `case_pass` passed (the outcome table's `pass`); a failed call, an answer with
  no scores or no answer at all (an interrupted run) is a failure. Each shared case is then a new failure
  (passed in A, fails in B), fixed (failed in A, passes in B), still failing or still passing. Pass rates are
  over the shared cases, so they can differ from each run's own report when the case sets differ.
- Per-case fields (`field.*`, `clause.*`, line items, scorer errors) "changed" when their correctness flipped;
  field accuracy is over the shared cases too (a case with no score for the field counts as wrong), None for a
  run with no such score at all.
- Run-level metrics (the `metrics` table: accuracy, macro_f1, items.micro_f1, presence.micro_f1,
  quotes.hallucinated...) are compared where both runs have a value. They were computed by the scorers over each
  run's own cases, not only the shared ones. `lower_is_better` marks the metrics where a drop is good.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.analysis.outcomes import NO_ANSWER, outcome_table, run_providers
from harness.errors import HarnessError
from harness.report.html import environment, gold_cell, line_items_key
from harness.scoring.registry import metric_info
from harness.store import queries
from harness.store.cases import case_fields
from harness.store.db import Store

MAX_LISTED_CASES = 500
TEXT_LIMIT = 8000  # characters of a prompt or an output shown per case (a page of 2 x 500 cases stays light)
NEW_FAILURE, FIXED, STILL_FAILING, STILL_PASSING = "new_failure", "fixed", "still_failing", "still_passing"


@dataclass
class MetricDelta:
    """One measure in A and B (None where that run has none) and B - A."""

    name: str  # "field.total", "clause.Governing Law", or "<scorer> · <metric>" for run-level metrics
    a: float | None
    b: float | None
    delta: float | None
    kind: str  # "field" (per-case scores, over the shared cases) or "run" (the stored run-level metric)
    lower_is_better: bool = False
    neutral: bool = False  # neither direction is better (counts of gold items...)

    @property
    def worse(self) -> bool | None:
        """Whether B is worse than A on this measure; None when unknown or neutral."""
        if self.delta is None or self.neutral or self.delta == 0:
            return None
        return self.delta > 0 if self.lower_is_better else self.delta < 0


@dataclass
class ProviderComparison:
    """One provider's outcomes in A and B on the shared cases. Case lists follow the suite's case order."""

    provider: str
    n_shared: int
    passed_a: int
    passed_b: int
    pass_rate_a: float | None
    pass_rate_b: float | None
    new_failures: list[str]
    fixed: list[str]
    still_failing: list[str]
    still_passing: list[str]
    outcome_a: dict[str, str]  # case id -> pass, fail, error or no answer
    outcome_b: dict[str, str]
    changed_fields: dict[str, list[str]]  # case id -> fields whose correctness flipped (only cases with some)
    field_deltas: list[MetricDelta]
    metric_deltas: list[MetricDelta]

    @property
    def pass_rate_delta(self) -> float | None:
        if self.pass_rate_a is None or self.pass_rate_b is None:
            return None
        return self.pass_rate_b - self.pass_rate_a

    def top_changes(self, n: int = 4) -> list[MetricDelta]:
        """The measures that moved most (field accuracies and run-level metrics), largest change first."""
        moved = [d for d in (*self.field_deltas, *self.metric_deltas) if d.delta]
        return sorted(moved, key=lambda d: -abs(d.delta))[:n]


@dataclass
class Comparison:
    """Run B against run A, per provider present in both."""

    run_a: str
    run_b: str
    suite: str
    suite_hash_a: str | None
    suite_hash_b: str | None
    shared_cases: list[str]
    only_in_a: list[str]
    only_in_b: list[str]
    gold_changed: list[str]
    providers: list[ProviderComparison]
    added: list[str]  # ready only in B
    removed: list[str]  # ready only in A
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> why it was not ready in A or B
    warnings: list[str] = field(default_factory=list)

    @property
    def same_hash(self) -> bool:
        return self.suite_hash_a == self.suite_hash_b


def compare_runs(store: Store, run_a: str, run_b: str, provider: str | None = None) -> Comparison:
    """Compare run B with run A (see the module docstring). Raises StoreError for an unknown run and
    HarnessError for runs of different suites or a `provider` not ready in both runs."""
    a, b = store.run(run_a), store.run(run_b)
    hash_a, hash_b = _text(a.get("suite_hash")), _text(b.get("suite_hash"))
    if a["suite"] != b["suite"]:
        raise HarnessError(
            f"run {run_a} is of suite '{a['suite']}' and run {run_b} of suite '{b['suite']}': "
            "compare two runs of the same suite"
        )
    cases_a = _cases(store, run_a)
    cases_b = _cases(store, run_b)
    shared = [c for c in cases_b if c in cases_a]  # in B's case order
    only_a = [c for c in cases_a if c not in cases_b]
    only_b = [c for c in cases_b if c not in cases_a]
    gold_changed = [c for c in shared if _json(cases_a[c]["gold"]) != _json(cases_b[c]["gold"])]

    ready_a, skipped_a = _providers(store, run_a)
    ready_b, skipped_b = _providers(store, run_b)
    both = [p for p in ready_b if p in ready_a]
    if provider is not None:
        if provider not in both:
            raise HarnessError(
                f"provider '{provider}' is not in both runs (in both: {', '.join(both) or 'none'}; "
                f"{run_a}: {', '.join(ready_a) or 'none'}; {run_b}: {', '.join(ready_b) or 'none'})"
            )
        both = [provider]
    skipped = {p: f"skipped in {run_a}: {why}" for p, why in skipped_a.items() if p in ready_b}
    skipped.update({p: f"skipped in {run_b}: {why}" for p, why in skipped_b.items() if p in ready_a})

    data_a, data_b = _RunData(store, run_a), _RunData(store, run_b)
    comparisons = [_compare_provider(p, shared, data_a, data_b) for p in both]

    warnings = []
    if hash_a != hash_b:
        warnings.append(
            f"suite hash differs ({hash_a} in {run_a}, {hash_b} in {run_b}): the cases, "
            f"prompt or config changed; comparing the {len(shared)} case(s) both runs have"
            + (f" ({len(only_a)} only in A, {len(only_b)} only in B)" if only_a or only_b else "")
        )
    elif only_a or only_b:
        warnings.append(f"comparing the {len(shared)} case(s) both runs have ({len(only_a)} only in A, "
                        f"{len(only_b)} only in B)")
    for run_id, run in ((run_a, a), (run_b, b)):
        if run.get("status") != "completed":
            warnings.append(f"run {run_id} is {run.get('status')}: its missing answers count as failures")
    if gold_changed:
        warnings.append(f"gold differs between the runs for {len(gold_changed)} shared case(s) "
                        f"({_few(gold_changed)}): their flips may come from the gold, not the model")
    if not both:
        warnings.append("no provider is ready in both runs: nothing to compare")
    return Comparison(
        run_a=run_a, run_b=run_b, suite=str(a["suite"]), suite_hash_a=hash_a, suite_hash_b=hash_b,
        shared_cases=shared, only_in_a=only_a, only_in_b=only_b, gold_changed=gold_changed, providers=comparisons,
        added=[p for p in ready_b if p not in ready_a], removed=[p for p in ready_a if p not in ready_b],
        skipped=skipped, warnings=warnings,
    )


def comparison_path(comparison: Comparison, reports_dir: str | Path = "reports") -> Path:
    """Where `render_comparison` writes: `<reports_dir>/<suite>/compare-<A>-vs-<B>.html`."""
    name = f"compare-{_safe(comparison.run_a)}-vs-{_safe(comparison.run_b)}.html"
    return Path(reports_dir) / comparison.suite / name


def render_comparison(store: Store, comparison: Comparison, reports_dir: str | Path = "reports") -> Path:
    """Write the comparison as one static HTML file and return its path: new failures first, then fixed cases,
    then field and metric deltas; at most `MAX_LISTED_CASES` cases per provider and section."""
    data = comparison_data(store, comparison)
    out = comparison_path(comparison, reports_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = environment().get_template("compare.html.j2").render(**data)
    out.write_text(html, encoding="utf-8")
    return out


def comparison_data(store: Store, comparison: Comparison) -> dict[str, Any]:
    """What the HTML page shows: the comparison plus, for the listed cases, prompts, gold and both outputs."""
    c = comparison
    runs = {"a": store.run(c.run_a), "b": store.run(c.run_b)}
    data_a, data_b = _RunData(store, c.run_a), _RunData(store, c.run_b)
    cases_a, cases_b = _cases(store, c.run_a), _cases(store, c.run_b)
    items_key = line_items_key(runs["b"])
    models = {
        side: _models(store, run_id) for side, run_id in (("a", c.run_a), ("b", c.run_b))
    }
    sections = []
    for title, key, anchor in (("New failures", "new_failures", "new-failure"), ("Fixed", "fixed", "fixed")):
        blocks = []
        for p in c.providers:
            ids = getattr(p, key)
            listed = [_case_view(case_id, p, cases_a[case_id], cases_b[case_id], data_a, data_b, items_key)
                      for case_id in ids[:MAX_LISTED_CASES]]
            blocks.append({"provider": p.provider, "n": len(ids), "cases": listed})
        sections.append({"title": title, "anchor": anchor, "blocks": blocks})
    deltas = [
        {"provider": p.provider,
         "fields": [_delta_view(d) for d in p.field_deltas],
         "metrics": [_delta_view(d) for d in p.metric_deltas]}
        for p in c.providers
    ]
    return {
        "c": c, "runs": runs, "models": models, "sections": sections, "deltas": deltas, "db_path": str(store.path),
        "max_cases": MAX_LISTED_CASES,
    }


def format_delta(d: MetricDelta) -> tuple[str, str, str]:
    """A measure's A, B and change as text: percentages and points for accuracies and rates, whole numbers
    for counts, three decimals for the rest."""
    metric = d.name.split(" · ", 1)[-1]
    if d.kind == "field":
        return _pct(d.a), _pct(d.b), "–" if d.delta is None else f"{100 * d.delta:+.1f} pts"
    if metric_info(metric).count:
        return _count(d.a), _count(d.b), "–" if d.delta is None else f"{d.delta:+,.0f}"
    return _dec(d.a), _dec(d.b), "–" if d.delta is None else f"{d.delta:+.3f}"


def _delta_view(d: MetricDelta) -> dict[str, Any]:
    a, b, delta = format_delta(d)
    return {"name": d.name, "a": a, "b": b, "delta": delta, "worse": d.worse,
            "note": "lower is better" if d.lower_is_better else ""}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _dec(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


class _RunData:
    """One run's outcome table, answers and per-field cells, per (case, provider)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.table = outcome_table(store, run_id)
        self.metrics = store.table("metrics", run_id)
        answers = queries.answers(store, run_id)
        self.answers = {(r.case_id, r.provider): r for r in answers.itertuples()}
        self.fields: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for c in case_fields(store, run_id).itertuples():
            self.fields.setdefault((c.case_id, c.provider), {})[c.name] = {
                "pred": json.loads(c.pred) if isinstance(c.pred, str) else None, "ok": bool(c.ok),
                "outcome": c.outcome}

    def metric_values(self, provider: str) -> dict[str, float]:
        """'<scorer> · <metric>' -> value, for the provider's run-level metrics that have one."""
        if self.metrics.empty:
            return {}
        mine = self.metrics[self.metrics["provider"] == provider]
        return {f"{r.scorer} · {r.metric}": float(r.value) for r in mine.itertuples()
                if r.value is not None and not (isinstance(r.value, float) and math.isnan(r.value))}

    def outcome(self, case_id: str, provider: str) -> str:
        """The case's status for the provider (`analysis.outcomes.STATUSES`)."""
        rows = self.table.of(provider)
        return rows.at[case_id, "status"] if case_id in rows.index else NO_ANSWER

    def entry(self, case_id: str, provider: str) -> dict[str, Any] | None:
        """The provider's answer to the case (text, error, problem, latency, field cells); None when none is
        stored."""
        answer = self.answers.get((case_id, provider))
        if answer is None:
            return None
        rows = self.table.of(provider)
        row = rows.loc[case_id] if case_id in rows.index else None
        return {"text": answer.text, "error": answer.error if isinstance(answer.error, str) else None,
                "problem": None if row is None else row["problem"],
                "latency_ms": None if row is None else row["latency_ms"],
                "fields": self.fields.get((case_id, provider), {})}

    def field_accuracy(self, provider: str, shared: list[str]) -> dict[str, float]:
        """field.* / clause.* metric -> share of the shared cases where it was right (a clause with an invented
        quote is wrong, as in the report)."""
        if not shared:
            return {}
        wanted = set(shared)
        right: dict[str, int] = {}
        for (case_id, p), cells in self.fields.items():
            if p != provider or case_id not in wanted:
                continue
            for name, cell in cells.items():
                metric = ("clause." + name.removeprefix("clause: ") if name.startswith("clause: ")
                          else None if name == "line items" or name.startswith("scorer ") else "field." + name)
                if metric is not None:
                    right[metric] = right.get(metric, 0) + int(cell["ok"])
        return {metric: n / len(shared) for metric, n in right.items()}


def _compare_provider(provider: str, shared: list[str], a: _RunData, b: _RunData) -> ProviderComparison:
    outcome_a = {c: a.outcome(c, provider) for c in shared}
    outcome_b = {c: b.outcome(c, provider) for c in shared}
    buckets: dict[str, list[str]] = {NEW_FAILURE: [], FIXED: [], STILL_FAILING: [], STILL_PASSING: []}
    changed: dict[str, list[str]] = {}
    for case_id in shared:
        ok_a, ok_b = outcome_a[case_id] == "pass", outcome_b[case_id] == "pass"
        bucket = {(True, False): NEW_FAILURE, (False, True): FIXED, (False, False): STILL_FAILING,
                  (True, True): STILL_PASSING}[(ok_a, ok_b)]
        buckets[bucket].append(case_id)
        fields = _changed_fields(a.entry(case_id, provider), b.entry(case_id, provider))
        if fields:
            changed[case_id] = fields
    n = len(shared)
    passed_a = sum(1 for c in shared if outcome_a[c] == "pass")
    passed_b = sum(1 for c in shared if outcome_b[c] == "pass")
    acc_a, acc_b = a.field_accuracy(provider, shared), b.field_accuracy(provider, shared)
    field_deltas = [_delta(name, acc_a.get(name), acc_b.get(name), "field")
                    for name in dict.fromkeys([*acc_a, *acc_b])]
    return ProviderComparison(
        provider=provider, n_shared=n, passed_a=passed_a, passed_b=passed_b,
        pass_rate_a=passed_a / n if n else None, pass_rate_b=passed_b / n if n else None,
        new_failures=buckets[NEW_FAILURE], fixed=buckets[FIXED], still_failing=buckets[STILL_FAILING],
        still_passing=buckets[STILL_PASSING], outcome_a=outcome_a, outcome_b=outcome_b, changed_fields=changed,
        field_deltas=field_deltas, metric_deltas=_run_metric_deltas(a, b, provider),
    )


def _run_metric_deltas(a: _RunData, b: _RunData, provider: str) -> list[MetricDelta]:
    """The stored run-level metrics of `provider` that have a value in both runs, in B's order."""
    values_a, values_b = a.metric_values(provider), b.metric_values(provider)
    return [_delta(name, values_a[name], value, "run") for name, value in values_b.items() if name in values_a]


def _changed_fields(entry_a: dict[str, Any] | None, entry_b: dict[str, Any] | None) -> list[str]:
    """Fields whose correctness differs between A's and B's answer (a failed call has every field wrong)."""
    fields_a = (entry_a or {}).get("fields", {})
    fields_b = (entry_b or {}).get("fields", {})
    return [name for name in dict.fromkeys([*fields_a, *fields_b])
            if bool(fields_a.get(name, {}).get("ok")) != bool(fields_b.get(name, {}).get("ok"))]


def _delta(name: str, a: float | None, b: float | None, kind: str) -> MetricDelta:
    metric = name.split(" · ", 1)[-1]
    return MetricDelta(
        name=name, a=a, b=b, delta=None if a is None or b is None else b - a, kind=kind,
        lower_is_better=metric_info(metric).better == "lower", neutral=metric_info(metric).better == "neither",
    )


def _cases(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    """case id -> the run's `cases` row, in case order."""
    cases = store.table("cases", run_id)
    if cases.empty:
        return {}
    cases = cases.sort_values("position", na_position="last")
    return {row["case_id"]: row for row in cases.to_dict("records")}


def _providers(store: Store, run_id: str) -> tuple[list[str], dict[str, str]]:
    """The providers ready in a run (incumbent first), and why the others were skipped."""
    who = run_providers(store, run_id)
    return list(who.ready), who.skipped


def _models(store: Store, run_id: str) -> dict[str, str]:
    """provider -> the model name sent to its server, or 'skipped', to show what changed between the runs."""
    rows = store.table("run_providers", run_id)
    out = {}
    for r in rows.to_dict("records"):
        model = r.get("served_model")
        out[r["provider"]] = "skipped" if r.get("status") == "skipped" else (model if isinstance(model, str) else "")
    return out


def _case_view(
    case_id: str, p: ProviderComparison, row_a: dict[str, Any], row_b: dict[str, Any], a: _RunData, b: _RunData,
    items_key: str,
) -> dict[str, Any]:
    entry_a, entry_b = a.entry(case_id, p.provider), b.entry(case_id, p.provider)
    changed = p.changed_fields.get(case_id, [])
    gold_a, gold_b = _json(row_a.get("gold")), _json(row_b.get("gold"))
    prompt_a, prompt_b = _prompt(row_a), _prompt(row_b)
    names = list(dict.fromkeys([*(entry_a or {}).get("fields", {}), *(entry_b or {}).get("fields", {})]))
    rows = []
    for name in names:
        rows.append({
            "field": name, "gold": gold_cell(name, gold_b, items_key), "changed": name in changed,
            "a": _field_cell(entry_a, name), "b": _field_cell(entry_b, name),
        })
    return {
        "case_id": case_id, "line": _line(row_b.get("source_line")), "prompt": _cut(prompt_b),
        "prompt_a": _cut(prompt_a) if prompt_a != prompt_b else None, "gold": gold_b,
        "gold_a": gold_a if gold_a != gold_b else None, "rows": rows, "changed": changed,
        "a": _answer(entry_a, p.outcome_a[case_id]), "b": _answer(entry_b, p.outcome_b[case_id]),
    }


def _field_cell(entry: dict[str, Any] | None, name: str) -> dict[str, Any]:
    found = (entry or {}).get("fields", {}).get(name)
    if found:
        return found
    return {"pred": None, "ok": False, "outcome": "no answer" if entry is None else "error"}


def _answer(entry: dict[str, Any] | None, state: str) -> dict[str, Any]:
    if entry is None:
        return {"state": state, "text": None, "error": None, "problem": None, "latency_ms": None}
    latency = entry.get("latency_ms")
    return {"state": state, "text": _cut(entry["text"] if isinstance(entry["text"], str) else ""),
            "error": entry["error"], "problem": entry.get("problem"),
            "latency_ms": None if latency is None or (isinstance(latency, float) and math.isnan(latency)) else latency}


def _prompt(row: dict[str, Any]) -> str:
    messages = _json(row.get("messages"))
    if not isinstance(messages, list) or not messages:
        return ""
    return "\n\n".join(f"[{m.get('role', '')}]\n{m.get('content', '')}" for m in messages if isinstance(m, dict))


def _cut(text: str, limit: int = TEXT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit:,} more characters; the whole text is in DuckDB)"


def _line(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _few(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _safe(run_id: str) -> str:
    return re.sub(r"[^\w.-]", "_", run_id)
