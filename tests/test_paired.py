"""The paired score test of harness.paired: Tango's published worked examples, his closed form, the behaviour with
no disagreement, the planning rule for the cases needed (checked by simulation), and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.analysis import paired


def _pairs(wins: int, regressions: int, n: int) -> np.ndarray:
    return np.concatenate([np.ones(wins), -np.ones(regressions), np.zeros(n - wins - regressions)])


@pytest.mark.parametrize(("wins", "regressions", "n", "confidence", "expected"), [
    # Tango (1998) interval as published in R's ratesci (pairbinci tests), 95% and 90% two-sided
    (9, 3, 32, 0.975, (-0.027, 0.390)),
    (0, 1, 44, 0.95, (-0.096, 0.037)),  # Tango's own example: one discordant pair in 44
])
def test_tango_published_examples_without_the_continuity_correction(monkeypatch, wins, regressions, n, confidence,
                                                                     expected):
    monkeypatch.setattr(paired, "CONTINUITY", 0.0)
    lower, upper = paired.bounds(_pairs(wins, regressions, n), confidence)
    assert (round(lower, 3), round(upper, 3)) == expected


def _tango_closed_form(b: float, c: float, n: float, d0: float) -> float:
    """Tango (1998) eq. for the score statistic: b wins, c regressions, the restricted MLE of the regression
    probability from its quadratic."""
    a_, b_, c_ = 2 * n, -b - c + (2 * n - b + c) * d0, -c * d0 * (1 - d0)
    q = (math.sqrt(b_ * b_ - 4 * a_ * c_) - b_) / (2 * a_)
    return (b - c - n * d0) / math.sqrt(n * (2 * q + d0 * (1 - d0)))


def test_bounded_differences_reduce_to_tangos_statistic_on_pass_fail(monkeypatch):
    monkeypatch.setattr(paired, "CONTINUITY", 0.0)
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(5, 400))
        b, c = (int(x) for x in rng.multinomial(n, [0.1, 0.15, 0.75])[:2])
        d0 = float(rng.uniform(-0.3, 0.2))
        counts = np.array([[c, n - b - c, b]], dtype=float)
        z = paired.score_z(np.array([-1.0, 0.0, 1.0]), counts, d0)[0]
        assert z == pytest.approx(_tango_closed_form(b, c, n, d0), rel=1e-7, abs=1e-9)


def test_no_disagreement_still_has_an_interval():
    """A suite where both sides agree on every case is not proof of equality: the interval narrows with size."""
    widths = []
    for n in (20, 100, 1000):
        lower, upper = paired.bounds(np.zeros(n), 0.95)
        assert lower < 0 < upper and lower == pytest.approx(-upper)
        widths.append(upper)
    assert widths[0] > 0.1 > widths[1] > widths[2] > 0
    assert paired.verdicts(*_support(np.zeros(20)), 0.02, 0.95)[0] == "inconclusive"
    assert paired.verdicts(*_support(np.zeros(1000)), 0.02, 0.95)[0] == "pass"


def _support(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, counts = paired.support(d)
    return values, counts[None, :]


def test_the_verdict_agrees_with_the_bounds():
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(10, 300))
        d = rng.choice([-1.0, -0.5, 0.0, 0.0, 0.0, 0.25, 1.0], size=n)
        lower, upper = paired.bounds(d, 0.95)
        verdict = paired.verdicts(*_support(d), 0.05, 0.95)[0]
        expected = "pass" if lower > -0.05 else "fail" if upper < -0.05 else "inconclusive"
        assert verdict == expected or min(abs(lower + 0.05), abs(upper + 0.05)) < 1e-6


def test_cases_needed_gives_the_promised_power():
    """Suites of the size `cases_needed` names, drawn with the observed shares, pass about 80% of the time."""
    d = _pairs(6, 6, 200)  # 6% disagreement, no difference observed
    needed = paired.cases_needed(d, 0.05, 0.95)
    assert needed is not None and needed > 200
    rng = np.random.default_rng(9)
    counts = rng.multinomial(needed, [0.03, 0.94, 0.03], size=4000).astype(float)
    power = float(np.mean(paired.verdicts(np.array([-1.0, 0.0, 1.0]), counts, 0.05, 0.95) == "pass"))
    assert 0.75 <= power <= 0.9
    # a difference already beyond the margin: no number of such cases would pass
    assert paired.cases_needed(_pairs(0, 20, 200), 0.05, 0.95) is None
    assert paired.cases_needed(np.array([]), 0.05, 0.95) is None


def test_an_empty_suite_is_inconclusive_and_out_of_range_values_are_refused():
    values = np.array([-1.0, 1.0])
    assert paired.verdicts(values, np.zeros((1, 2)), 0.02, 0.95)[0] == "inconclusive"
    assert all(math.isnan(x) for x in paired.bounds(np.array([]), 0.95))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        paired.support(np.array([0.5, 2.0]))
