"""The per-case outcome table: what each provider of a run did on each case, the one place its vocabulary lives.

`outcome_table(store, run_id)` reads the table (built in DuckDB SQL by `store.cases.case_outcomes`) into an
`OutcomeTable` that the report, `harness compare`, the gate, the cascade and the cost model all read. A case's
status for a provider is one of `STATUSES`: `pass` (answered, and every scorer's `case_pass` passed), `fail`,
`error` (the call failed) or `no answer` (nothing stored: a skipped case, an interrupted run); only `pass`
passes. `run_providers(store, run_id)` says which providers ran in which role, and picks the candidate and the
incumbent of a comparison, with the same errors for every command.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.errors import RunError
from harness.providers.failures import NO_ANSWER as NO_ANSWER_KIND
from harness.providers.failures import failure_kind, is_infrastructure_error
from harness.store import queries
from harness.store.cases import case_outcomes
from harness.store.db import Store

PASS, FAIL, ERROR, NO_ANSWER = "pass", "fail", "error", "no answer"
STATUSES = (PASS, FAIL, ERROR, NO_ANSWER)
PAIRED = ("regression", "win", "both_fail", "both_pass")

@dataclass(frozen=True)
class Outcome:
    """One case × provider of a run: its status (one of `STATUSES`), the failed call's error and error kind, the
    answer's latency, whether every validity check passed (None when none ran), and how (`kinds`) and where
    (`places`: field, gold label, clause type, line-item field) it failed."""

    case_id: str
    provider: str
    role: str
    status: str
    error: str | None
    error_kind: str | None
    latency_ms: float | None
    valid: bool | None
    kinds: tuple[str, ...]
    places: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.status == PASS


@dataclass(frozen=True)
class RunProviders:
    """Who ran in a run: each provider's role, the ready ones (incumbent first) and why the others were
    skipped."""

    run_id: str
    roles: dict[str, str]
    ready: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def incumbents(self) -> list[str]:
        return [p for p in self.ready if self.roles.get(p) == "incumbent"]

    @property
    def candidates(self) -> list[str]:
        return [p for p in self.ready if self.roles.get(p) != "incumbent"]

    def candidate(self, name: str | None = None) -> str:
        """`name` if it ran in this run, else the run's first candidate that ran. Raises RunError otherwise."""
        if name is not None:
            return self._ran(name)
        candidates = [p for p in self.ready if self.roles.get(p) == "candidate"]
        if not candidates:
            raise RunError(f"run {self.run_id} has no candidate that ran{self._why('candidate')}")
        return candidates[0]

    def incumbent(self, name: str | None = None, *, instead: str = "") -> str:
        """`name` if it ran in this run, else the run's first incumbent that ran. Raises RunError otherwise,
        ending with `instead` (what the user can do)."""
        if name is not None:
            return self._ran(name)
        if not self.incumbents:
            raise RunError(f"run {self.run_id} has no incumbent answers to compare with{self._why('incumbent')}"
                           + (f"; {instead}" if instead else ""))
        return self.incumbents[0]

    def _ran(self, name: str) -> str:
        if name in self.skipped:
            raise RunError(f"run {self.run_id} has no answers of '{name}' (it was skipped: {self.skipped[name]})")
        if name not in self.ready:
            raise RunError(f"run {self.run_id} has no answers of '{name}' (ran: {', '.join(self.ready) or 'none'})")
        return name

    def _why(self, role: str) -> str:
        why = [f"{p} was skipped: {reason}" for p, reason in self.skipped.items() if self.roles.get(p) == role]
        return f" ({'; '.join(why)})" if why else ""


def run_providers(store: Store, run_id: str) -> RunProviders:
    """The providers of `run_id` (StoreError for an unknown run)."""
    store.run(run_id)
    rows = store.table("run_providers", run_id)
    records = rows.sort_values("role", ascending=False, na_position="last", kind="stable").to_dict("records")
    return RunProviders(
        run_id=run_id,
        roles={r["provider"]: r["role"] for r in records},
        ready=tuple(r["provider"] for r in records if r["status"] == "ready"),
        skipped={r["provider"]: str(r.get("reason") or "skipped") for r in records if r["status"] != "ready"},
        endpoints={r["provider"]: r["endpoint"] for r in records if isinstance(r.get("endpoint"), str)},
    )


class OutcomeTable:
    """The outcome of every case × provider that ran in one run (`frame`: one row each, columns
    `store.cases.OUTCOME_COLUMNS`, in case order), with the questions the report, compare, the gate, the cascade
    and the cost model ask of it."""

    def __init__(self, run_id: str, providers: RunProviders, frame: pd.DataFrame) -> None:
        self.run_id = run_id
        self.providers = providers
        self.frame = frame
        self.cases: list[str] = list(dict.fromkeys(frame["case_id"]))
        self._by: dict[str, pd.DataFrame] = {}

    def of(self, provider: str) -> pd.DataFrame:
        """The rows of `provider`, indexed by case id."""
        if provider not in self._by:
            self._by[provider] = self.frame[self.frame["provider"] == provider].set_index("case_id")
        return self._by[provider]

    def status(self, provider: str) -> pd.Series:
        """Case id -> status of `provider` (`no answer` for a provider that did not run)."""
        mine = self.of(provider)["status"]
        return mine.reindex(self.cases, fill_value=NO_ANSWER)

    def passed(self, provider: str) -> pd.Series:
        """Case id -> whether `provider` passed it."""
        return self.status(provider) == PASS

    def statuses(self) -> pd.DataFrame:
        """Status per case (rows, in case order) and provider (columns, incumbent first)."""
        return pd.DataFrame({p: self.status(p) for p in self.providers.ready}, index=self.cases)

    def paired_counts(self, incumbent: str, candidate: str) -> dict[str, int]:
        """How many cases are each of `PAIRED` for `candidate` against `incumbent`."""
        base, other = self.passed(incumbent), self.passed(candidate)
        counts = Counter({"regression": int((base & ~other).sum()), "win": int((other & ~base).sum()),
                          "both_pass": int((base & other).sum())})
        counts["both_fail"] = len(self.cases) - sum(counts.values())
        return {name: counts[name] for name in PAIRED}

    def failures(self, provider: str, *, every_error: bool = False) -> dict[str, str]:
        """Case id -> failure kind of each case `provider` failed for infrastructure reasons (`providers.failures`;
        with `every_error`, any failed call), `no answer` where nothing is stored."""
        rows = self.of(provider)
        status = rows["status"]
        out = {c: NO_ANSWER_KIND for c in self.cases if c not in status.index or status[c] == NO_ANSWER}
        for case_id, kind in rows.loc[status == ERROR, "error_kind"].items():
            kind = failure_kind(kind if isinstance(kind, str) else None)
            if every_error or is_infrastructure_error(kind):
                out[case_id] = kind
        return out

    def with_answer(self, provider: str) -> set[str]:
        """The cases `provider` has a stored answer (or failed call) for."""
        status = self.status(provider)
        return set(status.index[status != NO_ANSWER])

    def with_error_kind(self, provider: str, kind: str) -> set[str]:
        """The cases whose answer of `provider` failed with error kind `kind` (e.g. `not_in_log`)."""
        rows = self.of(provider)
        return set(rows.index[rows["error_kind"] == kind])

    def rows(self, provider: str | None = None) -> Iterator[Outcome]:
        """The table as typed rows (of `provider` only, when given)."""
        frame = self.frame if provider is None else self.frame[self.frame["provider"] == provider]
        for r in frame.itertuples(index=False):
            yield Outcome(
                case_id=r.case_id, provider=r.provider, role=r.role, status=r.status, error=_text(r.error),
                error_kind=_text(r.error_kind), latency_ms=None if pd.isna(r.latency_ms) else float(r.latency_ms),
                valid=None if pd.isna(r.valid) else bool(r.valid), kinds=tuple(r.kinds), places=tuple(r.places),
            )

    def taxonomy(self) -> dict[str, dict[str, Counter]]:
        """Per provider: failure counts by kind (`kinds`) and by place (`places`) over the cases it did not pass
        (a case counts once per kind and place)."""
        failing = self.frame[self.frame["status"] != PASS]
        out: dict[str, dict[str, Counter]] = {}
        for provider in self.providers.ready:
            mine = failing[failing["provider"] == provider]
            out[provider] = {"kinds": Counter(mine["kinds"].explode().dropna()),
                             "places": Counter(mine["places"].explode().dropna())}
        return out


def outcome_table(store: Store, run_id: str) -> OutcomeTable:
    """The per-case outcome table of `run_id` (StoreError for an unknown run)."""
    providers = run_providers(store, run_id)
    return OutcomeTable(run_id, providers, case_outcomes(store, run_id))


def per_case_metric(store: Store, table: OutcomeTable, provider: str, metric: str) -> dict[str, float]:
    """Case id -> the gate's per-case value of `metric` for every case of the table: for `pass_rate` 1 when the
    case passed, else 0; for a stored score metric its mean over the case's rows, 0 where the provider failed or
    has no answer. Raises RunError when the run has no score named `metric` or its values are not in [0, 1]."""
    if metric == "pass_rate":
        return {c: float(v) for c, v in table.passed(provider).items()}
    if metric not in queries.score_metrics(store, table.run_id):
        raise RunError(f"gate.metric '{metric}': run {table.run_id} has no such score (e.g. pass_rate, field.total)")
    values = queries.metric_by_case(store, table.run_id, provider, metric)
    out = {c: float(values.get(c, 0.0)) for c in table.cases}
    outside = [v for v in out.values() if not 0.0 <= v <= 1.0]
    if outside:
        raise RunError(f"gate.metric '{metric}': per-case values must be scores between 0 and 1 (run "
                       f"{table.run_id} has {outside[0]:g}); gate on a score such as pass_rate, field.total or "
                       "items.f1")
    return out


def paired_category(incumbent_passed: bool, candidate_passed: bool) -> str:
    """`regression` (the incumbent passes, the candidate does not), `win`, `both_fail` or `both_pass`."""
    if incumbent_passed and not candidate_passed:
        return "regression"
    if candidate_passed and not incumbent_passed:
        return "win"
    return "both_pass" if candidate_passed else "both_fail"


def agreement(outputs_a: Mapping[str, Any], outputs_b: Mapping[str, Any], same: Any) -> tuple[int, int]:
    """(cases where both answered and `same(a, b)`, cases where both answered): agreement without gold."""
    both = [case for case in outputs_a if case in outputs_b]
    return sum(1 for case in both if same(outputs_a[case], outputs_b[case])), len(both)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
