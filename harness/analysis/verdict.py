"""`harness gate` around the pure gate: read a stored run (and a baseline), decide, write the verdict.

Inputs: the candidate's and the reference's per-case metric from DuckDB (the reference is the run's incumbent,
or with a baseline run the same provider in that run), the candidate's rates from the run summary, and per
field/label/clause accuracy for the slice checks. Outputs: a plain-text verdict, `gate.json`, JUnit XML (one
test case per check) and, when `GITHUB_STEP_SUMMARY` is set, a Markdown table appended to it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pandas as pd

from harness.analysis.anytime import paired_sequential_verdict
from harness.analysis.gate import FAIL, INCONCLUSIVE, INVALID, NOT_APPLICABLE, PASS, Check, GateResult, evaluate
from harness.analysis.judging import JudgeSummary, judge_summaries
from harness.analysis.outcomes import OutcomeTable, outcome_table, per_case_metric, run_providers
from harness.analysis.summary import summarize
from harness.errors import HarnessError
from harness.selfcheck import ADVICE, unreliable_reason
from harness.store import queries
from harness.store.db import Store
from harness.store.queries import latest_load
from harness.suite.spec import GateSpec


def gate_run(
    store: Store, run_id: str, policy: GateSpec, *, baseline: str | None = None, candidate: str | None = None
) -> GateResult:
    """Decide whether the candidate of `run_id` may ship. Raises HarnessError when there is nothing to compare."""
    run = store.run(run_id)
    providers = run_providers(store, run_id)
    candidate = providers.candidate(candidate)
    if run.get("status") == "budget":
        return _stopped_at_ceiling(run_id, run, policy)
    table = outcome_table(store, run_id)
    if baseline is not None:
        base = store.run(baseline)
        if base["suite"] != run["suite"]:
            raise HarnessError(f"baseline {baseline} is of suite '{base['suite']}', run {run_id} of '{run['suite']}'")
        reference = run_providers(store, baseline).candidate(candidate)
        reference_table = outcome_table(store, baseline)
    elif not providers.incumbents and _judged_against_reference(store, run_id):
        return _gate_against_references(store, run_id, run, table, candidate, policy)
    else:
        reference = providers.incumbent(instead="gate against an earlier run with --baseline RUN_ID")
        reference_table = table
        if candidate == reference:
            raise HarnessError(f"--candidate {candidate} is the run's incumbent: a provider gated against itself "
                               "always passes; name one of the run's candidates")
        same = _same_log(providers.endpoints, candidate, reference)
        if same:
            raise HarnessError(f"{candidate} and the incumbent {reference} both replay the log file {same}: a log "
                               "gated against itself always passes; name a candidate that answers on its own")
    cases, reference_cases = table.cases, reference_table.cases
    mine = per_case_metric(store, table, candidate, policy.metric)
    theirs = per_case_metric(store, reference_table, reference, policy.metric)
    my_failures = table.failures(candidate)
    rule = _stop_rule(run)
    if rule is not None and baseline is None:
        # --until-decided sent only some cases: the others were never asked for, they are not failures
        sent = set(table.with_answer(candidate)) & set(table.with_answer(reference))
        cases = [c for c in cases if c in sent]
        mine = {c: v for c, v in mine.items() if c in sent}
        theirs = {c: v for c, v in theirs.items() if c in sent}
        my_failures = {c: k for c, k in my_failures.items() if c in sent}
    shared = set(cases)
    # the reference's every failed call is left out: a request it refused (a 400 for a parameter the API no longer
    # takes) says nothing of the candidate, and scoring it 0 would hand the candidate a win
    their_failures = {c: kind for c, kind in reference_table.failures(reference, every_error=True).items()
                      if c in shared}
    not_logged = reference_table.with_error_kind(reference, "not_in_log")
    theirs = {c: v for c, v in theirs.items() if c not in their_failures and c not in not_logged}
    excluded = {}
    if their_failures:
        excluded["incumbent gave no answer"] = len(their_failures)
    if not_logged:
        excluded["not in the incumbent's log"] = len(not_logged & shared)
    if baseline is not None:
        excluded["not in the baseline run"] = len(shared - set(reference_cases))
    excluded = {k: v for k, v in excluded.items() if v}
    rates = _rates(store, table, candidate, mine)
    slices = _slices(store, run_id, candidate, baseline or run_id, reference)
    names = (candidate, f"{reference} in {baseline}" if baseline else reference)
    failures = {"candidate": Counter(my_failures.values()), "incumbent": Counter(their_failures.values())}
    result = evaluate(policy, mine, theirs, n_cases=len(cases), rates=rates, slices=slices, names=names,
                      failures=failures, excluded=excluded)
    result.stats.update(run_id=run_id, baseline=baseline, suite=run["suite"])
    _refuse_unreliable_latency(result, rates)
    _judge_checks(result, judge_summaries(store, run_id), candidate, policy)
    if rule is not None and baseline is None:
        _anytime_check(result, mine, theirs, policy, names)
    return result


def _stop_rule(run: dict[str, Any]) -> dict[str, Any] | None:
    """The `--until-decided` rule a run was made under (`runs.stop_rule`), or None."""
    raw = run.get("stop_rule")
    if isinstance(raw, str):
        raw = json.loads(raw)
    return raw if isinstance(raw, dict) else None


def _stopped_at_ceiling(run_id: str, run: dict[str, Any], policy: GateSpec) -> GateResult:
    """The verdict on a run stopped at its spending ceiling: inconclusive, as its answered cases are the ones that
    came first, not a sample the margin can be vouched on."""
    why = run.get("status_reason") or "stopped at its spending ceiling"
    detail = f"run {run_id} {why}" if not str(why).startswith("run") else str(why)
    check = Check("complete run", False, None, None, detail, inconclusive=True)
    return GateResult(INCONCLUSIVE, [check], {"run_id": run_id, "suite": run.get("suite"), "metric": policy.metric,
                                              "margin": policy.margin, "confidence": policy.confidence},
                      reason=f"{detail}; then gate it again")


def _anytime_check(result: GateResult, mine: dict[str, float], theirs: dict[str, float], policy: GateSpec,
                   names: tuple[str, str]) -> None:
    """An --until-decided run stopped when its answer was known: the fixed-sample test does not hold after such
    a stop, so its non-inferiority check is replaced by the anytime-valid one the run stopped on."""
    diffs = [mine[c] - theirs[c] for c in mine if c in theirs]
    seq = paired_sequential_verdict(diffs, policy.margin, policy.confidence)
    text = f"anytime-valid (--until-decided): {names[0]} vs {names[1]}: {seq.describe()}"
    check = Check("non-inferiority", seq.verdict == PASS, seq.low, -policy.margin, text,
                  inconclusive=seq.verdict == INCONCLUSIVE)
    result.checks = [check if c.name == "non-inferiority" else c for c in result.checks]
    result.stats["method"] = "anytime-valid paired test by betting (Waudby-Smith & Ramdas 2024), --until-decided"
    result.stats["sequential"] = {"verdict": seq.verdict, "n": seq.n, "mean": seq.mean, "low": seq.low,
                                  "high": seq.high}
    result.settle()


def _judge_checks(result: GateResult, summaries: list[JudgeSummary], candidate: str, policy: GateSpec) -> None:
    """The judges' part of the verdict: a run whose judge left more than `max_infra_error_rate` of the candidate's
    answers unjudged is invalid (it measured the judge, not the candidate); a pairwise judge whose orders disagree
    on more than `max_judge_inconsistency` of the cases, or (with `min_judge_kappa`) one that is unvalidated or
    agrees with the humans less than that, makes the verdict inconclusive at best. Every judged figure is shown
    with the judge's consistency and agreement with humans in `stats.judges`."""
    if not summaries:
        return
    shown = []
    for s in summaries:
        agreement = s.human
        shown.append({
            "scorer": s.scorer, "kind": s.kind, "judges": s.judges, "against": s.against,
            "outcomes": s.outcomes.get(candidate), "inconsistent_rate": s.inconsistent_rate,
            "validated": s.validated, "human_examples": agreement.n if agreement else 0,
            "human_accuracy": agreement.accuracy if agreement else None,
            "human_kappa": agreement.kappa if agreement else None,
        })
        counts = s.outcomes.get(candidate)
        if counts:
            unjudged, total = counts["unjudged"], sum(counts.values())
            if total and unjudged / total > policy.max_infra_error_rate and result.verdict != INVALID:
                result.verdict = INVALID
                result.reason = (f"the judge of '{s.scorer}' gave no verdict on {unjudged} of {total} of {candidate}'s "
                                 f"answers (above max_infra_error_rate {policy.max_infra_error_rate:g}): the run "
                                 "measured the judge, not the candidate; see `harness report` and fix the judge")
        rate = s.inconsistent_rate
        if s.kind == "pairwise" and rate is not None:
            ok = rate <= policy.max_judge_inconsistency
            result.checks.append(Check(
                f"judge consistency ({s.scorer})", ok, rate, policy.max_judge_inconsistency,
                f"the two orders disagreed on {s.inconsistent} of {s.judged_both} judged cases"
                + ("" if ok else ": the judge reads positions more than answers, and its ties would pass anything"),
                inconclusive=not ok))
        if policy.min_judge_kappa is not None:
            kappa = agreement.kappa if agreement else None
            ok = kappa is not None and kappa >= policy.min_judge_kappa
            detail = (f"Cohen's kappa {kappa:.2f} against {agreement.n} human-labelled examples" if kappa is not None
                      else "unvalidated: no human-labelled examples (judge_labels) with a defined kappa")
            result.checks.append(Check(f"judge agreement with humans ({s.scorer})", ok, kappa,
                                       policy.min_judge_kappa, detail, inconclusive=not ok))
    result.stats["judges"] = shown
    result.settle()


def _judged_against_reference(store: Store, run_id: str) -> bool:
    """Whether a pairwise judge of `run_id` compared the candidate with the cases' reference answers (no incumbent
    ran)."""
    return any(s.kind == "pairwise" and s.against == "reference" for s in judge_summaries(store, run_id))


def _gate_against_references(
    store: Store, run_id: str, run: dict[str, Any], table: OutcomeTable, candidate: str, policy: GateSpec
) -> GateResult:
    """The gate of a run where no incumbent ran but a pairwise judge compared the candidate with the cases'
    reference answers: the references are the bar, passing every case that has one; the candidate must pass (win
    or tie under the judge, and every other scorer) within the margin."""
    with_reference = set(queries.cases_with_gold(store, run_id))
    cases = [c for c in table.cases if c in with_reference]
    mine = {c: v for c, v in per_case_metric(store, table, candidate, policy.metric).items() if c in with_reference}
    # the references pass every case; on net preference they tie with themselves, as an incumbent does
    theirs = dict.fromkeys(cases, 0.5 if policy.metric == "pairwise.preference" else 1.0)
    excluded = {"no reference answer": len(table.cases) - len(cases)} if len(cases) < len(table.cases) else {}
    failures = {"candidate": Counter(k for c, k in table.failures(candidate).items() if c in with_reference),
                "incumbent": Counter()}
    result = evaluate(policy, mine, theirs, n_cases=len(cases), rates=_rates(store, table, candidate, mine),
                      slices=None, names=(candidate, "the reference answers"), failures=failures, excluded=excluded)
    result.stats.update(run_id=run_id, baseline=None, suite=run["suite"], reference="reference answers")
    result.warnings.append("no incumbent ran: the candidate was judged against the cases' reference answers, "
                           "not against the API it would replace")
    _judge_checks(result, judge_summaries(store, run_id), candidate, policy)
    return result


def _same_log(endpoints: dict[str, str], a: str, b: str) -> str | None:
    """The log file both providers replay (the same file however its path was spelled), or None."""
    files = []
    for name in (a, b):
        where = endpoints.get(name, "")
        if not where.startswith("log file "):
            return None
        files.append(Path(where.removeprefix("log file ")).resolve())
    return str(files[0]) if files[0] == files[1] else None


LATENCY_CHECKS = {"max latency p95 (ms)": "latency_p95_ms", "max TTFT p95 (ms)": "ttft_p95_ms"}


def _refuse_unreliable_latency(result: GateResult, rates: dict[str, Any]) -> None:
    """Fail the latency ceilings, saying why, when the figures they read were measured by a saturated client
    (harness.selfcheck): a number the harness could not measure cannot pass a ceiling."""
    reason = rates.get("latency_unreliable")
    result.stats["latency_reliable"] = reason is None
    if reason is None:
        return
    refused = False
    for check in result.checks:
        key = LATENCY_CHECKS.get(check.name)
        if key is None:
            continue
        value = rates.get(key)
        shown = f"{key} = {value:.4g}" if value is not None else f"{key} is unknown"
        check.passed = False
        check.detail = f"{shown} ({rates.get('latency_source')}) cannot be vouched for: {reason}"
        refused = True
    if refused:
        result.warnings.append(f"latency was measured by a client that could not keep up: {ADVICE}")
    result.settle()


def _rates(store: Store, table: OutcomeTable, provider: str, per_case: dict[str, float]) -> dict[str, Any]:
    run_id, n_cases = table.run_id, len(table.cases)
    summary = summarize(table.frame, n_cases)
    match = summary[summary["provider"] == provider]
    row = match.iloc[0].to_dict() if len(match) else {}
    mine = table.of(provider)
    priced = mine[mine["status"].isin(["pass", "fail"]) & ~mine["cached"].astype(bool)]["cost_usd"]
    unpriced = priced.isna().any() or priced.empty
    rates = {
        "score": sum(per_case.values()) / n_cases if n_cases else None,
        "invalid_rate": _num(row.get("invalid_rate")),
        "error_rate": (row.get("errors", 0) / n_cases) if n_cases else None,
        "latency_p95_ms": _num(row.get("latency_p95_ms")),
        "ttft_p95_ms": _num(row.get("ttft_p95_ms")),
        "cost_per_1k": None if unpriced else float(priced.mean()) * 1000,
        "latency_source": f"run {run_id}",
    }
    # latency under load is what a deployment sees: a load test of the same suite version takes precedence
    run = store.run(run_id)
    # why the figures cannot be trusted (the client was saturated while measuring them), or None
    rates["latency_unreliable"] = unreliable_reason(run)
    load = latest_load(store, str(run["suite"]), provider)
    if load is not None and load.get("suite_hash") == run.get("suite_hash") and load.get("latency_p95_ms") is not None:
        rates.update(latency_p95_ms=_num(load["latency_p95_ms"]), ttft_p95_ms=_num(load.get("ttft_p95_ms")),
                     latency_source=f"load test {load['load_id']} at concurrency {load['concurrency']}",
                     latency_unreliable=unreliable_reason(load))
    return rates


def slice_values(scores: pd.DataFrame, provider: str) -> pd.DataFrame:
    """Per case and slice, the provider's accuracy on that slice (columns case_id, slice, value): `field: NAME`
    (a field scorer's field right), `label: GOLD` (the case's gold label predicted), `clause: TYPE` (the clause
    type's presence right with no invented quote) and `line items: FIELD` (the share of matched items whose
    field is right). A suite whose scorers have none of these has no slices."""
    if not len(scores):
        return pd.DataFrame(columns=["case_id", "slice", "value"])
    mine = scores[scores["provider"] == provider]
    parts = []
    fields = mine[mine["metric"].str.startswith("field.")]
    parts.append(pd.DataFrame({"case_id": fields["case_id"], "slice": "field: " + fields["metric"].str[6:],
                               "value": fields["passed"].fillna(False).astype(float)}))
    clauses = mine[mine["metric"].str.startswith("clause.")]
    if len(clauses):
        invented = clauses["detail"].map(lambda d: json.loads(d).get("grounded") is False if isinstance(d, str)
                                         else False)
        ok = clauses["passed"].fillna(False).astype(bool) & ~invented.astype(bool)
        parts.append(pd.DataFrame({"case_id": clauses["case_id"], "slice": "clause: " + clauses["metric"].str[7:],
                                   "value": ok.astype(float)}))
    items = mine[mine["metric"].str.startswith("item_field.") & mine["value"].notna()]
    parts.append(pd.DataFrame({"case_id": items["case_id"], "slice": "line items: " + items["metric"].str[11:],
                               "value": items["value"].astype(float)}))
    passes = mine[(mine["metric"] == "case_pass") & mine["detail"].notna()]
    if len(passes):
        details = passes["detail"].map(json.loads)
        is_label = details.map(lambda d: isinstance(d, dict) and "pred" in d and isinstance(d.get("gold"), (str, int)))
        labels = passes[is_label]
        parts.append(pd.DataFrame({"case_id": labels["case_id"],
                                   "slice": "label: " + details[is_label].map(lambda d: str(d["gold"])),
                                   "value": labels["passed"].fillna(False).astype(float)}))
    return pd.concat(parts, ignore_index=True)


def _slices(store: Store, run_id: str, provider: str, ref_run: str, ref: str) -> dict[str, tuple] | None:
    """Per slice (`slice_values`): (reference accuracy, candidate accuracy, cases) over the cases both sides
    answered; None when the suite's scorers have no slices."""
    def answered(run: str, who: str) -> pd.DataFrame:
        responses = store.table("responses", run)
        ok = set(responses[(responses["provider"] == who) & responses["error"].isna()]["case_id"]) \
            if len(responses) else set()
        values = slice_values(store.table("scores", run), who)
        return values[values["case_id"].isin(ok)]

    before, after = answered(ref_run, ref), answered(run_id, provider)
    if not len(before) and not len(after):
        return None
    paired_rows = before.merge(after, on=["case_id", "slice"], suffixes=("_before", "_after"))
    out: dict[str, tuple] = {name: (None, None, 0) for name in set(before["slice"]) | set(after["slice"])}
    for name, group in paired_rows.groupby("slice"):
        out[str(name)] = (float(group["value_before"].mean()), float(group["value_after"].mean()), len(group))
    return dict(sorted(out.items()))


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


VERDICT_WORDS = {"pass": "PASSED", "fail": "FAILED", "inconclusive": "INCONCLUSIVE", "invalid": "INVALID"}


def verdict_text(result: GateResult) -> str:
    """The plain-text verdict: the verdict with its exit status, a line per check with its number and threshold,
    then the statistics and warnings."""
    s = result.stats
    lines = [f"gate {VERDICT_WORDS[result.verdict]}: {s.get('candidate')} against {s.get('incumbent')} "
             f"({s.get('metric')}, margin {s.get('margin')}, confidence {s.get('confidence')}; "
             f"exit {result.exit_status})"]
    if result.verdict == "invalid":
        lines.append(f"  {result.reason}")
    for check in result.checks:
        lines.append(f"  {_word(result, check).upper()}  {check.name}: {check.detail}")
    if s.get("excluded"):
        lines.append("  info  left out of the pairing: "
                     + ", ".join(f"{n} case(s): {why}" for why, n in s["excluded"].items()))
    if s.get("mcnemar_p") is not None:
        lines.append(f"  info  McNemar exact: {s['regressions']} regressions, {s['wins']} wins, "
                     f"p = {s['mcnemar_p']:.3g}")
    if s.get("method") and result.verdict != "invalid":
        lines.append(f"  info  {s['method']}")
    lines.extend(f"  info  {line}" for line in judge_lines(s.get("judges") or []))
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines)


def judge_lines(judges: list[dict[str, Any]]) -> list[str]:
    """One line per judge scorer of a gate's `stats.judges`: what it found and how far it can be trusted."""
    lines = []
    for j in judges:
        who = ", ".join(j["judges"]) or "no judge"
        line = f"judge {j['scorer']} ({who})"
        counts = j.get("outcomes")
        if counts:
            line += (f": against the {j.get('against') or 'incumbent'}, {counts['win']} won, {counts['tie']} tied, "
                     f"{counts['loss']} lost, {counts['unjudged']} unjudged")
        if j.get("inconsistent_rate") is not None:
            line += f"; orders disagreed on {j['inconsistent_rate']:.0%}"
        if j.get("validated"):
            kappa = j.get("human_kappa")
            line += (f"; agreement with humans {j['human_accuracy']:.0%}, kappa "
                     f"{'undefined' if kappa is None else f'{kappa:.2f}'} on {j['human_examples']} labelled examples")
        else:
            line += "; unvalidated (no human labels)"
        lines.append(line)
    return lines


def _word(result: GateResult, check: Check) -> str:
    return "invalid" if result.verdict == "invalid" and check.outcome in (FAIL, INCONCLUSIVE) else check.outcome


def junit_xml(result: GateResult) -> str:
    """JUnit XML: one test case per check; a failed check is a <failure>, an inconclusive one too (it must not pass
    CI) with type="inconclusive", an invalid run is an <error> of its `valid run` case, and a check that does not
    apply to the suite is <skipped> with its reason."""
    failing = [c for c in result.checks if c.outcome in (FAIL, INCONCLUSIVE)]
    errors = sum(1 for c in failing if result.verdict == "invalid")
    skipped = sum(1 for c in result.checks if c.outcome == NOT_APPLICABLE)
    suite = ElementTree.Element("testsuite", name="shadow gate", tests=str(len(result.checks)),
                                failures=str(len(failing) - errors), errors=str(errors), skipped=str(skipped))
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("verdict", result.verdict), ("exit_status", str(result.exit_status)),
                        ("reason", result.reason)):
        ElementTree.SubElement(properties, "property", name=name, value=value)
    for check in result.checks:
        case = ElementTree.SubElement(suite, "testcase", classname=f"gate.{result.stats.get('suite')}", name=check.name)
        if check.outcome == PASS:
            continue
        if check.outcome == NOT_APPLICABLE:
            ElementTree.SubElement(case, "skipped", message=check.detail)
            continue
        tag = "error" if result.verdict == "invalid" else "failure"
        ElementTree.SubElement(case, tag, message=check.detail, type=check.outcome if tag == "failure" else "invalid"
                               ).text = check.detail
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suite, encoding="unicode") + "\n"


MARKS = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "⚠️ inconclusive", "invalid": "⛔ invalid run",
         NOT_APPLICABLE: "➖ not applicable"}


def markdown(result: GateResult) -> str:
    """A Markdown summary for `$GITHUB_STEP_SUMMARY`."""
    s = result.stats
    out = [f"### Shadow gate: {MARKS[result.verdict]} — `{s.get('candidate')}` vs "
           f"`{s.get('incumbent')}` ({s.get('suite')}), exit {result.exit_status}", ""]
    if result.reason:
        out += [result.reason.replace("|", "\\|"), ""]
    out += ["| check | result | detail |", "|---|---|---|"]
    for check in result.checks:
        detail = check.detail.replace("|", "\\|")
        shown = check.outcome if check.outcome in (PASS, NOT_APPLICABLE) else f"**{_word(result, check)}**"
        out.append(f"| {check.name} | {shown} | {detail} |")
    out.extend(["", *(f"> warning: {w}" for w in result.warnings)])
    return "\n".join(out) + "\n"


def write_outputs(result: GateResult, out_dir: Path) -> dict[str, Path]:
    """Write gate.json and junit.xml under `out_dir`, and append to $GITHUB_STEP_SUMMARY when it is set."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "gate.json", "junit": out_dir / "junit.xml"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    paths["junit"].write_text(junit_xml(result), encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown(result))
        paths["step_summary"] = Path(summary)
    return paths
