"""The shadow side of `harness proxy`: the copies' calls to the candidates, scoring without gold, storing it all as
a run, and the stop rule as traffic flows. It runs in a process of its own (`proxy.worker`), so that none of this
work shares an event loop, or a CPU's time slice, with the bytes passed to the caller.

`Mirror.offer` takes a chat request the caller's side chose to copy (sampled, under the cap, with room: see
`proxy.worker.MirrorProcess`), reads it and keeps it when it is for the mirrored incumbent model; `Mirror.answered`
takes the incumbent's answer bytes once the caller has them. The answer is read, redacted, scored and recorded
(`run.runner.Recorder`: journal first, then DuckDB), then the copy goes to every candidate's queue, where workers
(at most `concurrency` a candidate) call it, score its answer against the incumbent's and record it. A candidate's
failure is recorded on its case and never reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from harness.analysis.intervals import wilson_interval
from harness.analysis.outcomes import outcome_table
from harness.analysis.sequential import Sequential, sequential_verdict
from harness.errors import HarnessError
from harness.pricing import PricingTable
from harness.providers.base import Completion, redact
from harness.providers.failures import failure_kind, is_infrastructure_error
from harness.providers.plan import ProviderPlan
from harness.providers.registry import build_provider
from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.providers.server import ManagedServer
from harness.proxy.privacy import Redactor
from harness.proxy.wire import Captured, Unsupported, decoded, parse_answer, parse_request
from harness.run.runner import Recorder, RunResult, answer_status, host_provenance, provider_row
from harness.scoring.agreement import SCHEMA_FIELD, AgreementScorer
from harness.scoring.base import Score, Scorer
from harness.scoring.parse import parse_json_output
from harness.scoring.registry import build_scorers, score_completion
from harness.store import queries
from harness.store.db import Store
from harness.suite.load import Case, Suite
from harness.suite.spec import GateSpec, ProviderSpec

REFERENCE = "incumbent"  # what a proxy run's answers are judged against: the incumbent's answer to the same request


@dataclass
class ProxySettings:
    """How the proxy mirrors: `sample` the share of chat requests copied (0.0-1.0), `per_minute` a cap on copies
    a minute (None: none), `queue` the copies waiting per candidate before new ones are dropped, `max_body` the
    largest request body (bytes) that is stored (a larger one is passed through, neither copied nor stored),
    `incumbent` the model whose requests are mirrored (`api:model`; None: the first one seen)."""

    name: str = "proxy"
    sample: float = 1.0
    per_minute: int | None = None
    queue: int = 1000
    max_body: int = 1_000_000
    incumbent: str | None = None
    seed: int = 0
    redact: list[str] = field(default_factory=list)


@dataclass
class Counts:
    """What the proxy saw, for the status page and the incumbent's stored stats. The caller's side counts the
    first nine (`proxy.worker`), the mirror the rest."""

    requests: int = 0  # every request passed through
    chat: int = 0  # chat requests (OpenAI chat completions, Anthropic messages)
    not_sampled: int = 0
    over_cap: int = 0  # over the per-minute cap
    dropped: int = 0  # --queue copies were already waiting for the candidates
    too_large: int = 0  # body over max_body: passed through, not stored
    upstream_errors: int = 0  # the upstream could not be reached, or answered with an error status
    caller_closed: int = 0  # the caller closed its connection before the answer ended
    mirror_down: int = 0  # copies not made because the mirror's process had died
    mirrored: int = 0  # copied to the candidates and stored as cases
    other_model: int = 0  # for another model than the mirrored incumbent
    unreadable: int = 0  # a chat request the proxy could not read (not JSON, no messages)
    unsupported: int = 0  # tools, several choices, images or audio: a copy would not ask the same (wire.Unsupported)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Copy:
    """One mirrored request: its capture, and the incumbent's answer once the caller has had it."""

    case_id: str
    position: int
    captured: Captured
    received: float  # time.perf_counter() when the request arrived
    received_at: datetime
    case: Case | None = None  # with the incumbent's answer as gold, once it has been read
    usable: bool = False  # whether that answer can serve as the reference
    left: int = 0  # candidates yet to answer it


@dataclass
class _Judged:
    """A candidate's judged pairs so far (cases whose incumbent answer is a usable reference)."""

    n: int = 0
    failures: int = 0
    errors: int = 0  # copies that failed for infrastructure reasons (connection, timeout, 5xx): not judged


class Mirror:
    """Copies sampled chat requests to the candidates and records both sides as run `run_id` of `store`.

    Use as `async with Mirror(...) as mirror:`: entering starts any managed candidate servers and records the run
    (or picks up `resume`, recovering what its journal holds); leaving drains the copies in flight (up to `drain_s`
    seconds; those left are not stored), flushes and marks the run's status."""

    def __init__(
        self,
        store: Store,
        candidates: list[ProviderPlan],
        settings: ProxySettings,
        pricing: PricingTable,
        *,
        upstreams: dict[str, str],
        suite: Suite | None = None,
        resume: str | None = None,
        retry: RetryPolicy | None = None,
        drain_s: float = 30.0,
        server_log_dir: Any = None,
        on_done: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.plans = candidates
        self.settings = settings
        self.pricing = pricing
        self.upstreams = upstreams
        self.suite = suite
        self.resume = resume
        self.retry = retry
        self.drain_s = drain_s
        self.server_log_dir = server_log_dir
        self.on_done = on_done  # called once a copy is finished with (every candidate answered, or not kept)
        self.counts = Counts()
        self.redactor = Redactor(settings.redact)
        self.policy = suite.spec.gate if suite is not None else GateSpec()
        if not 0 < self.policy.margin < 1:
            where = suite.path / "suite.toml" if suite else "the gate"
            raise HarnessError(f"{where}: [gate] margin = {self.policy.margin} leaves the stop rule nothing to "
                               "judge; give a margin above 0 and below 1, e.g. 0.02")
        self.scorers: list[Scorer] = build_scorers(suite) if suite is not None else [AgreementScorer()]
        self.run_id = ""
        self.incumbent: ProviderPlan | None = None
        self.judged = {plan.name: _Judged() for plan in candidates}
        self._numbers = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[_Copy]] = {}
        self._providers: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: list[asyncio.Task[Any]] = []
        self._inflight = 0  # copies a candidate worker has taken and not yet stored
        self._pending: set[str] = set()  # copies with the incumbent's answer stored, not yet every candidate's
        self._stack = contextlib.AsyncExitStack()
        self._recorder: Recorder | None = None
        self._writer: Any = None
        self.result: RunResult | None = None

    # -- what the caller's side hands over -------------------------------------------------------------------------

    def offer(self, api: str, body: bytes, received: float, received_at: datetime) -> _Copy | None:
        """A copy of this chat request (`received`: its `time.perf_counter()`), or None when it is not one to
        mirror (unreadable, unsupported, for another model), counted either way."""
        counts = self.counts
        try:
            captured = parse_request(api, body)
        except Unsupported:
            counts.unsupported += 1
            return self._finished(None)
        except (ValueError, TypeError, RecursionError):  # not JSON, the wrong shape, nested thousands deep
            counts.unreadable += 1
            return self._finished(None)
        name = f"{api}:{captured.model}"
        if self.incumbent is None:
            self._start_incumbent(name)
        elif name != self.incumbent.name:
            counts.other_model += 1
            return self._finished(None)
        number = next(self._numbers)
        counts.mirrored += 1
        return _Copy(f"req-{number:06d}", number - 1, captured, received, received_at, left=len(self.plans))

    def answered(self, copy: _Copy, status: int, headers: dict[str, str], chunks: list[tuple[float, bytes]] | None,
                 failure: str | None = None) -> None:
        """The incumbent's answer to `copy` as the caller got it (`chunks`: the body's pieces and when each arrived;
        `headers`: its Content-Type and Content-Encoding), or the `failure` that stopped it: read, stored, then the
        copy goes to the candidates."""
        task = asyncio.get_running_loop().create_task(self._record_incumbent(copy, status, headers, chunks, failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finished(self, copy: _Copy | None) -> None:
        if self.on_done is not None:
            self.on_done()

    # -- the mirror's own tasks ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Mirror:
        try:
            return await self._enter()
        except BaseException:
            await self._stack.aclose()  # the candidates' servers started so far
            raise

    async def _enter(self) -> Mirror:
        stack = self._stack
        for plan in self.plans:
            if plan.server is not None:
                server = await stack.enter_async_context(ManagedServer(plan.server, log_dir=self.server_log_dir))
                plan.base_url = server.base_url
            provider = build_provider(plan)
            stack.push_async_callback(provider.aclose)
            policy = self.retry or RetryPolicy(max_attempts=plan.max_attempts, timeout_s=plan.timeout)
            self._providers[plan.name] = Resilient(provider, policy, AdaptiveLimiter(plan.concurrency))
        if self.resume:
            if self.store.run(self.resume).get("reference") != REFERENCE:
                raise HarnessError(f"--resume {self.resume}: not a proxy run; `harness run --resume` goes on with a "
                                   "suite's run")
            self.run_id = self.resume
            recovered = self.store.recover(self.resume)
            self.store.resume_run(self.resume)
            stored = queries.provider_names(self.store, self.resume)
            for plan in self.plans:
                if plan.name not in stored:
                    self.store.insert("run_providers", [provider_row(self.resume, None, plan, self.pricing)])
            incumbents = queries.providers_with_role(self.store, self.resume, "incumbent")
            if incumbents:
                self._start_incumbent(incumbents[0], insert=False)
            done = queries.case_ids(self.store, self.resume)
            self._numbers = itertools.count(len(done) + 1)
            self._reload_judged()
        else:
            recovered = recover_dead_runs(self.store)
            self.run_id = self.store.start_run(host_provenance(
                suite=self.settings.name, suite_path=str(self.suite.path) if self.suite else None,
                suite_hash=self.suite.hash if self.suite else None,
                task=self.suite.spec.task if self.suite else "traffic", n_cases=0, reference=REFERENCE,
                scorers=[spec.model_dump(exclude_defaults=True) for spec in self.suite.spec.scorers]
                if self.suite else [{"kind": "agreement"}],
                pricing_version=self.pricing.version, cache_mode="off",
            ))
            self.store.insert("run_providers", [provider_row(self.run_id, None, plan, self.pricing)
                                                for plan in self.plans])
            if self.settings.incumbent:
                self._start_incumbent(self.settings.incumbent)
        self.result = RunResult(run_id=self.run_id, status="running", n_cases=0, plans=self.plans,
                                resumed=bool(self.resume), recovered=recovered)
        self._writer = self.store.writer(journal=self.store.journal_path(self.run_id))
        self._recorder = Recorder(self.run_id, None, self.scorers, self._writer, self.pricing, "off", self.result, None)
        for plan in self.plans:
            self._queues[plan.name] = asyncio.Queue()  # bounded by the caller's side (--queue copies waiting)
            for _ in range(plan.concurrency):
                self._workers.append(asyncio.create_task(self._work(plan)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        status = "completed"
        try:
            deadline = time.monotonic() + self.drain_s
            while (self._tasks or self._busy()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
        finally:
            for task in [*self._workers, *self._tasks]:
                task.cancel()
            await asyncio.gather(*self._workers, *self._tasks, return_exceptions=True)
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                reason = None
                if self.run_id:
                    self._store_stats()
                    status, reason = self._final_status(status)
                    self.store.update_run(self.run_id, {"n_cases": queries.count_cases(self.store, self.run_id)})
                    self.store.finish_run(self.run_id, status, reason)
                if self.result is not None:
                    self.result.status, self.result.reason = status, reason
                await self._stack.aclose()

    def _reload_judged(self) -> None:
        """A resumed run's stop rule goes on from its stored pairs: one sequence for the whole run, however many
        sessions it takes (a fresh count each session would let a user resume until a verdict came)."""
        table = outcome_table(self.store, self.run_id).frame
        incumbent = table[table["role"] == "incumbent"].set_index("case_id")["status"]
        for plan in self.plans:
            mine = table[(table["provider"] == plan.name) & table["case_id"].map(incumbent.get).eq("pass")]
            infra = (mine["status"] == "error") & mine["error_kind"].map(
                lambda kind: is_infrastructure_error(failure_kind(kind)))
            judged = self.judged[plan.name]
            judged.errors = int(infra.sum())
            judged.n = int((~infra & (mine["status"] != "no answer")).sum())
            judged.failures = int((~infra & mine["status"].isin(["fail", "error"])).sum())

    def _final_status(self, status: str) -> tuple[str, str | None]:
        """The run's status as it stops: `failed` when a candidate (or the upstream) answered none of its cases for
        infrastructure reasons, or a candidate has no answer at all; `interrupted` when copies were still waiting
        for a candidate after the drain; `degraded` above `DEGRADED_SHARE` of infrastructure failures."""
        names = [plan.name for plan in self.plans] + ([self.incumbent.name] if self.incumbent else [])
        failed, degraded = answer_status(self.store, self.run_id, names)
        cases = queries.count_cases(self.store, self.run_id)
        answered = queries.answers_by_provider(self.store, self.run_id)
        for plan in self.plans:  # (with copies still waiting, a slow candidate may simply not have got there)
            if cases and not answered.get(plan.name) and not self._pending \
                    and not any(line.startswith(plan.name) for line in failed):
                failed.append(f"{plan.name} answered none of the {cases} copies")
        if self._pending:
            waiting = f"{len(self._pending)} copies were still waiting for a candidate after the {self.drain_s:g} s " \
                      "drain and are not stored"
            return ("failed" if failed else "interrupted"), "; ".join([*failed, waiting, *degraded])
        if failed:
            return "failed", "; ".join(failed + degraded)
        if degraded and status == "completed":
            return "degraded", "; ".join(degraded)
        return status, None

    def _busy(self) -> bool:
        return self._inflight > 0 or any(not queue.empty() for queue in self._queues.values())

    def _start_incumbent(self, name: str, insert: bool = True) -> None:
        api, _, model = name.partition(":")
        spec = ProviderSpec(id=name, role="incumbent")
        plan = ProviderPlan(spec=spec, kind=api, model=model, status="ready", base_url=self.upstreams.get(api))
        self.incumbent = plan
        if insert and self.run_id:
            self.store.insert("run_providers", [provider_row(self.run_id, None, plan, self.pricing)])

    async def _record_incumbent(self, copy: _Copy, status: int, headers: dict[str, str],
                                chunks: list[tuple[float, bytes]] | None, failure: str | None) -> None:
        plan = self.incumbent
        assert plan is not None and self._recorder is not None
        if failure is not None or chunks is None:
            answer = Completion(text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
                                latency_ms=(time.perf_counter() - copy.received) * 1000, finish_reason=None,
                                error=redact(failure or "no answer"), error_kind="connection",
                                started_at=copy.received_at)
        else:
            pieces = decoded(chunks, headers.get("Content-Encoding"))
            if pieces is None:
                answer = Completion(text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None,
                                    latency_ms=None, finish_reason=None, started_at=copy.received_at,
                                    error=f"answer sent with Content-Encoding {headers.get('Content-Encoding')}, "
                                          "which the proxy cannot read", error_kind="bad_response")
            else:
                answer = parse_answer(copy.captured.api, status, headers.get("Content-Type"), pieces, copy.received,
                                      copy.received_at)
        if answer.error:
            self.counts.upstream_errors += 1
        answer = self._redacted(answer)
        copy.case, copy.usable = self._case(copy, answer)
        scores = self._incumbent_scores(copy.case, answer, copy.usable)
        self._recorder.record(plan, copy.case, answer, None, None, scores=scores,
                              joined={"cases": [self._case_row(copy.case)]})
        self._pending.add(copy.case_id)
        for queue in self._queues.values():
            queue.put_nowait(copy)

    def _case(self, copy: _Copy, answer: Completion) -> tuple[Case, bool]:
        """The stored case of `copy`: its messages (redacted), what the request asked, and the incumbent's answer
        as gold when it is usable as a reference (answered; JSON where the suite or the request wants JSON)."""
        captured = copy.captured
        inputs: dict[str, Any] = {"api": captured.api, "model": captured.model, "stream": captured.stream,
                                  "params": captured.params}
        if captured.response_schema is not None:
            inputs[SCHEMA_FIELD] = captured.response_schema
        messages = self.redactor.value(captured.messages)
        gold, usable = None, False
        if answer.error is None:
            gold, usable = self._reference(answer.text, captured)
        return Case(copy.case_id, inputs, gold, copy.position + 1, messages), usable

    def _reference(self, text: str, captured: Captured) -> tuple[Any, bool]:
        wants_json = captured.json_output or (self.suite is not None and self.suite.spec.output.format == "json")
        value, problem = parse_json_output(text)
        if problem is not None:
            return (None, False) if wants_json else (text, True)
        if self.suite is None:
            return value, True
        output = self.suite.spec.output
        if self.suite.labels and isinstance(value, dict):
            return value.get(output.label_key), output.label_key in value
        if isinstance(value, dict):
            names = {name for spec in self.suite.spec.scorers for name in spec.fields}
            return {**dict.fromkeys(names), **value}, True
        return value, True

    def _incumbent_scores(self, case: Case, answer: Completion, usable: bool) -> list[tuple[str, Score]]:
        if answer.error is not None:
            return []
        if not usable:
            why = {"reference": False, "reason": "its answer is not usable as a reference (not the JSON asked for)"}
            return [(self.scorers[0].name, Score("case_pass", 0.0, False, why))]
        # the reference against itself: checks that need no reference (a schema, refusals) still speak
        return score_completion(self.scorers, case, answer)

    async def _work(self, plan: ProviderPlan) -> None:
        queue = self._queues[plan.name]
        provider = self._providers[plan.name]
        recorder = self._recorder
        assert recorder is not None
        while True:
            copy = await queue.get()
            self._inflight += 1
            try:
                answer = await provider.complete(copy.captured.request(copy.case_id))
                answer = self._redacted(answer)
                case, usable = copy.case, copy.usable
                assert case is not None
                if usable:
                    scores = score_completion(self.scorers, case, answer)
                else:
                    scores = [] if answer.error else [(self.scorers[0].name, Score(
                        "case_pass", 0.0, False, {"reason": "no reference: the incumbent's answer is not usable"}))]
                recorder.record(plan, case, answer, None, None, scores=scores)
                judged = self.judged[plan.name]
                if answer.error is not None and is_infrastructure_error(failure_kind(answer.error_kind)):
                    judged.errors += 1  # the candidate's server failed: says nothing of its answers' quality
                elif usable:
                    judged.n += 1
                    passed = answer.error is None and all(
                        s.passed for _, s in scores if s.metric == "case_pass") and bool(scores)
                    judged.failures += not passed
            except BaseException:  # stopped mid-call (the drain ran out), or a bug: the copy stays pending, so the
                self._inflight -= 1  # run cannot end as completed
                raise
            self._inflight -= 1
            copy.left -= 1
            if copy.left == 0:
                self._pending.discard(copy.case_id)
                self._finished(copy)

    def _redacted(self, answer: Completion) -> Completion:
        return replace(answer, text=self.redactor.text(answer.text),
                       error=self.redactor.text(answer.error) if answer.error else None)

    def _case_row(self, case: Case) -> dict[str, Any]:
        return {"run_id": self.run_id, "case_id": case.id, "position": case.line - 1, "source_line": case.line,
                "input": case.input, "gold": case.gold, "messages": case.messages}

    def _store_stats(self) -> None:
        with contextlib.suppress(Exception):  # provenance only: never mask the run's own outcome
            if self.incumbent is not None:
                stats = {"proxy": self.counts.as_dict()}
                self.store.update_provider(self.run_id, self.incumbent.name, {"stats": stats})
            for plan in self.plans:
                provider = self._providers.get(plan.name)
                if isinstance(provider, Resilient):
                    self.store.update_provider(self.run_id, plan.name, {"stats": {
                        "calls": provider.stats.calls, "retries": provider.stats.retries,
                        "rate_limited": provider.stats.rate_limited, "gave_up": provider.stats.gave_up,
                        "dropped": self.counts.dropped}})

    # -- what the status page and the terminal show ---------------------------------------------------------------

    def verdicts(self) -> dict[str, Sequential]:
        """Per candidate, the stop rule so far: its disagreement rate with the incumbent over the judged pairs,
        with an anytime-valid interval, against the gate's margin (`analysis.sequential`)."""
        return {name: sequential_verdict(j.failures, j.n, self.policy.margin, self.policy.confidence)
                for name, j in self.judged.items()}

    def _too_many_errors(self, judged: _Judged) -> str | None:
        """Why the stop rule cannot speak for a candidate: more of its copies failed for infrastructure reasons
        than the gate allows (`max_infra_error_rate`): the ones it answered may not be the hard ones."""
        seen = judged.n + judged.errors
        if not seen or judged.errors / seen <= self.policy.max_infra_error_rate:
            return None
        return (f"invalid: {judged.errors:,} of {seen:,} copies ({judged.errors / seen:.0%}) failed for "
                f"infrastructure reasons, over the gate's {self.policy.max_infra_error_rate:.0%}: no verdict on "
                "quality until the candidate's server answers")

    def status(self) -> dict[str, Any]:
        """What the status page shows, as JSON-ready data."""
        candidates = []
        for name, verdict in self.verdicts().items():
            judged = self.judged[name]
            agreement = None if not judged.n else 1 - judged.failures / judged.n
            interval = wilson_interval(judged.n - judged.failures, judged.n) if judged.n else None
            candidates.append({
                "provider": name, "judged": judged.n, "disagreements": judged.failures, "agreement": agreement,
                "infrastructure_errors": judged.errors,
                "agreement_interval_95": list(interval) if interval else None,
                "disagreement_anytime_interval": [verdict.low, verdict.high],
                "verdict": "invalid" if self._too_many_errors(judged) else verdict.verdict,
                "stop_rule": self._too_many_errors(judged) or verdict.describe(),
                "queued": self._queues[name].qsize() if name in self._queues else 0,
            })
        return {
            "run_id": self.run_id, "name": self.settings.name, "reference": REFERENCE,
            "incumbent": self.incumbent.name if self.incumbent else None, "counts": self.counts.as_dict(),
            "margin": self.policy.margin, "confidence": self.policy.confidence, "candidates": candidates,
        }

    def status_line(self) -> str:
        """One line for the terminal: traffic, then each candidate's agreement and the stop rule."""
        c = self.counts
        parts = [f"{c.requests:,} requests, {c.mirrored:,} mirrored"
                 + (f", {c.dropped:,} dropped (queue full)" if c.dropped else "")]
        for name, verdict in self.verdicts().items():
            judged = self.judged[name]
            said = self._too_many_errors(judged) or verdict.describe()
            parts.append(f"{name}: {said}" + (f"; {judged.errors:,} calls failed (server)" if judged.errors else ""))
        return " | ".join(parts)


def recover_dead_runs(store: Store) -> int:
    """Store what the journals of killed proxy runs hold and mark those runs `interrupted`; returns how many
    answers were recovered. A new proxy run starts with this, so a proxy killed with SIGKILL loses nothing it
    received even when it is never resumed."""
    recovered = 0
    for run_id in queries.dead_proxy_runs(store):
        recovered += store.recover(run_id)
        store.update_run(run_id, {"n_cases": queries.count_cases(store, run_id)})
        store.finish_run(run_id, "interrupted", "the proxy was killed; what its journal held was stored when the "
                                                f"next proxy started (go on with it: harness proxy --resume {run_id})")
    return recovered
