"""Anytime-valid non-inferiority of paired per-case differences, for a run that stops as soon as it is decided.

`harness run --until-decided` sends a suite's cases in a seeded random order and, as each case gets both the
candidate's and the incumbent's answer, asks the migration gate's question again: is the mean of the per-case
differences d = candidate metric - incumbent metric (in [-1, 1]) shown to be above -margin (`pass`), below it
(`fail`), or neither yet (`inconclusive`)? The fixed-sample gate (harness.analysis.paired) answers it once, at the
end; checked after every case it would be wrong far more often than its level says. This test holds at every
number of cases at once, so the run may look after each case and stop at the first verdict.

The method is testing by betting (Shafer & Vovk 2019, "Game-Theoretic Foundations for Probability and Finance";
Waudby-Smith & Ramdas 2024, "Estimating means of bounded random variables by betting", JRSS-B 86(1): 1-27). Map
each difference to x = (d + 1) / 2 in [0, 1]; the margin's null value is mu0 = (1 - margin) / 2. A gambler who
bets the fraction lambda on x - mu0 at every case holds, after n cases,

    K_n(lambda) = prod_i (1 + lambda (x_i - mu0)).

For 0 <= lambda <= 1/mu0 every factor is nonnegative and has mean at most 1 when E[x] <= mu0, whatever the
distribution of x on [0, 1] (scores included, not only -1/0/+1), so K_n is a nonnegative supermartingale, and so
is any average of such wealths over a fixed set of bets. By Ville's inequality the probability that it ever reaches
1/alpha is at most alpha. Here:

- `pass`: the average wealth over the bets lambda_k = f_k / mu0 reaches 1/alpha (H0: mean d <= -margin rejected);
- `fail`: the average over lambda_k = -f_k / (1 - mu0) reaches 1/alpha (H0: mean d >= -margin rejected);
- alpha = 1 - confidence on each side: the gate's own one-sided level. A candidate exactly at the margin passes,
  ever, with probability at most alpha, and fails, ever, with probability at most alpha (tests/
  test_paired_sequential.py checks both by simulation). The two cannot happen at once: by Jensen's inequality each
  constant bet's wealth exceeds 1 only when the mean of x lies on its side of mu0.

`f_k` is a fixed grid of fractions of the largest bet, `FRACTIONS`: GRID_SIZE values spaced geometrically from
SMALLEST_BET to LARGEST_BET. A product of constant bets, and an average of such products, depends only on the
multiset of x: the verdict can be recomputed from stored answers in any order, and for pass/fail metrics from
three counts (regressions, ties, wins) in O(grid). Log-wealths are summed in fixed point (each case's log-factor
rounded down to a multiple of 2^-32, held as int64), so the sum is exact and the same in any order: the verdict
on a set of cases cannot depend on the order they came in, and `paired_crossing_times` agrees with
`paired_sequential_verdict` on every prefix to the last bit. Rounding down only lowers the wealth, so validity is
kept; it costs under 1e-6 of log-wealth over a thousand cases. The average over the grid is taken with a
log-sum-exp.

The grid was chosen by simulating the mean number of cases to a verdict (pass/fail metric), as a ratio to the best
grid tried on each scenario, over two sets at 95%: 18 scenarios of up to 2,000 cases (200 paths each, undecided
paths counted at 2,000): margins 0.02, 0.05 and 0.10 with true differences 0 (5% and 30% of cases discordant),
+margin (30%), -2 margin (5% and 30%) and -margin - 0.10 (50%); and 5 hard ones of up to 10,000 cases (100 paths):
(margin, difference, discordant) = (0.02, 0, 30%), (0.01, 0, 20%), (0.02, -0.04, 50%), (0.05, 0, 60%), (0.02,
+0.01, 30%). Ratios, mean / worst over the set:

    bets, spacing, smallest-largest            up to 2,000 cases    hard, up to 10,000
    10 geometric, 0.05-0.95 (chosen)           1.17 / 1.29          1.03 / 1.04
    20 geometric, 0.05-0.95                    1.16 / 1.28          1.02 / 1.03
    5 geometric, 0.05-0.95                     1.19 / 1.31          1.04 / 1.06
    10 geometric, 0.05-0.75                    1.18 / 1.31          1.01 / 1.04
    5 geometric, 0.10-0.75                     1.12 / 1.23          1.11 / 1.19
    5 geometric, 0.20-0.75                     1.08 / 1.17          1.93 / 3.71
    20 geometric, 0.01-0.95                    1.28 / 1.42          1.10 / 1.14
    20 linear, 0.0475-0.95                     1.12 / 1.30          -
    one bet, 0.5                               1.61 / 3.42          -
    one bet, 0.25                              1.22 / 1.85          -

The smallest bet decides what can be decided at all: a constant bet f only gains when f is below about 2 (mean d +
margin) / (share of cases discordant), so with 0.05 a true difference closer to -margin than 2.5% of the discordant
share (0.75 points at 30% discordant) is never decided, and the bounds stop narrowing at that width. Grids that
start at 0.1 or 0.2 are faster on easy cases and up to 1.4 and 3.7 times slower on the hard ones (0.05 margin, equal
candidate, 60% discordant: 1,691 cases for the chosen grid, 6,032 for 0.2-0.75, where many paths never decide);
a grid from 0.01 decides smaller gaps but takes about 10% more cases on everything else. Twenty bets instead of ten
gain about 1% for twice the work; a single bet is fast only where it happens to fit. Examples with the chosen grid:
an equal candidate against a 0.05 margin, 5% discordant, 217 cases (best tried 173); 0.12 worse against 0.02, 50%
discordant, 368 (best 319); equal against 0.02, 30% discordant, 4,804 (best 4,754).

The anytime-valid bounds (`low`, `high`) are the set of mean differences mu that neither side's wealth, with mu in
place of -margin (and the grid scaled to it), has rejected: found with brentq on each side, where the wealth is
monotone in mu. They are for display; the verdict comes from the wealth at the margin itself, and agrees with
them: `pass` when low >= -margin, `fail` when high <= -margin (to brentq's tolerance, 1e-10).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from harness.analysis.sequential import FAIL, INCONCLUSIVE, PASS

GRID_SIZE = 10  # bets in the average, each side
SMALLEST_BET = 0.05  # fractions of the largest bet that keeps every factor nonnegative (1/mu0 or 1/(1 - mu0))
LARGEST_BET = 0.95
FRACTIONS = np.geomspace(SMALLEST_BET, LARGEST_BET, GRID_SIZE)
FRACTIONS.flags.writeable = False
_SCALE = 2.0**32  # log-factors are held as int64 multiples of 1/_SCALE
_SLACK = 1e-9  # paired_crossing_times skips cells whose best single bet is this far below the threshold
_EDGE = 1e-12  # the bounds' search stays this far inside (0, 1) on the x scale
_XTOL = 1e-10  # brentq's absolute tolerance on a bound (x scale: 2e-10 on the difference)
_TOLERANCE = 1e-9  # a difference this far outside [-1, 1] is rounding, and clipped
_CHUNK = 4_000_000  # paired_crossing_times holds at most this many (bet, path, step) cells at once


@dataclass(frozen=True)
class PairedSequential:
    """The anytime-valid verdict on paired differences after `n` cases (see `paired_sequential_verdict`)."""

    n: int  # paired cases seen
    mean: float | None  # mean difference candidate - incumbent (None when n == 0)
    low: float  # anytime-valid lower bound on the mean difference (-1.0 when n == 0)
    high: float  # upper bound (1.0 when n == 0)
    margin: float
    confidence: float
    verdict: str  # "pass" (shown no more than margin worse), "fail" (shown more than margin worse), "inconclusive"
    regressions: int  # cases with d < 0
    wins: int  # cases with d > 0

    def describe(self) -> str:
        """One line for a person, e.g. "candidate -0.8 points vs incumbent (anytime 95% bounds -4.0 to +2.3, n=400,
        9 regressions, 6 wins): pass, within the 5.0-point margin"."""
        margin = f"{100 * self.margin:.1f}-point margin"
        if self.mean is None:
            return f"no paired cases yet (n=0): inconclusive against the {margin}"
        head = (
            f"candidate {_points(self.mean)} points vs incumbent (anytime {100 * self.confidence:g}% bounds "
            f"{_points(self.low)} to {_points(self.high)}, n={self.n:,}, {_plural(self.regressions, 'regression')}"
            f", {_plural(self.wins, 'win')})"
        )
        if self.verdict == PASS:
            return f"{head}: pass, within the {margin}"
        if self.verdict == FAIL:
            return f"{head}: fail, worse than the {margin} allows"
        return f"{head}: inconclusive: not yet shown within or beyond the {margin}"


def paired_sequential_verdict(diffs: ArrayLike, margin: float, confidence: float = 0.95) -> PairedSequential:
    """The anytime-valid verdict on per-case differences (candidate - incumbent, each in [-1, 1]) against `margin`,
    safe to ask after every case: testing by betting (Waudby-Smith & Ramdas 2024), see the module doc.

    `pass` when the candidate is shown to be no more than `margin` worse than the incumbent, `fail` when shown to be
    more than `margin` worse, else `inconclusive`; a candidate exactly at the margin gets either wrong verdict, at any
    number of cases, with probability at most 1 - confidence. The verdict depends only on the multiset of
    differences (not their order). low and high are the anytime-valid bounds on the mean difference. Differences
    within 1e-9 outside [-1, 1] are taken as rounding and clipped. Raises ValueError for differences that are not a
    1-D sequence of numbers in [-1, 1] (NaN included), a margin outside [0, 1) or confidence outside (0.5, 1)."""
    _check_margin(margin)
    _check_confidence(confidence)
    d = _differences(diffs, 1)
    values, counts = np.unique(d, return_counts=True)
    return _verdict(values, counts.astype(np.int64), margin, confidence)


def paired_sequential_counts(
    regressions: int, ties: int, wins: int, margin: float, confidence: float = 0.95
) -> PairedSequential:
    """`paired_sequential_verdict` for a pass/fail metric from its three counts: cases the candidate lost (d = -1),
    tied (d = 0) and won (d = +1). O(grid), and identical to the verdict on the differences themselves. Raises
    ValueError for a count that is not a whole number >= 0, a margin outside [0, 1) or confidence outside (0.5,
    1)."""
    _check_margin(margin)
    _check_confidence(confidence)
    for name, value in (("regressions", regressions), ("ties", ties), ("wins", wins)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, not {value}")
    values = np.array([-1.0, 0.0, 1.0])
    counts = np.array([regressions, ties, wins], dtype=np.int64)
    keep = counts > 0
    return _verdict(values[keep], counts[keep], margin, confidence)


def paired_crossing_times(diffs: np.ndarray, margin: float, confidence: float = 0.95) -> np.ndarray:
    """When each path of differences first gets a verdict from `paired_sequential_verdict`: for simulation and replay.

    `diffs` is a 2-D array (paths x steps) of differences in [-1, 1]. Vectorised over cumulative sums of each bet's
    log-factors (the same fixed-point sums as the verdict, so it agrees with `paired_sequential_verdict` on every
    prefix exactly), in chunks of paths. Returns an int array of shape (paths, 2): [step, sign] with step the first
    1-based step at which the verdict is not inconclusive and sign +1 for pass, -1 for fail; [0, 0] for a path that
    reaches no verdict. Raises ValueError for an array that is not 2-D or holds a difference outside [-1, 1] (NaN
    included), a margin outside [0, 1) or confidence outside (0.5, 1)."""
    _check_margin(margin)
    _check_confidence(confidence)
    values = _differences(diffs, 2)
    paths, steps = values.shape
    result = np.zeros((paths, 2), dtype=np.int64)
    if values.size == 0:
        return result
    mu0 = (1 - margin) / 2
    threshold = -math.log(1 - confidence)
    screen = (threshold - _SLACK) * _SCALE  # below this, no average of the bets can reach the threshold
    rows = max(1, _CHUNK // (steps * GRID_SIZE))
    for start in range(0, paths, rows):
        block = values[start : start + rows]
        unique, inverse = np.unique(block, return_inverse=True)
        inverse = inverse.reshape(block.shape)
        first = []  # per side: the first decided 0-based step of each path, `steps` for none
        for bets in (FRACTIONS / mu0, -FRACTIONS / (1 - mu0)):
            wealth = np.cumsum(_log_factors(unique, bets, mu0)[:, inverse], axis=2)  # bets x paths x steps
            path, step = np.nonzero(wealth.max(axis=0) >= screen)
            decided = _log_wealth(wealth[:, path, step]) >= threshold
            side = np.full(len(block), steps, dtype=np.int64)
            np.minimum.at(side, path[decided], step[decided])
            first.append(side)
        passed, failed = first
        step = np.minimum(passed, failed)
        reached = step < steps
        result[start : start + rows, 0] = np.where(reached, step + 1, 0)
        result[start : start + rows, 1] = np.where(reached, np.where(passed < failed, 1, -1), 0)
    return result


def _verdict(values: np.ndarray, counts: np.ndarray, margin: float, confidence: float) -> PairedSequential:
    """The verdict from the distinct differences `values` and how often each occurs (`counts`, int64)."""
    n = int(counts.sum())
    if n == 0:
        return PairedSequential(0, None, -1.0, 1.0, margin, confidence, INCONCLUSIVE, 0, 0)
    mu0 = (1 - margin) / 2
    threshold = -math.log(1 - confidence)
    verdict = INCONCLUSIVE
    if _log_wealth(_log_factors(values, FRACTIONS / mu0, mu0) @ counts) >= threshold:
        verdict = PASS
    elif _log_wealth(_log_factors(values, -FRACTIONS / (1 - mu0), mu0) @ counts) >= threshold:
        verdict = FAIL
    mean = math.fsum((values * counts).tolist()) / n
    low, high = _bounds(values, counts, mean, threshold)
    regressions, wins = int(counts[values < 0].sum()), int(counts[values > 0].sum())
    return PairedSequential(n, mean, low, high, margin, confidence, verdict, regressions, wins)


def _log_factors(values: np.ndarray, bets: np.ndarray, mu0: float) -> np.ndarray:
    """log(1 + bet (x - mu0)) for every bet (rows) and difference (columns, x = (d + 1) / 2), rounded down to a
    multiple of 1/_SCALE and held as int64 counts of it: sums of them are exact in any order."""
    x = (np.ascontiguousarray(values, dtype=float) + 1) / 2
    return np.floor(np.log1p(bets[:, None] * (x[None, :] - mu0)) * _SCALE).astype(np.int64)


def _log_wealth(sums: np.ndarray) -> np.ndarray:
    """log of the average wealth over the bets: `sums` holds each bet's log-wealth in units of 1/_SCALE along its
    first axis. A log-sum-exp, with the bets added one at a time so that every caller rounds alike."""
    top = sums.max(axis=0)
    total = np.zeros(np.shape(top))
    for row in sums:
        total = total + np.exp((row - top) / _SCALE)
    return top / _SCALE + np.log(total) - math.log(len(sums))


def _bounds(values: np.ndarray, counts: np.ndarray, mean: float, threshold: float) -> tuple[float, float]:
    """(low, high): the ends of the set of mean differences neither side's wealth rejects, on the x scale c = (mu +
    1) / 2 with the bets scaled to c. The pass side's wealth falls as c rises, the fail side's rises."""
    from scipy.optimize import brentq  # scipy takes a second to import: only when this is computed

    centre = (mean + 1) / 2

    def rises(c: float) -> float:  # the pass side's excess over the threshold, against mean difference 2c - 1
        return float(_log_wealth(_log_factors(values, FRACTIONS / c, c) @ counts)) - threshold

    def falls(c: float) -> float:
        return float(_log_wealth(_log_factors(values, -FRACTIONS / (1 - c), c) @ counts)) - threshold

    low = 0.0 if centre <= _EDGE or rises(_EDGE) < 0 else brentq(rises, _EDGE, centre, xtol=_XTOL)
    high = 1.0 if centre >= 1 - _EDGE or falls(1 - _EDGE) < 0 else brentq(falls, centre, 1 - _EDGE, xtol=_XTOL)
    return max(-1.0, 2 * float(low) - 1), min(1.0, 2 * float(high) - 1)


def _differences(diffs: ArrayLike, ndim: int) -> np.ndarray:
    """`diffs` as a float array of `ndim` dimensions, checked to lie in [-1, 1] and clipped to it."""
    try:
        d = np.asarray(diffs, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"differences must be numbers in [-1, 1]: {error}") from None
    if d.ndim != ndim:
        shape = "a 1-D sequence" if ndim == 1 else "a 2-D array (paths x steps)"
        raise ValueError(f"differences must be {shape}, not {d.ndim}-D")
    if d.size and np.isnan(d).any():
        raise ValueError("differences must be numbers in [-1, 1], not NaN: a case without both answers has none")
    if d.size and (d.min() < -1 - _TOLERANCE or d.max() > 1 + _TOLERANCE):
        raise ValueError(
            f"differences must lie in [-1, 1] (candidate - incumbent of metrics in [0, 1]), found "
            f"{d.min():g} to {d.max():g}"
        )
    return np.clip(d, -1.0, 1.0)


def _points(x: float) -> str:
    """A difference in points (hundredths), signed, one decimal."""
    text = f"{100 * x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _check_margin(margin: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise ValueError(
            f"margin must lie in [0, 1) (how much worse the candidate may be, such as 0.02), not {margin!r}"
        )
    if margin >= 1:
        raise ValueError(
            f"a margin of {margin!r} makes the question trivial: a mean difference is never below -1, "
            f"so every candidate is within it; use a margin below 1 (such as 0.02)"
        )


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0.5 and 1 (such as 0.95), not {confidence!r}")
