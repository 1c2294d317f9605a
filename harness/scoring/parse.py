"""Reading values out of model answers: normalised text, amounts and dates read whole (an answer naming
several is never matched on its first), and JSON output (a Markdown code fence around it tolerated).
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from dateutil import parser as dateparser

from harness.scoring.base import is_empty

_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(value: Any) -> str:
    """Case-, whitespace- and punctuation-insensitive form of a text value."""
    text = str(value)
    # NFKC leaves ASCII as it is, and casefold() of ASCII is lower()
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub("", text)


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
        entries = [v for v in value if not is_empty(v)]
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


def same_answer(a: str, b: str) -> bool:
    """Two answers say the same: equal JSON after normalising every text value, else equal normalised text."""
    return a == b or canonical_answer(a) == canonical_answer(b)


def canonical_answer(text: str) -> Any:
    """What `same_answer` compares: the answer's JSON with every text value normalised, else its normalised text
    (computed once an answer where one is compared with several)."""
    value, problem = parse_json_output(text or "")
    return _normalized_json(value) if problem is None else normalize_text(text or "")


@lru_cache(maxsize=4096)
def _normalized_key(key: str) -> str:
    return normalize_text(key)


def _normalized_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {_normalized_key(k): _normalized_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized_json(v) for v in value]
    return normalize_text(value) if value is not None else None
