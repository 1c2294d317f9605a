"""The `reference` scorer: free-text answers against a reference answer (exact match, ROUGE-1 F, ROUGE-L F)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, answer

from harness.errors import SuiteError
from harness.scoring.base import Metric
from harness.scoring.reference import DEFAULT_THRESHOLDS, ReferenceScorer, normalize
from harness.scoring.registry import aggregate_metrics, build_scorers, score_completion
from harness.suite.load import Case, load_suite


def f1(overlap: int, n_answer: int, n_reference: int) -> float:
    """F-measure from a count of shared tokens (unigrams, or the LCS length) and the two token counts."""
    p, r = overlap / n_answer, overlap / n_reference
    return 2 * p * r / (p + r) if p + r else 0.0


def scores(reference, text, scorer: ReferenceScorer | None = None) -> dict:
    rows = (scorer or ReferenceScorer())(Case("c", {}, reference, 1), answer(text))
    return {s.metric: s for s in rows}


def test_the_reference_itself_scores_one_on_every_measure():
    got = scores("The cat sat on the mat.", "The cat sat on the mat.")
    assert {m: s.value for m, s in got.items()} == {"ref.exact": 1.0, "ref.token_f1": 1.0, "ref.rouge_l": 1.0,
                                                     "case_pass": 1.0}
    assert got["ref.exact"].passed is True and got["case_pass"].passed is True
    assert got["ref.token_f1"].passed is None and got["ref.rouge_l"].passed is None
    assert got["ref.rouge_l"].detail == {"precision": 1.0, "recall": 1.0}


def test_partial_overlap_of_a_shorter_answer():
    # reference: the cat sat on the mat (6 tokens); answer: a cat sat (3); shared: cat, sat, in order
    got = scores("the cat sat on the mat", "A cat sat")
    assert got["ref.token_f1"].value == pytest.approx(f1(2, 3, 6))  # P 2/3, R 1/3: 4/9
    assert got["ref.token_f1"].detail == pytest.approx({"precision": 2 / 3, "recall": 2 / 6})
    assert got["ref.rouge_l"].value == pytest.approx(f1(2, 3, 6))
    assert got["ref.exact"].value == 0.0 and got["ref.exact"].passed is False
    assert got["ref.exact"].detail == {"reference": "the cat sat on the mat", "pred": "A cat sat"}


def test_repeated_tokens_count_once_per_occurrence_in_the_reference():
    # reference: the cat sat on the mat; answer: the the the cat (4): `the` is shared twice, not three times
    assert scores("the cat sat on the mat", "the the the cat")["ref.token_f1"].value == pytest.approx(f1(3, 4, 6))


def test_word_order_lowers_rouge_l_but_not_token_f1():
    # every token shared; the longest common subsequence is `the gunman` (or `killed`...): 2 of 4
    got = scores("police killed the gunman", "the gunman killed police")
    assert got["ref.token_f1"].value == pytest.approx(1.0)
    assert got["ref.rouge_l"].value == pytest.approx(f1(2, 4, 4))
    # reference: the quick brown fox jumps (5); answer: fox jumps over the quick brown (6)
    # unigrams shared: 5 (P 5/6, R 1: 10/11); LCS `the quick brown`: 3 (P 1/2, R 3/5: 6/11)
    got = scores("The quick brown fox jumps.", "Fox jumps over the quick brown")
    assert got["ref.token_f1"].value == pytest.approx(f1(5, 6, 5)) == pytest.approx(10 / 11)
    assert got["ref.rouge_l"].value == pytest.approx(f1(3, 6, 5)) == pytest.approx(6 / 11)
    assert got["ref.rouge_l"].detail == pytest.approx({"precision": 3 / 6, "recall": 3 / 5})


def test_tokens_ignore_case_and_punctuation_in_every_script():
    assert scores("The Cat, sat!", "the cat sat")["ref.token_f1"].value == pytest.approx(1.0)
    # rouge-score's own tokenizer keeps only [a-z0-9]: these would have no tokens at all and score 0
    assert scores("Привет, мир", "привет мир")["ref.rouge_l"].value == pytest.approx(1.0)
    assert scores("東京 大阪", "東京 京都")["ref.token_f1"].value == pytest.approx(f1(1, 2, 2))
    assert scores("Der Bär schläft", "der bar schläft")["ref.token_f1"].value == pytest.approx(f1(2, 3, 3))


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog", "It's 3.5 o'clock -- don't_panic! (ok?)", "  A\tb\nC  ", "",
])
def test_on_ascii_the_tokens_are_rouge_scores_own(text):
    from rouge_score.tokenizers import DefaultTokenizer

    from harness.scoring.reference import _Tokenizer
    assert _Tokenizer().tokenize(text) == DefaultTokenizer(use_stemmer=False).tokenize(text)


def test_no_stemming():
    # with the Porter stemmer `cats`/`cat` and `running`/`run` would be the same tokens
    assert scores("cats running", "cat running")["ref.token_f1"].value == pytest.approx(f1(1, 2, 2))


@pytest.mark.parametrize(("reference", "text", "same"), [
    ("Paris", "paris.", True),
    ("  New   York ", "new\tyork", True),
    ('"Paris"', "Paris", True),
    ("«Paris»", "`Paris`", True),
    ("“Paris!”", "PARIS", True),
    ("U.S.", "u.s", True),  # punctuation around the text goes, inside it stays
    ("ﬁne", "fine", True),  # NFKC: the ligature is f + i
    ("Ｐａｒｉｓ", "paris", True),  # NFKC: fullwidth letters
    ("Straße", "STRASSE", True),  # case folding, not lower()
    ("New York", "NewYork", False),
    ("3.5", "3,5", False),
    ("Paris", "Paris, France", False),
    ("Paris", "The answer is Paris.", False),
])
def test_exact_match_after_normalisation(reference, text, same):
    got = scores(reference, text, ReferenceScorer("exact"))
    assert got["ref.exact"].passed is same and got["ref.exact"].value == float(same)
    assert got["case_pass"].passed is same


def test_normalize():
    assert normalize('  «Hello,   World!»\n') == "hello, world"
    assert normalize("...") == ""


# reference: one two three four five (5 tokens); answer: one two three six seven (5): 3 shared, P = R = F = 0.6,
# which the F-measure formula gives as 0.6 give or take the last bit
FIVE, THREE_OF_FIVE = "one two three four five", "one two three six seven"


@pytest.mark.parametrize(("threshold", "passed"), [(0.59, True), (0.6, True), (0.61, False), (0.0, True),
                                                   (1.0, False)])
def test_threshold_decides_case_pass_at_its_boundary(threshold, passed):
    got = scores(FIVE, THREE_OF_FIVE, ReferenceScorer("token_f1", threshold))
    assert got["ref.token_f1"].value == pytest.approx(f1(3, 5, 5)) == pytest.approx(0.6)
    assert got["case_pass"].passed is passed and got["case_pass"].value == float(passed)
    assert got["case_pass"].detail == {"measure": "token_f1", "value": got["ref.token_f1"].value,
                                       "threshold": threshold}


def test_an_f_measure_a_rounding_error_below_the_threshold_reaches_it():
    # 3 of the reference's 5 tokens, nothing else: P 1, R 3/5, F exactly 3/4, which the formula gives as
    # 0.7499999999999999
    got = scores(FIVE, "one two three", ReferenceScorer("token_f1", 0.75))
    assert got["ref.token_f1"].value < 0.75 and got["ref.token_f1"].value == pytest.approx(f1(3, 3, 5))
    assert got["case_pass"].passed is True
    assert scores(FIVE, "one two three", ReferenceScorer("token_f1", 0.7500001))["case_pass"].passed is False


def test_the_measure_decides_which_value_is_compared():
    # token F1 1.0, ROUGE-L 0.5, not exact: passes or fails by the chosen measure alone
    reference, text = "police killed the gunman", "the gunman killed police"
    assert scores(reference, text, ReferenceScorer("token_f1", 0.9))["case_pass"].passed is True
    assert scores(reference, text, ReferenceScorer("rouge_l", 0.9))["case_pass"].passed is False
    assert scores(reference, text, ReferenceScorer("rouge_l", 0.5))["case_pass"].passed is True
    assert scores(reference, text, ReferenceScorer("exact", 0.0))["case_pass"].passed is True


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == {"exact": 1.0, "token_f1": 0.3, "rouge_l": 0.3}
    default = ReferenceScorer()
    assert (default.measure, default.threshold) == ("rouge_l", 0.3)
    assert ReferenceScorer("exact").threshold == 1.0 and ReferenceScorer("token_f1").threshold == 0.3
    # reference: the cat sat on the mat (6); answer a dog sat (3); shared: sat. F = 2/9 < 0.3
    low = scores("the cat sat on the mat", "a dog sat")
    assert low["ref.rouge_l"].value == pytest.approx(f1(1, 3, 6)) and low["case_pass"].passed is False
    assert low["case_pass"].detail["threshold"] == 0.3
    # shared: cat sat. F = 4/9 >= 0.3
    assert scores("the cat sat on the mat", "a cat sat")["case_pass"].passed is True
    # an answer with all the words but not verbatim fails exact at its default of 1.0
    assert scores("Paris", "It is Paris", ReferenceScorer("exact"))["case_pass"].passed is False
    with pytest.raises(ValueError, match="measure"):
        ReferenceScorer("bleu")


@pytest.mark.parametrize("gold", [None, "", "   \n", {}, {"reference": None}, {"text": ""}])
def test_a_case_without_a_reference_gets_no_scores(gold):
    assert ReferenceScorer()(Case("c", {}, gold, 1), answer("anything")) == []


@pytest.mark.parametrize(("gold", "text"), [
    ({"reference": "Paris", "source": "wiki"}, "paris"),
    ({"text": "Paris"}, "Paris"),
    ({"reference": "Paris", "text": "Lyon"}, "Paris"),  # `reference` first
    (42, "42"),
    (["a", "b"], '["a", "b"]'),
])
def test_a_gold_that_is_not_a_string(gold, text):
    assert scores(gold, text, ReferenceScorer("exact"))["ref.exact"].passed is True


@pytest.mark.parametrize("text", ["", "   ", "...", "?!"])
def test_an_empty_answer_scores_zero_on_every_measure(text):
    got = scores("The cat sat.", text)
    assert {m: s.value for m, s in got.items()} == {"ref.exact": 0.0, "ref.token_f1": 0.0, "ref.rouge_l": 0.0,
                                                     "case_pass": 0.0}
    assert got["case_pass"].passed is False and got["ref.exact"].passed is False


def test_an_answer_of_no_text_at_all_does_not_raise():
    completion = answer("")
    object.__setattr__(completion, "text", None)
    assert scores_of(ReferenceScorer(), Case("c", {}, "Paris", 1), completion)["ref.exact"].value == 0.0


def scores_of(scorer, case, completion) -> dict:
    return {s.metric: s for _, s in score_completion([scorer], case, completion)}


def _rows(scorer: ReferenceScorer, answered: list[tuple[Case, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"case_id": case.id, "metric": s.metric, "value": s.value, "passed": s.passed,
                          "detail": s.detail} for case, text in answered for s in scorer(case, answer(text))],
                        columns=["case_id", "metric", "value", "passed", "detail"])


def test_aggregate_counts_an_unanswered_case_with_a_reference_as_zero():
    scorer = ReferenceScorer()
    same = Case("same", {}, "police killed the gunman", 1)  # 1, 1, exact
    swapped = Case("swapped", {}, "police killed the gunman", 2)  # token F1 1, ROUGE-L 0.5, not exact
    no_reference = Case("none", {}, None, 3)  # answered, and no rows: not counted
    failed = Case("failed", {}, "a reference", 4)  # unanswered with a reference: 0 on each
    failed_no_reference = Case("failed-none", {}, None, 5)  # unanswered without one: not counted
    rows = _rows(scorer, [(same, "Police killed the gunman."), (swapped, "the gunman killed police"),
                          (no_reference, "whatever")])
    metrics = {m.name: m for m in scorer.aggregate(rows, [failed, failed_no_reference])}
    assert set(metrics) == set(ReferenceScorer.METRICS)
    assert metrics["ref.token_f1_mean"].value == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["ref.rouge_l_mean"].value == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["ref.exact_rate"].value == pytest.approx(1 / 3)
    assert metrics["ref.exact_rate"].detail == {"n": 3, "answered": 2, "unanswered": 1}


def test_aggregate_of_nothing_is_undefined():
    empty = pd.DataFrame(columns=["case_id", "metric", "value", "passed", "detail"])
    assert [m.value for m in ReferenceScorer().aggregate(empty, [Case("c", {}, None, 1)])] == [None, None, None]
    only_missed = ReferenceScorer().aggregate(empty, [Case("c", {}, "ref", 1)])
    assert [m.value for m in only_missed] == [0.0, 0.0, 0.0]


def test_run_level_metrics_through_the_registry():
    scorer = ReferenceScorer(name="ref")
    cases = {c.id: c for c in (Case("a", {}, "the cat sat", 1), Case("b", {}, "the dog ran", 2))}
    scored = [("p", "a", s) for s in scorer(cases["a"], answer("the cat sat"))]
    scores_table = pd.DataFrame([{"provider": p, "scorer": "ref", "case_id": c, "metric": s.metric, "value": s.value,
                                  "passed": s.passed, "detail": json.dumps(s.detail)} for p, c, s in scored])
    responses = pd.DataFrame([{"provider": "p", "case_id": "a", "error": None},
                              {"provider": "p", "case_id": "b", "error": "timeout"}])
    rows = {r["metric"]: r for r in aggregate_metrics([scorer], scores_table, responses, cases)}
    assert rows["ref.token_f1_mean"]["value"] == pytest.approx(0.5)  # 1 for a, 0 for the failed call on b
    assert rows["ref.exact_rate"]["detail"] == {"n": 2, "answered": 1, "unanswered": 1}


def test_metrics_declared():
    declared = ReferenceScorer.METRICS
    assert declared["ref.token_f1_mean"].headline and declared["ref.rouge_l_mean"].headline
    assert not declared["ref.exact_rate"].headline
    assert all(info.better == "higher" and not info.count for info in declared.values())
    assert isinstance(ReferenceScorer().aggregate(pd.DataFrame(), [])[0], Metric)


def test_importing_the_module_does_not_import_rouge_score():
    code = ("import sys, harness.scoring.reference; "
            "assert 'rouge_score' not in sys.modules and 'nltk' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


REFERENCE_SUITE = """
name = "answers"
task = "generation"
[output]
format = "text"
[[scorers]]
kind = "reference"
measure = "token_f1"
threshold = 0.5
[[providers]]
id = "local:smollm2-135m"
role = "candidate"
"""


def _write_suite(path: Path, config: str) -> Path:
    (path / "suite.toml").write_text(config)
    (path / "prompt.j2").write_text("Answer briefly: {{ question }}")
    rows = [{"id": "q1", "question": "Capital of France?", "gold": "Paris is the capital of France."},
            {"id": "q2", "question": "Say anything."}]  # no reference
    (path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_suite_builds_the_scorer_from_its_entry(tmp_path: Path):
    suite = load_suite(_write_suite(tmp_path, REFERENCE_SUITE))
    [scorer] = build_scorers(suite)
    assert isinstance(scorer, ReferenceScorer)
    assert (scorer.name, scorer.measure, scorer.threshold) == ("reference", "token_f1", 0.5)
    with_reference, without = suite.cases
    assert with_reference.gold == "Paris is the capital of France." and without.gold is None
    # shared: paris, capital, of, france (answer 4 tokens, reference 6): P 1, R 2/3, F 0.8, at or above 0.5
    got = {s.metric: s for s in scorer(with_reference, answer("Paris, capital of France"))}
    assert got["ref.token_f1"].value == pytest.approx(f1(4, 4, 6))
    assert got["case_pass"].passed is True
    assert scorer(without, answer("Paris")) == []


@pytest.mark.parametrize("threshold", ["2", "-0.1"])
def test_a_threshold_outside_zero_to_one_is_a_suite_error(tmp_path: Path, threshold):
    _write_suite(tmp_path, REFERENCE_SUITE.replace("threshold = 0.5", f"threshold = {threshold}"))
    with pytest.raises(SuiteError, match="threshold"):
        load_suite(tmp_path)


def test_an_unknown_measure_is_a_suite_error(tmp_path: Path):
    _write_suite(tmp_path, REFERENCE_SUITE.replace('"token_f1"', '"bleu"'))
    with pytest.raises(SuiteError, match="measure"):
        load_suite(tmp_path)
