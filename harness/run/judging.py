"""Judging: the judge scorers' calls (`pairwise`, `rubric`), once every provider of a run has answered.

`judge_run` reads a run's stored answers, asks each judge scorer's judge about them (both orders for a pairwise
scorer; every answer for a rubric scorer; and the human-labelled examples a case carries in `judge_labels`, to
measure how far the judge can be trusted), stores every call in `judgements` as it returns, and swaps the
scorers' score rows for the verdicts. The judge is a provider like any other: same plans, retries and
concurrency limit, a managed server started where it needs one (or the run's own, when the judge is the
candidate's model), priced by the pricing table. Its verdicts are cached: a call already made with the same
request (in this run, as `--resume` and `harness score` find them, or in another, unless the cache is off) is not
made again. A judge that cannot run leaves every judged case `unjudged`, which fails it: nothing passes unjudged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.pricing import PricingTable, load_pricing
from harness.providers.base import Completion, Request
from harness.providers.failures import UNSTORED
from harness.providers.plan import ProviderPlan, plan_provider, resolve_served_models
from harness.providers.registry import build_provider
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.providers.server import ManagedServer
from harness.providers.spend import BILLED_KINDS, Ledger, Spend
from harness.run.cache import cache_key, cache_parts
from harness.scoring.base import Score
from harness.scoring.judges import (
    BASELINE,
    ORDERS,
    UNJUDGED,
    PairwiseScorer,
    RubricScorer,
    Verdict,
    combine,
    is_judged,
    pairwise_scores,
    preference,
    reference_of,
    same_text,
)
from harness.scoring.registry import build_scorers
from harness.store import queries
from harness.store.db import Store
from harness.suite.load import JUDGE_LABEL_FIELD, Case, Suite
from harness.suite.spec import JUDGE_KINDS, ProviderSpec


@dataclass
class JudgeReport:
    """What judging did for one judge scorer: which judge answered (or why none could), calls made and answered
    from the cache, judge outputs that were no verdict, failed calls, and what the calls cost (None: unpriced)."""

    scorer: str
    judge: str | None
    reason: str | None = None
    against: str | None = None  # pairwise: what the candidate was judged against (incumbent or reference)
    calls: int = 0
    cached: int = 0
    invalid: int = 0
    errors: int = 0
    cost_usd: float | None = 0.0
    notes: list[str] = field(default_factory=list)


def plan_judges(
    suite: Suite, base_url: str | None = None, env: dict[str, str] | None = None
) -> dict[str, ProviderPlan]:
    """Judge scorer name -> the plan of its judge: the first of its `judge` ids that can run (an API judge whose
    key is set, else the next), or, when none can, a skipped plan giving every reason. `base_url` is the CLI's
    --base-url, for a `local:`/`vllm:` judge as for a candidate."""
    out = {}
    for spec in suite.spec.scorers:
        if spec.kind not in JUDGE_KINDS:
            continue
        reasons, chosen = [], None
        for judge in spec.judge:
            plan = plan_provider(ProviderSpec(id=judge, role="judge"), env=env, base_url=base_url,
                                 suite_dir=suite.path)
            if plan.status == "ready":
                chosen = plan
                break
            reasons.append(f"{judge}: {plan.reason}")
        if chosen is None:
            chosen = plan_provider(ProviderSpec(id=spec.judge[-1], role="judge"), env=env, base_url=base_url)
            chosen.status, chosen.reason = "skipped", "; ".join(reasons)
        out[spec.name or spec.kind] = chosen
    return out


@dataclass
class _Item:
    """One judge call to make: who is judged on which case, as which item (an order, or a labelled example)."""

    scorer: PairwiseScorer | RubricScorer
    case: Case
    provider: str | None
    item: str
    messages: list[dict[str, str]]
    human: str | None = None
    verdict: Verdict | None = None


async def judge_run(
    store: Store,
    run_id: str,
    suite: Suite,
    cases: list[Case],
    *,
    judges: dict[str, ProviderPlan] | None = None,
    pricing: PricingTable | None = None,
    cache_mode: str = "replay",
    running: list[ProviderPlan] | None = None,
    server_log_dir: Path | None = None,
    retry: RetryPolicy | None = None,
    fresh: bool = False,
    ledger: Ledger | None = None,
) -> list[JudgeReport]:
    """Judge the stored answers of run `run_id` to `cases` with `suite`'s judge scorers and store their scores.

    `judges`: `plan_judges(suite)` unless given. `running`: the run's provider plans, whose started servers a
    judge of the same model reuses. A verdict this run already stored for the same request is kept (a resume does
    not pay twice); `cache_mode` `off` takes none from other runs; `fresh` asks the judge again for everything.
    `ledger`: the run's spending ceiling, which a priced judge's calls count against like the answers'.
    Returns one report per judge scorer ([] for a suite without one)."""
    scorers = [s for s in build_scorers(suite) if is_judged(s)]
    if not scorers:
        return []
    judges = judges if judges is not None else plan_judges(suite)
    pricing = pricing or load_pricing()
    await asyncio.to_thread(resolve_served_models, [p for p in judges.values() if p.status == "ready"])
    answers = queries.answers_for_judging(store, run_id)
    texts = {(r.case_id, r.provider): r.text or "" for r in answers.itertuples() if r.error is None or pd.isna(r.error)}
    roles = dict(zip(answers["provider"], answers["role"], strict=True)) if len(answers) else {}
    ready = queries.ready_roles(store, run_id)
    incumbents = [p for p, role in ready.items() if role == "incumbent"]
    candidates = [p for p, role in ready.items() if role != "incumbent"]
    roles.update(ready)

    reports: list[JudgeReport] = []
    rows: list[dict[str, Any]] = []
    keep: set[tuple[str, str, str | None, str]] = set()
    async with contextlib.AsyncExitStack() as stack:
        for scorer in scorers:
            plan = judges[scorer.name]
            report = JudgeReport(scorer.name, plan.name if plan.status == "ready" else None, plan.reason)
            reports.append(report)
            items, settled = _items(scorer, cases, texts, incumbents, candidates, report)
            if plan.status == "ready":
                try:
                    await _ask(store, run_id, plan, items, report, pricing, "fresh" if fresh else cache_mode,
                               stack, running or [], server_log_dir, retry, ledger)
                except HarnessError as exc:  # e.g. the judge's server would not start: the answers stay
                    report.reason = str(exc)
                    report.notes.append(f"the judge failed ({exc}): cases without a verdict are unjudged")
            else:
                report.notes.append(f"no judge could run ({plan.reason}): its cases are unjudged")
            keep.update((scorer.name, i.case.id, i.provider, i.item) for i in items)
            rows.extend(_score_rows(run_id, scorer, items, settled, plan, report.against))
    store.replace_judged_scores(run_id, [s.name for s in scorers], rows, keep)
    return reports


def _items(
    scorer: PairwiseScorer | RubricScorer,
    cases: list[Case],
    texts: dict[tuple[str, str], str],
    incumbents: list[str],
    candidates: list[str],
    report: JudgeReport,
) -> tuple[list[_Item], list[tuple[Case, str, str, dict[str, Any]]]]:
    """The judge calls `scorer` needs, and the verdicts settled without one: (case, provider, outcome, detail)."""
    items: list[_Item] = []
    settled: list[tuple[Case, str, str, dict[str, Any]]] = []
    for case in cases:
        if isinstance(scorer, PairwiseScorer):
            incumbent = incumbents[0] if incumbents else None
            report.against = "incumbent" if incumbent else "reference"
            base = texts.get((case.id, incumbent)) if incumbent else reference_of(case)
            if incumbent and (case.id, incumbent) in texts:
                settled.append((case, incumbent, BASELINE, {"verdict": BASELINE}))
            for candidate in candidates:
                answer = texts.get((case.id, candidate))
                if answer is None:
                    continue  # a failed call or no answer: its status says so
                detail = {"against": report.against}
                if base is None:
                    why = ("the incumbent has no answer to compare with" if incumbent
                           else "no incumbent ran and the case has no reference answer")
                    settled.append((case, candidate, UNJUDGED, {**detail, "judge_error": why}))
                elif same_text(base, answer):
                    settled.append((case, candidate, "tie", {**detail, "identical": True, "consistent": True}))
                else:
                    items += [_Item(scorer, case, candidate, order,
                                    scorer.messages(case, *((base, answer) if order == "ab" else (answer, base))))
                              for order in ORDERS]
        else:
            for provider in [*incumbents, *candidates]:
                answer = texts.get((case.id, provider))
                if answer is not None:
                    items.append(_Item(scorer, case, provider, "one", scorer.messages(case, answer)))
        for number, label in enumerate(case.input.get(JUDGE_LABEL_FIELD) or []):
            if label.get("kind") != scorer.kind:
                continue
            if isinstance(scorer, PairwiseScorer):
                items += [_Item(scorer, case, None, f"label {number} {order}",
                                scorer.messages(case, *((label["a"], label["b"]) if order == "ab"
                                                        else (label["b"], label["a"]))), human=label["label"])
                          for order in ORDERS]
            else:
                items.append(_Item(scorer, case, None, f"label {number}", scorer.messages(case, label["answer"]),
                                   human=str(label["label"])))
    return items, settled


async def _ask(
    store: Store,
    run_id: str,
    plan: ProviderPlan,
    items: list[_Item],
    report: JudgeReport,
    pricing: PricingTable,
    cache_mode: str,
    stack: contextlib.AsyncExitStack,
    running: list[ProviderPlan],
    server_log_dir: Path | None,
    retry: RetryPolicy | None,
    ledger: Ledger | None = None,
) -> None:
    """Get a verdict for every item: from this run's stored calls, the cache, or the judge (stored as each
    returns). `cache_mode` `fresh`: from the judge only."""
    if not items:
        return
    scorer = items[0].scorer
    requests = [Request(messages=i.messages, params=scorer.params(), response_schema=scorer.schema,
                        json_output=True, case_id=i.case.id) for i in items]
    keys = [cache_key(cache_parts(plan, r)) for r in requests]
    stored = {(row["case_id"], row["provider"] if isinstance(row["provider"], str) else None, row["item"]): row
              for row in queries.judgements_of(store, run_id, scorer.name)} if cache_mode != "fresh" else {}
    cached = store.cached_judgements(keys) if cache_mode == "replay" else {}
    price = pricing.lookup(plan.request_model, provider_id=plan.name)
    todo: list[tuple[_Item, Request, str]] = []
    for item, request, key in zip(items, requests, keys, strict=True):
        mine = stored.get((item.case.id, item.provider, item.item))
        if mine is not None and mine["cache_key"] == key and mine["error"] is None:
            item.verdict = _verdict_of(mine)
            report.cached += bool(mine["cached"])
            report.calls += not mine["cached"]
            report.invalid += item.verdict.verdict is None
            report.cost_usd = _add(report.cost_usd, mine["cost_usd"])
        elif key in cached:
            row = cached[key]
            item.verdict = _verdict_of(row)
            report.cached += 1
            report.invalid += item.verdict.verdict is None
            report.cost_usd = _add(report.cost_usd, row["cost_usd"])
            store.put_judgement({**_row(run_id, plan, item, key), **{k: row[k] for k in _CALL_COLUMNS},
                                 "cached": True})
        else:
            todo.append((item, request, key))
    if not todo:
        return
    spend = None
    if ledger is not None and price is not None and plan.kind in BILLED_KINDS:
        spend = Spend(ledger, price, int(requests[0].params.get("max_tokens") or 0) or 4096)
    provider = await _provider(plan, stack, running, server_log_dir, retry, spend)

    async def one(item: _Item, request: Request, key: str) -> None:
        c = await provider.complete(request)
        if c.error_kind in UNSTORED:
            item.verdict = Verdict(None, invalid=f"the judge could not be called: {c.error}")
            report.errors += 1
            return
        cost = price.cost(c.input_tokens, c.output_tokens, c.cached_input_tokens, c.cache_write_tokens) \
            if price is not None else None
        item.verdict = Verdict(None, invalid=f"the judge call failed: {c.error}") if c.error \
            else item.scorer.read(c.text)
        report.calls += 1
        report.errors += c.error is not None
        report.invalid += c.error is None and item.verdict.verdict is None
        report.cost_usd = _add(report.cost_usd, cost)
        store.put_judgement({**_row(run_id, plan, item, key), **_call(c, item.verdict, cost), "cached": False})

    await asyncio.gather(*(one(*each) for each in todo))


_CALL_COLUMNS = ("verdict", "parsed", "invalid", "text", "model", "error", "error_kind", "input_tokens",
                 "output_tokens", "latency_ms", "cost_usd")


def _row(run_id: str, plan: ProviderPlan, item: _Item, key: str) -> dict[str, Any]:
    return {"run_id": run_id, "scorer": item.scorer.name, "judge": plan.name, "case_id": item.case.id,
            "provider": item.provider, "item": item.item, "human": item.human, "cache_key": key,
            "judged_at": datetime.now(UTC)}


def _call(c: Completion, verdict: Verdict, cost: float | None) -> dict[str, Any]:
    return {"verdict": verdict.verdict, "parsed": verdict.parsed or None, "invalid": verdict.invalid,
            "text": c.text, "model": c.model, "error": c.error, "error_kind": c.error_kind,
            "input_tokens": c.input_tokens, "output_tokens": c.output_tokens, "latency_ms": c.latency_ms,
            "cost_usd": cost}


def _verdict_of(row: dict[str, Any]) -> Verdict:
    parsed = row.get("parsed")
    if isinstance(parsed, str):
        parsed = json.loads(parsed)
    verdict = row.get("verdict")
    invalid = row.get("invalid")
    return Verdict(verdict if isinstance(verdict, str) else None, parsed if isinstance(parsed, dict) else {},
                   invalid if isinstance(invalid, str) else None)


def _add(total: float | None, cost: Any) -> float | None:
    if total is None or cost is None or pd.isna(cost):
        return None
    return total + float(cost)


async def _provider(
    plan: ProviderPlan,
    stack: contextlib.AsyncExitStack,
    running: list[ProviderPlan],
    server_log_dir: Path | None,
    retry: RetryPolicy | None,
    spend: Spend | None = None,
) -> Resilient:
    """The judge's provider, with retries and its concurrency limit; its server started (or the run's reused)."""
    if plan.server is not None and not plan.base_url:
        same = next((p for p in running if p.server is not None and p.base_url
                     and (p.server.engine, p.server.model) == (plan.server.engine, plan.server.model)), None)
        if same is not None:
            plan.base_url = same.base_url
        else:
            server = await stack.enter_async_context(ManagedServer(plan.server, log_dir=server_log_dir))
            plan.base_url = server.base_url
    provider = build_provider(plan)
    stack.push_async_callback(provider.aclose)
    policy = retry or RetryPolicy(max_attempts=plan.max_attempts, timeout_s=plan.timeout)
    return Resilient(provider, policy, AdaptiveLimiter(plan.concurrency), spend=spend)


def _score_rows(
    run_id: str,
    scorer: PairwiseScorer | RubricScorer,
    items: list[_Item],
    settled: list[tuple[Case, str, str, dict[str, Any]]],
    plan: ProviderPlan,
    against: str | None,
) -> list[dict[str, Any]]:
    """The `scores` rows of one judge scorer: settled verdicts, and those of the calls (both orders combined)."""
    judge = plan.name if plan.status == "ready" else None
    out: list[tuple[str, str, Score]] = []
    for case, provider, outcome, detail in settled:
        detail = {**detail, "judge": judge}
        if outcome == BASELINE:
            # the incumbent against itself: a tie, so that `gate.metric = "pairwise.preference"` tests the
            # candidate's net preference (wins and losses weigh alike) against it
            out += [(case.id, provider, Score("case_pass", 1.0, True, detail)),
                    (case.id, provider, Score("pairwise.preference", 0.5, None, detail))]
        else:
            out += [(case.id, provider, s) for s in pairwise_scores(outcome, detail)]
    judged = [i for i in items if i.provider is not None]
    if isinstance(scorer, PairwiseScorer):
        pairs: dict[tuple[str, str], dict[str, _Item]] = {}
        cases = {}
        for item in judged:
            pairs.setdefault((item.case.id, item.provider), {})[item.item] = item
            cases[item.case.id] = item.case
        for (case_id, provider), orders in pairs.items():
            verdicts = {o: orders[o].verdict or Verdict(None, invalid=_no_judge(plan)) for o in ORDERS}
            outcome, consistent = combine(*(preference(o, verdicts[o].verdict) for o in ORDERS))
            detail = {"judge": judge, "consistent": consistent,
                      "orders": {o: verdicts[o].verdict for o in ORDERS}, "against": against}
            problems = [f"{o}: {v.invalid}" for o, v in verdicts.items() if v.invalid]
            if problems:
                detail["judge_error"] = "; ".join(problems)
            out += [(case_id, provider, s) for s in pairwise_scores(outcome, detail)]
    else:
        for item in judged:
            verdict = item.verdict or Verdict(None, invalid=_no_judge(plan))
            out += [(item.case.id, item.provider, s) for s in scorer.scores(verdict, {"judge": judge})]
    return [{"run_id": run_id, "case_id": case_id, "provider": provider, "scorer": scorer.name,
             "metric": s.metric, "value": s.value, "passed": s.passed, "detail": s.detail}
            for case_id, provider, s in out]


def _no_judge(plan: ProviderPlan) -> str:
    return f"no judge could run ({plan.reason})" if plan.status != "ready" else "the judge gave no verdict"
