from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import answer

from harness.scoring import clauses
from harness.scoring.clauses import DEFAULT_CATEGORIES, ClausesScorer, answer_match, is_grounded, quote_span
from harness.suite.load import Case

CUAD = Path(__file__).resolve().parent.parent / "suites" / "contracts" / "cases.jsonl"  # CUAD, as the suite holds it

CONTRACT = (
    "DISTRIBUTION AGREEMENT\n\n"
    'This Distribution Agreement is made on June 21, 1999 between ACME WIDGETS, INC. ("Acme") and\n'
    'Beta   Corp. ("Beta").\n\n'
    "1. Term. The term of this Agreement shall continue for one (1) year from the Effective Date.\n"
    "2. Exclusivity. Beta shall be the exclusive distributor of Acme’s products in the Territory.\n"
    "3. Governing Law. This Agreement shall be governed by\n    the laws of the State of California.\n"
    "4. Assignment. Neither party may assign this Agreement without the prior written consent of the other party.\n"
)

GOVERNING = "This Agreement shall be governed by\n    the laws of the State of California."
EXCLUSIVE = "Beta shall be the exclusive distributor of Acme’s products in the Territory."
ASSIGN = "Neither party may assign this Agreement without the prior written consent of the other party."
CATS = ["Parties", "Agreement Date", "Governing Law", "Exclusivity", "Anti-Assignment", "Non-Compete"]


def _span(text: str, piece: str) -> dict:
    start = text.index(piece)
    return {"text": piece, "start": start, "end": start + len(piece)}


def _gold(text: str = CONTRACT) -> dict:
    gold = {
        "Parties": {"present": True, "answer": 'ACME WIDGETS, INC. ("Acme"); Beta Corp. ("Beta")',
                    "spans": [_span(text, "ACME WIDGETS, INC."), _span(text, "Beta   Corp.")]},
        "Agreement Date": {"present": True, "answer": "6/21/99", "spans": [_span(text, "June 21, 1999")]},
        "Governing Law": {"present": True, "answer": "California", "spans": [_span(text, GOVERNING)]},
        "Exclusivity": {"present": True, "answer": "Yes", "spans": [_span(text, EXCLUSIVE)]},
        "Anti-Assignment": {"present": True, "answer": "Yes", "spans": [_span(text, ASSIGN)]},
        "Non-Compete": {"present": False, "answer": "No", "spans": []},
    }
    for spans in (g["spans"] for g in gold.values()):
        for s in spans:
            assert text[s["start"]:s["end"]] == s["text"]
    return gold


def _case(case_id: str = "c1", text: str = CONTRACT, gold: dict | None = None, context: dict | None = None) -> Case:
    return Case(id=case_id, input={"text": text}, gold=_gold(text) if gold is None else gold, line=1,
                context=context)


def _perfect() -> dict:
    return {
        "Parties": {"present": True, "quote": ["ACME WIDGETS, INC.", "Beta Corp."],
                    "answer": "Acme Widgets, Inc.; Beta Corp."},
        "Agreement Date": {"present": True, "quote": "June 21, 1999", "answer": "June 21, 1999"},
        "Governing Law": {"present": True, "quote": GOVERNING, "answer": "State of California"},
        "Exclusivity": {"present": True, "quote": EXCLUSIVE},
        "Anti-Assignment": {"present": True, "quote": ASSIGN},
        "Non-Compete": {"present": False, "quote": None},
    }


def _score(output, case: Case | None = None, categories=CATS) -> dict:
    text = output if isinstance(output, str) else json.dumps(output)
    rows = ClausesScorer(categories)(case or _case(), answer(text))
    by_metric = {s.metric: s for s in rows}
    assert len(by_metric) == len(rows)
    return by_metric


def _frame(pairs: list[tuple[str, list]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"case_id": cid, "metric": s.metric, "value": s.value, "passed": s.passed, "detail": s.detail}
        for cid, scores in pairs for s in scores
    ])


# ---------------------------------------------------------------- grounding


def test_whitespace_and_line_breaks_do_not_matter():
    assert is_grounded("This Agreement shall be governed by the laws of the State of California.", CONTRACT)
    assert is_grounded("  This Agreement shall\nbe governed   by the\tlaws ", CONTRACT)
    assert is_grounded("Beta Corp.", CONTRACT)  # "Beta   Corp." in the contract


def test_one_changed_word_is_not_grounded():
    assert not is_grounded("This Agreement shall be governed by the laws of the State of Nevada.", CONTRACT)
    assert not is_grounded("This Agreement shall be construed by the laws of the State of California.", CONTRACT)
    assert quote_span("This Agreement shall be construed by the laws", CONTRACT) is None


def test_curly_quotes_and_dashes_are_normalised_both_ways():
    assert is_grounded("the exclusive distributor of Acme's products", CONTRACT)  # contract has ’
    assert is_grounded("ACME WIDGETS, INC. (“Acme”)", CONTRACT)  # contract has straight quotes
    text = "The fee is payable net‑30 — no exceptions."
    assert is_grounded("payable net-30 - no exceptions", text)
    assert is_grounded("payable net–30 – no exceptions", text)


def test_grounding_is_case_sensitive():
    assert not is_grounded("this agreement shall be governed by the laws", CONTRACT)
    scores = _score({**_perfect(), "Governing Law": {"present": True, "quote": "THIS AGREEMENT SHALL BE GOVERNED"}})
    assert scores["hallucinated_quotes"].value == 1.0
    assert scores["hallucinated_quotes"].detail["differs_only_in_case"] == 1


def test_ellipsis_parts_in_order():
    assert is_grounded("This Agreement shall be governed ... State of California.", CONTRACT)
    assert is_grounded("This Agreement shall be governed … State of California", CONTRACT)
    assert is_grounded("Neither party may assign [...] consent of the other party", CONTRACT)
    assert is_grounded("shall be governed by the laws...", CONTRACT)  # a trailing ellipsis only cuts it short
    assert not is_grounded("State of California ... This Agreement shall be governed", CONTRACT)
    assert not is_grounded("This Agreement shall be governed ... State of Nevada", CONTRACT)
    start, end = quote_span("This Agreement shall be governed ... State of California.", CONTRACT)
    assert CONTRACT[start:end] == GOVERNING


def test_literal_ellipsis_in_contract_is_matched_whole():
    text = "Signature: ...... Name: John Smith"
    assert is_grounded("Signature: ...... Name", text)
    assert quote_span("Signature: ...... Name", text) == (0, 22)


def test_quote_span_maps_back_through_collapsed_whitespace():
    text = "Intro.\n\n  The   Licensee\n\tshall  pay royalties.  End."
    start, end = quote_span("The Licensee shall pay royalties.", text)
    assert (start, end) == (10, 47)
    assert text[start:end] == "The   Licensee\n\tshall  pay royalties."
    start, end = quote_span("Licensee shall", text)
    assert text[start:end] == "Licensee\n\tshall"
    # the real contract: mapped span equals the original (multi-line) gold text
    start, end = quote_span("This Agreement shall be governed by the laws of the State of California.", CONTRACT)
    assert CONTRACT[start:end] == GOVERNING
    # a character before the match that normalises to nothing (zero-width space) does not shift offsets
    text = "A\u200bB  C\u2014D  E"
    assert quote_span("C-D E", text) == (5, 11)
    assert quote_span("AB C", text) == (0, 6)
    assert quote_span("nothing", text) is None
    assert quote_span("", text) is None
    assert quote_span("   ", text) is None


def test_quote_wrapped_in_quotation_marks_is_grounded():
    assert is_grounded('"Neither party may assign this Agreement"', CONTRACT)
    assert is_grounded("“Neither party may assign this Agreement”", CONTRACT)


# ---------------------------------------------------------------- scoring a case


def test_perfect_answer_passes_with_full_overlap():
    scores = _score(_perfect())
    assert scores["case_pass"].passed is True
    assert scores["valid_json"].passed is True
    assert scores["hallucinated_quotes"].value == 0.0
    assert scores["hallucinated_quotes"].passed is True
    assert scores["quotes_grounded"].value == 1.0
    assert scores["quotes_grounded"].passed is None
    assert scores["quotes_grounded"].detail == {"n_quotes": 6, "grounded": 6}
    gov = scores["clause.Governing Law"].detail
    assert gov["outcome"] == "tp" and gov["grounded"] is True
    assert gov["overlap"] == 1.0 and gov["gold_coverage"] == 1.0
    assert scores["clause.Parties"].detail["overlap"] == 1.0  # two quotes together cover both gold spans
    assert scores["clause.Non-Compete"].detail["outcome"] == "tn"
    assert scores["clause.Non-Compete"].detail["overlap"] is None
    for s in scores.values():
        json.dumps(s.detail)


def test_changed_word_is_a_counted_hallucination():
    out = _perfect()
    out["Governing Law"]["quote"] = "This Agreement shall be governed by the laws of the State of Nevada."
    scores = _score(out)
    hall = scores["hallucinated_quotes"]
    assert hall.value == 1.0 and hall.passed is False
    assert hall.detail["quotes"] == [out["Governing Law"]["quote"]]
    assert hall.detail["categories"] == ["Governing Law"]
    assert hall.detail["differs_only_in_case"] == 0
    assert scores["quotes_grounded"].value == pytest.approx(5 / 6)
    gov = scores["clause.Governing Law"]
    assert gov.passed is True  # presence is still right
    assert gov.detail["grounded"] is False and gov.detail["overlap"] is None and gov.detail["gold_coverage"] is None
    assert scores["case_pass"].passed is False


def test_overlap_and_coverage_by_hand():
    text = "0123456789 ABCDEFGHIJ KLMNOPQRST"
    gold = {"Exclusivity": {"present": True, "answer": "Yes", "spans": [_span(text, "ABCDEFGHIJ")]}}  # [11, 21)
    case = Case(id="c", input={"text": text}, gold=gold, line=1)
    detail = _score({"Exclusivity": {"present": True, "quote": "GHIJ KLMN"}}, case, ["Exclusivity"])[
        "clause.Exclusivity"].detail
    # quote [17, 26): intersection [17, 21) = 4, union [11, 26) = 15
    assert detail["overlap"] == pytest.approx(4 / 15)
    assert detail["gold_coverage"] == pytest.approx(4 / 10)
    # quote inside gold: overlap 4/10, coverage 4/10
    detail = _score({"Exclusivity": {"present": True, "quote": "CDEF"}}, case, ["Exclusivity"])[
        "clause.Exclusivity"].detail
    assert detail["overlap"] == pytest.approx(0.4) and detail["gold_coverage"] == pytest.approx(0.4)
    # grounded but elsewhere: zero overlap, not None
    detail = _score({"Exclusivity": {"present": True, "quote": "0123"}}, case, ["Exclusivity"])[
        "clause.Exclusivity"].detail
    assert detail["overlap"] == 0.0 and detail["gold_coverage"] == 0.0
    # two gold spans, one quote covering the first: union = 10 + 10, coverage 1/2
    gold2 = {"Exclusivity": {"present": True, "answer": "Yes",
                             "spans": [_span(text, "ABCDEFGHIJ"), _span(text, "KLMNOPQRST")]}}
    case2 = Case(id="c2", input={"text": text}, gold=gold2, line=1)
    detail = _score({"Exclusivity": {"present": True, "quote": "ABCDEFGHIJ"}}, case2, ["Exclusivity"])[
        "clause.Exclusivity"].detail
    assert detail["overlap"] == pytest.approx(10 / 20) and detail["gold_coverage"] == pytest.approx(0.5)


def test_repeated_quote_is_placed_on_gold():
    text = "Beta shall pay. Intro text here. Beta shall pay."
    gold = {"Exclusivity": {"present": True, "answer": "Yes", "spans": [{"text": "Beta shall pay.", "start": 33,
                                                                          "end": 48}]}}
    assert text[33:48] == "Beta shall pay."
    case = Case(id="c", input={"text": text}, gold=gold, line=1)
    detail = _score({"Exclusivity": {"present": True, "quote": "Beta shall pay."}}, case, ["Exclusivity"])[
        "clause.Exclusivity"].detail
    assert detail["overlap"] == 1.0
    assert quote_span("Beta shall pay.", text) == (0, 15)  # the public function gives the first occurrence


def test_identical_quotes_cover_two_gold_locations():
    text = "Acme Inc. agrees. Some terms. Acme Inc. signs."
    spans = [{"text": "Acme Inc.", "start": 0, "end": 9}, {"text": "Acme Inc.", "start": 30, "end": 39}]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)
    case = Case(id="c", input={"text": text}, gold={"Parties": {"present": True, "answer": "Acme Inc.",
                                                                "spans": spans}}, line=1)
    detail = _score({"Parties": {"present": True, "quote": ["Acme Inc.", "Acme Inc."]}}, case, ["Parties"])[
        "clause.Parties"].detail
    assert detail["overlap"] == 1.0 and detail["gold_coverage"] == 1.0
    detail = _score({"Parties": {"present": True, "quote": "Acme Inc."}}, case, ["Parties"])["clause.Parties"].detail
    assert detail["overlap"] == 0.5 and detail["gold_coverage"] == 0.5


def test_presence_outcomes():
    out = {
        "Parties": {"present": True, "quote": "ACME WIDGETS, INC."},  # tp
        "Agreement Date": {"present": False},  # fn
        "Non-Compete": {"present": True, "quote": "Beta shall be the exclusive distributor"},  # fp
    }
    gold = _gold()
    gold["Exclusivity"] = {"present": False, "answer": "No", "spans": []}
    scores = _score({**out, "Exclusivity": {"present": False}}, _case(gold=gold),
                    ["Parties", "Agreement Date", "Non-Compete", "Exclusivity"])
    outcomes = {k.removeprefix("clause."): (s.detail["outcome"], s.value, s.passed)
                for k, s in scores.items() if k.startswith("clause.")}
    assert outcomes == {
        "Parties": ("tp", 1.0, True), "Agreement Date": ("fn", 0.0, False),
        "Non-Compete": ("fp", 0.0, False), "Exclusivity": ("tn", 1.0, True),
    }
    assert scores["clause.Non-Compete"].detail["overlap"] is None  # no gold to overlap
    assert scores["clause.Non-Compete"].detail["grounded"] is True
    assert scores["case_pass"].passed is False


def test_quote_of_a_category_predicted_absent_is_checked():
    out = {**_perfect(), "Non-Compete": {"present": False, "quote": "an invented clause"}}
    scores = _score(out)
    assert scores["hallucinated_quotes"].value == 1.0
    assert scores["hallucinated_quotes"].detail["quotes"] == ["an invented clause"]
    assert scores["hallucinated_quotes"].detail["categories"] == ["Non-Compete"]
    row = scores["clause.Non-Compete"]
    assert row.passed is True and row.detail["outcome"] == "tn"  # presence is still right
    assert row.detail["quote"] == "an invented clause" and row.detail["grounded"] is False
    assert scores["case_pass"].passed is False
    # a real quote under a category marked absent is grounded, but says nothing of where the clause is
    out = {**_perfect(), "Governing Law": {"present": False, "quote": GOVERNING}}
    scores = _score(out)
    assert scores["hallucinated_quotes"].value == 0.0
    gov = scores["clause.Governing Law"].detail
    assert gov["outcome"] == "fn" and gov["grounded"] is True and gov["overlap"] is None


def test_placeholders_are_no_quote():
    out = {**_perfect(), "Non-Compete": {"present": False, "quote": "N/A"},
           "Exclusivity": {"present": True, "quote": ["Not found", EXCLUSIVE]}}
    for placeholder in ("N/A", "None", "not applicable", "-", "null", "Not found"):
        out["Non-Compete"]["quote"] = placeholder
        scores = _score(out)
        assert scores["hallucinated_quotes"].value == 0.0, placeholder
        assert scores["clause.Non-Compete"].detail["quote"] is None
    assert scores["clause.Exclusivity"].detail["quote"] == EXCLUSIVE
    assert scores["case_pass"].passed is True


# issue 16: over 3 contracts a model invented 10 quote strings, `2019-8-31` under 8 clause types marked absent
INVENTED_DATE = "2019-8-31"
INVENTED_TIME = "2016-09-30T08:57:42Z"


def test_an_invented_quote_counts_once_per_case_wherever_it_is_given():
    absent = ["Non-Compete", "Exclusivity", "Anti-Assignment", "Governing Law", "Agreement Date", "Parties"]
    out = {name: {"present": False, "quote": INVENTED_DATE, "answer": None} for name in absent}
    out["Parties"]["quote"] = [INVENTED_DATE, " 2019-8-31 ", INVENTED_TIME]  # the same string, spaced, is the same
    scores = _score(out)
    hall = scores["hallucinated_quotes"]
    assert hall.value == 2.0 and hall.passed is False
    assert hall.detail["quotes"] == [INVENTED_DATE, INVENTED_TIME]
    assert hall.detail["categories"] == CATS
    assert hall.detail["n_quotes"] == 2 and hall.detail["n_given"] == 8
    assert scores["quotes_grounded"].value == 0.0
    assert scores["quotes_grounded"].detail == {"n_quotes": 2, "grounded": 0}
    assert all(scores[f"clause.{c}"].detail["grounded"] is False for c in absent)
    # a grounded quote repeated under two categories is one quote too
    out = {**_perfect(), "Agreement Date": {"present": True, "quote": GOVERNING, "answer": "June 21, 1999"}}
    assert _score(out)["quotes_grounded"].detail == {"n_quotes": 5, "grounded": 5}

    # across cases, each case counts its own distinct invented quotes: 2 + 1 + 0
    scorer = ClausesScorer(CATS)
    outputs = [
        {**{name: {"present": False, "quote": INVENTED_DATE} for name in absent}, "Parties": INVENTED_TIME},
        {"Non-Compete": {"present": False, "quote": INVENTED_DATE}, "Exclusivity": [INVENTED_DATE]},
        _perfect(),
    ]
    rows = [(f"c{i}", scorer(_case(f"c{i}"), answer(json.dumps(o)))) for i, o in enumerate(outputs)]
    metrics = {m.name: m for m in scorer.aggregate(_frame(rows), [])}
    assert metrics["quotes.hallucinated"].value == 3.0
    assert metrics["quotes.hallucination_rate"].value == pytest.approx(3 / (2 + 1 + 6))


@pytest.mark.parametrize("shape", ["wrapped", "list", "keys", "strings"])
def test_tolerant_output_shapes(shape):
    perfect = _perfect()
    if shape == "wrapped":
        output = {"clauses": perfect}
    elif shape == "list":
        output = [{"category": k, **v} for k, v in perfect.items()]
    elif shape == "keys":
        output = {k.upper().replace(" ", "_").replace("-", ""): v for k, v in perfect.items()}
    else:
        output = {k: {**v, "present": "Yes" if v["present"] else "no"} for k, v in perfect.items()}
        output["Exclusivity"]["present"] = "TRUE"
        output["Non-Compete"]["present"] = "false"
    scores = _score(output)
    assert scores["case_pass"].passed is True, shape
    assert scores["quotes_grounded"].detail["n_quotes"] == 6


def test_bare_values_and_missing_categories():
    out = {
        "Parties": ["ACME WIDGETS, INC.", "Beta Corp."],  # a list of quotes: present
        "agreement date": True,  # a bare bool
        "Exclusivity": "No",  # a bare no
        "Anti-Assignment": {"quote": ASSIGN},  # no "present": the quote says present
        "Non-Compete": None,
    }
    scores = _score(out)
    assert scores["clause.Parties"].detail["outcome"] == "tp"
    assert scores["clause.Agreement Date"].detail["outcome"] == "tp"
    assert scores["clause.Exclusivity"].detail["outcome"] == "fn"
    assert scores["clause.Anti-Assignment"].detail["outcome"] == "tp"
    assert scores["clause.Non-Compete"].detail["outcome"] == "tn"
    gov = scores["clause.Governing Law"].detail
    assert gov["outcome"] == "fn" and gov["missing"] is True and gov["pred_present"] is False
    assert "missing" not in scores["clause.Parties"].detail


def test_object_with_no_known_category_is_valid_but_misses_all():
    scores = _score('{"clauses": 5, "note": "nothing found"}')
    assert scores["valid_json"].passed is True
    rows = [s for k, s in scores.items() if k.startswith("clause.")]
    assert all(s.detail["missing"] is True and s.detail["pred_present"] is False for s in rows)
    assert scores["clause.Governing Law"].detail["outcome"] == "fn"
    assert scores["clause.Non-Compete"].detail["outcome"] == "tn"


def test_fenced_or_prose_wrapped_json_is_read():
    body = json.dumps(_perfect())
    assert _score(f"```json\n{body}\n```")["case_pass"].passed is True
    assert _score(f"Here is my review:\n{body}\nLet me know.")["case_pass"].passed is True


@pytest.mark.parametrize("text", ["not json at all {", "", "[1, 2, 3]", '"just a string"', "42", "null"])
def test_invalid_output_never_raises(text):
    scores = _score(text)
    clause_rows = {k: s for k, s in scores.items() if k.startswith("clause.")}
    assert len(clause_rows) == len(CATS)
    assert {s.detail["outcome"] for s in clause_rows.values()} == {"invalid_output"}
    assert all(s.detail["pred_present"] is False for s in clause_rows.values())
    gold = _gold()
    for name, s in clause_rows.items():
        assert s.passed is (not gold[name.removeprefix("clause.")]["present"])
    assert scores["valid_json"].passed is False and scores["valid_json"].detail["problem"]
    assert scores["case_pass"].passed is False
    assert scores["hallucinated_quotes"].value == 0.0
    assert "quotes_grounded" not in scores
    metrics = {m.name: m for m in ClausesScorer(CATS).aggregate(_frame([("c1", list(scores.values()))]), [])}
    assert metrics["presence.micro_recall"].value == 0.0
    assert metrics["presence.micro_recall"].detail["fn"] == 5
    assert metrics["presence.micro_precision"].value is None


def test_details_are_bounded_and_serialisable():
    long_quote = "ACME WIDGETS, INC. " * 200
    out = {**_perfect(), "Exclusivity": {"present": True, "quote": [f"{i}. {long_quote}" for i in range(20)]}}
    scores = _score(out)
    detail = scores["clause.Exclusivity"].detail
    assert len(detail["quote"]) == 5 and all(len(q) <= 310 for q in detail["quote"])
    assert len(scores["hallucinated_quotes"].detail["quotes"]) == 5
    assert scores["hallucinated_quotes"].value == 20.0
    assert all(len(json.dumps(s.detail)) < 5000 for s in scores.values())


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize(("category", "gold", "pred", "ok"), [
    ("Agreement Date", "6/21/99", "June 21, 1999", True),
    ("Agreement Date", "6/21/99", "1999-06-21", True),
    ("Agreement Date", "6/21/99", "June 22, 1999", False),
    ("Agreement Date", "1/2/99", "2 January 1999", True),
    ("Agreement Date", "1/2/99", "02/01/1999", False),  # month first, as CUAD writes dates: that is 1 February
    ("Expiration Date", "Perpetual", "perpetual", True),
    ("Expiration Date", "Perpetual", "6/21/00", False),
    ("Governing Law", "California", "State of California", True),
    ("Governing Law", "State of California", "California", True),
    ("Governing Law", "California", "Nevada", False),
    ("Renewal Term", "Successive 1 year", "successive 1 year", True),
    ("Renewal Term", "Successive 1 year", "2 years", False),
    ("Governing Law", "California", None, False),
    ("Governing Law", "California", "  ", False),
])
def test_answer_match(category, gold, pred, ok):
    assert answer_match(category, gold, pred)[0] is ok


def test_parties_share():
    gold = 'I-ESCROW, INC.  ("i-Escrow" ); 2THEMART.COM, INC. ("2TheMart")'
    assert answer_match("Parties", gold, "i-Escrow, Inc. and 2TheMart.com, Inc.") == (True, 1.0)
    assert answer_match("Parties", gold, ["I-Escrow, Inc."]) == (False, 0.5)
    assert answer_match("Parties", gold, "Somebody Else LLC") == (False, 0.0)
    assert answer_match("Parties", "AZUL LINHAS AÉREAS S/A (“AZUL”)", "Azul Linhas Aereas S/A") == (True, 1.0)


def test_answers_in_case_detail():
    out = _perfect()
    out["Parties"]["answer"] = ["Acme Widgets, Inc."]
    scores = _score(out)
    date = scores["clause.Agreement Date"].detail
    assert date["answer_gold"] == "6/21/99" and date["answer_pred"] == "June 21, 1999" and date["answer_ok"] is True
    assert scores["clause.Governing Law"].detail["answer_ok"] is True
    parties = scores["clause.Parties"].detail
    assert parties["answer_ok"] is False and parties["answer_score"] == 0.5
    assert scores["clause.Exclusivity"].detail["answer_ok"] is None  # a Yes/No category: no answer to match
    assert scores["clause.Non-Compete"].detail["answer_ok"] is None  # gold absent
    assert scores["case_pass"].passed is True  # answers do not decide the case
    # predicted absent: the gold answer is missed
    scores = _score({**_perfect(), "Governing Law": {"present": False, "answer": "California"}})
    assert scores["clause.Governing Law"].detail["answer_ok"] is False


# ---------------------------------------------------------------- context window


def test_gold_in_window():
    gov_start = CONTRACT.index(GOVERNING)
    cut = {"field": "text", "chars": len(CONTRACT), "strategy": "head", "truncated": True, "kept": [[0, gov_start]]}
    scores = _score(_perfect(), _case(context=cut))
    assert scores["clause.Governing Law"].detail["gold_in_window"] is False
    assert scores["clause.Parties"].detail["gold_in_window"] is True
    assert scores["clause.Non-Compete"].detail["gold_in_window"] is None  # no gold clause
    # a gold span partly inside the kept range counts as visible
    partly = {**cut, "kept": [[0, 10], [gov_start + 5, gov_start + 6]]}
    assert _score(_perfect(), _case(context=partly))["clause.Governing Law"].detail["gold_in_window"] is True
    assert _score(_perfect(), _case(context=None))["clause.Governing Law"].detail["gold_in_window"] is True


# ---------------------------------------------------------------- aggregate


def test_aggregate_by_hand():
    scorer = ClausesScorer(["Governing Law", "Exclusivity"])
    gov_start = CONTRACT.index(GOVERNING)
    cut = {"field": "text", "chars": len(CONTRACT), "strategy": "head", "truncated": True, "kept": [[0, gov_start]]}
    # case 1: Governing Law tp (answer right), Exclusivity tp with a hallucinated quote
    c1 = _case("c1")
    s1 = scorer(c1, answer(json.dumps({
        "Governing Law": {"present": True, "quote": GOVERNING, "answer": "California"},
        "Exclusivity": {"present": True, "quote": "Beta shall be the sole distributor"},
    })))
    # case 2: Exclusivity gold absent -> fp; Governing Law fn (answer wrong), outside the window
    g2 = _gold()
    g2["Exclusivity"] = {"present": False, "answer": "No", "spans": []}
    c2 = _case("c2", gold=g2, context=cut)
    s2 = scorer(c2, answer(json.dumps({
        "Governing Law": {"present": False},
        "Exclusivity": {"present": True, "quote": ["Beta shall be the exclusive distributor", "Acme's products"]},
    })))
    # case 3: unanswered; both gold present -> two fn, a wrong answer
    c3 = _case("c3")
    metrics = {m.name: m for m in scorer.aggregate(_frame([("c1", s1), ("c2", s2)]), [c3])}

    gov = metrics["presence.Governing Law"].detail
    assert (gov["tp"], gov["fp"], gov["fn"], gov["tn"]) == (1, 0, 2, 0)
    assert gov["precision"] == 1.0 and gov["recall"] == pytest.approx(1 / 3)
    assert metrics["presence.Governing Law"].value == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))  # 0.5
    assert gov["recall_in_window"] == pytest.approx(1 / 2)  # c2's clause was cut off: tp c1, fn c3
    exc = metrics["presence.Exclusivity"].detail
    assert (exc["tp"], exc["fp"], exc["fn"], exc["tn"]) == (1, 1, 1, 0)
    assert exc["precision"] == 0.5 and exc["recall"] == 0.5 and exc["f1"] == 0.5
    assert exc["recall_in_window"] == 0.5

    # micro: tp 2, fp 1, fn 3
    assert metrics["presence.micro_precision"].value == pytest.approx(2 / 3)
    assert metrics["presence.micro_recall"].value == pytest.approx(2 / 5)
    assert metrics["presence.micro_f1"].value == pytest.approx(4 / 8)
    # quotes: 4 given, 1 hallucinated; overlap defined for c1's Governing Law only (1.0)
    assert metrics["quotes.hallucinated"].value == 1.0
    assert metrics["quotes.hallucination_rate"].value == pytest.approx(1 / 4)
    assert metrics["quotes.mean_overlap"].value == 1.0 and metrics["quotes.mean_overlap"].detail["n"] == 1
    # answers: Governing Law right in c1, missed in c2, unanswered c3
    assert metrics["answers.Governing Law"].value == pytest.approx(1 / 3)
    assert metrics["answers.Governing Law"].detail["n"] == 3
    assert "answers.Exclusivity" not in metrics  # Yes/No category
    names = [m for m in metrics if m.startswith("presence.")]
    assert names[:2] == ["presence.Governing Law", "presence.Exclusivity"]


def test_aggregate_empty_and_string_details():
    scorer = ClausesScorer(["Governing Law"])
    metrics = {m.name: m for m in scorer.aggregate(pd.DataFrame(columns=["case_id", "metric", "value", "passed",
                                                                          "detail"]), [])}
    assert metrics["presence.micro_f1"].value is None
    assert metrics["quotes.hallucination_rate"].value is None
    assert metrics["quotes.mean_overlap"].value is None
    # details stored as JSON text are read too
    rows = scorer(_case(), answer(json.dumps({"Governing Law": {"present": True, "quote": GOVERNING}})))
    frame = _frame([("c1", rows)])
    frame["detail"] = frame["detail"].map(json.dumps)
    metrics = {m.name: m for m in scorer.aggregate(frame, [])}
    assert metrics["presence.Governing Law"].value == 1.0


def test_contract_normalised_once_per_text(monkeypatch):
    calls: list[int] = []
    original = clauses._normalize_with_map

    def counting(text):
        if text == CONTRACT + " ":
            calls.append(1)
        return original(text)

    monkeypatch.setattr(clauses, "_normalize_with_map", counting)
    clauses._contract.cache_clear()
    case = _case(text=CONTRACT + " ")
    scorer = ClausesScorer(DEFAULT_CATEGORIES)
    for _ in range(3):
        scorer(case, answer(json.dumps(_perfect())))
    assert calls == [1]


def test_default_categories():
    assert len(DEFAULT_CATEGORIES) == 12
    scorer = ClausesScorer()
    assert scorer.categories == DEFAULT_CATEGORIES and scorer.name == "clauses" and scorer.text_field == "text"
    rows = scorer(_case(), answer("{}"))
    assert [s.metric for s in rows][:12] == [f"clause.{c}" for c in DEFAULT_CATEGORIES]
    # a category missing from gold counts as gold absent, and says so
    assert rows[3].detail["gold_missing"] is True and rows[3].detail["outcome"] == "tn"


def test_text_field_is_configurable():
    case = Case(id="c", input={"contract": CONTRACT}, gold=_gold(), line=1)
    rows = {s.metric: s for s in ClausesScorer(CATS, text_field="contract")(case, answer(json.dumps(_perfect())))}
    assert rows["hallucinated_quotes"].value == 0.0


# ---------------------------------------------------------------- real contracts


def test_real_contracts_verbatim_gold_quotes():
    with CUAD.open() as f:
        rows = [json.loads(line) for _, line in zip(range(5), f, strict=False)]
    assert len(rows) == 5
    categories = list(rows[0]["gold"])
    scorer = ClausesScorer(categories)
    pairs = []
    changed = None
    for row in rows:
        text, gold = row["text"], row["gold"]
        row["clauses"] = [{"category": name, **entry} for name, entry in gold.items()]
        output = {c["category"]: {"present": c["present"], "quote": [s["text"] for s in c["spans"]] or None,
                                  "answer": c["answer"]} for c in row["clauses"]}
        case = Case(id=row["id"], input={"text": text}, gold=gold, line=1)
        scores = {s.metric: s for s in scorer(case, answer(json.dumps(output)))}
        assert scores["hallucinated_quotes"].value == 0.0, scores["hallucinated_quotes"].detail
        assert scores["quotes_grounded"].value == 1.0
        assert scores["case_pass"].passed is True
        for name, s in scores.items():
            if name.startswith("clause.") and s.detail["gold_present"]:
                assert s.detail["overlap"] == pytest.approx(1.0), name
                assert s.detail["answer_ok"] in (True, None), name
        pairs.append((row["id"], list(scores.values())))
        if changed is None:  # change one word of the longest gold span of the first contract
            clause = max(row["clauses"], key=lambda c: max((len(s["text"]) for s in c["spans"]), default=0))
            quote = max((s["text"] for s in clause["spans"]), key=len)
            words = quote.split()
            words[len(words) // 2] = "zzyzx"
            output[clause["category"]]["quote"] = [" ".join(words)]
            changed = (case, output)
    metrics = {m.name: m for m in scorer.aggregate(_frame(pairs), [])}
    assert metrics["presence.micro_f1"].value == 1.0
    assert metrics["quotes.hallucinated"].value == 0.0
    assert metrics["quotes.mean_overlap"].value == pytest.approx(1.0)

    case, output = changed
    scores = {s.metric: s for s in scorer(case, answer(json.dumps(output)))}
    assert scores["hallucinated_quotes"].value == 1.0
    assert len(scores["hallucinated_quotes"].detail["quotes"]) == 1
    assert scores["case_pass"].passed is False


def test_ellipsis_parts_too_short_to_mean_anything_are_not_grounded():
    text = "The Company shall indemnify the Distributor against all claims of third parties arising from the Products."
    assert is_grounded("The Company shall indemnify ... claims of third parties", text)
    assert not is_grounded("the ... the", text)
    assert not is_grounded("... of ...", text)
    assert not is_grounded("The Company shall ... Products", text)


# ---------------------------------------------------------------- layout artefacts of real contracts (issue 16)

# cuad-033 in suites/contracts (HealthcareIntegratedTechnologiesInc_20190812_8-K_EX-10.1_11776966_EX-10.1_Reseller
# Agreement), verbatim: a U+2010 hyphen that broke a line, and letter-spaced words from the PDF's text layer.
RESELLER = (
    'Supplier hereby (i) appoints Reseller, and Reseller accepts the appointment, as a non\u2010 exclusive reseller of '
    'the Products in the Territory. "Paid\u2010 For Products" means Products for which Reseller submitted an Order. '
    '"End User  Agreement"  means  Supp l i e r \' s  s t andard  l i cense  ag reement s ,  wh ich  a re  ava i l ab '
    'le  a t https://walabot.com/walabot-home, which governs each End User\'s right to use'
)
LETTER_SPACED = "Supp l i e r ' s  s t andard  l i cense  ag reement s"


def _cuad(case_id: str) -> str:
    with CUAD.open() as f:
        return next(row for row in map(json.loads, f) if row["id"] == case_id)["text"]


@pytest.mark.parametrize("dash", ["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212", "\u2e3a",
                                  "\ufe31", "\ufe58", "\ufe63", "\uff0d", "\u058a", "\u207b"])
def test_every_unicode_dash_or_minus_is_a_hyphen(dash):
    text = f"The non{dash}exclusive licence runs for 5 years."
    assert is_grounded("The non-exclusive licence", text)
    assert quote_span("non-exclusive licence", text) == (4, 25)


def test_soft_hyphen_and_zero_width_characters_go():
    text = "a non\u00adexclusive, non\u200b-transferable licence"
    assert is_grounded("a nonexclusive, non-transferable licence", text)
    assert quote_span("non-transferable", text) == (17, 34)


def test_hyphen_that_broke_a_line_grounds_the_joined_word():
    assert is_grounded("as a non-exclusive reseller of the Products in the Territory", RESELLER)
    assert is_grounded("as a non\u2010exclusive reseller", RESELLER)
    assert is_grounded('"Paid-For Products" means Products for which Reseller submitted an Order', RESELLER)
    assert is_grounded("as a non\u2010 exclusive reseller", RESELLER)  # verbatim, of course
    start, end = quote_span("non-exclusive reseller", RESELLER)
    assert RESELLER[start:end] == "non\u2010 exclusive reseller"
    # the space is optional only after a hyphen between letters, not around a dash between words
    assert not is_grounded("Supplier hereby(i) appoints", RESELLER)
    assert not is_grounded("a non-exclusive re seller", RESELLER)
    text = "The term is 5 - 10 years; pre- and post-closing."
    assert not is_grounded("5 -10 years", text)
    assert is_grounded("pre-and post-closing", text)


def test_letter_spaced_contract_text_grounds_the_quote():
    quote = ('"End User Agreement" means Supplier\'s standard license agreements, which are available at '
             "https://walabot.com/walabot-home")
    assert is_grounded(quote, RESELLER)
    assert is_grounded("Supplier's", RESELLER)
    assert is_grounded("Supp l i e r ' s", RESELLER)  # verbatim
    assert is_grounded("Supplier's standard license ... which governs each End User's right to use", RESELLER)
    start, end = quote_span("Supplier's standard license agreements", RESELLER)
    assert RESELLER[start:end] == LETTER_SPACED
    start, end = quote_span(quote, RESELLER)
    assert RESELLER[start:end].startswith('"End User  Agreement"') and RESELLER[:end].endswith("a t https://walabot.com/walabot-home")
    # the letters must still be the contract's, in order, and every word outside the spaced run kept apart
    assert not is_grounded("Supplier's standard licence agreements", RESELLER)
    assert not is_grounded("Suppliers standard", RESELLER)
    assert not is_grounded("meansSupplier's", RESELLER)
    assert not is_grounded("S upplier's", RESELLER)  # "Supp" was printed whole: no space inside it
    assert not is_grounded("Supplierhereby", RESELLER)


def test_letter_spacing_never_loosens_normal_text():
    text = "Notice to the therapist shall be given in writing. The Supplier's standard terms apply."
    assert not is_grounded("the rapist", text)
    assert not is_grounded("Not ice to the therapist", text)
    assert not is_grounded("S u p p l i e r ' s", text)  # a letter-spaced quote of normal text
    assert not is_grounded("Thesupplier's", text)
    # single letters here and there (a list, an article) are not letter-spaced text
    text = "Schedules A, B and C apply to a party and a licensee."
    assert not is_grounded("Schedules A, Band C", text)
    assert not is_grounded("to aparty", text)


def test_letter_spaced_text_of_real_contracts():
    reseller = _cuad("cuad-033")
    assert RESELLER[RESELLER.index('"End User'):] in reseller and RESELLER[:100] in reseller
    start, end = quote_span("Supplier's standard license agreements", reseller)
    assert reseller[start:end] == LETTER_SPACED
    assert is_grounded("Reseller accepts the appointment, as a non-exclusive reseller", reseller)
    # cuad-031 (HPILHOLDING_01_07_2015-EX-99.1-COOPERATION AGREEMENT): "R E C I T A L S:"
    cooperation = _cuad("cuad-031")
    start, end = quote_span("RECITALS: The following is a recital of facts", cooperation)
    assert cooperation[start:end].startswith("R E C I T A L S:   The following")
    # cuad-067 (SoupmanInc_20150814_8-K_EX-10.1_9230148_EX-10.1_Franchise Agreement2)
    franchise = _cuad("cuad-067")
    assert is_grounded('As an inducement to Kiosk Concepts, Inc. ("Franchisor") to enter into a Master Franchise '
                       "Agreement", franchise)


def test_real_contracts_every_gold_span_grounds_where_it_is():
    with CUAD.open() as f:
        rows = [json.loads(line) for line in f]
    spans = [(row["text"], span) for row in rows for entry in row["gold"].values() for span in entry["spans"]]
    assert len(spans) > 1000
    for text, span in spans:
        start, end = quote_span(span["text"], text)
        assert text[start:end] == span["text"]
