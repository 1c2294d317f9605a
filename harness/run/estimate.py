"""What a run will cost, before it is made (`harness run --estimate`, and the line printed before a paid run).

Per provider: the calls left to make (a resumed run's stored answers and what the cache will answer are free), the
input tokens of the rendered prompts (`spend.count_input_tokens`: the provider's tokenizer where one is at hand,
else calibrated on what the provider billed before, else an approximation, and said which), the output tokens
expected from the provider's earlier answers to this suite in the DuckDB file (else only bounded by `max_tokens`),
and the cost range that follows from the pricing table.

The range: input tokens within 0% (tokenizer), 10% (calibrated) or -40%/+50% (approximation) of the count; output
tokens the earlier answers' mean per call, plus or minus two standard errors of a sum of that many calls (normal
approximation), or anywhere from 0 to `max_tokens` a call without earlier answers. `worst` is what the spending
ceiling reserves: every input token counted at its byte bound and every answer running to `max_tokens`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.pricing import Price, PricingTable
from harness.providers.plan import ProviderPlan
from harness.providers.spend import (
    BILLED_KINDS,
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    count_input_tokens,
    message_chars,
    worst_input_tokens,
)
from harness.run.runner import cached_answers, params_for, request_for
from harness.scoring.judges import PairwiseScorer, is_judged
from harness.scoring.registry import build_scorers
from harness.store import queries
from harness.store.db import Store
from harness.suite.load import Case, Suite

INPUT_RANGE = {"tiktoken": (1.0, 1.0), "calibrated": (0.9, 1.1), "approximate": (0.6, 1.5)}
MIN_CALIBRATION = 5  # earlier billed answers needed to calibrate tokens per character


@dataclass
class ProviderEstimate:
    """What one provider's part of a run will cost."""

    provider: str
    kind: str
    price: Price | None
    calls: int  # calls to make (extra samples included)
    cached: int  # answers the cache will give for free
    done: int  # answers already stored (a resumed run)
    input_tokens: int
    input_method: str  # "tiktoken o200k_base", "calibrated", "approximate[: why]"
    worst_input_tokens: int
    max_tokens: int | None
    output_mean: float | None  # per call, from earlier answers of this suite
    output_sd: float | None
    output_from: int  # earlier answers the output expectation is drawn from

    @property
    def billed(self) -> bool:
        """Whether an API bills this provider per token (a local or vLLM model, or a log, does not)."""
        return self.kind in BILLED_KINDS

    def _cost(self, input_tokens: float, output_tokens: float) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(round(input_tokens), round(output_tokens))

    def output_range(self) -> tuple[float, float | None, float]:
        """(low, expected or None, high) output tokens of all the calls."""
        cap = self.calls * self.max_tokens if self.max_tokens else math.inf
        if self.output_mean is None:
            return 0.0, None, cap
        expected = self.calls * self.output_mean
        spread = 2 * (self.output_sd or 0.0) * math.sqrt(self.calls)
        return max(0.0, expected - spread), min(expected, cap), min(expected + spread, cap)

    @property
    def expected(self) -> float | None:
        """Expected USD, None without a price or without earlier answers to expect output lengths from."""
        _, out, _ = self.output_range()
        return None if out is None else self._cost(self.input_tokens, out)

    @property
    def low(self) -> float | None:
        """Low end of the cost range (USD)."""
        out, _, _ = self.output_range()
        return self._cost(self.input_tokens * self._input_factors()[0], out)

    @property
    def high(self) -> float | None:
        """High end of the cost range (USD); None without a price or a bound on output."""
        _, _, out = self.output_range()
        return None if math.isinf(out) else self._cost(self.input_tokens * self._input_factors()[1], out)

    @property
    def worst(self) -> float | None:
        """USD if every answer ran to max_tokens and every input byte were a token: what a ceiling reserves."""
        if self.max_tokens is None:
            return None
        return self._cost(self.worst_input_tokens, self.calls * self.max_tokens)

    def _input_factors(self) -> tuple[float, float]:
        return INPUT_RANGE[self.input_method.split()[0].rstrip(":")]

    def describe(self) -> str:
        """One line: calls, tokens (and how they were counted), the cost range."""
        free = [f"{n} {what}" for n, what in ((self.cached, "from the cache"), (self.done, "already stored")) if n]
        head = f"{self.provider}: {self.calls:,} calls" + (f" ({', '.join(free)})" if free else "")
        tokens = f"{self.input_tokens:,} input tokens ({self.input_method})"
        _, expected_out, _ = self.output_range()
        if expected_out is None:
            out = f"output up to {self.max_tokens} tokens a call (no earlier answers of this suite)"
        else:
            out = f"~{expected_out:,.0f} output tokens (mean {self.output_mean:.0f} of {self.output_from} earlier)"
        if not self.billed:
            return f"{head}; {tokens}, {out}; self-hosted: no API bill"
        if self.price is None:
            return f"{head}; {tokens}, {out}; no price in the pricing table: cost unknown"
        cost = (f"${self.low:.4f}-${self.high:.4f}" if self.high is not None else f"from ${self.low:.4f}")
        if self.expected is not None:
            cost = f"~${self.expected:.4f} ({cost})"
        return f"{head}; {tokens}, {out}; {cost}"


@dataclass
class Estimate:
    """The estimate of a whole run."""

    providers: list[ProviderEstimate]

    @property
    def paid(self) -> bool:
        """Whether the run calls a provider an API bills, with calls left to make."""
        return any(p.billed and p.calls for p in self.providers)

    def total(self, which: str) -> float | None:
        """Sum of `which` ("low", "expected", "high", "worst") over the billed providers; None when a billed
        provider's figure is unknown."""
        values = [getattr(p, which) for p in self.providers if p.billed and p.calls]
        if any(v is None for v in values):
            return None
        return float(sum(values))

    def lines(self) -> list[str]:
        """The estimate for a person: a line per provider, then the total."""
        out = [f"  {p.describe()}" for p in self.providers]
        low, expected, high, worst = (self.total(k) for k in ("low", "expected", "high", "worst"))
        if not self.paid:
            return [*out, "estimate: no paid calls to make"]
        if low is None:
            return [*out, "estimate: unknown: a paid provider has no price (add it with --pricing FILE)"]
        span = f"${low:.4f}-${high:.4f}" if high is not None else f"at least ${low:.4f}"
        head = f"~${expected:.4f} ({span})" if expected is not None else span
        tail = f"; at most ${worst:.4f} if every answer ran to max_tokens" if worst is not None else ""
        return [*out, f"estimate: {head}{tail}"]


def estimate_run(
    suite: Suite,
    plans: list[ProviderPlan],
    cases: list[Case],
    pricing: PricingTable,
    store: Store | None = None,
    *,
    cache_mode: str = "replay",
    done: set[tuple[str, str]] | None = None,
    judges: dict[str, ProviderPlan] | None = None,
) -> Estimate:
    """The estimate of running `cases` of `suite` on the ready `plans`: `store` (when there is one) gives the cache,
    earlier answers' output lengths and billed input tokens; `done` the (case, provider) pairs already stored;
    `judges` (scorer -> judge plan) adds what each judge will cost."""
    done = done or set()
    out = []
    for plan in plans:
        if plan.status != "ready":
            continue
        todo = [case for case in cases if (case.id, plan.name) not in done]
        already = len(cases) - len(todo)
        hits: list[Any] = []
        if store is not None:
            hits, todo = cached_answers(store, suite, plan, todo, cache_mode)
        params = params_for(suite, plan)
        requests = [request_for(suite, case, plan, params) for case in todo]
        per_char = _tokens_per_char(store, plan.name) if store is not None else None
        samples = max(1, plan.spec.samples)
        counted = [count_input_tokens(plan.kind, plan.request_model, r.messages, per_char) for r in requests]
        method = counted[0].method if counted else ("calibrated" if per_char else "approximate")
        history = queries.output_history(store, suite.name, plan.name) if store is not None else None
        outputs = np.asarray(history["output_tokens"], dtype=float) if history is not None else np.empty(0)
        max_tokens = params.get("max_tokens")
        out.append(ProviderEstimate(
            provider=plan.name, kind=plan.kind,
            price=pricing.lookup(plan.request_model, provider_id=plan.name),
            calls=len(todo) * samples, cached=len(hits), done=already,
            input_tokens=sum(c.tokens for c in counted) * samples, input_method=method,
            worst_input_tokens=sum(worst_input_tokens(r.messages) for r in requests) * samples,
            max_tokens=int(max_tokens) if max_tokens else None,
            output_mean=float(outputs.mean()) if outputs.size else None,
            output_sd=float(outputs.std(ddof=1)) if outputs.size > 1 else (0.0 if outputs.size else None),
            output_from=int(outputs.size),
        ))
    out += _judge_estimates(suite, judges or {}, plans, cases, pricing, store, out)
    return Estimate(out)


def _judge_estimates(
    suite: Suite,
    judges: dict[str, ProviderPlan],
    plans: list[ProviderPlan],
    cases: list[Case],
    pricing: PricingTable,
    store: Store | None,
    answering: list[ProviderEstimate],
) -> list[ProviderEstimate]:
    """What each judge scorer's judge will cost: its calls (two orders per candidate answer for `pairwise`, one per
    answer for `rubric`), its prompts rendered with answers of the expected length (approximate: the answers do not
    exist yet, and the judge's cache cannot be asked), its output from earlier judgements of the suite."""
    ready = [plan for plan in plans if plan.status == "ready"]
    if not ready or not cases:
        return []
    lengths = [p.output_mean if p.output_mean is not None else (p.max_tokens or 0) for p in answering]
    answer = "abcd" * int(sum(lengths) / len(lengths)) if lengths else ""
    candidates = [plan for plan in ready if plan.spec.role != "incumbent"]
    out = []
    for scorer in build_scorers(suite):
        plan = judges.get(getattr(scorer, "name", ""))
        if not is_judged(scorer) or plan is None or plan.status != "ready":
            continue
        pairwise = isinstance(scorer, PairwiseScorer)
        per_case = 2 * len(candidates) if pairwise else len(ready)
        messages = [scorer.messages(case, answer, answer) if pairwise else scorer.messages(case, answer)
                    for case in cases]
        counted = sum(count_input_tokens(plan.kind, plan.request_model, m).tokens for m in messages)
        history = queries.judge_output_history(store, suite.name, scorer.name) if store is not None else None
        outputs = np.asarray(history["output_tokens"], dtype=float) if history is not None else np.empty(0)
        out.append(ProviderEstimate(
            provider=f"judge {plan.name} ({scorer.name})", kind=plan.kind,
            price=pricing.lookup(plan.request_model, provider_id=plan.name),
            calls=len(cases) * per_case, cached=0, done=0, input_tokens=counted * per_case,
            input_method="approximate: judge prompts with answers of the expected length",
            worst_input_tokens=sum(worst_input_tokens(m) for m in messages) * per_case,
            max_tokens=scorer.max_tokens,
            output_mean=float(outputs.mean()) if outputs.size else None,
            output_sd=float(outputs.std(ddof=1)) if outputs.size > 1 else (0.0 if outputs.size else None),
            output_from=int(outputs.size),
        ))
    return out


def _tokens_per_char(store: Store, provider: str) -> float | None:
    """Input tokens per character of the messages, over `provider`'s earlier answers whose usage it reported;
    None with fewer than `MIN_CALIBRATION` of them."""
    rows = queries.billed_inputs(store, provider)
    if len(rows) < MIN_CALIBRATION:
        return None
    chars = tokens = 0
    for count, messages in zip(rows["input_tokens"], rows["messages"], strict=True):
        listed = json.loads(messages) if isinstance(messages, str) else messages
        if not isinstance(listed, list):
            continue
        overhead = PER_MESSAGE_TOKENS * len(listed) + PER_REQUEST_TOKENS
        chars += message_chars(listed)
        tokens += max(0, int(count) - overhead)
    return tokens / chars if chars else None
