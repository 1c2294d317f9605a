"""The migration gate: may the candidate replace the incumbent (or a new run its baseline)? Pure functions.

Statistics, on the cases both sides answered (paired by case id):
- the per-case metric (1/0 for `pass_rate`, else the stored value of a score metric such as `field.total`);
- the paired bootstrap of the mean difference d = candidate - incumbent: its one-sided lower confidence
  bound at `confidence` (the 1 - confidence quantile of resampled means). Non-inferiority passes when that
  bound is above -margin, so a candidate exactly `margin` worse passes at most 1 - confidence of the time;
- McNemar's exact test (scipy's binomial test on the discordant pairs) for pass/fail outcomes, reported;
- the minimum detectable difference: the shortfall the suite would catch with 80% power at this confidence,
  with a warning when it is larger than the margin (the suite is too small to vouch for the margin).
Absolute floors and ceilings (score, invalid-output and error rates over all cases, p95 latency and time to
first token, cost per 1,000 cases) and per-slice checks (no field, label or clause type may drop more than
`max_slice_drop`) complete the verdict. `lower_bounds` takes a batch of suites, so the simulation that
validates the gate runs the very code the gate runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from harness.suite import GateSpec


@dataclass
class Check:
    """One line of the verdict: what was measured, against what, and whether it passed."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class GateResult:
    """The verdict and everything behind it (written as gate.json)."""

    passed: bool
    checks: list[Check]
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"verdict": "pass" if self.passed else "fail", "passed": self.passed,
                "checks": [asdict(c) for c in self.checks], "stats": self.stats, "warnings": self.warnings}


def lower_bounds(diffs: np.ndarray, confidence: float, n_boot: int, seed: int = 0) -> np.ndarray:
    """One-sided lower confidence bounds of the mean of each row of `diffs` (shape suites x cases) by the
    paired bootstrap: the same resampled case indices for every suite, as multinomial counts, so a batch
    of suites costs one matrix product."""
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    n = diffs.shape[1]
    if n == 0:
        return np.full(diffs.shape[0], np.nan)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # n_boot x n
    means = counts @ diffs.T / n  # n_boot x suites
    return np.quantile(means, 1 - confidence, axis=0)


def mcnemar_exact(regressions: int, wins: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (1.0 when there are none)."""
    if regressions + wins == 0:
        return 1.0
    return float(stats.binomtest(min(regressions, wins), regressions + wins, 0.5).pvalue)


def minimum_detectable_difference(diffs: np.ndarray, confidence: float, power: float = 0.8) -> float | None:
    """The true shortfall of the candidate the suite detects with `power` at `confidence` (normal approx.)."""
    n = len(diffs)
    if n < 2:
        return None
    sd = float(np.std(diffs, ddof=1))
    if sd == 0:
        sd = 1 / np.sqrt(n)  # no disagreement seen: a floor of one case's worth
    return float((stats.norm.ppf(confidence) + stats.norm.ppf(power)) * sd / np.sqrt(n))


def evaluate(
    policy: GateSpec,
    candidate: dict[str, float],
    incumbent: dict[str, float],
    *,
    n_cases: int,
    rates: dict[str, float | None] | None = None,
    slices: dict[str, tuple[float | None, float | None]] | None = None,
    names: tuple[str, str] = ("candidate", "incumbent"),
) -> GateResult:
    """Decide. `candidate` and `incumbent` map case id -> the metric's value for each case that side has
    (a failed call or missing answer scores 0 for `pass_rate`); `rates` holds the candidate's measured
    `score`, `invalid_rate`, `error_rate`, `latency_p95_ms`, `ttft_p95_ms`, `cost_per_1k` (and `latency_source`, where
    the latency figures come from: the run or a load test); `slices` maps a
    field, label or clause type to (incumbent accuracy, candidate accuracy)."""
    rates = rates or {}
    shared = sorted(set(candidate) & set(incumbent))
    d = np.array([candidate[c] - incumbent[c] for c in shared], dtype=float)
    checks: list[Check] = []
    warnings: list[str] = []
    conf = policy.confidence
    statistics: dict[str, Any] = {"metric": policy.metric, "paired_cases": len(shared), "cases": n_cases,
                                  "confidence": conf, "margin": policy.margin, "candidate": names[0],
                                  "incumbent": names[1]}
    if len(shared) < 2:
        checks.append(Check("non-inferiority", False, None, -policy.margin,
                            f"only {len(shared)} case(s) answered by both: nothing to compare"))
    else:
        mean = float(d.mean())
        lower = float(lower_bounds(d[None, :], conf, policy.bootstrap, policy.seed)[0])
        statistics.update(mean_candidate=float(np.mean([candidate[c] for c in shared])),
                          mean_incumbent=float(np.mean([incumbent[c] for c in shared])),
                          difference=mean, lower_bound=lower)
        checks.append(Check(
            "non-inferiority", lower > -policy.margin, lower, -policy.margin,
            f"{names[0]} - {names[1]} = {mean:+.3f} on {len(shared)} paired cases; {conf:.0%} lower bound "
            f"{lower:+.3f} must be above -{policy.margin:.3f}",
        ))
        mdd = minimum_detectable_difference(d, conf)
        statistics["minimum_detectable_difference"] = mdd
        if mdd is not None and mdd > policy.margin:
            warnings.append(f"the suite is too small for a margin of {policy.margin:.3f}: with {len(shared)} paired "
                            f"cases it detects a shortfall of {mdd:.3f} (80% power); run more cases")
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
        if value is None:
            checks.append(Check(name, False, None, threshold, f"{key} is unknown for {names[0]}: cannot vouch"))
        else:
            where = f" ({rates['latency_source']})" if key.endswith("p95_ms") and rates.get("latency_source") else ""
            checks.append(Check(name, bool(ok(value, threshold)), value, threshold,
                                f"{key} = {value:.4g}{where} must be {sign} {threshold:.4g}"))
    if policy.max_slice_drop is not None:
        for name, (before, after) in sorted((slices or {}).items()):
            if before is None or after is None:
                continue
            drop = before - after
            checks.append(Check(f"slice {name}", drop <= policy.max_slice_drop, -drop, -policy.max_slice_drop,
                                f"accuracy {before:.3f} -> {after:.3f} (drop {drop:+.3f}) may drop at most "
                                f"{policy.max_slice_drop:.3f}"))
    return GateResult(passed=all(c.passed for c in checks), checks=checks, stats=statistics, warnings=warnings)
