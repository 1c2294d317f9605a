"""Anytime-valid verdicts on a disagreement rate, for a gate that looks after every request. Pure functions.

A shadow proxy mirrors production requests to a candidate and records, per request, whether its answer disagrees
with the incumbent's: a Bernoulli outcome (1 = disagreement, 0 = agreement) with unknown rate p. Against the gate's
non-inferiority margin m it asks, again and again as traffic flows, whether p is already shown below m (`pass`),
above m (`fail`), or neither (`inconclusive`). A fixed-sample interval checked after every request would be wrong
far more often than its level says; a confidence sequence holds at every sample size at once, so the proxy may
look as often as it likes and stop at the first verdict (or at any time it chooses from the data).

The sequence is Robbins' beta-binomial mixture martingale (Robbins 1970, "Statistical methods related to the law of
the iterated logarithm", Ann. Math. Statist. 41: 1397-1409; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49: 1055-1080, the beta-binomial mixture). With S
disagreements in n requests and a Beta(a, b) mixing distribution,

    M_n(p) = B(a + S, b + n - S) / B(a, b) / (p^S (1 - p)^(n - S))

is a nonnegative martingale with mean 1 when the rate is p, so by Ville's inequality P(M_n(p) >= 1/alpha for some
n) <= alpha. The confidence sequence is {p : M_n(p) < 1/alpha}, an interval around S/n (log M_n is convex in p),
found with `scipy.optimize.brentq` on each side; all of it is computed in logs (`scipy.special.betaln`).

Verdicts at level `confidence` (alpha = 1 - confidence) come straight from the margin, in O(1): M_n(m) >= 1/alpha
says m has left the interval, on the side S/n is not on: `pass` when S/n < m (the whole interval is below the
margin), `fail` when S/n > m. A rate exactly at the margin ends up in either wrong verdict, together, with
probability at most alpha however long the traffic runs (tests/test_sequential.py checks this by simulation).

The mixing distribution does not affect validity, only how soon a verdict comes. It is placed where decisions are
made: mean at the margin, Beta(1/2, (1 - m) / (2 m)), i.e. a = m k, b = (1 - m) k with prior weight k = 1/(2 m),
the number of requests that hold half a disagreement at the margin (`PRIOR_SHAPE` is a). Chosen by simulation of
the mean number of requests to a verdict over margins 0.01, 0.02, 0.05 and 0.10, true rates 0, m/2, 2m and 3m, at
95% and 90%: it came within 6% of the best prior of each case on average (worst case 23-26% above, at rate 0 with
a 1% margin: 410 requests at 95% against 334 for k = 10, an easy case). A fixed weight k = 10 was 9% above the best
on average and 16-18% slower than this on the hardest cases of a 1% margin (true rate m/2: 3,119 requests against
2,624; 2m: 1,555 against 1,321); k = 1/(4 m), 0.35/m and 1/m did no better on average. In a coarser first run a
heavier prior (k = 200) concentrated on the margin itself, where M_n stays near 1, and was up to 3.8 times slower;
a lighter one (k = 1) spread its mass over rates no gate asks about and was up to 2.9 times slower. Without a
margin the default is Jeffreys' Beta(1/2, 1/2), the same rule at m = 1/2.

How much traffic to expect: requests to a verdict (simulated with `crossing_times`, 2,000 paths per row, seed 2024;
at rate 0 the count is the same on every path). All paths reached the right verdict at 95%; at 90%, one path in
2,000 at rate 2m passed instead.

    margin  true rate   95%: mean (median, 90th percentile)   90%: mean
    2%      0             204                                   165
    2%      1% (m/2)    1,298 (1,078, 2,628)                  1,044
    2%      4% (2m)       621 (539, 1,199)                      535
    5%      0              81                                    66
    5%      2.5% (m/2)    515 (459, 995)                        409
    5%      10% (2m)      245 (208, 479)                        201
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
PRIOR_SHAPE = 0.5  # a of the Beta(a, b) mixing distribution; b puts its mean at the margin
_XTOL = 1e-15  # brentq's absolute tolerance on an interval end (its relative tolerance is at its minimum)
_TINY = 5e-324  # the smallest positive double: the bracket's outer end
_CHUNK = 2_000_000  # crossing_times evaluates at most this many (path, step) cells at once


@dataclass(frozen=True)
class Sequential:
    """The anytime-valid verdict on a disagreement rate after `n` outcomes (see `sequential_verdict`)."""

    n: int  # outcomes seen
    failures: int  # disagreements (1s)
    rate: float | None  # failures / n, None when n == 0
    low: float  # confidence sequence lower end (0.0 when n == 0)
    high: float  # upper end (1.0 when n == 0)
    margin: float
    confidence: float
    verdict: str  # "pass" (high < margin), "fail" (low > margin), "inconclusive"

    def describe(self) -> str:
        """One line for a person, e.g. "disagreement 1.2% (anytime 95% interval 0.3%-4.1%, n=812): pass, below the
        2.0% margin"."""
        level, margin = f"{100 * self.confidence:g}%", _percent(self.margin)
        if self.rate is None:
            return f"no outcomes yet (n=0): inconclusive against the {margin} margin"
        head = (f"disagreement {_percent(self.rate)} (anytime {level} interval {_percent(self.low)}-"
                f"{_percent(self.high)}, n={self.n:,})")
        if self.verdict == PASS:
            return f"{head}: pass, below the {margin} margin"
        if self.verdict == FAIL:
            return f"{head}: fail, above the {margin} margin"
        return f"{head}: inconclusive: the interval still straddles the {margin} margin"


def confidence_sequence(failures: int, n: int, confidence: float = 0.95, prior: tuple[float, float] | None = None,
                        margin: float | None = None) -> tuple[float, float]:
    """(low, high): the anytime-valid interval for a Bernoulli rate after `failures` 1s in `n` outcomes.

    It is the set {p : M_n(p) < 1/alpha} of Robbins' beta-binomial mixture martingale (Robbins 1970; Howard et al.
    2021), alpha = 1 - confidence: whatever the rate, the probability that it ever falls outside the interval, at any
    n, is at most alpha. The ends are found with brentq on each side of failures / n; low is 0.0 when failures == 0,
    high is 1.0 when failures == n, and (0.0, 1.0) when n == 0.

    `prior` is the Beta(a, b) mixing distribution; without it the prior centred on `margin` that
    `sequential_verdict` uses, Beta(1/2, (1 - margin) / (2 margin)), or Jeffreys' Beta(1/2, 1/2) without a margin.
    Any prior gives a valid sequence; the one centred on the margin narrows fastest around it.
    Raises ValueError for negative counts, failures > n, confidence outside (0.5, 1), a margin outside (0, 1) or a
    prior parameter that is not positive."""
    _check_counts(failures, n)
    _check_confidence(confidence)
    if margin is not None:
        _check_margin(margin)
    if prior is None:
        a, b = _prior(0.5 if margin is None else margin)
    else:
        a, b = (float(x) for x in prior)
        if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"the prior's Beta(a, b) parameters must be positive and finite, not {prior}")
    if n == 0:
        return 0.0, 1.0
    return _bounds(failures, n, a, b, -math.log(1 - confidence))


def sequential_verdict(failures: int, n: int, margin: float, confidence: float = 0.95) -> Sequential:
    """The anytime-valid verdict on a disagreement rate against `margin`, safe to ask after every outcome.

    Robbins' beta-binomial mixture martingale (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021) with the
    mixing distribution Beta(1/2, (1 - margin) / (2 margin)), mean at the margin. With alpha = 1 - confidence:
    `pass` when log M_n(margin) >= log(1/alpha) and failures / n < margin, `fail` when that and failures / n >
    margin, else `inconclusive`. The verdict is O(1) (it evaluates M_n at the margin only) and agrees with the
    interval: pass iff high < margin, fail iff low > margin. A rate exactly at the margin gets either verdict, ever,
    with probability at most alpha. low and high are `confidence_sequence(failures, n, confidence,
    margin=margin)`, tens of microseconds. Raises ValueError for negative counts, failures > n, a margin outside
    (0, 1) or confidence outside (0.5, 1)."""
    _check_counts(failures, n)
    _check_margin(margin)
    _check_confidence(confidence)
    if n == 0:
        return Sequential(0, 0, None, 0.0, 1.0, margin, confidence, INCONCLUSIVE)
    a, b = _prior(margin)
    threshold = -math.log(1 - confidence)
    log_mixture = _log_mixture(failures, n, a, b)
    rate = failures / n
    verdict = INCONCLUSIVE
    if _log_ratio(margin, failures, n, log_mixture) >= threshold:
        verdict = PASS if rate < margin else FAIL if rate > margin else INCONCLUSIVE
    low, high = _bounds(failures, n, a, b, threshold, log_mixture)
    return Sequential(int(n), int(failures), rate, low, high, margin, confidence, verdict)


def crossing_times(outcomes: np.ndarray, margin: float, confidence: float = 0.95) -> np.ndarray:
    """When each path of outcomes first gets a verdict from `sequential_verdict`: for simulation and replay.

    `outcomes` is a 2-D array of 0/1 (paths x steps, 1 = disagreement). Vectorised over cumulative sums (the same
    beta-binomial mixture test, Robbins 1970, evaluated at every step of every path), it returns an int array of
    shape (paths, 2): [step, sign] with step the first 1-based step at which the verdict is not inconclusive and
    sign +1 for pass, -1 for fail; [0, 0] for a path that reaches no verdict. Raises ValueError for an array that is
    not 2-D or holds anything but 0 and 1, a margin outside (0, 1) or confidence outside (0.5, 1)."""
    from scipy.special import betaln  # scipy takes a second to import: only when this is computed

    _check_margin(margin)
    _check_confidence(confidence)
    values = np.asarray(outcomes)
    if values.ndim != 2:
        raise ValueError(f"outcomes must be a 2-D array (paths x steps), not {values.ndim}-D")
    if values.size and not ((values == 0) | (values == 1)).all():
        raise ValueError("outcomes must hold only 0 (agreement) and 1 (disagreement)")
    paths, steps = values.shape
    result = np.zeros((paths, 2), dtype=np.int64)
    if values.size == 0:
        return result
    a, b = _prior(margin)
    threshold = -math.log(1 - confidence)
    n = np.arange(1, steps + 1, dtype=float)
    log_m, log_rest = math.log(margin), math.log1p(-margin)
    log_prior = float(betaln(a, b))
    rows = max(1, _CHUNK // steps)
    for start in range(0, paths, rows):
        s = np.cumsum(values[start:start + rows], axis=1, dtype=np.int64).astype(float)
        log_ratio = betaln(a + s, b + n - s) - log_prior - s * log_m - (n - s) * log_rest
        rate = s / n
        decided = (log_ratio >= threshold) & (rate != margin)
        reached = decided.any(axis=1)
        first = decided.argmax(axis=1)
        took = np.flatnonzero(reached)
        sign = np.where(rate[took, first[took]] < margin, 1, -1)
        result[start + took, 0] = first[took] + 1
        result[start + took, 1] = sign
    return result


def _prior(margin: float) -> tuple[float, float]:
    """Beta(a, b) with a = PRIOR_SHAPE and mean `margin`: weight k = a + b = PRIOR_SHAPE / margin."""
    return PRIOR_SHAPE, PRIOR_SHAPE * (1 - margin) / margin


def _log_mixture(failures: int, n: int, a: float, b: float) -> float:
    """log of the mixture likelihood, B(a + S, b + n - S) / B(a, b)."""
    from scipy.special import betaln  # scipy takes a second to import: only when this is computed

    return float(betaln(a + failures, b + n - failures) - betaln(a, b))


def _log_ratio(p: float, failures: int, n: int, log_mixture: float) -> float:
    """log M_n(p): the mixture likelihood over the likelihood at p (p in (0, 1))."""
    out = log_mixture
    if failures:  # a count of 0 drops its term, so p may be 0 or 1 there
        out -= failures * math.log(p)
    if n - failures:
        out -= (n - failures) * math.log1p(-p)
    return out


def _bounds(failures: int, n: int, a: float, b: float, threshold: float,
            log_mixture: float | None = None) -> tuple[float, float]:
    """The ends of {p : log M_n(p) < threshold}, n > 0. log M_n is convex in p with its minimum, at most 0, at S/n,
    so each end is the one root on its side."""
    from scipy.optimize import brentq  # scipy takes a second to import: only when this is computed

    if log_mixture is None:
        log_mixture = _log_mixture(failures, n, a, b)
    rate = failures / n

    def excess(p: float) -> float:
        return _log_ratio(p, failures, n, log_mixture) - threshold

    low = high = rate
    if failures > 0:
        low = 0.0 if excess(_TINY) < 0 else brentq(excess, _TINY, rate, xtol=_XTOL)
    if failures < n:
        top = math.nextafter(1.0, 0.0)
        high = 1.0 if excess(top) < 0 else brentq(excess, rate, top, xtol=_XTOL)
    return (0.0 if failures == 0 else float(low)), (1.0 if failures == n else float(high))


def _percent(x: float) -> str:
    """A rate as a percentage: one decimal from 1% up, two significant digits below."""
    if x == 0:
        return "0%"
    return f"{100 * x:.1f}%" if 100 * x >= 1 else f"{100 * x:.2g}%"


def _check_counts(failures: int, n: int) -> None:
    for name, value in (("failures", failures), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, not {value}")
    if failures > n:
        raise ValueError(f"failures ({failures}) cannot exceed the number of outcomes n ({n})")


def _check_margin(margin: float) -> None:
    if not 0 < margin < 1:
        raise ValueError(f"margin must lie strictly between 0 and 1 (a rate such as 0.02), not {margin!r}")


def _check_confidence(confidence: float) -> None:
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0.5 and 1 (such as 0.95), not {confidence!r}")
