"""Intervals and paired outcomes, with numbers checked by hand."""

from __future__ import annotations

import pytest

from harness.analysis.intervals import wilson_interval
from harness.analysis.outcomes import agreement, paired_category, paired_counts


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)  # never below 0, and not a zero-width interval at 0%
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_paired_outcomes_count_missing_answers_as_failures():
    statuses = {
        "a": {"inc": "pass", "cand": "fail"},     # regression
        "b": {"inc": "pass", "cand": "error"},    # regression: a failed call fails
        "c": {"inc": "fail", "cand": "pass"},     # win
        "d": {"inc": "missing", "cand": "fail"},  # both fail
        "e": {"inc": "pass", "cand": "pass"},     # both pass
        "f": {"inc": "pass"},                     # the candidate never answered: regression
    }
    assert paired_counts(statuses, "inc", "cand") == {"regression": 3, "win": 1, "both_fail": 1, "both_pass": 1}
    assert paired_category(True, False) == "regression" and paired_category(False, False) == "both_fail"


def test_agreement_counts_only_cases_both_answered():
    a = {"x": "Yes", "y": "no", "z": "maybe"}
    b = {"x": "yes", "y": "yes"}
    assert agreement(a, b, lambda p, q: p.lower() == q.lower()) == (1, 2)
