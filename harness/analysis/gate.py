"""The migration gate: may the candidate replace the incumbent (or a new run its baseline)? Pure functions.

Four verdicts, each with its exit status (`EXIT_STATUS`):
- `invalid` (2): a side's answers failed for infrastructure reasons (`outcomes.is_infrastructure_error`: connection,
  timeout, 5xx, a crashed server, no answer stored) on more than `max_infra_error_rate` of the cases, or on every
  case. The run measured the servers, not the models: no quality verdict is given.
- `fail` (1): the candidate is shown worse than the margin allows, or a floor, ceiling or slice check is broken.
- `inconclusive` (3): nothing failed, but non-inferiority is not shown: the suite is too small (or the two sides
  disagree too often) to vouch for the margin. It says how many paired cases would be needed.
- `pass` (0): non-inferiority is shown and every other check holds.

Statistics, on the cases both sides have (paired by case id; cases where the incumbent failed for infrastructure
reasons are left out and counted, cases where the candidate did count as its failures): the per-case metric (1/0
for `pass_rate`, else the stored value of a score metric in [0, 1] such as `field.total`), and the paired
continuity-corrected score test of `harness.paired` (Tango 1998, extended to bounded differences) at the policy's
margin and confidence. McNemar's exact test on the discordant pairs is reported with `pass_rate`. Absolute floors
and ceilings (score, invalid-output and error rates over all cases, p95 latency and time to first token, cost per
1,000 cases) and per-slice checks (no field, label, clause type or line-item field may drop more than
`max_slice_drop`) complete the verdict; a check the suite gives nothing to measure is `not applicable`, with its
reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.analysis import paired
from harness.suite.spec import GateSpec

PASS, FAIL, INCONCLUSIVE, INVALID = paired.PASS, paired.FAIL, paired.INCONCLUSIVE, "invalid"
NOT_APPLICABLE = "not applicable"
EXIT_STATUS = {PASS: 0, FAIL: 1, INVALID: 2, INCONCLUSIVE: 3}
METHOD = "paired score test (Tango 1998, continuity-corrected, bounded differences)"


@dataclass
class Check:
    """One line of the verdict: what was measured, against what, and whether it passed. A check that neither
    passed nor failed (the suite cannot tell) is `inconclusive`; one the suite gives nothing to measure (a slice
    check on a suite without slices) is `not applicable`, says why, and does not count towards the verdict."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    inconclusive: bool = False
    applicable: bool = True

    @property
    def outcome(self) -> str:
        """`pass`, `fail`, `inconclusive` or `not applicable`."""
        if not self.applicable:
            return NOT_APPLICABLE
        return PASS if self.passed else INCONCLUSIVE if self.inconclusive else FAIL


@dataclass
class GateResult:
    """The verdict and everything behind it (written as gate.json). `reason` is one line for an invalid or
    inconclusive verdict."""

    verdict: str
    checks: list[Check]
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def passed(self) -> bool:
        """Whether the candidate may ship: only a `pass` verdict."""
        return self.verdict == PASS

    @property
    def exit_status(self) -> int:
        """0 pass, 1 fail, 2 invalid, 3 inconclusive."""
        return EXIT_STATUS[self.verdict]

    def settle(self) -> None:
        """Recompute the verdict from the checks (after a check was changed); an invalid run stays invalid."""
        if self.verdict == INVALID:
            return
        if any(c.outcome == FAIL for c in self.checks):
            self.verdict = FAIL
            self.reason = "; ".join(f"{c.name}: {c.detail}" for c in self.checks if c.outcome == FAIL)
        elif any(c.outcome == INCONCLUSIVE for c in self.checks):
            self.verdict = INCONCLUSIVE
            self.reason = "; ".join(f"{c.name}: {c.detail}" for c in self.checks if c.outcome == INCONCLUSIVE)
        else:
            self.verdict, self.reason = PASS, ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        def outcome(c: Check) -> str:
            return INVALID if self.verdict == INVALID and c.outcome in (FAIL, INCONCLUSIVE) else c.outcome

        return {"verdict": self.verdict, "passed": self.passed, "exit_status": self.exit_status,
                "reason": self.reason, "checks": [{**asdict(c), "outcome": outcome(c)} for c in self.checks],
                "stats": self.stats, "warnings": self.warnings}


def mcnemar_exact(regressions: int, wins: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (1.0 when there are none)."""
    from scipy import stats  # scipy takes a second to import: only when this is computed

    if regressions + wins == 0:
        return 1.0
    return float(stats.binomtest(min(regressions, wins), regressions + wins, 0.5).pvalue)


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _validity(policy: GateSpec, failures: Mapping[str, Mapping[str, int]], n_cases: int,
              names: tuple[str, str]) -> tuple[Check, str | None]:
    """The `valid run` check and, when the run is invalid, the one-line reason naming the provider(s)."""
    problems, notes = [], []
    for side, name, how, consequence in (
        ("candidate", names[0], "for infrastructure reasons", "counted as its failures"),
        ("incumbent", names[1], "with no answer to compare", "left out of the pairing"),
    ):
        counts = {k: int(v) for k, v in (failures.get(side) or {}).items() if v}
        total = sum(counts.values())
        if not total:
            continue
        share = total / n_cases if n_cases else 1.0
        text = f"{name} failed {total} of {n_cases} cases {how} ({_kinds(counts)})"
        if total >= n_cases or share > policy.max_infra_error_rate:
            problems.append(text)
        else:
            notes.append(f"{text}, {consequence}")
    limit = f"at most {100 * policy.max_infra_error_rate:g}% of cases may go unanswered on either side"
    if n_cases == 0:
        problems.append("the run has no cases")
    if problems:
        reason = "; ".join(problems)
        return Check("valid run", False, None, policy.max_infra_error_rate, f"{reason}: {limit}"), reason
    detail = "; ".join(notes) if notes else "no infrastructure failures on either side"
    return Check("valid run", True, None, policy.max_infra_error_rate, detail), None


def _non_inferiority(policy: GateSpec, d: np.ndarray, names: tuple[str, str]) -> tuple[Check, dict[str, Any]]:
    margin, conf = policy.margin, policy.confidence
    if d.size == 0:
        return Check("non-inferiority", False, None, -margin, "no case answered by both sides: nothing to compare",
                     inconclusive=True), {"cases_needed": None}
    values, counts = paired.support(d)
    verdict = str(paired.verdicts(values, counts[None, :], margin, conf)[0])
    lower, upper = paired.bounds(d, conf)
    mean = float(d.mean())
    head = (f"{names[0]} - {names[1]} = {mean:+.3f} on {d.size} paired cases "
            f"({int(np.count_nonzero(d))} disagree); {conf:.0%} bounds [{lower:+.3f}, {upper:+.3f}]")
    found: dict[str, Any] = {"difference": mean, "lower_bound": lower, "upper_bound": upper,
                             "disagreements": int(np.count_nonzero(d)), "cases_needed": None}
    if verdict == PASS:
        return Check("non-inferiority", True, lower, -margin,
                     f"{head}: the lower bound is above -{margin:.3f}"), found
    if verdict == FAIL:
        return Check("non-inferiority", False, upper, -margin,
                     f"{head}: the upper bound is below -{margin:.3f}, worse than the margin allows"), found
    needed = paired.cases_needed(d, margin, conf)
    found["cases_needed"] = needed
    if needed is None:
        more = (f"the observed difference is at or beyond -{margin:.3f}: more cases like these would not show "
                "non-inferiority")
    else:
        more = (f"about {needed:,} paired cases would show it with 80% power if the difference and disagreement "
                f"stay as observed ({max(needed - d.size, 0):,} more)")
    return Check("non-inferiority", False, lower, -margin,
                 f"{head}: the interval spans -{margin:.3f}, so the suite cannot vouch for the margin; {more}",
                 inconclusive=True), found


NOT_MEASURED = {"invalid_rate": "the suite's scorers do not judge whether an output is valid (no JSON, label or "
                                "schema check), so there is no invalid-output rate to bound"}


def _slice_checks(max_drop: float, slices: Mapping[str, tuple] | None,
                  names: tuple[str, str]) -> list[Check]:
    """One check per slice: its accuracy may drop at most `max_drop` from the reference to the candidate, on the
    cases both answered. A slice one side never answered, or a suite without slices, is `not applicable`."""
    if not slices:
        return [Check("slices", False, None, -max_drop, "max_slice_drop is set but the suite's scorers have no "
                      "slices (fields, labels, clause types or line items) to check", applicable=False)]
    checks = []
    for name, (before, after, *rest) in sorted(slices.items()):
        n = rest[0] if rest else None
        if before is None or after is None:
            checks.append(Check(f"slice {name}", False, None, -max_drop,
                                f"no case of this slice was answered by both {names[0]} and {names[1]}",
                                applicable=False))
            continue
        drop = before - after
        on = f" on {n} case{'s' if n != 1 else ''}" if n is not None else ""
        checks.append(Check(f"slice {name}", drop <= max_drop, -drop, -max_drop,
                            f"accuracy {before:.3f} -> {after:.3f}{on} (drop {drop:+.3f}) may drop at most "
                            f"{max_drop:.3f}"))
    return checks


def evaluate(
    policy: GateSpec,
    candidate: dict[str, float],
    incumbent: dict[str, float],
    *,
    n_cases: int,
    rates: dict[str, float | None] | None = None,
    slices: Mapping[str, tuple] | None = None,
    names: tuple[str, str] = ("candidate", "incumbent"),
    failures: Mapping[str, Mapping[str, int]] | None = None,
    excluded: Mapping[str, int] | None = None,
) -> GateResult:
    """Decide. `candidate` and `incumbent` map case id -> the metric's value (in [0, 1]) for each case that side
    can be compared on (a candidate's failed call or missing answer scores 0; the incumbent's infrastructure
    failures are left out by the caller and counted in `excluded`); `failures` holds each side's infrastructure
    failures over all `n_cases` cases by error kind ({"candidate": {"connection": 3}, "incumbent": {...}});
    `rates` holds the candidate's measured `score`, `invalid_rate`, `error_rate`, `latency_p95_ms`, `ttft_p95_ms`,
    `cost_per_1k` (and `latency_source`); `slices` maps a slice (a field, label, clause type or line-item field) to
    (incumbent accuracy, candidate accuracy[, paired cases]), None or empty when the suite has none. A check the
    suite gives nothing to measure is kept as `not applicable` with its reason, never dropped."""
    rates = rates or {}
    shared = sorted(set(candidate) & set(incumbent))
    statistics: dict[str, Any] = {"metric": policy.metric, "paired_cases": len(shared), "cases": n_cases,
                                  "excluded": dict(excluded or {}), "confidence": policy.confidence,
                                  "margin": policy.margin, "method": METHOD, "candidate": names[0],
                                  "incumbent": names[1],
                                  "infrastructure_failures": {k: dict(v) for k, v in (failures or {}).items()}}
    validity, invalid = _validity(policy, failures or {}, n_cases, names)
    if invalid is not None:
        return GateResult(verdict=INVALID, checks=[validity], stats=statistics,
                          reason=f"the run is invalid: {invalid}; fix the server or credentials and run again")
    checks = [validity]
    d = np.array([candidate[c] - incumbent[c] for c in shared], dtype=float)
    check, found = _non_inferiority(policy, d, names)
    checks.append(check)
    statistics.update(found)
    if shared:
        statistics.update(mean_candidate=float(np.mean([candidate[c] for c in shared])),
                          mean_incumbent=float(np.mean([incumbent[c] for c in shared])))
    if policy.metric == "pass_rate":
        regressions = int(sum(1 for c in shared if incumbent[c] >= 1 and candidate[c] < 1))
        wins = int(sum(1 for c in shared if candidate[c] >= 1 and incumbent[c] < 1))
        statistics.update(regressions=regressions, wins=wins, mcnemar_p=mcnemar_exact(regressions, wins))
    limits = [
        ("min score", "score", policy.min_score, lambda v, t: v >= t, "≥"),
        ("max invalid-output rate", "invalid_rate", policy.max_invalid_rate, lambda v, t: v <= t, "≤"),
        ("max error rate", "error_rate", policy.max_error_rate, lambda v, t: v <= t, "≤"),
        ("max latency p95 (ms)", "latency_p95_ms", policy.max_latency_p95_ms, lambda v, t: v <= t, "≤"),
        ("max TTFT p95 (ms)", "ttft_p95_ms", policy.max_ttft_p95_ms, lambda v, t: v <= t, "≤"),
        ("max cost per 1k cases (USD)", "cost_per_1k", policy.max_cost_per_1k, lambda v, t: v <= t, "≤"),
    ]
    for name, key, threshold, ok, sign in limits:
        if threshold is None:
            continue
        value = rates.get(key)
        if value is None and key in NOT_MEASURED:
            checks.append(Check(name, False, None, threshold, NOT_MEASURED[key], applicable=False))
        elif value is None:
            checks.append(Check(name, False, None, threshold, f"{key} is unknown for {names[0]}: cannot vouch"))
        else:
            where = f" ({rates['latency_source']})" if key.endswith("p95_ms") and rates.get("latency_source") else ""
            checks.append(Check(name, bool(ok(value, threshold)), value, threshold,
                                f"{key} = {value:.4g}{where} must be {sign} {threshold:.4g}"))
    if policy.max_slice_drop is not None:
        checks.extend(_slice_checks(policy.max_slice_drop, slices, names))
    result = GateResult(verdict=PASS, checks=checks, stats=statistics)
    result.settle()
    return result
