from __future__ import annotations

import json
from decimal import Decimal

import pandas as pd
import pytest
from conftest import answer

from harness.scorers import (
    ExactScorer,
    FieldsScorer,
    compare,
    field_metrics,
    parse_amount,
    parse_date,
    parse_json_output,
    score_completion,
)
from harness.suite import Case

FIELDS = {"company": "text", "date": "date", "address": "text", "total": "amount"}
GOLD = {"company": "SOON HUAT MACHINERY ENTERPRISE", "date": "11/01/2019",
        "address": "NO.53 JALAN PUTRA 1, TAMAN SRI PUTRA, 81200 JOHOR BAHRU JOHOR", "total": "327.00"}


def _scores(text: str, gold=GOLD):
    case = Case(id="c1", input={"text": "..."}, gold=gold, line=1)
    return {s.metric: s for s in FieldsScorer(FIELDS)(case, answer(text))}


@pytest.mark.parametrize(("gold", "pred", "kind", "expected"), [
    ("SOON HUAT  Machinery, Enterprise.", "soon huat machinery enterprise", "text", True),
    ("NO.53 JALAN PUTRA 1", "NO 53 JALAN PUTRA 2", "text", False),
    ("327.00", "RM 327", "amount", True),
    ("1,234.50", "1234.5", "amount", True),
    ("327.00", "327.01", "amount", False),
    ("11/01/2019", "2019-01-11", "date", True),
    ("11/01/2019", "11 Jan 2019", "date", True),
    ("11/01/2019", "01/11/2019", "date", False),  # day first: that is the 1st of November
    ("ABC", "abc", "exact", False),
    (["$5.00", "5"], "5.00", "amount", True),
    ("", "", "text", False),
])
def test_compare(gold, pred, kind, expected):
    assert compare(gold, pred, kind) is expected


def test_parse_amount_and_date():
    assert parse_amount("Total: RM 1.234,50") == Decimal("1234.50")
    assert parse_amount("n/a") is None
    assert parse_date("25/12/2018").isoformat() == "2018-12-25"
    assert parse_date("not a date") is None


def test_parse_json_output_tolerates_a_code_fence_only():
    assert parse_json_output('```json\n{"a": 1}\n```') == ({"a": 1}, None)
    value, problem = parse_json_output('Sure! {"a": 1}')
    assert value is None and problem.startswith("not JSON")
    assert parse_json_output("  ") == (None, "empty output")


def test_all_fields_right_passes_the_case():
    pred = json.dumps({"company": "Soon Huat Machinery Enterprise", "date": "2019-01-11",
                       "address": "NO. 53, JALAN PUTRA 1, TAMAN SRI PUTRA 81200 JOHOR BAHRU, JOHOR", "total": 327})
    scores = _scores(pred)
    assert scores["valid_json"].passed is True
    assert all(scores[f"field.{f}"].passed for f in FIELDS)
    assert scores["case_pass"].passed is True


def test_wrong_and_missing_fields_are_told_apart():
    scores = _scores(json.dumps({"company": "OTHER SHOP", "date": "", "total": "327"}))
    assert scores["field.company"].detail == {"gold": GOLD["company"], "pred": "OTHER SHOP", "outcome": "wrong"}
    assert scores["field.date"].detail["outcome"] == "missing"
    assert scores["field.address"].detail["outcome"] == "missing"
    assert scores["field.total"].passed is True
    assert scores["case_pass"].passed is False


def test_extra_value_where_gold_is_empty():
    scores = _scores(json.dumps({"company": "X", "date": "1/1/2019", "address": "A", "total": "1"}),
                     gold={"company": "X", "date": "", "address": "A", "total": "1"})
    assert scores["field.date"].detail["outcome"] == "extra"
    assert scores["case_pass"].passed is False


@pytest.mark.parametrize("text", ["I cannot read this receipt.", "[1, 2]", '{"company": "X"', ""])
def test_invalid_output_is_scored_not_raised(text):
    scores = _scores(text)
    assert scores["valid_json"].passed is False
    assert scores["valid_json"].detail["problem"]
    assert {scores[f"field.{f}"].detail["outcome"] for f in FIELDS} == {"invalid_output"}
    assert scores["case_pass"].passed is False


def test_failed_call_gets_no_scores():
    case = Case(id="c1", input={}, gold=GOLD, line=1)
    assert score_completion([FieldsScorer(FIELDS)], case, answer("", error="HTTP 500: boom")) == []


def test_exact_scorer_reads_a_label_from_json_or_text():
    case = Case(id="c1", input={}, gold="card_arrival", line=1)
    assert ExactScorer()(case, answer(' card_arrival\n'))[0].passed is True
    assert ExactScorer()(case, answer('{"label": "card_arrival"}'))[0].passed is True
    assert ExactScorer()(case, answer('card_linking'))[0].passed is False


def test_field_metrics_precision_recall_f1():
    outcomes = ["correct", "correct", "wrong", "missing", "extra"]
    scores = pd.DataFrame({
        "provider": "p", "metric": "field.total",
        "passed": [o == "correct" for o in outcomes],
        "detail": [json.dumps({"outcome": o}) for o in outcomes],
    })
    row = field_metrics(scores).iloc[0]
    # tp=2, fp = wrong + extra = 2, fn = wrong + missing = 2
    assert row["precision"] == pytest.approx(0.5)
    assert row["recall"] == pytest.approx(0.5)
    assert row["f1"] == pytest.approx(0.5)
    assert row["accuracy"] == pytest.approx(0.4)


def test_invalid_output_and_failed_calls_are_false_negatives_only():
    outcomes = ["correct", "invalid_output", "absent"]
    scores = pd.DataFrame({
        "provider": "p", "metric": "field.total",
        "passed": [True, False, True],
        "detail": [json.dumps({"outcome": o}) for o in outcomes],
    })
    row = field_metrics(scores, failed_calls={"p": 2}).iloc[0]
    # tp=1, fp=0, fn = invalid 1 + failed calls 2; absent counts for accuracy only
    assert row["precision"] == pytest.approx(1.0)
    assert row["recall"] == pytest.approx(0.25)
    assert row["f1"] == pytest.approx(2 / 5)
    assert row["n"] == 5 and row["accuracy"] == pytest.approx(2 / 5)


def test_both_empty_is_absent_and_passes():
    scores = _scores(json.dumps({"company": "X", "date": "", "address": "A", "total": "1"}),
                     gold={"company": "X", "date": None, "address": "A", "total": "1"})
    assert scores["field.date"].detail["outcome"] == "absent"
    assert scores["case_pass"].passed is True


@pytest.mark.parametrize("text", ["March 2018", "2019", "No 5 Jalan 3", "TOTAL 5"])
def test_partial_dates_never_borrow_from_today(text):
    assert parse_date(text) is None


def test_amount_reads_the_first_number_only():
    assert parse_amount("9.00 10") == Decimal("9.00")
    assert parse_amount("1 234,50") == Decimal("1234.50")


def test_exact_scorer_unwraps_a_json_string():
    case = Case(id="c1", input={}, gold="positive", line=1)
    assert ExactScorer()(case, answer('"positive"'))[0].passed is True


@pytest.mark.parametrize("text", ['{"total": ' + "9" * 5000 + "}", "[" * 5000])
def test_pathological_json_is_invalid_output_not_a_crash(text):
    scores = _scores(text)
    assert scores["valid_json"].passed is False
    assert scores["case_pass"].passed is False


def test_a_failing_scorer_fails_the_case_not_the_run():
    class Broken:
        name = "broken"

        def __call__(self, case, completion):
            raise KeyError("boom")

    case = Case(id="c1", input={}, gold=GOLD, line=1)
    [(name, score)] = score_completion([Broken()], case, answer("{}"))
    assert name == "broken" and score.metric == "case_pass" and score.passed is False
    assert score.detail == {"scorer_error": "KeyError: 'boom'"}


def test_labels_fold_case_spaces_and_punctuation_to_the_set():
    from harness.labels import LabelScorer

    scorer = LabelScorer(["reverted_card_payment?", "card_arrival", "card-linking", "card_linking"])
    assert scorer.read_label('{"label": "Reverted card payment"}')[0] == "reverted_card_payment?"
    assert scorer.read_label("CARD ARRIVAL")[0] == "card_arrival"
    # two labels that fold alike: only their exact spellings count
    assert scorer.read_label("card linking")[0] is None
    assert scorer.read_label("card-linking")[0] == "card-linking"
    assert scorer.read_label("card_arrivals")[0] is None
