"""The anytime-valid disagreement gate (harness.analysis.sequential): its error rates when the rate sits exactly at
the margin and the gate looks after every request, how soon it decides when the answer is clear, the shape and
coverage of its confidence sequence, and its refusals. Simulations use seeded generators and run in a few
seconds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.analysis.sequential import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Sequential,
    confidence_sequence,
    crossing_times,
    sequential_verdict,
)

MARGINS = (0.01, 0.02, 0.05, 0.10)
PATHS = {50: 4000, 500: 4000, 5000: 1000}  # horizon -> simulated paths (the longest horizon costs the most)


def _allowance(alpha: float, paths: int) -> float:
    """Three standard errors of a share estimated from `paths` paths whose true value is alpha."""
    return 3 * math.sqrt(alpha * (1 - alpha) / paths)


def _kl(p: float, q: float) -> float:
    """The Kullback-Leibler divergence of Bernoulli(q) from Bernoulli(p)."""
    return (p * math.log(p / q) if p else 0.0) + (1 - p) * math.log((1 - p) / (1 - q))


# --- validity: the rate exactly at the margin, looked at after every request --------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.90])
@pytest.mark.parametrize("horizon", sorted(PATHS))
@pytest.mark.parametrize("margin", MARGINS)
def test_a_rate_at_the_margin_rarely_gets_a_verdict_however_often_the_gate_looks(margin, horizon, confidence):
    """At p = margin both verdicts are wrong. Ville's inequality bounds the share of paths that *ever* reach one,
    at any of the `horizon` looks, by alpha; a fixed-sample 95% interval checked every step would exceed it many
    times over at 500 or 5,000 looks."""
    alpha, paths = 1 - confidence, PATHS[horizon]
    rng = np.random.default_rng([int(margin * 1000), horizon, int(confidence * 100)])
    outcomes = rng.random((paths, horizon)) < margin
    crossed = crossing_times(outcomes, margin, confidence)
    allowance = _allowance(alpha, paths)
    passed = np.mean(crossed[:, 1] == 1)
    failed = np.mean(crossed[:, 1] == -1)
    assert passed <= alpha + allowance, (passed, alpha)
    assert failed <= alpha + allowance, (failed, alpha)
    assert passed + failed <= alpha + allowance, (passed + failed, alpha)  # one martingale bounds both together
    assert set(np.unique(crossed[:, 1])) <= {-1, 0, 1}
    assert np.all((crossed[:, 0] == 0) == (crossed[:, 1] == 0))
    assert crossed[:, 0].max() <= horizon


def test_looking_every_step_with_a_fixed_sample_interval_would_not_be_valid():
    """The simulation above can tell a valid gate from an invalid one: the same paths, judged after every request
    by a one-sided fixed-sample z-test at 95%, pass a rate at the margin far more often than 5%."""
    margin, horizon, paths = 0.05, 2000, 1000
    outcomes = np.random.default_rng(7).random((paths, horizon)) < margin
    n = np.arange(1, horizon + 1)
    rate = np.cumsum(outcomes, axis=1) / n
    z = (margin - rate) / np.sqrt(margin * (1 - margin) / n)
    naive = np.mean((z > 1.645).any(axis=1))
    anytime = np.mean(crossing_times(outcomes, margin, 0.95)[:, 1] == 1)
    assert naive > 0.05 + _allowance(0.05, paths) > anytime


# --- power: clear cases are decided quickly --------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.90])
@pytest.mark.parametrize("margin", [0.02, 0.05, 0.10])
@pytest.mark.parametrize("multiple", [0, 3])
def test_a_clear_case_is_decided_within_twice_the_sequential_probability_ratio_test(multiple, margin, confidence):
    """True rate 0 (perfect agreement) must pass and 3 x margin must fail. Wald's SPRT between the two simple
    hypotheses p = margin and the true p needs about log(1/alpha) / KL(p || margin) requests, the least any
    level-alpha sequential test can expect to need; for p = 0 that is the zero-failure sample size
    log(1/alpha) / -log(1 - margin). The mixture, which does not know the alternative, must stop within twice
    that (median). Simulated medians were 1.38-1.51 x (p = 0: 204 requests at a 2% margin and 95%, 81 at 5%, 40 at
    10%) and 1.43-1.64 x (p = 3 margin: means 188, 76 and 34 at 95%)."""
    alpha, p = 1 - confidence, multiple * margin
    sprt = math.log(1 / alpha) / _kl(p, margin)
    horizon = int(20 * sprt)
    paths = 1 if p == 0 else 400  # at p = 0 every path is the same
    outcomes = np.random.default_rng([multiple, int(margin * 100)]).random((paths, horizon)) < p
    crossed = crossing_times(outcomes, margin, confidence)
    right = 1 if p < margin else -1
    assert np.mean(crossed[:, 1] == right) >= 1 - alpha
    assert np.median(crossed[:, 0]) < 2 * sprt, (np.median(crossed[:, 0]), sprt)
    assert np.median(crossed[:, 0]) < 4 * math.log(1 / alpha) / margin  # the brief's looser yardstick


def test_a_perfect_candidate_passes_at_the_first_request_where_the_bound_allows():
    """With no disagreement at all the verdict is the same on every path: inconclusive up to some n, pass from it
    on, and crossing_times reports exactly that n."""
    margin = 0.02
    first = crossing_times(np.zeros((1, 1000), dtype=int), margin)[0]
    assert first[1] == 1
    step = int(first[0])
    assert sequential_verdict(0, step - 1, margin).verdict == INCONCLUSIVE
    assert all(sequential_verdict(0, n, margin).verdict == PASS for n in (step, step + 1, 10 * step))
    # the zero-failure rule at a single fixed n needs log(1/alpha) / -log(1 - margin) requests: anytime costs more
    assert step > math.log(20) / -math.log1p(-margin)


# --- the interval -------------------------------------------------------------------------------------------------


def _random_counts(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    counts = [(0, 1), (1, 1), (0, 5), (5, 5), (0, 10_000), (10_000, 10_000), (1, 10_000), (9_999, 10_000)]
    for _ in range(count):
        n = int(rng.integers(1, 20_000))
        counts.append((int(rng.binomial(n, rng.uniform(0, 0.2) if rng.random() < 0.8 else rng.random())), n))
    return counts


def test_the_interval_holds_the_observed_rate_and_stays_in_the_unit_interval():
    rng = np.random.default_rng(11)
    for failures, n in _random_counts(rng, 300):
        for margin in (None, 0.02, 0.1):
            low, high = confidence_sequence(failures, n, 0.95, margin=margin)
            assert 0.0 <= low <= failures / n <= high <= 1.0, (failures, n, margin, low, high)
            assert low < high
            assert (low == 0.0) == (failures == 0)
            assert (high == 1.0) if failures == n else (high < 1.0 or margin is not None)
            # (a prior centred on a small margin holds so little mass near 1 that, with one agreement in
            # thousands of requests, the upper end lies within 1e-16 of 1 and rounds to it)
    assert confidence_sequence(0, 0) == (0.0, 1.0)
    assert confidence_sequence(0, 0, margin=0.02) == (0.0, 1.0)


def test_the_ends_are_where_the_martingale_reaches_one_over_alpha():
    """Checked from the formula itself, in logs, with a prior given explicitly."""
    from scipy.special import betaln

    a, b, failures, n, alpha = 0.5, 24.5, 7, 400, 0.05
    low, high = confidence_sequence(failures, n, 1 - alpha, prior=(a, b))

    def log_ratio(p: float) -> float:
        return (betaln(a + failures, b + n - failures) - betaln(a, b) - failures * math.log(p)
                - (n - failures) * math.log1p(-p))

    assert log_ratio(low) == pytest.approx(math.log(1 / alpha), abs=1e-9)
    assert log_ratio(high) == pytest.approx(math.log(1 / alpha), abs=1e-9)
    assert log_ratio(failures / n) < 0  # the mixture never beats the best single rate
    assert confidence_sequence(failures, n, 1 - alpha, margin=0.02) == (low, high)  # the margin's own prior


@pytest.mark.parametrize("margin", [None, 0.02, 0.3])
@pytest.mark.parametrize("rate", [0, 0.01, 0.1, 0.5, 1])
def test_the_interval_narrows_as_outcomes_accumulate_at_a_fixed_rate(rate, margin):
    widths, previous = [], None
    for k in range(15):
        n = 100 * 2**k
        low, high = confidence_sequence(round(rate * n), n, 0.95, margin=margin)
        if previous is not None:
            assert previous[0] <= low and high <= previous[1], (n, (low, high), previous)
        widths.append(high - low)
        previous = low, high
    assert all(later < earlier for earlier, later in itertools.pairwise(widths))
    assert widths[-1] < 0.01


def test_a_higher_confidence_gives_a_wider_interval():
    for failures, n in ((0, 300), (4, 300), (150, 300)):
        low90, high90 = confidence_sequence(failures, n, 0.90)
        low99, high99 = confidence_sequence(failures, n, 0.99)
        assert low99 <= low90 and high90 <= high99 and high99 - low99 > high90 - low90


def test_the_verdict_agrees_with_where_the_margin_lies_against_the_interval():
    """Computed both ways: the verdict from M_n at the margin, the interval from brentq."""
    rng = np.random.default_rng(13)
    seen = set()
    for failures, n in _random_counts(rng, 400):
        for margin in (0.01, 0.02, 0.05, 0.1):
            for confidence in (0.9, 0.95):
                result = sequential_verdict(failures, n, margin, confidence)
                low, high = confidence_sequence(failures, n, confidence, margin=margin)
                assert (result.low, result.high) == (low, high)
                assert (high < margin) == (result.verdict == PASS), (failures, n, margin, result)
                assert (low > margin) == (result.verdict == FAIL), (failures, n, margin, result)
                assert result.rate == failures / n and (result.n, result.failures) == (n, failures)
                seen.add(result.verdict)
    assert seen == {PASS, FAIL, INCONCLUSIVE}


def test_crossing_times_agrees_with_the_verdict_request_by_request():
    rng = np.random.default_rng(17)
    margin, confidence = 0.05, 0.9
    outcomes = (rng.random((6, 300)) < np.array([[0.0], [0.01], [0.05], [0.05], [0.12], [0.3]])).astype(np.int8)
    crossed = crossing_times(outcomes, margin, confidence)
    for path, (step, sign) in zip(outcomes, crossed, strict=True):
        verdicts = [sequential_verdict(int(s), n, margin, confidence).verdict
                    for n, s in enumerate(np.cumsum(path), start=1)]
        decided = [i for i, v in enumerate(verdicts, start=1) if v != INCONCLUSIVE]
        assert step == (decided[0] if decided else 0)
        assert sign == ({PASS: 1, FAIL: -1}[verdicts[step - 1]] if step else 0)
    assert crossed[0, 1] == 1 and crossed[-1, 1] == -1


@pytest.mark.parametrize("margin", [None, 0.02])
def test_the_interval_covers_the_true_rate_at_every_request_in_most_paths(margin):
    """For rates drawn across (0.001, 0.5), the interval computed after every request of a path contains the true
    rate at all of them on at least a `confidence` share of paths (Monte Carlo allowance of three standard
    errors)."""
    rng = np.random.default_rng(19 if margin is None else 23)
    confidence, paths, horizon = 0.95, 200, 250
    rates = np.exp(rng.uniform(math.log(0.001), math.log(0.5), paths))
    covered = 0
    for p in rates:
        failures = np.cumsum(rng.random(horizon) < p)
        covered += all(low <= p <= high for low, high in (confidence_sequence(int(s), n, confidence, margin=margin)
                                                          for n, s in enumerate(failures, start=1)))
    assert covered / paths >= confidence - _allowance(1 - confidence, paths)


# --- the record and its line ------------------------------------------------------------------------------------


def test_no_outcomes_yet_is_inconclusive_over_the_whole_unit_interval():
    result = sequential_verdict(0, 0, 0.02)
    assert result == Sequential(0, 0, None, 0.0, 1.0, 0.02, 0.95, INCONCLUSIVE)
    assert "n=0" in result.describe() and "inconclusive" in result.describe() and "2.0%" in result.describe()


def test_describe_gives_rate_interval_size_and_verdict_on_one_line():
    passed = sequential_verdict(1, 812, 0.02)
    line = passed.describe()
    assert passed.verdict == PASS and "\n" not in line
    assert line.startswith("disagreement 0.12% (anytime 95% interval ")
    assert "n=812): pass, below the 2.0% margin" in line
    assert f"{100 * passed.high:.2f}%" in line
    failed = sequential_verdict(40, 500, 0.02, 0.9)
    assert failed.verdict == FAIL and "anytime 90% interval" in failed.describe()
    assert failed.describe().endswith("fail, above the 2.0% margin")
    unsure = sequential_verdict(10, 812, 0.02)
    assert unsure.describe().startswith("disagreement 1.2% (anytime 95% interval ")
    assert unsure.describe().endswith("inconclusive: the interval still straddles the 2.0% margin")
    assert sequential_verdict(0, 20_000, 0.02).describe().startswith("disagreement 0% (anytime 95% interval 0%-")
    assert "n=20,000" in sequential_verdict(0, 20_000, 0.02).describe()


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda: sequential_verdict(1, 10, 0.0), "margin"),
    (lambda: sequential_verdict(1, 10, 1.0), "margin"),
    (lambda: sequential_verdict(1, 10, -0.1), "margin"),
    (lambda: sequential_verdict(1, 10, float("nan")), "margin"),
    (lambda: sequential_verdict(1, 10, 0.02, 0.5), "confidence"),
    (lambda: sequential_verdict(1, 10, 0.02, 1.0), "confidence"),
    (lambda: sequential_verdict(1, 10, 0.02, 95), "confidence"),
    (lambda: sequential_verdict(11, 10, 0.02), "exceed"),
    (lambda: sequential_verdict(-1, 10, 0.02), "negative"),
    (lambda: sequential_verdict(0, -1, 0.02), "negative"),
    (lambda: sequential_verdict(1.5, 10, 0.02), "whole number"),
    (lambda: confidence_sequence(3, 2), "exceed"),
    (lambda: confidence_sequence(1, 2, 0.3), "confidence"),
    (lambda: confidence_sequence(1, 2, margin=2.0), "margin"),
    (lambda: confidence_sequence(1, 2, prior=(0.0, 1.0)), "prior"),
    (lambda: confidence_sequence(1, 2, prior=(1.0, -2.0)), "prior"),
    (lambda: crossing_times(np.zeros((2, 3)), 1.5), "margin"),
    (lambda: crossing_times(np.zeros((2, 3)), 0.02, 1.2), "confidence"),
    (lambda: crossing_times(np.zeros(3), 0.02), "2-D"),
    (lambda: crossing_times(np.full((2, 3), 2), 0.02), "0 "),
])
def test_bad_inputs_are_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_crossing_times_of_nothing_is_empty():
    assert crossing_times(np.zeros((0, 5)), 0.02).shape == (0, 2)
    assert crossing_times(np.zeros((3, 0)), 0.02).tolist() == [[0, 0]] * 3
