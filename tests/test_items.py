from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import answer

from harness.scoring.items import (
    DETAIL_LIMIT,
    MAX_ITEMS,
    PRICE_RESCUE_FLOOR,
    LineItemsScorer,
    match_items,
    name_similarity,
    prices_agree,
)
from harness.scoring.registry import score_completion
from harness.suite.load import Case

WILDRECEIPT = Path(__file__).resolve().parent.parent / "suites" / "receipts" / "cases.jsonl"  # WildReceipt


def _item(name, price=None, quantity=None) -> dict:
    return {"name": name, "quantity": quantity, "price": price}


def _case(items, case_id: str = "c1") -> Case:
    return Case(id=case_id, input={"text": "..."}, gold={"store_name": "X", "line_items": items}, line=1)


def _run(gold_items, pred, scorer: LineItemsScorer | None = None, case_id: str = "c1") -> dict:
    """metric -> Score for one case; `pred` is a list of items (sent as {"line_items": pred}) or raw text."""
    text = pred if isinstance(pred, str) else json.dumps({"line_items": pred})
    scores = (scorer or LineItemsScorer())(_case(gold_items, case_id), answer(text))
    by_metric = {s.metric: s for s in scores}
    assert len(by_metric) == len(scores), "a metric was reported twice"
    for s in scores:
        json.dumps(s.detail, allow_nan=False)  # every detail is strict JSON
        assert 0.0 <= s.value <= 1.0
    return by_metric


# --- names and prices -------------------------------------------------------------------------------------------


def test_name_similarity_ignores_whitespace_case_and_punctuation():
    assert name_similarity("ORGANICPAST", "Organic Past") == 1.0
    assert name_similarity("ORGANIC PAST", "organic-past.") == 1.0
    assert name_similarity(None, "") == 1.0  # two absent names agree
    assert name_similarity(None, "COKE") == 0.0
    assert name_similarity(["COLA", "COKE"], "coke") == 1.0
    assert name_similarity("CHICKEN", "FRIED RICE") < 0.5


def test_prices_agree_as_amounts():
    assert prices_agree("£3.00", "3")
    assert prices_agree("RM 1,234.50", 1234.5)
    assert prices_agree(["5.99", "6.00"], "6")
    assert not prices_agree("5.99", "5.98")
    assert not prices_agree(None, None)
    assert not prices_agree("n/a", "n/a")


def test_spaced_name_matches_unspaced_gold():
    s = _run([_item("ORGANICPAST", "5.99")], [_item("Organic Past", "5.99")])
    detail = s["items.f1"].detail
    assert detail["tp"] == 1 and detail["missing"] == [] and detail["extra"] == []
    assert detail["matches"][0]["similarity"] == 1.0
    assert s["items.f1"].value == 1.0 and s["items.f1"].passed is True
    assert s["case_pass"].passed is True


def test_exact_name_matches_without_price():
    # the name alone (similarity 1.0 >= min_similarity) is enough; the price then counts as wrong
    s = _run([_item("ORGANICPAST", "5.99")], [_item("ORGANIC PAST", None)])
    assert s["items.f1"].value == 1.0
    assert s["item_field.price"].value == 0.0
    assert s["case_pass"].passed is False


# --- assignment ---------------------------------------------------------------------------------------------------


def _greedy_matches(gold_names: list[str], pred_names: list[str], threshold: float) -> int:
    """Best pair first, then the next best among the rest: what an optimal assignment must beat."""
    pairs = sorted(((name_similarity(g, p), i, j) for i, g in enumerate(gold_names)
                    for j, p in enumerate(pred_names)), reverse=True)
    used_g, used_p, n = set(), set(), 0
    for sim, i, j in pairs:
        if sim >= threshold and i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            n += 1
    return n


def test_optimal_assignment_beats_greedy():
    gold = ["CHICKEN RICE", "CHICKEN"]
    pred = ["CHICKEN RICE", "FRIED RICE"]
    # greedy takes CHICKEN RICE = CHICKEN RICE (1.0); CHICKEN vs FRIED RICE is then under the threshold
    assert _greedy_matches(gold, pred, 0.5) == 1
    s = _run([_item(n) for n in gold], [_item(n) for n in pred])
    detail = s["items.f1"].detail
    assert detail["tp"] == 2
    assert s["items.recall"].value == 1.0 and s["items.precision"].value == 1.0
    assert {(m["gold"]["name"], m["pred"]["name"]) for m in detail["matches"]} == {
        ("CHICKEN RICE", "FRIED RICE"), ("CHICKEN", "CHICKEN RICE")}
    assert match_items([_item(n) for n in gold], [_item(n) for n in pred]) == [
        (0, 1, pytest.approx(0.6)), (1, 0, pytest.approx(7 / 9))]


def test_assignment_maximises_the_number_of_matches_first():
    # CHICKEN RICE = CHICKEN RICE with agreeing prices is the heaviest single pair (1.0 + price bonus), heavier
    # than the other two pairs together (0.6 + 0.78); the assignment still takes the two pairs
    gold = [_item("CHICKEN RICE", "5.00"), _item("CHICKEN")]
    pred = [_item("CHICKEN RICE", "5.00"), _item("FRIED RICE")]
    assert [(i, j) for i, j, _ in match_items(gold, pred)] == [(0, 1), (1, 0)]
    s = _run(gold, pred)
    assert s["items.f1"].value == 1.0
    assert s["item_field.price"].value == 0.0  # CHICKEN RICE was paired with FRIED RICE, which has no price


def test_other_fields_break_ties_between_equal_pairs():
    # nameless items with no price are equally similar; agreeing quantities decide the pairing
    gold = [_item(None, None, "1"), _item(None, None, "3")]
    pred = [_item(None, None, "3"), _item(None, None, "1")]
    assert [(i, j) for i, j, _ in match_items(gold, pred)] == [(0, 1), (1, 0)]
    s = _run(gold, pred)
    assert s["item_field.quantity"].value == 1.0 and s["case_pass"].passed is True


def test_assignment_prefers_better_pairs_when_counts_tie():
    # both assignments match two items; the one pairing identical names wins
    gold = [_item("COKE", "3.00"), _item("COKE ZERO", "3.50")]
    pred = [_item("COKE ZERO", "3.50"), _item("COKE", "3.00")]
    assert match_items(gold, pred) == [(0, 1, 1.0), (1, 0, 1.0)]
    assert _run(gold, pred)["case_pass"].passed is True


def test_price_agreement_rescues_an_abbreviated_name():
    gold = [_item("KIRKLAND SIGNATURE WATER", "4.99")]
    sim = name_similarity("KIRKLAND SIGNATURE WATER", "KS WATER")
    assert PRICE_RESCUE_FLOOR <= sim < 0.5  # under the threshold, above the floor
    rescued = _run(gold, [_item("KS WATER", "$4.99")])
    assert rescued["items.f1"].detail["tp"] == 1
    assert rescued["items.f1"].detail["matches"][0]["similarity"] == pytest.approx(sim, abs=1e-4)
    assert rescued["item_field.price"].value == 1.0
    # the same name with a different price is not a match: one miss and one extra
    unrescued = _run(gold, [_item("KS WATER", "5.99")])
    assert unrescued["items.f1"].detail["tp"] == 0
    assert unrescued["items.recall"].value == 0.0 and unrescued["items.precision"].value == 0.0
    assert len(unrescued["items.f1"].detail["missing"]) == 1 and len(unrescued["items.f1"].detail["extra"]) == 1


def test_agreeing_price_does_not_rescue_a_name_under_the_floor():
    assert name_similarity("BANANAS", "CANTALOUPE") < PRICE_RESCUE_FLOOR
    s = _run([_item("BANANAS", "5.49")], [_item("CANTALOUPE", "5.49")])
    assert s["items.f1"].detail["tp"] == 0
    assert "item_field.price" not in s  # no matched pair, nothing compared


def test_min_similarity_is_configurable():
    gold, pred = [_item("CHICKEN RICE")], [_item("FRIED RICE")]  # similarity 0.6
    assert _run(gold, pred)["items.f1"].detail["tp"] == 1
    assert _run(gold, pred, LineItemsScorer(min_similarity=0.7))["items.f1"].detail["tp"] == 0


def test_changed_price_is_a_wrong_field_not_a_miss():
    gold = [_item("BROCCOLI", "4.79", "1"), _item("BANANAS", "1.47", "2")]
    pred = [_item("BROCCOLI", "4.97", 1), _item("BANANAS", "1.47", 2)]
    s = _run(gold, pred)
    assert s["items.f1"].value == 1.0 and s["items.f1"].passed is True
    assert s["item_field.price"].value == 0.5
    assert s["item_field.price"].detail == {"correct": 1, "compared": 2}
    assert s["item_field.price"].passed is None
    assert s["item_field.quantity"].value == 1.0  # "1" equals 1 as amounts
    fields = {m["gold"]["name"]: m["fields"] for m in s["items.f1"].detail["matches"]}
    assert fields == {"BROCCOLI": {"quantity": True, "price": False}, "BANANAS": {"quantity": True, "price": True}}
    assert s["case_pass"].passed is False and s["case_pass"].detail["wrong_fields"] == 1


def test_field_without_gold_value_is_not_compared():
    s = _run([_item("COKE", "3.00", None)], [_item("COKE", "3.00", "7")])
    assert "item_field.quantity" not in s
    assert s["items.f1"].detail["matches"][0]["fields"] == {"price": True}
    assert s["case_pass"].passed is True


def test_missing_predicted_field_is_wrong():
    s = _run([_item("COKE", "3.00", "2")], [{"name": "COKE", "price": "3.00"}])
    assert s["item_field.quantity"].value == 0.0
    assert s["case_pass"].passed is False


def test_duplicates_are_matched_one_to_one():
    gold = [_item("Coke", "£3.00"), _item("Coke", "£3.00")]
    s = _run(gold, [_item("COKE", "3.00")])
    assert s["items.recall"].value == 0.5
    assert s["items.precision"].value == 1.0
    assert s["items.f1"].value == pytest.approx(2 / 3) and s["items.f1"].passed is False
    assert len(s["items.f1"].detail["missing"]) == 1
    assert s["case_pass"].passed is False
    # and the other way round: one gold item does not absorb two predictions
    s = _run(gold[:1], [_item("COKE", "3.00"), _item("COKE", "3.00")])
    assert s["items.precision"].value == 0.5 and s["items.recall"].value == 1.0


def test_extra_items_lower_precision():
    gold = [_item("BROCCOLI", "4.79"), _item("BANANAS", "1.47")]
    pred = [_item("BROCCOLI", "4.79"), _item("BANANAS", "1.47"), _item("SUBTOTAL", "6.26")]
    s = _run(gold, pred)
    assert s["items.precision"].value == pytest.approx(2 / 3)
    assert s["items.recall"].value == 1.0
    assert s["items.f1"].value == pytest.approx(0.8)
    assert s["items.f1"].detail["extra"] == [_item("SUBTOTAL", "6.26")]
    assert s["case_pass"].passed is False and s["case_pass"].detail["extra"] == 1


def test_predicted_entries_that_are_not_objects_are_extras():
    s = _run([_item("COKE", "3.00")], [_item("COKE", "3.00"), "DIET COKE 3.00", None])
    detail = s["items.f1"].detail
    assert detail["tp"] == 1 and detail["n_pred"] == 3
    assert detail["extra"] == ["DIET COKE 3.00", None]
    assert detail["problem"] is None and "not JSON objects" in detail["notes"][0]
    assert s["items.precision"].value == pytest.approx(1 / 3)


# --- output shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Here are the items: broccoli",
    "",
    '{"items": [{"name": "BROCCOLI", "price": "4.79"}]}',  # the wrong key
    '{"line_items": "BROCCOLI 4.79"}',
    '{"line_items": {"name": "BROCCOLI", "price": "4.79"}}',
    '{"line_items": null}',
    '"BROCCOLI"',
    "42",
    "null",
    '{"line_items": [',
])
def test_invalid_output_misses_every_gold_item(text):
    gold = [_item("BROCCOLI", "4.79"), _item("BANANAS", "1.47")]
    s = _run(gold, text)
    detail = s["items.f1"].detail
    assert isinstance(detail["problem"], str) and detail["problem"]
    assert detail["tp"] == 0 and detail["n_pred"] == 0 and detail["n_gold"] == 2
    assert len(detail["missing"]) == 2
    assert s["items.recall"].value == 0.0 and s["items.precision"].value == 0.0 and s["items.f1"].value == 0.0
    assert s["case_pass"].passed is False
    assert not any(m.startswith("item_field.") for m in s)


def test_invalid_output_with_no_gold_items_still_fails():
    s = _run([], "not json")
    assert s["items.f1"].value == 0.0 and s["case_pass"].passed is False


def test_bare_list_and_code_fence_are_accepted():
    gold = [_item("BROCCOLI", "4.79")]
    assert _run(gold, json.dumps([_item("broccoli", "4.79")]))["case_pass"].passed is True
    fenced = "```json\n" + json.dumps({"line_items": [_item("broccoli", "4.79")]}) + "\n```"
    assert _run(gold, fenced)["case_pass"].passed is True


def test_empty_gold_and_empty_prediction_is_perfect():
    s = _run([], [])
    assert s["items.precision"].value == s["items.recall"].value == s["items.f1"].value == 1.0
    assert s["items.f1"].passed is True and s["case_pass"].passed is True
    assert s["items.precision"].passed is None and s["items.recall"].passed is None
    # gold without the key, or with null, is no items
    for gold in ({"store_name": "X"}, {"line_items": None}):
        case = Case(id="c", input={}, gold=gold, line=1)
        scores = {x.metric: x for x in LineItemsScorer()(case, answer('{"line_items": []}'))}
        assert scores["case_pass"].passed is True and scores["items.f1"].detail["n_gold"] == 0


def test_one_side_empty():
    s = _run([], [_item("COKE", "3.00")])
    assert (s["items.precision"].value, s["items.recall"].value, s["items.f1"].value) == (0.0, 0.0, 0.0)
    assert s["case_pass"].passed is False
    s = _run([_item("COKE", "3.00")], [])
    assert (s["items.precision"].value, s["items.recall"].value, s["items.f1"].value) == (0.0, 0.0, 0.0)
    assert s["items.f1"].detail["problem"] is None


def test_metric_names():
    s = _run([_item("COKE", "3.00", "1")], [_item("COKE", "3.00", "1")])
    assert list(s) == ["items.precision", "items.recall", "items.f1", "item_field.quantity", "item_field.price",
                       "case_pass"]


def test_custom_key_and_item_fields():
    scorer = LineItemsScorer(key="items", item_fields={"description": "text", "amount": "amount"}, name="lines")
    case = Case(id="c", input={}, gold={"items": [{"description": "Consulting", "amount": "1,200.00"}]}, line=1)
    text = '{"items": [{"description": "CONSULTING", "amount": 1200}]}'
    good = {x.metric: x for x in scorer(case, answer(text))}
    assert good["case_pass"].passed is True and good["item_field.amount"].value == 1.0
    assert scorer.name == "lines"
    bad = {x.metric: x for x in scorer(case, answer('{"line_items": []}'))}
    assert bad["items.recall"].value == 0.0 and "'items'" in bad["items.f1"].detail["problem"]


def test_details_are_bounded():
    gold = [_item(f"ITEM NUMBER {i}", f"{i}.00") for i in range(DETAIL_LIMIT + 10)]
    s = _run(gold, [_item("X" * 5000, "1.00")])
    detail = s["items.f1"].detail
    assert len(detail["missing"]) == DETAIL_LIMIT and detail["omitted"] == {"missing": 10}
    assert len(detail["extra"][0]["name"]) < 300
    assert detail["n_gold"] == DETAIL_LIMIT + 10


def test_very_long_prediction_is_bounded_and_counted():
    pred = [_item(f"FILLER {i}", "0.01") for i in range(MAX_ITEMS + 100)] + [_item("COKE", "3.00")]
    s = _run([_item("COKE", "3.00")], pred)
    detail = s["items.f1"].detail
    assert detail["n_pred"] == MAX_ITEMS + 101
    assert detail["tp"] == 0  # COKE is past the compared items
    assert any(str(MAX_ITEMS) in note for note in detail["notes"])


def test_odd_values_never_raise():
    pred = [{"name": {"nested": ["x"]}, "price": [1, 2], "quantity": True}, {"name": 12, "price": 1e308},
            {"name": "COKE", "price": "NaN", "quantity": {"a": 1}}]
    s = _run([_item("COKE", "3.00", "1"), _item(12, "1e308")], json.dumps(pred))
    assert s["items.f1"].detail["tp"] == 2


def test_deterministic():
    gold = [_item("COKE", "3.00"), _item("COKE", "3.00"), _item("DIET COKE", "3.00"), _item(None, "1.00")]
    pred = [_item("COKE", "3.00"), _item("DIETCOKE", "3.00"), _item(None, "1.00"), _item(None, "1.00")]
    first = _run(gold, pred)
    for _ in range(3):
        again = _run(gold, pred)
        assert {k: (v.value, v.passed, v.detail) for k, v in again.items()} == {
            k: (v.value, v.passed, v.detail) for k, v in first.items()}


def test_runs_under_score_completion():
    scorer = LineItemsScorer()
    out = score_completion([scorer], _case([_item("COKE", "3.00")]), answer("garbage"))
    assert [s.metric for _, s in out][-1] == "case_pass"
    assert all(name == "line_items" for name, _ in out)


# --- aggregate ----------------------------------------------------------------------------------------------------


def _frame(scorer: LineItemsScorer, cases_and_outputs: list[tuple[Case, str]], as_json: bool = False) -> pd.DataFrame:
    rows = []
    for case, text in cases_and_outputs:
        for s in scorer(case, answer(text)):
            detail = json.dumps(s.detail) if as_json else s.detail
            rows.append({"case_id": case.id, "metric": s.metric, "value": s.value, "passed": s.passed,
                         "detail": detail})
    return pd.DataFrame(rows, columns=["case_id", "metric", "value", "passed", "detail"])


@pytest.mark.parametrize("as_json", [False, True])
def test_aggregate_micro_by_hand(as_json):
    scorer = LineItemsScorer()
    # A: 3 gold, 2 predicted, both right (tp 2, prices 2/2)
    a = _case([_item("BROCCOLI", "4.79"), _item("BANANAS", "1.47"), _item("ROMAINE", "3.79")], "a")
    a_out = json.dumps({"line_items": [_item("BROCCOLI", "4.79"), _item("BANANAS", "1.47")]})
    # B: 1 gold, 2 predicted, one match with a wrong price and quantity right (tp 1, price 0/1, quantity 1/1)
    b = _case([_item("COKE", "3.00", "2")], "b")
    b_out = json.dumps({"line_items": [_item("COKE", "3.50", "2"), _item("SERVICE CHARGE", "0.30")]})
    # C: invalid output, 1 gold item (tp 0, n_pred 0)
    c = _case([_item("TEA", "2.00")], "c")
    # D: no answer (failed call), 2 gold items
    d = _case([_item("RICE", "1.00"), _item("EGG", "0.50")], "d")
    frame = _frame(scorer, [(a, a_out), (b, b_out), (c, "sorry")], as_json=as_json)
    metrics = {m.name: m for m in scorer.aggregate(frame, [d])}
    tp, n_pred, n_gold = 3, 4, 3 + 1 + 1 + 2
    assert metrics["items.micro_precision"].value == pytest.approx(tp / n_pred)  # 0.75
    assert metrics["items.micro_recall"].value == pytest.approx(tp / n_gold)  # 3/7
    assert metrics["items.micro_f1"].value == pytest.approx(2 * tp / (n_pred + n_gold))  # 6/11
    detail = metrics["items.micro_f1"].detail
    assert (detail["tp"], detail["n_pred"], detail["n_gold"]) == (3, 4, 7)
    assert (detail["cases"], detail["unanswered"], detail["unanswered_gold_items"], detail["invalid_outputs"]) == (
        3, 1, 2, 1)
    assert metrics["item_field.price"].value == pytest.approx(2 / 3)
    assert metrics["item_field.price"].detail == {"correct": 2, "compared": 3}
    assert metrics["item_field.quantity"].value == 1.0
    assert metrics["item_field.quantity"].detail == {"correct": 1, "compared": 1}
    assert metrics["items.n_gold"].value == 7 and metrics["items.n_pred"].value == 4
    assert metrics["items.matched"].value == 3
    assert metrics["items.invalid_outputs"].value == 1 and metrics["items.unanswered"].value == 1


def test_aggregate_undefined_values_are_none():
    scorer = LineItemsScorer()
    metrics = {m.name: m for m in scorer.aggregate(pd.DataFrame(columns=["case_id", "metric", "value", "passed",
                                                                         "detail"]), [])}
    for name in ("items.micro_precision", "items.micro_recall", "items.micro_f1", "item_field.quantity",
                 "item_field.price"):
        assert metrics[name].value is None
    # only failed calls: recall is 0, precision undefined
    metrics = {m.name: m for m in scorer.aggregate(pd.DataFrame(), [_case([_item("TEA", "2.00")])])}
    assert metrics["items.micro_precision"].value is None
    assert metrics["items.micro_recall"].value == 0.0 and metrics["items.micro_f1"].value == 0.0
    # cases with no items on either side leave the micro numbers undefined, not perfect
    frame = _frame(scorer, [(_case([]), '{"line_items": []}')])
    assert {m.name: m.value for m in scorer.aggregate(frame, [])}["items.micro_f1"] is None


# --- real data ----------------------------------------------------------------------------------------------------


def test_gold_items_as_prediction_score_perfectly_on_wildreceipt():
    rows = [json.loads(line) for line in WILDRECEIPT.read_text().splitlines()[:20]]
    assert len(rows) == 20
    scorer = LineItemsScorer()
    cases = [Case(id=r["id"], input={"text": r["text"]}, gold=r["gold"], line=n) for n, r in enumerate(rows, 1)]
    for case in cases:
        items = case.gold["line_items"]
        for pred in (items, list(reversed(items))):
            s = {x.metric: x for x in scorer(case, answer(json.dumps({"line_items": pred})))}
            assert s["items.f1"].value == 1.0, case.id
            assert s["items.f1"].detail["tp"] == len(items), case.id
            assert s["case_pass"].passed is True, (case.id, s["case_pass"].detail)
    frame = _frame(scorer, [(c, json.dumps({"line_items": c.gold["line_items"]})) for c in cases])
    metrics = {m.name: m.value for m in scorer.aggregate(frame, [])}
    assert metrics["items.micro_f1"] == 1.0 and metrics["item_field.price"] == 1.0
