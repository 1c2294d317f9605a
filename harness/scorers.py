"""Scorers turn one (case, completion) into `Score` rows; `summarize` aggregates them per provider.

Built in:
- `fields` (extraction): the output is parsed as JSON and each gold field compared after normalisation
  (`text`: case, whitespace and punctuation ignored; `amount`: compared as numbers; `date`: compared as dates
  where both parse; `exact`: verbatim). A case passes when every field matches. Output that is not a JSON
  object is scored as invalid (every field wrong), never a crash.

  One value per field: an answer that names more than one candidate value is wrong, with the outcome
  `several values` (its detail lists them under `values`), whatever the gold. That is a JSON list of two or
  more different entries for any kind, and for `amount` and `date` two or more different amounts or dates
  anywhere in the answer: `9.00 or 10.00`, `between 20.00 and 40.00`, `9.00 (cash 10.00)`,
  `2019-01-23 or 2019-01-24`, `23-25 Jan 2019`. Amounts and dates are read from the whole answer, never from
  its first match. One value stays one value with a currency (`RM 30.90`, `1.234,50 €`, `USD 12`), thousands
  separators (`1,234.50`, `1 234,50`), a decimal comma (`12,50`), a percentage beside it (`5.00 incl. 6%`),
  the same value repeated, or, for a date, a time (`2019-01-23 10:15`) or a weekday. `several values` counts
  as `wrong` in precision and recall.
- `exact` (classification): the stripped output, or the `label` of a JSON output, equals the gold label.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import numbers
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from dateutil import parser as dateparser

from harness.errors import SuiteError
from harness.providers import Completion
from harness.suite import Case, Suite, clause_categories


@dataclass(frozen=True)
class Score:
    """One measurement of one response. `passed` is None for metrics with no pass/fail meaning."""

    metric: str
    value: float
    passed: bool | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One aggregate over a provider's answers (e.g. macro-F1, item recall); `value` None when undefined."""

    name: str
    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)


class Scorer(Protocol):
    """Scores a completed, error-free response to a case."""

    name: str

    def __call__(self, case: Case, completion: Completion) -> list[Score]: ...


class Aggregating(Protocol):
    """A scorer that also computes run-level metrics from its own score rows.

    `scores`: this scorer's rows for one provider (columns case_id, metric, value, passed, detail; `detail`
    parsed into a dict). `unanswered`: the cases this provider has no answer for (failed calls), which
    count as misses (false negatives) wherever recall is computed.
    """

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]: ...


def normalize_text(value: Any) -> str:
    """Case-, whitespace- and punctuation-insensitive form of a text value."""
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    return re.sub(r"[\W_]+", "", text)


# digits, thousands groups (1,234 / 1.234 / 1 234), then decimals: "9.00 10" is two numbers, not 9.0010. A minus
# sign counts only where it does not join two numbers: "20.00-40.00" is a range, not 20.00 and -40.00.
_AMOUNT = re.compile(r"(?:(?<![\w.,])-)?\d+(?:[,. ]\d{3}(?!\d))*(?:[.,]\d+)?")
_PERCENT = re.compile(r"\s*%")
_FOLD = str.maketrans({**dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
                       **dict.fromkeys("\u00b4\u2018\u2019", "'")})

# a month name, not inside a word but maybe against digits (receipts print 21NOV2015)
_MONTH = (r"(?<![a-z])(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)(?![a-z])\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?(?![\d:])"
_YEAR = r"'?(?:\d{4}|\d{2})(?![\d:])"
# a whole printed date, year first (ymd, ymon), day first (dmon), month first (mond) or all numbers (dmy)
_DATE = re.compile(
    rf"(?<!\d)(?P<ymd>\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}})(?!\d)"
    rf"|(?<!\d)(?P<ymon>\d{{4}}[\s./-]*{_MONTH}[\s./-]*{_DAY})"
    rf"|(?<!\d)(?P<dmon>{_DAY}[\s./-]*(?:of\s+)?{_MONTH}[\s.,/-]*{_YEAR})"
    rf"|(?P<mond>{_MONTH}[\s./-]*{_DAY}[\s.,/-]*{_YEAR})"
    rf"|(?<!\d)(?P<dmy>\d{{1,2}}[-/.]\d{{1,2}}[-/.]{_YEAR})",
    re.IGNORECASE,
)
# a choice or range of days within one month: "23-25 January 2019", "January 23 or 24, 2019"
_CHOICE = r"\s*(?:-|to|or|and|&)\s*"
_DAY_CHOICE = re.compile(
    rf"(?<!\d)(?P<d1>\d{{1,2}}(?:st|nd|rd|th)?)(?P<s1>{_CHOICE})(?P<d2>{_DAY})(?=[\s./-]*(?:of\s+)?{_MONTH})"
    rf"|{_MONTH}[\s./-]*(?P<e1>{_DAY})(?P<s2>{_CHOICE})(?P<e2>{_DAY})",
    re.IGNORECASE,
)


def _plain(value: Any) -> str:
    """A value as text for reading numbers and dates: NFKC, every Unicode dash or minus as `-`, and acute accents
    and curly apostrophes as `'` (`21NOV´15`)."""
    return unicodedata.normalize("NFKC", str(value).translate(_FOLD)).translate(_FOLD)


def _number(digits: str) -> Decimal | None:
    digits = digits.replace(" ", "").rstrip(".,")
    if "," in digits and "." in digits:
        # the later separator is the decimal mark: 1,234.50 or 1.234,50
        thousands = "," if digits.rfind(",") < digits.rfind(".") else "."
        digits = digits.replace(thousands, "").replace(",", ".")
    elif "," in digits:
        head, _, tail = digits.rpartition(",")
        digits = digits.replace(",", "") if len(tail) == 3 and head else head.replace(",", "") + "." + tail
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


def _distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def amount_values(value: Any) -> list[Decimal]:
    """Every distinct amount `value` names, in order: `"RM 1,234.50"` -> [1234.50]; `"9.00 or 10.00"` -> [9.00,
    10.00]; `"1.234,50 €"` -> [1234.50]. Currency signs, codes and words around a number are ignored, and so
    are percentages (`5.00 incl. 6% tax` names one amount). A JSON number is itself."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [Decimal(str(value))]
    text = _plain(value)
    found = []
    for match in _AMOUNT.finditer(text):
        if _PERCENT.match(text, match.end()):
            continue
        number = _number(match.group())
        if number is not None:
            found.append(number)
    return _distinct(found)


def parse_amount(value: Any) -> Decimal | None:
    """The one amount `value` states (`"RM 1,234.50"` -> Decimal('1234.50')); None when it names no number, or
    several different ones (`"9.00 or 10.00"`, `"between 20.00 and 40.00"`, `"9.00 (cash 10.00)"`)."""
    found = amount_values(value)
    return found[0] if len(found) == 1 else None


def _date_of(match: re.Match[str], dayfirst: bool) -> date | None:
    text = match.group()
    try:
        if match.group("ymd"):  # year first is never day first, whatever the suite says
            year, month, day = re.split(r"[-/.]", text)
            return date(int(year), int(month), int(day))
        return dateparser.parse(text, dayfirst=dayfirst, default=datetime(1904, 2, 2)).date()
    except (ValueError, OverflowError):
        return None


def _one_day(choice: re.Match[str], keep_first: bool) -> str:
    """A choice of days (`23-25 January`) with one of its days only (`23 January`, `25 January`)."""
    first, second = ("d1", "d2") if choice.group("d1") else ("e1", "e2")
    start = choice.start()
    if keep_first:
        return choice.string[start:choice.end(first)] + choice.string[choice.end(second):choice.end()]
    return choice.string[start:choice.start(first)] + choice.string[choice.start(second):choice.end()]


def date_values(value: Any, dayfirst: bool = True) -> list[date]:
    """Every distinct date `value` names, in order. `"2019-01-23 10:15"` -> [2019-01-23] (a time is part of its
    date); `"25/12/2018 or 26/12/2018"` and `"23-25 Dec 2018"` -> two dates. `dayfirst` reads `01/02/2019` as
    the 1st of February; a year written first (`2019-02-01`) is always year, month, day. Only whole dates
    count: `"March 2018"` or `"No 5 Jalan 3"` name none."""
    text = _plain(value).strip()
    if not re.search(r"\d", text):
        return []
    if _DAY_CHOICE.search(text):  # read once with the first day of every choice, once with the second
        readings = [_DAY_CHOICE.sub(lambda m: _one_day(m, True), text),
                    _DAY_CHOICE.sub(lambda m: _one_day(m, False), text)]
    else:
        readings = [text]
    found = [d for reading in readings for d in (_date_of(m, dayfirst) for m in _DATE.finditer(reading))]
    if any(found):
        return _distinct([d for d in found if d is not None])
    try:  # another whole-text form dateutil knows (20190123, 23 01 2019)
        # Parsed twice with different defaults: a date is accepted only if the text gave day, month and
        # year itself, so "March 2018" never borrows the parts missing from today.
        first = dateparser.parse(text, dayfirst=dayfirst, default=datetime(1904, 2, 2))
        second = dateparser.parse(text, dayfirst=dayfirst, default=datetime(1911, 3, 3))
    except (ValueError, OverflowError):
        return []
    return [first.date()] if first.date() == second.date() else []


def parse_date(value: Any, dayfirst: bool = True) -> date | None:
    """The one date `value` states (`11/01/2019`, `2019-01-11`, `11 Jan 2019`, `January 11, 2019 10:15`); None
    when it names no whole date, or several different ones (`2019-01-23 or 2019-01-24`, `23-25 Jan 2019`)."""
    found = date_values(value, dayfirst)
    return found[0] if len(found) == 1 else None


def several_values(value: Any, kind: str, dayfirst: bool = True) -> list[str]:
    """The candidate values of an answer that names more than one (`"9.00 or 10.00"`, `["A", "B"]`, a range of
    dates), as text; [] when it names one or none. Amounts and dates count distinct values wherever they are in
    the answer; a JSON list counts its distinct entries for every kind; a text or exact value is one value."""
    if isinstance(value, list):
        entries = [v for v in value if not _is_empty(v)]
        if kind in ("amount", "date"):
            found = _distinct([v for entry in entries for v in _values_of(entry, kind, dayfirst)])
            return [str(v) for v in found] if len(found) > 1 else []
        distinct: dict[str, Any] = {}
        for entry in entries:
            distinct.setdefault(normalize_text(json.dumps(entry) if isinstance(entry, (dict, list)) else entry), entry)
        return [str(v) for v in distinct.values()] if len(distinct) > 1 else []
    if kind not in ("amount", "date"):
        return []
    found = _values_of(value, kind, dayfirst)
    return [str(v) for v in found] if len(found) > 1 else []


def _values_of(value: Any, kind: str, dayfirst: bool) -> list[Any]:
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    return amount_values(value) if kind == "amount" else date_values(value, dayfirst)


def compare(gold: Any, pred: Any, kind: str, dayfirst: bool = True) -> bool:
    """Whether `pred` matches `gold` for a field of type `kind`. A list of gold values matches any of them.

    Amounts and dates compare as values. The prediction must state one (`parse_amount`, `parse_date`): one
    naming several (`9.00 or 10.00`) is compared as text, so it matches only a gold that says the same words. A
    gold naming several (an annotation such as `(3@10.00)` or `2.99X1`) matches any of them, like a gold list."""
    if isinstance(gold, list):
        return any(compare(g, pred, kind, dayfirst) for g in gold)
    if pred is None:
        return False
    if kind == "exact":
        return str(gold).strip() == str(pred).strip()
    if kind in ("amount", "date"):
        golds = amount_values(gold) if kind == "amount" else date_values(gold, dayfirst)
        p = parse_amount(pred) if kind == "amount" else parse_date(pred, dayfirst)
        if golds and p is not None:
            return p in golds
    return normalize_text(gold) == normalize_text(pred) and normalize_text(gold) != ""


def parse_json_output(text: str) -> tuple[Any, str | None]:
    """Parse model output as JSON, tolerating a Markdown code fence around it.

    Returns (value, None), or (None, reason) when the output is not JSON.
    """
    stripped = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1)
    if not stripped:
        return None, "empty output"
    try:
        return json.loads(stripped), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, brackets nested thousands deep
        return None, f"not usable JSON ({type(exc).__name__})"


SEVERAL_VALUES = "several values"  # a field's outcome when the answer names more than one candidate value
_MAX_VALUES_SHOWN = 5


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


class FieldsScorer:
    """Field-by-field comparison of a JSON object with the gold object."""

    name = "fields"

    def __init__(
        self, fields: dict[str, str], dayfirst: bool = True, name: str = "fields",
        gold_in_input_field: str | None = None,
    ) -> None:
        self.name = name
        self.fields = fields
        self.dayfirst = dayfirst
        self.gold_in_input_field = gold_in_input_field

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        value, problem = parse_json_output(completion.text)
        if problem is None and not isinstance(value, dict):
            problem = f"JSON {type(value).__name__}, not an object"
        scores = [Score("valid_json", float(problem is None), problem is None, {"problem": problem} if problem else {})]
        obj = value if problem is None else {}
        all_ok = True
        gold = case.gold if isinstance(case.gold, dict) else {}
        flags = case.input.get(self.gold_in_input_field) if self.gold_in_input_field else None
        flags = flags if isinstance(flags, dict) else {}
        for name, kind in self.fields.items():
            g, p = gold.get(name), obj.get(name)
            several = several_values(p, kind, self.dayfirst) if problem is None and not _is_empty(g) else []
            if isinstance(p, (dict, list)) and not isinstance(g, list):
                p = json.dumps(p)
            ok = not _is_empty(p) and not _is_empty(g) and compare(g, p, kind, self.dayfirst)
            if problem is not None:
                outcome = "invalid_output"
            elif ok:
                outcome = "correct"
            elif _is_empty(p) and _is_empty(g):
                outcome, ok = "absent", True  # nothing to find and nothing found: outside precision and recall
            elif _is_empty(p):
                outcome = "missing"
            elif _is_empty(g):
                outcome = "extra"
            elif several:
                outcome = SEVERAL_VALUES
            else:
                outcome = "wrong"
            all_ok = all_ok and ok
            detail = {"gold": g, "pred": p, "outcome": outcome}
            if outcome == SEVERAL_VALUES:
                detail["values"] = several[:_MAX_VALUES_SHOWN]
            if isinstance(flags.get(name), bool):
                detail["gold_in_input"] = flags[name]
            scores.append(Score(f"field.{name}", float(ok), ok, detail))
        scores.append(Score("case_pass", float(all_ok), all_ok))
        return scores


class ExactScorer:
    """Exact label match after stripping; a JSON output's `label` field is used when present."""

    def __init__(self, name: str = "exact") -> None:
        self.name = name

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        value, problem = parse_json_output(completion.text)
        pred = completion.text
        if problem is None and isinstance(value, dict):
            pred = value.get("label")
        elif problem is None and isinstance(value, str):
            pred = value
        ok = str(pred).strip() == str(case.gold).strip()
        return [Score("case_pass", float(ok), ok, {"gold": case.gold, "pred": pred})]


class PythonScorer:
    """A suite's own scorer: `function(case, output, **options)` from a module in the suite folder.

    The function gets the `Case` (its `input`, `gold`, `id`) and the model's output text, and returns
    a bool (the case passes or not), a number (stored as metric `value`; it passes at or above `threshold`
    when one is set, else it is only measured), a `Score`, or a list of them."""

    def __init__(self, function: Any, name: str, threshold: float | None = None, options: dict | None = None):
        self.name = name
        self.function = function
        self.threshold = threshold
        self.options = options or {}

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        result = self.function(case, completion.text, **self.options)
        if isinstance(result, Score):
            return [result]
        if isinstance(result, list) and all(isinstance(x, Score) for x in result):
            names = [score.metric for score in result]
            if len(set(names)) != len(names):
                raise TypeError(f"returned two Scores named '{next(n for n in names if names.count(n) > 1)}'; "
                                "give each metric of a case its own name")
            return result
        if type(result).__name__ in ("bool_", "bool"):  # numpy's bool too
            return [Score("case_pass", float(bool(result)), bool(result))]
        if isinstance(result, numbers.Real):
            value = float(result)
            if self.threshold is None:
                return [Score("value", value, None)]
            ok = value >= self.threshold
            return [Score("value", value, ok), Score("case_pass", float(ok), ok, {"threshold": self.threshold})]
        raise TypeError(f"returned {type(result).__name__}; return a bool, a number, a Score or a list of Scores")


def load_function(reference: str, suite_dir: Path | None, where: str) -> Any:
    """Import `module:function`, looking for `module.py` in `suite_dir` first, then on the import path.
    Raises SuiteError naming `where` (the config key) when it cannot."""
    module_name, _, attr = reference.partition(":")
    module = None
    try:
        candidate = suite_dir / (module_name.replace(".", "/") + ".py") if suite_dir else None
        if candidate is not None and candidate.is_file():
            spec = importlib.util.spec_from_file_location(f"shadow_suite_{module_name}", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise SuiteError(
            f"{where}: no module '{module_name}' (looked for {module_name}.py in the suite folder and on the path)"
        ) from None
    except Exception as exc:  # the user's module failed to import
        raise SuiteError(f"{where}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise SuiteError(f"{where}: module '{module_name}' has no function '{attr}'")
    return function


def build_scorers(suite: Suite) -> list[Scorer]:
    """The scorers a suite names, in order. Raises SuiteError when a custom scorer cannot be loaded."""
    built: list[Scorer] = []
    for number, spec in enumerate(suite.spec.scorers, start=1):
        name = spec.name or spec.kind
        if spec.kind == "fields":
            built.append(FieldsScorer(dict(spec.fields), dayfirst=spec.dayfirst, name=name,
                                      gold_in_input_field=spec.gold_in_input_field))
        elif spec.kind == "label":
            from harness.labels import LabelScorer

            built.append(LabelScorer(suite.labels or [], label_key=suite.spec.output.label_key, name=name))
        elif spec.kind == "line_items":
            from harness.items import LineItemsScorer

            built.append(LineItemsScorer(key=spec.key, item_fields=dict(spec.item_fields),
                                         min_similarity=spec.min_similarity, dayfirst=spec.dayfirst, name=name))
        elif spec.kind == "clauses":
            from harness.clauses import ClausesScorer

            categories = clause_categories(suite.spec, spec)
            built.append(ClausesScorer(categories=categories, text_field=spec.text_field, name=name))
        elif spec.kind == "python":
            where = f"{suite.path / 'suite.toml'}: scorers[{number}].function"
            function = load_function(spec.function or "", suite.path, where)
            built.append(PythonScorer(function, name=name, threshold=spec.threshold, options=dict(spec.options)))
        else:
            built.append(ExactScorer(name=name))
    return built


def aggregate_metrics(
    scorers: list[Scorer], scores: pd.DataFrame, responses: pd.DataFrame, cases: dict[str, Case]
) -> list[dict[str, Any]]:
    """Run-level metrics of every aggregating scorer, per provider, as rows for the store's `metrics` table.

    `scores` and `responses` are the run's stored rows (`detail` as JSON text); `cases` maps case id to Case
    (every case of the run). A provider's failed calls and the cases it has no answer for are passed to the
    scorer as unanswered cases."""
    rows: list[dict[str, Any]] = []
    if responses.empty:
        return rows
    parsed = scores.assign(detail=scores["detail"].map(parse_detail)) if not scores.empty else scores
    for provider, group in responses.groupby("provider", sort=False):
        # failed calls, and cases an interrupted run never got to: misses, as in the pass rate
        answered = set(group[group["error"].isna()]["case_id"])
        unanswered = [case for case_id, case in cases.items() if case_id not in answered]
        for scorer in scorers:
            if not hasattr(scorer, "aggregate"):
                continue
            if len(parsed):
                mine = parsed[(parsed["provider"] == provider) & (parsed["scorer"] == scorer.name)]
            else:
                mine = pd.DataFrame(columns=["case_id", "metric", "value", "passed", "detail"])
            try:
                metrics = scorer.aggregate(mine, unanswered)
            except Exception as exc:  # a broken aggregate loses its metrics, never the run
                metrics = [Metric("aggregate_error", None, {"error": f"{type(exc).__name__}: {exc}"[:300]})]
            rows.extend(
                {"provider": provider, "scorer": scorer.name, "metric": m.name,
                 "value": None if m.value is None or m.value != m.value else float(m.value), "detail": m.detail}
                for m in metrics
            )
    return rows


def parse_detail(value: Any) -> dict[str, Any]:
    """A score's `detail` as a dict, whether stored JSON text or already parsed; {} when it is neither."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def score_completion(scorers: list[Scorer], case: Case, completion: Completion) -> list[tuple[str, Score]]:
    """Every scorer's scores for one response, as (scorer name, score). A failed call gets no scores."""
    if completion.error is not None:
        return []
    out = []
    for scorer in scorers:
        try:
            out.extend((scorer.name, score) for score in scorer(case, completion))
        except Exception as exc:  # a scorer bug or odd output fails this case, never the run
            detail = {"scorer_error": f"{type(exc).__name__}: {exc}"[:300]}
            out.append((scorer.name, Score("case_pass", 0.0, False, detail)))
    return out


VALIDITY_METRICS = ("valid_json", "valid_label")  # an answer failing any of these is invalid output


def summarize(responses: pd.DataFrame, scores: pd.DataFrame, n_cases: int) -> pd.DataFrame:
    """One row per provider: pass rate (errors and missing answers count as failures), error and
    invalid-output rates, latency percentiles and cost (cache hits excluded from both: they cost nothing and
    took no time in this run), retries and time lost to rate limits, and token totals.

    `cost_usd` sums the priced answers; `cost_unknown` counts answers with no price (unknown model or usage),
    so a partial sum is never mistaken for the whole; `cost_usd` is None when nothing was priced."""
    rows = []
    for provider, group in responses.groupby("provider", sort=False):
        mine = scores[scores["provider"] == provider]
        passes = case_passes(mine)
        checks = mine[mine["metric"].isin(VALIDITY_METRICS)]
        valid = checks["passed"].fillna(False).astype(bool).groupby(checks["case_id"]).all()
        called = group[~group["cached"].fillna(False).astype(bool)]
        live = called[called["error"].isna()]
        priced = called["cost_usd"].dropna()
        rows.append({
            "provider": provider,
            "cases": n_cases,
            "answered": int(group["error"].isna().sum()),
            "errors": int(group["error"].notna().sum()),
            "passed": int(passes.sum()),
            "pass_rate": float(passes.sum()) / n_cases if n_cases else float("nan"),
            "invalid_rate": float((~valid).sum()) / len(valid) if len(valid) else float("nan"),
            "latency_p50_ms": _pct(live["latency_ms"], 50),
            "latency_p95_ms": _pct(live["latency_ms"], 95),
            "ttft_p50_ms": _pct(live["ttft_ms"], 50),
            "ttft_p95_ms": _pct(live["ttft_ms"], 95),
            "input_tokens": _sum(group["input_tokens"]),
            "output_tokens": _sum(group["output_tokens"]),
            "cached": len(group) - len(called),
            "cost_usd": float(priced.sum()) if len(priced) else None,
            "cost_unknown": int(live["cost_usd"].isna().sum()),
            "retries": int((called["attempts"].fillna(1) - 1).clip(lower=0).sum()),
            "rate_limit_wait_ms": float(called["rate_limit_wait_ms"].fillna(0).sum()),
        })
    return pd.DataFrame(rows)


def case_passes(scores: pd.DataFrame) -> pd.Series:
    """Pass/fail per case (index: case_id): a case passes when every scorer's `case_pass` passed."""
    rows = scores[scores["metric"] == "case_pass"]
    return rows["passed"].fillna(False).astype(bool).groupby(rows["case_id"]).all()


def field_metrics(scores: pd.DataFrame, failed_calls: dict[str, int] | None = None) -> pd.DataFrame:
    """Per provider and field: accuracy, precision, recall and F1; where the suite flags gold values that do
    not occur in the input (`gold_in_input_field`), also the accuracy on the others and how many there are.

    True positive: `correct`. False positive: `wrong`, `several values` (counted as a wrong value) or `extra` (a
    value where gold has none). False negative: `wrong`, `several values`, `missing`, `invalid_output`, and one
    per failed call of the provider (`failed_calls`), which has no score rows. `absent` (no gold value, none
    predicted) counts for accuracy only.
    """
    fields = scores[scores["metric"].str.startswith("field.")]
    if fields.empty:
        return pd.DataFrame(columns=["provider", "field", "accuracy", "precision", "recall", "f1", "n",
                                     "accuracy_gold_in_input", "n_gold_not_in_input"])
    failed_calls = failed_calls or {}
    details = fields["detail"].map(parse_detail)
    frame = fields.assign(outcome=details.map(lambda d: d.get("outcome")),
                          gold_in_input=details.map(lambda d: d.get("gold_in_input")),
                          field=fields["metric"].str.removeprefix("field."))
    rows = []
    for (provider, name), group in frame.groupby(["provider", "field"], sort=False):
        counts = group["outcome"].value_counts()
        failed = failed_calls.get(provider, 0)
        tp = int(counts.get("correct", 0))
        wrong = int(counts.get("wrong", 0)) + int(counts.get(SEVERAL_VALUES, 0))
        fp = wrong + int(counts.get("extra", 0))
        fn = wrong + int(counts.get("missing", 0)) + int(counts.get("invalid_output", 0)) + failed
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        n = len(group) + failed
        flagged = group[group["gold_in_input"] == True]  # noqa: E712 (a column of True, False and None)
        unflagged = int((group["gold_in_input"] == False).sum())  # noqa: E712
        rows.append({
            "provider": provider, "field": name, "accuracy": float(group["passed"].astype(bool).sum()) / n,
            "precision": precision, "recall": recall, "f1": f1, "n": n,
            # accuracy where the gold value occurs in the input, and how many gold values do not (SROIE slips)
            "accuracy_gold_in_input": float(flagged["passed"].astype(bool).mean()) if unflagged else None,
            "n_gold_not_in_input": unflagged,
        })
    return pd.DataFrame(rows)


def _pct(series: pd.Series, q: float) -> float | None:
    values = series.dropna()
    return float(values.quantile(q / 100)) if len(values) else None


def _sum(series: pd.Series) -> int | None:
    values = series.dropna()
    return int(values.sum()) if len(values) else None
