"""Non-inferiority of paired per-case scores: a score test with correct error rates at every suite size.

The question: is the candidate's mean per-case metric at most `margin` below the incumbent's, on the same cases?
Each case gives a difference d = candidate - incumbent in [-1, 1] (metrics lie in [0, 1]). The test is Tango's
score test for the difference of paired proportions (Tango 1998, "Equivalence test and confidence interval for
the difference in proportions for the paired-sample design", Statistics in Medicine 17: 891-908), written for
any bounded difference:

- the differences are counted on their observed values plus the two bounds, -1 and +1;
- under H0 (mean difference = mu0) the variance of d is taken at the restricted maximum-likelihood estimate of
  those values' probabilities (the multinomial likelihood maximised subject to the mean being mu0, solved through
  its Lagrange multiplier as in empirical likelihood, Owen 2001, ch. 2; an unobserved bound takes the mass the
  constraint needs, so that a suite with no disagreement at all still has a variance under H0);
- Z(mu0) = (sum(d) - n mu0, moved towards 0 by a continuity correction) / sqrt(n var_H0(d)).

For pass/fail metrics (d in {-1, 0, 1}) this is exactly Tango's statistic (tests/test_paired.py checks the closed
form and the published worked examples); a correction of half a case keeps the one-sided error at or below the
nominal 5% on every suite size from 5 to 1,000 cases with up to 90% of cases disagreeing (exact enumeration of all
tables, docs/ci.md; above 90%, e.g. 12 cases that all disagree, it reaches 6.4%). For score differences the
correction is a whole case (`continuity`): with half, skewed two-point distributions passed up to 7% at the margin.
A percentile bootstrap, which this replaced, gives the interval [0, 0] when the two sides never disagree, and
passed 27-61% of candidates exactly at the margin on 20-case suites.

Three verdicts at one-sided `confidence` (z its normal quantile):
- `pass`: Z(-margin) > z, the candidate is shown to be no more than `margin` worse (non-inferiority);
- `fail`: Z(-margin) < -z, the candidate is shown to be more than `margin` worse;
- `inconclusive`: neither; the suite cannot vouch. `cases_needed` says how many paired cases would show
  non-inferiority with 80% power if the difference and disagreement stay as observed.

Every function takes a batch of suites (rows of counts over shared support values), so the simulation that
validates the gate runs the very code the gate runs.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
CONTINUITY = 0.5  # cases: the numerator of Z moves this much towards 0, for pass/fail differences (-1, 0, +1)
CONTINUITY_SCORES = 1.0  # ... and when a suite has other differences (a per-case score such as field.total)
MAX_CASES = 10_000_000  # cases_needed gives up above this
_BISECTIONS = 52  # of the Lagrange multiplier: to double precision on its interval
_BOUND_BISECTIONS = 40  # of a bound: to 2e-12


def support(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) of one suite's differences: see `support_batch`; `counts` is 1-D here."""
    values, counts = support_batch(np.asarray(diffs, dtype=float).ravel()[None, :])
    return values, counts[0]


def support_batch(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) for a batch of suites of equal size (`diffs`: suites x cases): the distinct differences
    of all of them plus the bounds -1 and +1, and how often each suite has each (the bounds may have count 0).
    Raises ValueError for a difference outside [-1, 1]."""
    d = np.atleast_2d(np.asarray(diffs, dtype=float))
    if d.size and (np.isnan(d).any() or d.min() < -1 - 1e-9 or d.max() > 1 + 1e-9):
        raise ValueError("per-case differences must lie in [-1, 1]: the metric must be a score between 0 and 1")
    d = np.clip(np.round(d, 12), -1.0, 1.0)
    values, index = np.unique(np.concatenate([d.ravel(), [-1.0, 1.0]]), return_inverse=True)
    index = index[: d.size].reshape(d.shape)
    counts = np.zeros((d.shape[0], len(values)))
    np.add.at(counts, (np.repeat(np.arange(d.shape[0]), d.shape[1]), index.ravel()), 1.0)
    return values, counts


def score_z(values: np.ndarray, counts: np.ndarray, mu0: float | np.ndarray) -> np.ndarray:
    """Z(mu0) for each suite: `values` (K,) must include -1 and +1; `counts` (suites x K) may be fractional
    (expected counts, for planning). `mu0` is a scalar or one value per suite, inside (-1, 1)."""
    v = np.asarray(values, dtype=float)
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    mu = np.clip(np.broadcast_to(np.asarray(mu0, dtype=float), (c.shape[0],)), -1 + 1e-9, 1 - 1e-9)
    n = c.sum(axis=1)
    u = v[None, :] - mu[:, None]  # suites x K
    observed = c > 0
    lo, hi = -1.0 / (1.0 - mu), 1.0 / (1.0 + mu)  # 1 + lam * u >= 0 at both bounds

    def g(lam: np.ndarray) -> np.ndarray:
        den = 1.0 + lam[:, None] * u
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(observed, c * u / den, 0.0).sum(axis=1)

    shrink = 1 - 1e-12
    at_hi = g(hi * shrink) >= 0  # the constraint needs mass on an unobserved -1
    at_lo = g(lo * shrink) <= 0  # ... on an unobserved +1
    a, b = lo * shrink, hi * shrink
    for _ in range(_BISECTIONS):  # g falls as lam rises
        mid = (a + b) / 2
        up = g(mid) > 0
        a, b = np.where(up, mid, a), np.where(up, b, mid)
    lam = np.where(at_hi, hi, np.where(at_lo, lo, (a + b) / 2))
    den = 1.0 + lam[:, None] * u
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(observed, c / (n[:, None] * den), 0.0)
    rest = np.clip(1.0 - p.sum(axis=1), 0.0, None)
    edge = np.where(at_hi, (1.0 + mu) ** 2, np.where(at_lo, (1.0 - mu) ** 2, 0.0))
    var = (p * u**2).sum(axis=1) + rest * edge
    numerator = (c * v[None, :]).sum(axis=1) - n * mu
    numerator = np.sign(numerator) * np.maximum(np.abs(numerator) - continuity(v, c), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = numerator / np.sqrt(n * var)
    return np.where(numerator == 0, 0.0, z)


def continuity(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The continuity correction of each suite: `CONTINUITY` when its differences are all -1, 0 or +1 (pass/fail),
    else `CONTINUITY_SCORES`: skewed score differences (rare large wins among frequent moderate losses) passed up
    to 7% at the margin with half a case, at most 5.0% with a whole one (exact binomial enumeration over two-point
    distributions, tests/test_gate.py)."""
    v = np.asarray(values, dtype=float)
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    off_lattice = ~np.isin(v, (-1.0, 0.0, 1.0))
    return np.where((c[:, off_lattice] > 0).any(axis=1), CONTINUITY_SCORES, CONTINUITY)


def verdicts(values: np.ndarray, counts: np.ndarray, margin: float, confidence: float) -> np.ndarray:
    """`pass`, `fail` or `inconclusive` for each suite (see the module doc); `inconclusive` for a suite of 0 cases."""
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    z = score_z(values, c, -margin)
    crit = _z(confidence)
    out = np.where(z > crit, PASS, np.where(z < -crit, FAIL, INCONCLUSIVE))
    return np.where(c.sum(axis=1) > 0, out, INCONCLUSIVE)


def bounds(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    """(lower, upper): the one-sided `confidence` bounds of the mean difference of one suite; see `bounds_batch`."""
    values, counts = support(diffs)
    lower, upper = bounds_batch(values, counts[None, :], confidence)
    return float(lower[0]), float(upper[0])


def bounds_batch(values: np.ndarray, counts: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) for each suite: the values of mu0 where Z(mu0) crosses +z and -z, z the normal quantile of
    the one-sided `confidence` (together, a 2 x confidence - 1 two-sided interval). NaN for a suite of 0 cases."""
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    crit = _z(confidence)

    def solve(target: float) -> np.ndarray:
        a, b = np.full(len(c), -1 + 1e-9), np.full(len(c), 1 - 1e-9)  # Z falls as mu0 rises
        for _ in range(_BOUND_BISECTIONS):
            mid = (a + b) / 2
            above = score_z(values, c, mid) > target
            a, b = np.where(above, mid, a), np.where(above, b, mid)
        return np.where(c.sum(axis=1) > 0, (a + b) / 2, np.nan)

    return solve(crit), solve(-crit)


def cases_needed(diffs: np.ndarray, margin: float, confidence: float, power: float = 0.8) -> int | None:
    """Paired cases that would show non-inferiority with `power`, if the mean difference and the share of each
    difference stay as observed: the smallest N whose expected counts give Z(-margin) above z_confidence plus
    z_power times the ratio of the observed standard deviation to the one under H0 (the usual sample-size rule
    for a score test, e.g. Nam 1997, Biometrics 53: 1422-1430). None when the observed difference is at or below
    -margin (more cases of the same would not pass) or when it would take over ten million cases."""
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size == 0:
        return None
    mean = float(d.mean())
    if mean <= -margin:
        return None
    values, counts = support(d)
    share = counts / counts.sum()
    sd_obs = float(d.std())
    crit, beta = _z(confidence), _z(power)

    def enough(n: float) -> bool:
        expected = share[None, :] * n
        z = float(score_z(values, expected, -margin)[0])
        # the statistic's spread under the observed distribution, relative to its spread under H0
        cc = float(continuity(values, expected)[0])
        null_sd = abs(n * (mean + margin) - cc) / z / math.sqrt(n) if z > 0 else math.inf
        ratio = sd_obs / null_sd if math.isfinite(null_sd) and null_sd > 0 else 1.0
        return z > crit + beta * ratio

    lo, hi = 1, 2
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_CASES:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def _z(p: float) -> float:
    """The standard normal quantile (the standard library's, exact to double precision: no scipy import)."""
    return NormalDist().inv_cdf(p)
