"""Hybrid / cascade simulation on a stored shadow run: what if the candidate answered and the API took the rest?

The rule simulated: send a case to the API (the incumbent) when the candidate's answer is invalid (an error, no
answer, or a failed validity check: an application sees that at no cost), or when its confidence is below a
threshold. Every case of the run has both answers stored, so each threshold's hybrid quality and API spend are
computed at no extra model cost.

Confidence signals (`SIGNALS`), higher meaning surer: the mean, and the least, token log-probability of the
answer, the mean margin between each token's two likeliest alternatives (servers that return logprobs), the
share of extra samples agreeing with the answer (providers with `samples`), and validity alone (1 for every
valid answer: the cascade that routes only invalid answers). A valid answer with no value of the signal counts
as the least confident: it is routed at every threshold except the lowest.

Quality is the gate's per-case metric (`outcomes.per_case_metric`: pass/fail for `pass_rate`, else the stored
score such as `field.total`; a missing answer scores 0), and each threshold is judged by the gate's own rule:
the paired score test of `harness.paired` (Tango 1998, continuity-corrected, bounded differences) on the per-case
differences hybrid - incumbent, at the policy's margin and confidence. A threshold is within the margin when that
test's verdict is `pass`; `recommend` takes the cheapest such threshold.

Choosing the threshold and judging it on the same cases flatters it: of the many thresholds tried, the one picked
is partly picked for its luck on these cases. `crossfit` gives the honest figures by k-fold cross-fitting (the
term of Chernozhukov et al. 2018, "Double/debiased machine learning for treatment and structural parameters",
Econometrics Journal 21: C1-C68; here the fitted part is the threshold): the cases are split into k folds (5, or
as many as there are cases below that), seeded by the policy's `seed`; each fold's cases are routed by the
threshold `recommend`'s rule picks on the other folds, so every case is routed exactly once by a threshold not
chosen on it. The hybrid quality, routed share, API spend and non-inferiority verdict quoted for a recommendation
are those of the cross-fitted routing; the threshold to deploy is still the one picked on all cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import paired
from harness.analysis.intervals import wilson_interval
from harness.analysis.outcomes import FAIL, PASS, outcome_table, per_case_metric, run_providers
from harness.errors import HarnessError
from harness.store.db import Store
from harness.suite.spec import GateSpec

SIGNALS = ("logprob_mean", "margin_mean", "logprob_min", "agreement", "valid")
COVERAGE = 0.9  # `auto` takes a signal present on at least this share of the valid answers
CONFIDENCE_LEVEL = 0.95  # of the quality interval
MAX_TEXT_ROWS = 15
MAX_THRESHOLDS = 200  # thresholds swept at most: every distinct confidence up to this, else evenly spaced quantiles
FOLDS = 5  # of the cross-fitting

CURVE_COLUMNS = ("threshold", "routed", "routed_share", "quality", "quality_low", "quality_high", "difference",
                 "lower_bound", "upper_bound", "verdict", "within_margin", "api_cost_per_case")


def cascade_frame(
    store: Store, run_id: str, *, candidate: str | None = None, incumbent: str | None = None,
    metric: str = "pass_rate",
) -> pd.DataFrame:
    """One row per case of `run_id` the incumbent answered (as the gate pairs them; `attrs["excluded"]` counts the
    others), in case-id order: `case_id`, `answered` (the
    candidate answered without error), `valid` (answered and every validity check passed), the candidate's
    signals (`logprob_mean`, `margin_mean`, `logprob_min`, `logprob_tokens`, `agreement`: NaN where not
    captured), the per-case metric of the `candidate` and of the `incumbent` (the gate's rules), and
    `api_cost_usd`, the incumbent's stored cost of that case (NaN when unknown or the call failed). The providers
    default to the run's first ready candidate and incumbent; `attrs` records run, providers and metric."""
    providers = run_providers(store, run_id)
    candidate = providers.candidate(candidate)
    incumbent = providers.incumbent(incumbent, instead="a cascade routes cases to the incumbent, so its answers "
                                                       "must be in the same run")
    table = outcome_table(store, run_id)
    every_case = sorted(table.cases)
    responses = store.table("responses", run_id)
    mine = responses[responses["provider"] == candidate].set_index("case_id")
    theirs = responses[responses["provider"] == incumbent].set_index("case_id")
    # as in the gate: a case the incumbent did not answer (an outage, a refused request) has nothing to route to
    # and nothing to compare with; scoring it 0 would make every hybrid look better than the API
    answered_by_api = set(theirs.index[theirs["error"].isna()])
    cases = [c for c in every_case if c in answered_by_api]
    frame = pd.DataFrame({"case_id": cases})
    outcomes = table.of(candidate).reindex(cases)
    answered = outcomes["status"].isin([PASS, FAIL])
    frame["answered"] = answered.to_numpy()
    # a validity check that did not run (no such scorer) does not make an answer invalid
    frame["valid"] = (answered & outcomes["valid"].fillna(True).astype(bool)).to_numpy()
    for column in ("logprob_mean", "margin_mean", "logprob_min", "logprob_tokens", "agreement"):
        values = mine[column] if column in mine.columns else pd.Series(dtype=float)
        frame[column] = pd.to_numeric(values.reindex(cases), errors="coerce").astype(float).to_numpy()
    mine_metric = per_case_metric(store, table, candidate, metric)
    theirs_metric = per_case_metric(store, table, incumbent, metric)
    frame["candidate"] = [mine_metric[c] for c in cases]
    frame["incumbent"] = [theirs_metric[c] for c in cases]
    cost = theirs["cost_usd"].where(theirs["error"].isna())
    frame["api_cost_usd"] = pd.to_numeric(cost.reindex(cases), errors="coerce").astype(float).to_numpy()
    frame.attrs = {"run_id": run_id, "candidate": candidate, "incumbent": incumbent, "metric": metric,
                   "excluded": len(every_case) - len(cases)}
    return frame


def signal_coverage(frame: pd.DataFrame) -> dict[str, float]:
    """Signal -> the share of the valid answers that have a value of it (`valid` is always 1.0)."""
    valid = frame[frame["valid"]]
    out = {}
    for signal in SIGNALS:
        if signal == "valid":
            out[signal] = 1.0
        elif signal not in valid.columns or valid.empty:
            out[signal] = 0.0
        else:
            out[signal] = float(valid[signal].notna().mean())
    return out


def choose_signal(frame: pd.DataFrame, requested: str = "auto") -> str:
    """The confidence signal to route on. `auto`: the first of `SIGNALS` present on at least `COVERAGE` (90%)
    of the valid answers (a few answers without logprobs, e.g. replayed from an older cache, do not rule a
    signal out; they count as least confident), else `valid`. A named signal must have at least one value."""
    coverage = signal_coverage(frame)
    if requested == "auto":
        return next(s for s in SIGNALS if coverage[s] >= COVERAGE)
    if requested not in SIGNALS:
        raise HarnessError(f"unknown cascade signal '{requested}' (one of auto, {', '.join(SIGNALS)})")
    if coverage[requested] == 0:
        have = ", ".join(s for s in SIGNALS if coverage[s] > 0)
        raise HarnessError(f"cascade signal '{requested}': the run has no values of it (it has: {have})")
    return requested


def _confidence(frame: pd.DataFrame, signal: str) -> np.ndarray:
    """The signal per case, -inf where a valid answer has no value (the least confident)."""
    if signal not in SIGNALS:
        raise HarnessError(f"unknown cascade signal '{signal}' (one of {', '.join(SIGNALS)})")
    if signal == "valid":
        return np.ones(len(frame))
    values = frame[signal].to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isnan(values), -np.inf, values)


def _routing(valid: np.ndarray, confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """thresholds x cases: True where the case goes to the API."""
    return ~valid[None, :] | (confidence[None, :] < thresholds[:, None])


def route(frame: pd.DataFrame, signal: str, threshold: float) -> pd.Series:
    """Per case (index: case_id), whether the cascade at `threshold` sends it to the API."""
    mask = _routing(frame["valid"].to_numpy(dtype=bool), _confidence(frame, signal), np.array([threshold]))[0]
    return pd.Series(mask, index=frame["case_id"], name="routed")


def _filled_costs(frame: pd.DataFrame) -> np.ndarray:
    """The incumbent's cost per case, unknown ones filled with the mean known cost (all NaN if none is known)."""
    cost = frame["api_cost_usd"].to_numpy(dtype=float, na_value=np.nan)
    known = cost[~np.isnan(cost)]
    return np.where(np.isnan(cost), known.mean() if len(known) else np.nan, cost)


def _intervals(values: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of each row's mean: Wilson for 0/1 outcomes, Student's t for a continuous metric (clipped
    to [0, 1] when every value lies there, as scores do)."""
    n = values.shape[1]
    if binary:
        bounds = [wilson_interval(round(float(row.sum())), n) for row in values]
        return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    mean = values.mean(axis=1)
    if n < 2:
        return np.full(len(values), np.nan), np.full(len(values), np.nan)
    from scipy import stats  # scipy takes a second to import: only for a continuous metric

    half = stats.t.ppf(0.5 + CONFIDENCE_LEVEL / 2, n - 1) * values.std(axis=1, ddof=1) / math.sqrt(n)
    low, high = mean - half, mean + half
    if values.min() >= 0 and values.max() <= 1:
        low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    return low, high


def _thresholds(valid: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, routing matrix thresholds x cases, routed counts): -inf, the distinct confidences of the valid
    answers (at most `MAX_THRESHOLDS`, evenly spaced quantiles beyond) and +inf, keeping only the lowest threshold
    of each distinct routed set, in increasing order (so the routed counts increase too)."""
    values = np.unique(conf[valid])
    if len(values) > MAX_THRESHOLDS:  # the routing matrix is thresholds x cases: keep it bounded on big runs
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_THRESHOLDS), method="lower"))
    thresholds = np.unique(np.concatenate([[-np.inf], values, [np.inf]]))
    routed = _routing(valid, conf, thresholds)
    counts = routed.sum(axis=1)
    _, first = np.unique(counts, return_index=True)  # the lowest threshold of each distinct routed set
    return thresholds[first], routed[first], counts[first]


def _verdicts(routed: np.ndarray, cand: np.ndarray, inc: np.ndarray, margin: float,
              confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, counts, verdicts) of the paired score test of hybrid - incumbent, one row per routing row."""
    diffs = np.where(routed, 0.0, (cand - inc)[None, :])
    values, counts = paired.support_batch(diffs)
    return values, counts, paired.verdicts(values, counts, margin, confidence)


def _pick(valid: np.ndarray, conf: np.ndarray, cand: np.ndarray, inc: np.ndarray, margin: float,
          confidence: float) -> float | None:
    """`recommend`'s rule on these cases alone: the lowest threshold of the fewest routed cases whose hybrid passes
    the score test; None when none does."""
    if len(cand) == 0:
        return None
    thresholds, routed, _ = _thresholds(valid, conf)
    _, _, verdict = _verdicts(routed, cand, inc, margin, confidence)
    ok = np.flatnonzero(verdict == paired.PASS)
    return float(thresholds[ok[0]]) if len(ok) else None


def sweep(frame: pd.DataFrame, signal: str, policy: GateSpec) -> pd.DataFrame:
    """The cascade curve: one row per threshold, ordered by routed share. A case goes to the API when the
    candidate's answer is invalid or its `signal` is below `threshold`. Thresholds: -inf (only invalid answers
    routed), each distinct value of the signal on the valid answers that routes more, and +inf (everything).

    Columns: `threshold`, `routed` (cases), `routed_share`, `quality` (mean per-case metric of the hybrid),
    `quality_low`/`quality_high` (95%: Wilson for 0/1 metrics, Student's t otherwise), `difference` (hybrid -
    incumbent), `lower_bound`/`upper_bound` (the gate's paired score-test bounds of that difference, one-sided at
    `policy.confidence` each), `verdict` (the score test's `pass`, `fail` or `inconclusive` at `policy.margin`),
    `within_margin` (verdict is `pass`) and `api_cost_per_case` (USD, over all cases; unknown costs filled with
    the mean known one, NaN if none is known). Every row is judged on the cases its threshold was chosen from: see
    `crossfit` for figures that are not. `attrs` holds the signal, metric, margin, confidence, cases and the
    candidate's and incumbent's quality."""
    n = len(frame)
    attrs = {"signal": signal, "metric": frame.attrs.get("metric", policy.metric), "margin": policy.margin,
             "confidence": policy.confidence, "cases": n}
    conf = _confidence(frame, signal)
    if n == 0:
        dtypes = {"within_margin": bool, "verdict": object}
        curve = pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, float)) for c in CURVE_COLUMNS})
        curve.attrs = attrs
        return curve
    valid = frame["valid"].to_numpy(dtype=bool)
    cand, inc = _metric(frame)
    thresholds, routed, counts = _thresholds(valid, conf)
    hybrid = np.where(routed, inc[None, :], cand[None, :])
    quality = hybrid.mean(axis=1)
    low, high = _intervals(hybrid, _binary(cand, inc))
    values, support_counts, verdict = _verdicts(routed, cand, inc, policy.margin, policy.confidence)
    lower, upper = paired.bounds_batch(values, support_counts, policy.confidence)
    cost = _filled_costs(frame)
    api_cost = (np.where(routed, cost[None, :], 0.0)).sum(axis=1) / n
    curve = pd.DataFrame({
        "threshold": thresholds, "routed": counts, "routed_share": counts / n, "quality": quality,
        "quality_low": low, "quality_high": high, "difference": quality - inc.mean(), "lower_bound": lower,
        "upper_bound": upper, "verdict": verdict.astype(object), "within_margin": verdict == paired.PASS,
        "api_cost_per_case": api_cost,
    })
    curve.attrs = {**attrs, "candidate_quality": float(cand.mean()), "incumbent_quality": float(inc.mean())}
    return curve


def _metric(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The candidate's and the incumbent's per-case metric; a HarnessError unless every value is in [0, 1] (the
    score test needs bounded differences)."""
    cand = frame["candidate"].to_numpy(dtype=float)
    inc = frame["incumbent"].to_numpy(dtype=float)
    both = np.concatenate([cand, inc])
    if both.size and (np.isnan(both).any() or both.min() < 0 or both.max() > 1):
        metric = frame.attrs.get("metric", "the metric")
        raise HarnessError(f"cascade: {metric} must be a score between 0 and 1 on every case to be judged by the "
                           f"paired score test (values from {np.nanmin(both):g} to {np.nanmax(both):g})")
    return cand, inc


def _binary(cand: np.ndarray, inc: np.ndarray) -> bool:
    """Whether the metric is pass/fail (every value 0 or 1)."""
    return bool(np.isin(np.concatenate([cand, inc]), (0.0, 1.0)).all())


def recommend(curve: pd.DataFrame) -> dict[str, Any] | None:
    """The cheapest threshold whose hybrid stays within the gate's margin of the incumbent (score-test verdict
    `pass`). The routed sets are nested (a higher threshold routes every case a lower one does), so the API cost
    never falls as the routed share grows: the cheapest row is the one routing the fewest cases, known costs or not.

    The row as a dict, plus `routes_everything`: True when only sending every case to the API keeps quality
    (that is the incumbent alone: stay on the API, not a hybrid), and `routes_invalid_only`: True when the
    candidate alone does, its invalid answers retried on the API. None when no row is within the margin (an
    empty run, a run too small for the margin, or a margin of 0, which not even the incumbent itself clears).
    The row's figures are in-sample (chosen and judged on the same cases): quote `crossfit`'s."""
    ok = curve[curve["within_margin"].astype(bool)]
    if ok.empty:
        return None
    row = ok.loc[ok["routed_share"].idxmin()]
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.to_dict().items()}
    out["routes_everything"] = bool(row["routed_share"] >= 1.0)
    out["routes_invalid_only"] = bool(row["threshold"] == -np.inf)
    return out


def assign_folds(n: int, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """The fold (0 .. k-1) of each of `n` cases, k = min(`folds`, n): a random permutation under `seed` dealt
    round-robin, so fold sizes differ by at most one. The same n, folds and seed always give the same folds."""
    k = min(folds, n)
    out = np.zeros(n, dtype=int)
    if k > 0:
        out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


@dataclass
class CrossFit:
    """The cross-fitted hybrid (see `crossfit`). Shares and quality are over all `cases`; intervals are 95%;
    `api_cost_*` are USD per case (NaN when no API cost is known) and `savings_*` the share of the API-alone cost
    saved; `lower_bound`/`upper_bound` and `verdict` are the paired score test of hybrid - incumbent at `margin`
    and one-sided `confidence`.

    `cases_needed` (None when the evidence is not too thin, or when more cases like these would not help): when
    any fold found no threshold, the cases that would give each fold's training part (k-1 of k folds) 80% power
    to show the threshold picked on all cases within the margin; else, when the verdict is inconclusive, the paired
    cases that would show the cross-fitted hybrid within it with 80% power.

    `thresholds` holds each fold's threshold (None: no threshold short of routing every case was within the margin
    on the other folds, so the fold's cases all went to the API), `fold` each case's fold and `routed` whether the
    case went to the API (index: case_id). A run of under 2 cases is not cross-fitted: `folds` 0, every figure NaN,
    every case counted as routed."""

    signal: str
    folds: int
    seed: int
    cases: int
    margin: float
    confidence: float
    thresholds: list[float | None]
    fold: np.ndarray
    routed: pd.Series
    folds_without_threshold: int
    quality: float
    quality_low: float
    quality_high: float
    incumbent_quality: float
    routed_count: int
    routed_share: float
    routed_low: float
    routed_high: float
    api_cost_per_case: float
    api_cost_low: float
    api_cost_high: float
    api_only_cost_per_case: float
    savings: float
    savings_low: float
    savings_high: float
    difference: float
    lower_bound: float
    upper_bound: float
    verdict: str
    cases_needed: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def too_thin(self) -> str | None:
        """Why the evidence is too thin to recommend a threshold, or None: too few cases to cross-fit, a fold
        found no threshold on their training cases, or the cross-fitted hybrid's verdict is inconclusive."""
        if self.folds < 2:
            return f"{self.cases} case(s) cannot be cross-fitted (at least 2 are needed)"
        if self.folds_without_threshold:
            more = (f"; about {self.cases_needed:,} cases would let each fold find one" if self.cases_needed else "")
            return (f"in {self.folds_without_threshold} of {self.folds} folds no threshold short of routing every "
                    f"case kept quality within {self.margin:.3f} on the other folds' cases{more}")
        if self.verdict == paired.INCONCLUSIVE:
            more = (f"about {self.cases_needed:,} cases would show it with 80% power if the difference and "
                    "disagreement stay as observed" if self.cases_needed is not None
                    else "more cases like these would not show it")
            return (f"the cross-fitted hybrid - incumbent is {self.difference:+.3f}, {self.confidence:.0%} bounds "
                    f"[{self.lower_bound:+.3f}, {self.upper_bound:+.3f}], which span -{self.margin:.3f}: the run "
                    f"cannot vouch for the margin; {more}")
        return None

    @property
    def holds(self) -> bool:
        """Whether the cross-fitted hybrid is shown within the margin of the incumbent and the evidence is not too
        thin: the condition for recommending a hybrid."""
        return self.verdict == paired.PASS and self.too_thin is None

    def summary(self) -> str:
        """One line: the cross-fitted figures with their 95% intervals, and the score test's one-sided bounds and
        verdict."""
        if self.folds < 2:
            return f"cross-fitted: not possible ({self.too_thin})"
        cost = ("API cost unknown" if math.isnan(self.api_cost_per_case) else
                f"API ${self.api_cost_per_case * 1000:.2f} [{self.api_cost_low * 1000:.2f}, "
                f"{self.api_cost_high * 1000:.2f}] per 1k cases, saving {self.savings:.0%} "
                f"[{self.savings_low:.0%}, {self.savings_high:.0%}] of the API alone")
        return (f"cross-fitted ({self.folds} folds): {self.routed_share:.1%} routed [{self.routed_low:.1%}, "
                f"{self.routed_high:.1%}], quality {self.quality:.3f} [{self.quality_low:.3f}, "
                f"{self.quality_high:.3f}] (incumbent {self.incumbent_quality:.3f}), {cost}; hybrid - incumbent "
                f"{self.difference:+.3f}, {self.confidence:.0%} bounds [{self.lower_bound:+.3f}, "
                f"{self.upper_bound:+.3f}]: {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN and infinities as None; the per-case routing as a list of routed case ids)."""
        def number(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        skip = {"fold", "routed", "thresholds"}
        out = {k: number(v) for k, v in vars(self).items() if k not in skip}
        out["thresholds"] = [None if t is None else number(float(t)) for t in self.thresholds]
        out["fold_rules"] = ["everything (no threshold)" if t is None else _threshold_label(t)
                             for t in self.thresholds]
        out["routed_cases"] = [str(c) for c in self.routed.index[self.routed.to_numpy()]]
        out["too_thin"] = self.too_thin
        out["holds"] = self.holds
        return out


def crossfit(frame: pd.DataFrame, signal: str, policy: GateSpec, folds: int = FOLDS) -> CrossFit:
    """The cascade by k-fold cross-fitting: the cases are dealt into min(`folds`, cases) folds (`assign_folds`,
    seeded by `policy.seed`); each fold's cases are routed at the threshold `recommend`'s rule picks on the other
    folds' cases (the cheapest whose hybrid passes the score test at `policy.margin`), or all to the API when no
    threshold short of routing everything passes there (counted in `folds_without_threshold`). Every case is so
    routed exactly once, by a threshold not chosen on it, and the figures are computed from that routing:

    - quality: the mean per-case metric, with a Wilson interval for 0/1 metrics, Student's t otherwise;
    - routed share, with a Wilson interval;
    - API cost per case (USD, unknown costs filled with the mean known one) with the paired score-test interval
      of `harness.paired` applied to the per-case costs scaled into [0, 1] by the largest (it does not collapse
      to a point when every case costs the same or none is routed, as Student's t would); the savings are the
      share of the API-alone cost of the same cases saved, at the interval's ends (the API-alone cost taken as
      known);
    - non-inferiority of the cross-fitted hybrid against the incumbent: the paired score test's verdict, bounds
      and, when the evidence is too thin, `cases_needed` (see `CrossFit`).

    Cross-fitting makes the per-case figures depend on the other folds' cases, so the intervals are approximate
    (valid as the folds grow, as in Chernozhukov et al. 2018); they are not flattered by the choice of threshold.
    """
    if folds < 2:
        raise HarnessError(f"cross-fitting needs at least 2 folds, not {folds}")
    n = len(frame)
    conf = _confidence(frame, signal)
    valid = frame["valid"].to_numpy(dtype=bool)
    cand, inc = _metric(frame)
    k = min(folds, n) if n >= 2 else 0
    fold = assign_folds(n, k, policy.seed) if k else np.zeros(n, dtype=int)
    routed = np.ones(n, dtype=bool)
    thresholds: list[float | None] = []
    for j in range(k):
        train, test = fold != j, fold == j
        pick = _pick(valid[train], conf[train], cand[train], inc[train], policy.margin, policy.confidence)
        if pick is not None and pick == np.inf:
            pick = None  # routing everything is the API alone, not a threshold
        thresholds.append(pick)
        if pick is not None:
            routed[test] = _routing(valid[test], conf[test], np.array([pick]))[0]
    series = pd.Series(routed, index=frame["case_id"], name="routed")
    nan = float("nan")
    if k == 0:
        return CrossFit(
            signal=signal, folds=0, seed=policy.seed, cases=n, margin=policy.margin, confidence=policy.confidence,
            thresholds=[], fold=fold, routed=series, folds_without_threshold=0, quality=nan, quality_low=nan,
            quality_high=nan, incumbent_quality=float(inc.mean()) if n else nan, routed_count=n, routed_share=nan,
            routed_low=nan, routed_high=nan, api_cost_per_case=nan, api_cost_low=nan, api_cost_high=nan,
            api_only_cost_per_case=nan, savings=nan, savings_low=nan, savings_high=nan, difference=nan,
            lower_bound=nan, upper_bound=nan, verdict=paired.INCONCLUSIVE, cases_needed=None,
            notes=[f"{n} case(s): not cross-fitted"],
        )
    hybrid = np.where(routed, inc, cand)
    d = hybrid - inc
    q_low, q_high = _intervals(hybrid[None, :], _binary(cand, inc))
    share = wilson_interval(int(routed.sum()), n) or (nan, nan)
    cost = _filled_costs(frame)
    api, api_low, api_high, api_only = _cost_interval(np.where(routed, cost, 0.0), cost)
    saved = [1 - x / api_only if api_only > 0 else nan for x in (api, api_high, api_low)]
    values, counts = paired.support(d)
    verdict = str(paired.verdicts(values, counts[None, :], policy.margin, policy.confidence)[0])
    lower, upper = paired.bounds(d, policy.confidence)
    without = sum(t is None for t in thresholds)
    needed = None
    if without:
        needed = _cases_for_folds(valid, conf, cand, inc, policy, k)
    elif verdict == paired.INCONCLUSIVE:
        needed = paired.cases_needed(d, policy.margin, policy.confidence)
    notes = []
    if without:
        notes.append(f"{without} of {k} folds found no threshold within the margin on their other folds' cases "
                     "and routed all their cases to the API")
    return CrossFit(
        signal=signal, folds=k, seed=policy.seed, cases=n, margin=policy.margin, confidence=policy.confidence,
        thresholds=thresholds, fold=fold, routed=series, folds_without_threshold=without,
        quality=float(hybrid.mean()), quality_low=float(q_low[0]), quality_high=float(q_high[0]),
        incumbent_quality=float(inc.mean()), routed_count=int(routed.sum()), routed_share=float(routed.mean()),
        routed_low=share[0], routed_high=share[1], api_cost_per_case=api, api_cost_low=api_low,
        api_cost_high=api_high, api_only_cost_per_case=api_only, savings=saved[0], savings_low=saved[1],
        savings_high=saved[2], difference=float(d.mean()), lower_bound=lower, upper_bound=upper, verdict=verdict,
        cases_needed=needed, notes=notes,
    )


def _cases_for_folds(valid: np.ndarray, conf: np.ndarray, cand: np.ndarray, inc: np.ndarray, policy: GateSpec,
                     k: int) -> int | None:
    """Cases for which each fold's training part, (k-1)/k of them, would show the threshold picked on all cases
    within the margin with 80% power, if its disagreement with the incumbent stays as observed; None when no
    threshold short of routing everything is within the margin even on all cases."""
    pick = _pick(valid, conf, cand, inc, policy.margin, policy.confidence)
    if pick is None or pick == np.inf:
        return None
    routed = _routing(valid, conf, np.array([pick]))[0]
    needed = paired.cases_needed(np.where(routed, 0.0, cand - inc), policy.margin, policy.confidence)
    return None if needed is None else math.ceil(needed * k / (k - 1))


def _cost_interval(spend: np.ndarray, cost: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, low, high) of the per-case API spend with a 95% paired score-test interval (the spend scaled into
    [0, 1] by the largest per-case cost), and the API-alone mean cost per case; NaN when no cost is known."""
    nan = float("nan")
    if not len(cost) or np.isnan(cost).all():
        return nan, nan, nan, nan
    mean, api_only, scale = float(spend.mean()), float(cost.mean()), float(cost.max())
    if scale <= 0:
        return mean, 0.0, 0.0, api_only
    low, high = paired.bounds(spend / scale, 0.5 + CONFIDENCE_LEVEL / 2)
    return mean, max(low, 0.0) * scale, min(high, 1.0) * scale, api_only


def oracle(frame: pd.DataFrame) -> dict[str, float]:
    """The best any signal could do, for reference: route exactly the invalid answers and the cases where the
    candidate scores below the incumbent. `routed`, `routed_share`, `quality`, `api_cost_per_case`."""
    n = len(frame)
    if n == 0:
        return {"routed": 0, "routed_share": float("nan"), "quality": float("nan"), "api_cost_per_case": float("nan")}
    cand = frame["candidate"].to_numpy(dtype=float)
    inc = frame["incumbent"].to_numpy(dtype=float)
    routed = ~frame["valid"].to_numpy(dtype=bool) | (cand < inc)
    cost = _filled_costs(frame)
    return {"routed": int(routed.sum()), "routed_share": float(routed.mean()),
            "quality": float(np.where(routed, inc, cand).mean()),
            "api_cost_per_case": float(np.where(routed, cost, 0.0).sum() / n)}


def _rows_to_show(n: int, keep: int | None) -> list[int]:
    """At most `MAX_TEXT_ROWS` row positions, evenly spread, the first, last and `keep` included."""
    if n <= MAX_TEXT_ROWS:
        return list(range(n))
    picked = {round(float(x)) for x in np.linspace(0, n - 1, MAX_TEXT_ROWS - 1)}
    if keep is not None:
        picked.add(keep)
    return sorted(picked)


def _threshold_label(value: float) -> str:
    if value == -np.inf:
        return "invalid only"
    if value == np.inf:
        return "everything"
    return f"< {value:.4g}"


def _money(per_case: float) -> str:
    return "unknown" if per_case is None or math.isnan(per_case) else f"{per_case * 1000:.2f}"


def rule_text(rec: dict[str, Any], signal: str) -> str:
    """What the recommended threshold sends to the API, in words."""
    if rec["routes_invalid_only"]:
        return "only invalid answers to the API"
    return f"to the API when {signal} < {rec['threshold']:.4g}"


def cascade_text(curve: pd.DataFrame, rec: dict[str, Any] | None, signal: str,
                 oracle_row: dict[str, float] | None = None, cross: CrossFit | None = None) -> str:
    """The curve as a terminal table (at most 15 rows, the in-sample pick marked `*`) and the recommendation,
    quoted with the cross-fitted figures of `cross` (`crossfit`): a threshold is recommended only when they hold,
    and the text says when the evidence is too thin. Without `cross` the pick's in-sample figures are quoted,
    labelled as such."""
    a = curve.attrs
    head = f"cascade on {signal}"
    if "metric" in a:
        head += f": {a['metric']} within {a['margin']:.3f} of the incumbent at {a['confidence']:.0%} confidence"
    lines = [head,
             f"  a case goes to the API when the candidate's answer is invalid or its {signal} is below the threshold",
             "  rows are in-sample (each judged on the cases it was chosen from); bounds and verdict: paired score "
             "test of hybrid - incumbent",
             f"  {'route when':<14} {'routed':>7} {'quality':>8}  {'95% interval':<15} {'lower bound':>11}  "
             f"{'verdict':<12} {'API $/1k':>9}"]
    keep = None
    if rec is not None:
        match = np.flatnonzero((curve["threshold"] == rec["threshold"]).to_numpy())
        keep = int(match[0]) if len(match) else None
    for i in _rows_to_show(len(curve), keep):
        row = curve.iloc[i]
        interval = ("" if math.isnan(row["quality_low"]) else
                    f"[{row['quality_low']:.3f}, {row['quality_high']:.3f}]")
        lines.append(f"{'*' if i == keep else ' '} {_threshold_label(row['threshold']):<14} "
                     f"{row['routed_share']:>7.1%} {row['quality']:>8.3f}  {interval:<15} "
                     f"{row['lower_bound']:>+11.3f}  {row['verdict']:<12} {_money(row['api_cost_per_case']):>9}")
    if oracle_row is not None and not math.isnan(oracle_row["routed_share"]):
        lines.append(f"  {'(oracle)':<14} {oracle_row['routed_share']:>7.1%} {oracle_row['quality']:>8.3f}  "
                     f"{'':<15} {'':>11}  {'':<12} {_money(oracle_row['api_cost_per_case']):>9}")
    if rec is None:
        lines.append("no threshold keeps quality within the margin of the incumbent")
        return "\n".join(lines)
    if rec["routes_everything"]:
        lines.append("recommended: stay on the API; only sending every case to it keeps quality within the margin")
        return "\n".join(lines)
    rule = rule_text(rec, signal)
    if cross is None:
        incumbent = f" (incumbent {a['incumbent_quality']:.3f})" if "incumbent_quality" in a else ""
        cost = _money(rec["api_cost_per_case"])
        spend = "API cost unknown" if cost == "unknown" else f"API ${cost} per 1k cases"
        lines.append(f"recommended: * route {rule}: {rec['routed_share']:.1%} of cases, quality "
                     f"{rec['quality']:.3f}{incumbent}, {spend} (in-sample: chosen and judged on the same cases)")
        return "\n".join(lines)
    chosen = f"* route {rule} (threshold chosen on all {a.get('cases', cross.cases)} cases)"
    if cross.holds:
        lines.append(f"recommended: {chosen}")
    elif cross.too_thin is not None:
        lines.append(f"too thin to recommend a threshold: {cross.too_thin}")
        lines.append(f"  in-sample pick: {chosen}")
    else:
        lines.append(f"not recommended: {chosen} is within the margin in-sample, but on cases it was not chosen on "
                     "the hybrid is shown worse than the margin allows")
    lines.append(f"  {cross.summary()}")
    lines += [f"  {note}" for note in cross.notes]
    return "\n".join(lines)
