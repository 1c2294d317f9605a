"""The anytime-valid paired gate of `harness run --until-decided` (harness.analysis.anytime): its error rates when the
candidate sits exactly at the margin and the verdict is asked after every case, how soon it decides clear cases,
that the replay (`paired_crossing_times`) and the verdict agree case by case, that the verdict ignores the order of
the cases, its bounds, its line and its refusals. Simulations use seeded generators and run in seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.analysis.anytime import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    PairedSequential,
    paired_crossing_times,
    paired_sequential_counts,
    paired_sequential_verdict,
)

SIZES = (20, 100, 500, 2000)  # suite sizes: one path of 2,000 cases holds the first 20, 100 and 500
MARGINS = (0.02, 0.05, 0.10)
PATHS = 1000


def _allowance(alpha: float, paths: int) -> float:
    """Three standard errors of a share estimated from `paths` paths whose true value is alpha."""
    return 3 * math.sqrt(alpha * (1 - alpha) / paths)


def _pass_fail(rng: np.random.Generator, shape: tuple[int, int], difference: float, discordance: float) -> np.ndarray:
    """Differences of a pass/fail metric: -1, 0 or +1, with mean `difference` and `discordance` of the cases
    differing (raised to |difference| where that is too few to carry the difference)."""
    psi = max(discordance, abs(difference))
    wins, regressions = (psi + difference) / 2, (psi - difference) / 2
    u = rng.random(shape)
    return np.where(u < regressions, -1.0, np.where(u < regressions + wins, 1.0, 0.0))


def _two_point(rng: np.random.Generator, shape: tuple[int, int], margin: float, high: float, p: float) -> np.ndarray:
    """Score differences with mean exactly -margin: `high` with probability p (rare large wins), else the moderate
    loss that sets the mean, the skewed shape that strains the fixed-sample gate most."""
    low = (-margin - high * p) / (1 - p)
    assert -1 <= low <= 1
    return np.where(rng.random(shape) < p, high, low)


def _beta(rng: np.random.Generator, shape: tuple[int, int], margin: float, a: float) -> np.ndarray:
    """Score differences 2 B - 1 with B ~ Beta(a, b), b chosen so that the mean is exactly -margin."""
    b = a * (1 + margin) / (1 - margin)
    return 2 * rng.beta(a, b, shape) - 1


def _rates_by_size(crossed: np.ndarray, sizes=SIZES) -> dict[int, tuple[float, float]]:
    """(share passed, share failed) by each suite size: a path that crossed by step n decided that suite."""
    return {
        n: (
            float(np.mean((crossed[:, 1] == 1) & (crossed[:, 0] <= n))),
            float(np.mean((crossed[:, 1] == -1) & (crossed[:, 0] <= n))),
        )
        for n in sizes
    }


# --- validity: the candidate exactly at the margin, the verdict asked after every case --------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.90])
@pytest.mark.parametrize("discordance", [0.05, 0.5])
@pytest.mark.parametrize("margin", MARGINS)
def test_a_pass_fail_candidate_at_the_margin_rarely_gets_a_verdict_however_often_it_is_checked(
    margin, discordance, confidence
):
    """At mean difference -margin, pass and fail are both wrong. Ville's inequality bounds the share of paths that
    ever pass, at any of up to 2,000 looks, by alpha, and the same for fail; suites of 20, 100, 500 and 2,000 cases
    are the first cases of the same paths."""
    alpha = 1 - confidence
    rng = np.random.default_rng([int(margin * 100), int(discordance * 100), int(confidence * 100)])
    crossed = paired_crossing_times(_pass_fail(rng, (PATHS, max(SIZES)), -margin, discordance), margin, confidence)
    for n, (passed, failed) in _rates_by_size(crossed).items():
        assert passed <= alpha + _allowance(alpha, PATHS), (n, passed)
        assert failed <= alpha + _allowance(alpha, PATHS), (n, failed)
    assert set(np.unique(crossed[:, 1])) <= {-1, 0, 1}
    assert np.all((crossed[:, 0] == 0) == (crossed[:, 1] == 0))


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("shape", ["rare large wins", "rare full wins", "beta", "skewed beta"])
def test_a_score_candidate_at_the_margin_rarely_gets_a_verdict_however_often_it_is_checked(shape, margin):
    """The same for per-case scores (differences anywhere in [-1, 1]): the betting test needs only boundedness."""
    confidence, paths, alpha = 0.95, 600, 0.05
    rng = np.random.default_rng([int(margin * 100), len(shape)])
    size = (paths, max(SIZES))
    diffs = {
        "rare large wins": lambda: _two_point(rng, size, margin, 0.5, 0.1),
        "rare full wins": lambda: _two_point(rng, size, margin, 1.0, 0.03),
        "beta": lambda: _beta(rng, size, margin, 20.0),
        "skewed beta": lambda: _beta(rng, size, margin, 0.3),
    }[shape]()
    assert abs(diffs.mean() + margin) < 0.01
    crossed = paired_crossing_times(diffs, margin, confidence)
    for n, (passed, failed) in _rates_by_size(crossed).items():
        assert passed <= alpha + _allowance(alpha, paths), (n, passed)
        assert failed <= alpha + _allowance(alpha, paths), (n, failed)


def test_checking_a_fixed_sample_test_after_every_case_would_not_be_valid():
    """The simulation above can tell a valid stop rule from an invalid one: the same kind of paths, judged after
    every case by a one-sided fixed-sample z-test at 95%, pass a candidate at the margin far more often than 5%."""
    margin, paths, steps = 0.05, PATHS, max(SIZES)
    diffs = _pass_fail(np.random.default_rng(7), (paths, steps), -margin, 0.5)
    n = np.arange(1, steps + 1)
    total, squares = np.cumsum(diffs, axis=1), np.cumsum(diffs**2, axis=1)
    mean = total / n
    sd = np.sqrt(np.maximum(squares / n - mean**2, 1e-12))
    z = (mean + margin) / (sd / np.sqrt(n))
    naive = np.mean((z[:, 29:] > 1.645).any(axis=1))  # from 30 cases on, as a careful user might
    anytime = np.mean(paired_crossing_times(diffs, margin, 0.95)[:, 1] == 1)
    assert naive > 0.05 + _allowance(0.05, paths) > anytime


# --- power: clear cases are decided early ------------------------------------------------------------------------


@pytest.mark.parametrize("margin", MARGINS)
def test_a_clearly_worse_candidate_fails_after_a_fraction_of_a_500_case_suite(margin):
    rng = np.random.default_rng(int(margin * 1000))
    crossed = paired_crossing_times(_pass_fail(rng, (400, 500), -margin - 0.15, 0.5), margin)
    assert np.mean(crossed[:, 1] == -1) >= 0.95
    assert np.median(crossed[crossed[:, 1] == -1, 0]) < 250
    assert np.all(crossed[:, 1] != 1)


def test_a_candidate_equal_to_the_incumbent_with_rare_discordance_passes_before_the_end():
    margin = 0.05
    crossed = paired_crossing_times(_pass_fail(np.random.default_rng(3), (400, 500), 0.0, 0.05), margin)
    assert np.mean(crossed[:, 1] == 1) >= 0.9
    assert np.median(crossed[crossed[:, 1] == 1, 0]) < 300
    assert np.all(crossed[:, 1] != -1)


def test_a_better_score_candidate_passes_and_a_much_worse_one_fails():
    rng = np.random.default_rng(5)
    better = np.clip(rng.normal(0.05, 0.2, (200, 1000)), -1, 1)
    worse = np.clip(rng.normal(-0.2, 0.2, (200, 1000)), -1, 1)
    assert np.mean(paired_crossing_times(better, 0.05)[:, 1] == 1) >= 0.95
    assert np.mean(paired_crossing_times(worse, 0.05)[:, 1] == -1) >= 0.95


# --- exactness: replay, order, counts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("margin", "confidence"), [(0.05, 0.9), (0.0, 0.95), (0.3, 0.95)])
def test_crossing_times_agrees_with_the_verdict_case_by_case(margin, confidence):
    rng = np.random.default_rng(int(margin * 100) + 17)
    steps = 150
    pass_fail = np.vstack(
        [
            _pass_fail(rng, (1, steps), difference, discordance)
            for difference, discordance in ((0.0, 0.02), (0.0, 0.3), (-margin, 0.3), (-0.6, 0.6), (0.3, 0.3))
        ]
    )
    scores = np.clip(rng.normal([[0.05], [-margin], [-0.5]], 0.3, (3, steps)), -1, 1)
    for diffs in (pass_fail, scores):
        crossed = paired_crossing_times(diffs, margin, confidence)
        for path, (step, sign) in zip(diffs, crossed, strict=True):
            verdicts = [paired_sequential_verdict(path[:n], margin, confidence).verdict for n in range(1, steps + 1)]
            decided = [n for n, v in enumerate(verdicts, start=1) if v != INCONCLUSIVE]
            assert step == (decided[0] if decided else 0)
            assert sign == ({PASS: 1, FAIL: -1}[verdicts[step - 1]] if step else 0)
        assert len(set(crossed[:, 1])) >= 2  # the paths above reach different outcomes


def test_crossing_times_does_not_depend_on_how_the_paths_are_chunked(monkeypatch):
    from harness.analysis import anytime

    diffs = _pass_fail(np.random.default_rng(11), (50, 400), 0.0, 0.1)
    whole = paired_crossing_times(diffs, 0.05)
    monkeypatch.setattr(anytime, "_CHUNK", 1)  # one path at a time
    assert np.array_equal(paired_crossing_times(diffs, 0.05), whole)
    assert np.array_equal(paired_crossing_times(diffs[::-1], 0.05), whole[::-1])


def test_the_verdict_does_not_depend_on_the_order_of_the_cases():
    rng = np.random.default_rng(29)
    for diffs in (_pass_fail(rng, (1, 400), -0.02, 0.2)[0], np.clip(rng.normal(-0.03, 0.4, 400), -1, 1)):
        result = paired_sequential_verdict(diffs, 0.05)
        for _ in range(5):
            assert paired_sequential_verdict(rng.permutation(diffs), 0.05) == result
        assert paired_sequential_verdict(diffs.tolist(), 0.05) == result  # a list is taken as well


def test_the_counts_give_the_same_record_as_the_differences():
    rng = np.random.default_rng(31)
    seen = set()
    for _ in range(60):
        n = int(rng.integers(1, 600))
        diffs = _pass_fail(rng, (1, n), float(rng.uniform(-0.2, 0.1)), float(rng.uniform(0.01, 0.5)))[0]
        regressions, wins = int((diffs < 0).sum()), int((diffs > 0).sum())
        for margin in (0.0, 0.02, 0.1):
            result = paired_sequential_verdict(diffs, margin, 0.9)
            assert paired_sequential_counts(regressions, n - regressions - wins, wins, margin, 0.9) == result
            assert (result.n, result.regressions, result.wins) == (n, regressions, wins)
            assert result.mean == (wins - regressions) / n
            seen.add(result.verdict)
    assert seen == {PASS, FAIL, INCONCLUSIVE}


def test_a_very_large_suite_neither_overflows_nor_loses_its_verdict():
    """12 million cases, a sixth of them discordant: the bounds close in to the width the smallest bet can resolve,
    SMALLEST_BET x discordance / 2 either side (0.42 points here), and no further."""
    result = paired_sequential_counts(1_000_000, 10_000_000, 1_000_000, 0.02)
    assert result.verdict == PASS and result.mean == 0.0
    assert -0.0045 < result.low < -0.004 and 0.004 < result.high < 0.0045
    assert paired_sequential_counts(1_200_000, 10_000_000, 1_000_000, 0.01).verdict == FAIL


# --- the bounds ------------------------------------------------------------------------------------------------


def test_the_bounds_agree_with_the_verdict_and_are_where_the_margin_would_tip_it():
    """low is the margin at which the pass side's wealth reaches 1/alpha: a margin just above -low passes, just
    below does not; likewise high for fail. The verdict at the margin agrees with where the margin lies."""
    rng = np.random.default_rng(37)
    checked = 0
    for _ in range(40):
        n = int(rng.integers(5, 800))
        diffs = np.clip(rng.normal(rng.uniform(-0.3, 0.2), rng.uniform(0.05, 0.6), n), -1, 1)
        for margin in (0.0, 0.05):
            result = paired_sequential_verdict(diffs, margin)
            assert -1 <= result.low <= result.mean <= result.high <= 1
            assert (result.verdict == PASS) == (result.low >= -margin - 1e-6) or abs(result.low + margin) < 1e-6
            assert (result.verdict == FAIL) == (result.high <= -margin + 1e-6) or abs(result.high + margin) < 1e-6
        result = paired_sequential_verdict(diffs, 0.05)
        if -1 < result.low < -1e-5:
            assert paired_sequential_verdict(diffs, -result.low + 1e-6).verdict == PASS
            assert paired_sequential_verdict(diffs, -result.low - 1e-6).verdict != PASS
            checked += 1
        if -1 + 1e-5 < result.high < -1e-5:
            assert paired_sequential_verdict(diffs, -result.high - 1e-6).verdict == FAIL
            assert paired_sequential_verdict(diffs, -result.high + 1e-6).verdict != FAIL
            checked += 1
    assert checked >= 20


def test_the_bounds_narrow_as_cases_accumulate_and_widen_with_confidence():
    widths = []
    for n in (50, 200, 800, 3200):
        result = paired_sequential_counts(n // 20, n - n // 10, n // 20, 0.02)
        assert result.low < 0 < result.high
        widths.append(result.high - result.low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.05
    low90, high90 = (lambda r: (r.low, r.high))(paired_sequential_counts(10, 180, 10, 0.02, 0.90))
    low99, high99 = (lambda r: (r.low, r.high))(paired_sequential_counts(10, 180, 10, 0.02, 0.99))
    assert low99 < low90 and high90 < high99


def test_the_bounds_cover_the_true_mean_at_every_checkpoint_in_most_paths():
    rng = np.random.default_rng(41)
    paths, alpha = 150, 0.05
    covered = 0
    for _ in range(paths):
        truth = float(rng.uniform(-0.3, 0.1))
        diffs = _pass_fail(rng, (1, 400), truth, 0.4)[0]
        results = [paired_sequential_verdict(diffs[:n], 0.05) for n in (10, 25, 50, 100, 200, 400)]
        covered += all(r.low <= truth <= r.high for r in results)
    assert covered / paths >= 1 - 2 * alpha - _allowance(2 * alpha, paths)


# --- the record and its line -----------------------------------------------------------------------------------


def test_no_cases_yet_is_inconclusive_over_the_whole_range():
    result = paired_sequential_verdict([], 0.05)
    assert result == PairedSequential(0, None, -1.0, 1.0, 0.05, 0.95, INCONCLUSIVE, 0, 0)
    assert paired_sequential_counts(0, 0, 0, 0.05) == result
    assert result.describe() == "no paired cases yet (n=0): inconclusive against the 5.0-point margin"
    assert np.array_equal(paired_crossing_times(np.zeros((3, 0)), 0.05), np.zeros((3, 2)))
    assert paired_crossing_times(np.zeros((0, 5)), 0.05).shape == (0, 2)


def test_describe_gives_difference_bounds_counts_and_verdict_on_one_line():
    passed = paired_sequential_counts(9, 385, 6, 0.05)
    line = passed.describe()
    assert passed.verdict == PASS and "\n" not in line
    assert line.startswith("candidate -0.8 points vs incumbent (anytime 95% bounds ")
    assert line.endswith(", n=400, 9 regressions, 6 wins): pass, within the 5.0-point margin")
    assert f"{100 * passed.low:+.1f} to {100 * passed.high:+.1f}" in line
    failed = paired_sequential_counts(60, 130, 10, 0.02, 0.9)
    assert failed.verdict == FAIL and "anytime 90% bounds" in failed.describe()
    assert failed.describe().endswith("fail, worse than the 2.0-point margin allows")
    unsure = paired_sequential_counts(1, 18, 1, 0.02)
    assert unsure.describe() == (
        f"candidate 0.0 points vs incumbent (anytime 95% bounds {100 * unsure.low:+.1f} to "
        f"{100 * unsure.high:+.1f}, n=20, 1 regression, 1 win): inconclusive: not yet shown "
        "within or beyond the 2.0-point margin"
    )
    assert "n=12,000" in paired_sequential_counts(100, 11_800, 100, 0.02).describe()


def test_a_margin_of_zero_asks_whether_the_candidate_is_at_least_as_good():
    assert paired_sequential_counts(0, 200, 0, 0.0).verdict == INCONCLUSIVE  # identical answers never show it
    assert paired_sequential_counts(0, 70, 30, 0.0).verdict == PASS
    assert paired_sequential_counts(30, 70, 0, 0.0).verdict == FAIL


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paired_sequential_verdict([0.0, 1.5], 0.05), r"\[-1, 1\]"),
        (lambda: paired_sequential_verdict([0.0, -1.01], 0.05), r"\[-1, 1\]"),
        (lambda: paired_sequential_verdict([0.0, float("nan")], 0.05), "NaN"),
        (lambda: paired_sequential_verdict([0.0, float("inf")], 0.05), r"\[-1, 1\]"),
        (lambda: paired_sequential_verdict(["a"], 0.05), "numbers"),
        (lambda: paired_sequential_verdict([[0.0, 1.0]], 0.05), "1-D"),
        (lambda: paired_sequential_verdict([0.0], -0.01), "margin"),
        (lambda: paired_sequential_verdict([0.0], float("nan")), "margin"),
        (lambda: paired_sequential_verdict([0.0], 1.0), "trivial"),
        (lambda: paired_sequential_verdict([0.0], 1.5), "trivial"),
        (lambda: paired_sequential_verdict([0.0], 0.05, 0.5), "confidence"),
        (lambda: paired_sequential_verdict([0.0], 0.05, 1.0), "confidence"),
        (lambda: paired_sequential_verdict([0.0], 0.05, float("nan")), "confidence"),
        (lambda: paired_sequential_counts(-1, 5, 5, 0.05), "negative"),
        (lambda: paired_sequential_counts(1.5, 5, 5, 0.05), "whole"),
        (lambda: paired_sequential_counts(True, 5, 5, 0.05), "whole"),
        (lambda: paired_sequential_counts(1, 5, 5, 1.0), "trivial"),
        (lambda: paired_crossing_times(np.zeros(5), 0.05), "2-D"),
        (lambda: paired_crossing_times(np.full((2, 3), 2.0), 0.05), r"\[-1, 1\]"),
        (lambda: paired_crossing_times(np.full((2, 3), np.nan), 0.05), "NaN"),
        (lambda: paired_crossing_times(np.zeros((2, 3)), 1.0), "trivial"),
        (lambda: paired_crossing_times(np.zeros((2, 3)), 0.05, 0.4), "confidence"),
    ],
)
def test_refusals_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_rounding_just_outside_the_range_is_taken_as_the_bound():
    exact = paired_sequential_verdict([1.0, -1.0, 0.0], 0.05)
    assert paired_sequential_verdict([1 + 1e-12, -1 - 1e-12, 0.0], 0.05) == exact
