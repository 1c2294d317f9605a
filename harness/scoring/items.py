"""Line-item scoring for receipt extraction: the predicted items are matched one-to-one with the gold items.

Input. The model output is parsed with `parse_json_output`; it must be a JSON object whose `key` (default
`line_items`) holds a list of item objects; a bare top-level list is accepted too. Anything else is invalid output:
every gold item is a miss, precision, recall and F1 are 0, and the case fails (never an exception). Entries of the
list that are not objects count as predicted items that match nothing. The gold items are `case.gold[key]`
(missing or null: no items; a gold that is itself a list is taken as the items).

Matching. Items are compared on the name field (`name`, else the first item field) and the price field (`price`,
when it is an item field):

- name similarity: `difflib.SequenceMatcher` ratio of the `normalize_text` forms (case, whitespace and
  punctuation ignored, so `ORGANIC PAST` equals `ORGANICPAST`); two absent names are equal (1.0), one absent name
  is 0.0;
- prices agree when both parse as amounts (`parse_amount`) and are equal (`£3.00` agrees with `3`);
- a pair may be matched when name similarity >= `min_similarity`, or when the prices agree and the name
  similarity >= `PRICE_RESCUE_FLOOR` (an abbreviated name such as `KS WATER` for `KIRKLAND SIGNATURE WATER`);
  other pairs are never matched (the gold item is a miss, the predicted one an extra);
- among the allowed pairs the assignment (`scipy.optimize.linear_sum_assignment`) first maximises the number of
  matched items, then the summed pair weight: name similarity + `PRICE_BONUS` when the prices agree +
  `FIELD_TIE_BONUS` for each other item field that agrees (a tie-break between otherwise equal items). The result
  is deterministic.

Scores per case: `items.precision`, `items.recall`, `items.f1` (no gold and no predicted items: all 1.0), one
`item_field.<field>` per item field other than the name (share of matched pairs whose gold has a value for the
field where the predicted value is equal under the field's kind, see `harness.scorers.compare`; omitted when no
matched pair has a gold value for it), and `case_pass` (every gold item matched, no extra item, every compared
item field correct). The `items.f1` detail holds the counts and the diff (matches with their field outcomes,
missing gold items, extra predicted items), each list cut to `DETAIL_LIMIT` entries.

`aggregate` gives micro precision/recall/F1 over all cases (a failed call counts all its gold items as misses) and
the per-field accuracy over matched items. Line-item gold in WildReceipt was grouped by a heuristic, so these
scores are approximate.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any, ClassVar

from harness.providers.base import Completion
from harness.scoring.base import Metric, MetricInfo, Score, parse_detail
from harness.scoring.parse import compare, normalize_text, parse_amount, parse_json_output
from harness.suite.load import Case, Suite
from harness.suite.spec import ScorerSpec

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_ITEM_FIELDS: dict[str, str] = {"name": "text", "quantity": "amount", "price": "amount"}
PRICE_RESCUE_FLOOR = 0.4  # lowest name similarity that agreeing prices can still match
PRICE_BONUS = 0.5  # added to a pair's weight when the prices agree
FIELD_TIE_BONUS = 0.01  # added per other agreeing item field: decides between otherwise equal pairs
MAX_ITEMS = 500  # items per side that are compared; the rest count as unmatched
DETAIL_LIMIT = 50  # entries kept per list in a score's detail
TEXT_LIMIT = 200  # characters kept per value shown in a detail


def name_similarity(gold: Any, pred: Any) -> float:
    """Similarity in [0, 1] of two item names, ignoring case, whitespace and punctuation.

    Two absent (None or empty after normalisation) names give 1.0, one absent name 0.0. A list of gold names
    gives the best similarity over its entries.
    """
    if isinstance(gold, list):
        return max((name_similarity(g, pred) for g in gold), default=name_similarity(None, pred))
    a, b = _name_key(gold), _name_key(pred)
    if not a or not b:
        return 1.0 if a == b else 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def prices_agree(gold: Any, pred: Any) -> bool:
    """Whether both prices parse as amounts and are equal; a list of gold prices agrees if any entry does."""
    if isinstance(gold, list):
        return any(prices_agree(g, pred) for g in gold)
    g, p = _amount(gold), _amount(pred)
    return g is not None and p is not None and g == p


def match_items(
    gold: list[Any],
    pred: list[Any],
    item_fields: dict[str, str] | None = None,
    min_similarity: float = 0.5,
    dayfirst: bool = True,
) -> list[tuple[int, int, float]]:
    """The optimal one-to-one matching of gold and predicted items, as (gold index, pred index, name similarity)
    sorted by gold index. See the module docstring for the rule; items that are not objects never match, and only
    the first `MAX_ITEMS` items of each side are considered."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment  # scipy takes a second to import: only when this is computed

    fields = dict(item_fields or DEFAULT_ITEM_FIELDS)
    name_field, price_field = _name_field(fields), _price_field(fields)
    others = {f: k for f, k in fields.items() if f not in (name_field, price_field)}
    floor = min(PRICE_RESCUE_FLOOR, min_similarity)
    g_items, p_items = gold[:MAX_ITEMS], pred[:MAX_ITEMS]
    if not g_items or not p_items:
        return []
    n, m = len(g_items), len(p_items)
    quality = np.zeros((n, m))
    allowed = np.zeros((n, m), dtype=bool)
    sims = np.zeros((n, m))
    g_names = [_name_key(g.get(name_field)) if isinstance(g, dict) else None for g in g_items]
    p_names = [_name_key(p.get(name_field)) if isinstance(p, dict) else None for p in p_items]
    for i, g in enumerate(g_items):
        if not isinstance(g, dict):
            continue
        for j, p in enumerate(p_items):
            if not isinstance(p, dict):
                continue
            if isinstance(g.get(name_field), list):
                sim = name_similarity(g.get(name_field), p.get(name_field))
            else:
                sim = _similarity(g_names[i], p_names[j], floor)
            if sim < floor:
                continue
            price_ok = price_field is not None and prices_agree(g.get(price_field), p.get(price_field))
            if sim < min_similarity and not price_ok:
                continue
            agreeing = sum(
                _field_correct(g.get(f), p.get(f), kind, dayfirst) for f, kind in others.items() if _has(g.get(f))
            )
            allowed[i, j] = True
            sims[i, j] = sim
            quality[i, j] = sim + (PRICE_BONUS if price_ok else 0.0) + FIELD_TIE_BONUS * agreeing
    if not allowed.any():
        return []
    # each match is worth more than any gain in quality from a different assignment: the most matches win first
    max_quality = 1.0 + PRICE_BONUS + FIELD_TIE_BONUS * len(others)
    big = max_quality * min(n, m) + 1.0
    weights = np.where(allowed, big + quality, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    pairs = [(int(i), int(j), float(sims[i, j])) for i, j in zip(rows, cols, strict=True) if allowed[i, j]]
    return sorted(pairs)


class LineItemsScorer:
    """Set-wise scorer for a list of line items (name, quantity, price) against the gold list."""

    METRICS: ClassVar[dict[str, MetricInfo]] = {
        "items.micro_f1": MetricInfo(headline=True), "items.matched": MetricInfo(count=True),
        "items.n_gold": MetricInfo(better="neither", count=True),
        "items.n_pred": MetricInfo(better="neither", count=True),
        "items.invalid_outputs": MetricInfo(better="lower", count=True),
        "items.unanswered": MetricInfo(better="lower", count=True),
    }

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> LineItemsScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `line_items` describes."""
        return cls(key=spec.key, item_fields=dict(spec.item_fields), min_similarity=spec.min_similarity,
                   dayfirst=spec.dayfirst, name=spec.name or spec.kind)

    def __init__(
        self,
        key: str = "line_items",
        item_fields: dict[str, str] | None = None,
        min_similarity: float = 0.5,
        dayfirst: bool = True,
        name: str = "line_items",
    ) -> None:
        """`key`: where the items are, in the gold and in the output; `item_fields`: each item field and how it is
        compared (`text`, `amount`, `date`, `exact`); `min_similarity`: the name similarity that matches a pair
        on its own."""
        fields = dict(DEFAULT_ITEM_FIELDS if item_fields is None else item_fields)
        if not fields:
            raise ValueError("LineItemsScorer needs at least one item field (the name)")
        self.key = key
        self.item_fields = fields
        self.min_similarity = min_similarity
        self.dayfirst = dayfirst
        self.name = name
        self.name_field = _name_field(fields)
        self.compared_fields = {f: kind for f, kind in fields.items() if f != self.name_field}

    def gold_items(self, case: Case) -> list[Any]:
        """The gold items of a case: `case.gold[key]`, or the gold itself when it is a list; [] when absent."""
        gold = case.gold
        if isinstance(gold, dict):
            gold = gold.get(self.key)
        if gold is None:
            return []
        if not isinstance(gold, list):
            gold = [gold]
        return [g if isinstance(g, dict) else {self.name_field: g} for g in gold]

    def predicted_items(self, text: str) -> tuple[list[Any], str | None]:
        """The predicted items in a model output, or ([], problem) when the output is not a list of items."""
        value, problem = parse_json_output(text)
        if problem is not None:
            return [], problem
        if isinstance(value, dict):
            if self.key not in value:
                return [], f"no {self.key!r} in the JSON object"
            value = value[self.key]
            if not isinstance(value, list):
                return [], f"{self.key!r} is a JSON {_json_type(value)}, not a list"
            return value, None
        if isinstance(value, list):
            return value, None
        return [], f"JSON {_json_type(value)}, not an object with a {self.key!r} list"

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        """Scores one response: item precision/recall/F1, per-field accuracy on matched items, case_pass."""
        gold = self.gold_items(case)
        pred, problem = self.predicted_items(completion.text)
        pairs = match_items(gold, pred, self.item_fields, self.min_similarity, self.dayfirst)
        tp, n_gold, n_pred = len(pairs), len(gold), len(pred)

        field_counts = {f: [0, 0] for f in self.compared_fields}  # field -> [correct, compared]
        matches = []
        for i, j, sim in pairs:
            g, p = gold[i], pred[j]
            outcomes = {}
            for f, kind in self.compared_fields.items():
                if not _has(g.get(f)):
                    continue
                ok = _field_correct(g.get(f), p.get(f), kind, self.dayfirst)
                outcomes[f] = ok
                field_counts[f][0] += int(ok)
                field_counts[f][1] += 1
            matches.append({"gold": self._show(g), "pred": self._show(p), "similarity": round(sim, 4),
                            "fields": outcomes})
        matched_g = {i for i, _, _ in pairs}
        matched_p = {j for _, j, _ in pairs}
        missing = [self._show(g) for i, g in enumerate(gold) if i not in matched_g]
        extra = [self._show(p) for j, p in enumerate(pred) if j not in matched_p]

        if problem is not None:
            precision = recall = f1 = 0.0
        else:
            precision = tp / n_pred if n_pred else float(n_gold == 0)
            recall = tp / n_gold if n_gold else float(n_pred == 0)
            f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 1.0

        detail: dict[str, Any] = {"tp": tp, "n_pred": n_pred, "n_gold": n_gold, "problem": problem}
        omitted = {}
        for label, entries in (("matches", matches), ("missing", missing), ("extra", extra)):
            detail[label] = entries[:DETAIL_LIMIT]
            if len(entries) > DETAIL_LIMIT:
                omitted[label] = len(entries) - DETAIL_LIMIT
        if omitted:
            detail["omitted"] = omitted  # entries left out of the lists above, by list
        notes = []
        non_objects = sum(not isinstance(p, dict) for p in pred)
        if non_objects:
            notes.append(f"{non_objects} predicted item(s) are not JSON objects and match nothing")
        if max(n_gold, n_pred) > MAX_ITEMS:
            notes.append(f"only the first {MAX_ITEMS} items of each side were compared")
        if notes:
            detail["notes"] = notes

        scores = [
            Score("items.precision", precision, None, {"tp": tp, "n_pred": n_pred}),
            Score("items.recall", recall, None, {"tp": tp, "n_gold": n_gold}),
            Score("items.f1", f1, f1 == 1.0, detail),
        ]
        wrong_fields = 0
        for f, (correct, compared) in field_counts.items():
            if compared:
                wrong_fields += compared - correct
                scores.append(Score(f"item_field.{f}", correct / compared, None,
                                    {"correct": correct, "compared": compared}))
        ok = problem is None and tp == n_gold and tp == n_pred and wrong_fields == 0
        scores.append(Score("case_pass", float(ok), ok, {
            "missing": n_gold - tp, "extra": n_pred - tp, "wrong_fields": wrong_fields, "problem": problem,
        }))
        return scores

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]:
        """Micro item precision/recall/F1 over all cases (each unanswered case adds its gold items as misses),
        per-field accuracy over matched items, and the counts behind them. Values are None when undefined."""
        tp = n_pred = n_gold = invalid = scored = 0
        field_counts = {f: [0, 0] for f in self.compared_fields}
        if {"metric", "detail"} <= set(scores.columns):
            for metric, raw in zip(scores["metric"], scores["detail"], strict=True):
                detail = parse_detail(raw)
                if metric == "items.f1":
                    scored += 1
                    tp += int(detail.get("tp", 0))
                    n_pred += int(detail.get("n_pred", 0))
                    n_gold += int(detail.get("n_gold", 0))
                    invalid += detail.get("problem") is not None
                elif isinstance(metric, str) and metric.startswith("item_field."):
                    counts = field_counts.setdefault(metric.removeprefix("item_field."), [0, 0])
                    counts[0] += int(detail.get("correct", 0))
                    counts[1] += int(detail.get("compared", 0))
        missed = sum(len(self.gold_items(case)) for case in unanswered)
        n_gold += missed
        counts = {"tp": tp, "n_pred": n_pred, "n_gold": n_gold, "cases": scored, "unanswered": len(unanswered),
                  "unanswered_gold_items": missed, "invalid_outputs": invalid}
        metrics = [
            Metric("items.micro_precision", tp / n_pred if n_pred else None, dict(counts)),
            Metric("items.micro_recall", tp / n_gold if n_gold else None, dict(counts)),
            Metric("items.micro_f1", 2 * tp / (n_pred + n_gold) if n_pred + n_gold else None, dict(counts)),
        ]
        for f, (correct, compared) in field_counts.items():
            metrics.append(Metric(f"item_field.{f}", correct / compared if compared else None,
                                  {"correct": correct, "compared": compared}))
        metrics += [
            Metric("items.n_gold", float(n_gold)),
            Metric("items.n_pred", float(n_pred)),
            Metric("items.matched", float(tp)),
            Metric("items.invalid_outputs", float(invalid)),
            Metric("items.unanswered", float(len(unanswered))),
        ]
        return metrics

    def _show(self, item: Any) -> Any:
        """A bounded, JSON-serialisable view of an item for a detail: its item fields, long values cut."""
        if isinstance(item, dict):
            return {f: _clip(item.get(f)) for f in self.item_fields}
        return _clip(item)


def _name_field(fields: dict[str, str]) -> str:
    return "name" if "name" in fields else next(iter(fields))


def _price_field(fields: dict[str, str]) -> str | None:
    return "price" if "price" in fields else None


def _name_key(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True, default=str)
    return normalize_text(value)


def _similarity(a: str | None, b: str | None, floor: float) -> float:
    if a is None or b is None:
        return 0.0
    if not a or not b:
        return 1.0 if a == b else 0.0
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
        return 0.0  # an upper bound already under the floor: the pair can never match
    return matcher.ratio()


def _amount(value: Any) -> Decimal | None:
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    amount = parse_amount(value)
    return amount if amount is not None and amount.is_finite() else None


def _has(value: Any) -> bool:
    """Whether a gold value is there to compare with (not None, blank or an empty list)."""
    if value is None or value == []:
        return False
    return not (isinstance(value, str) and not value.strip())


def _field_correct(gold: Any, pred: Any, kind: str, dayfirst: bool) -> bool:
    if not _has(pred):
        return False
    if isinstance(pred, (dict, list)) and not isinstance(gold, list):
        pred = json.dumps(pred, sort_keys=True, default=str)
    if isinstance(pred, float) and not math.isfinite(pred):
        pred = str(pred)
    return compare(gold, pred, kind, dayfirst)


def _clip(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
