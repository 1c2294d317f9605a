"""Contract review (CUAD): is each clause category present, and is the quoted clause really in the contract?

The model is asked, per category, whether the contract has such a clause and to quote it verbatim:
`{"Governing Law": {"present": true, "quote": "This Agreement ...", "answer": "California"}, ...}`.
Also accepted: `{"clauses": {...}}`, a list of objects with a `category` key, category keys in any case or
punctuation (`governing_law`), `present` as a bool or `"yes"`/`"no"`/`"true"`/`"false"`, `quote` as a string or
a list of strings, a bare `true`/`false`/`"No"` per category, and JSON in a Markdown fence or inside prose. A
category the output leaves out counts as predicted absent (`"missing": true` in its detail); output that is
not JSON scores every category as predicted absent, outcome `invalid_output`, and the case fails.

Rules, per category (`clause.<Category>` rows):
- Presence: tp/fp/fn/tn from the gold `present` against the predicted one; the row passes when they agree.
- Grounding: every quote the answer gives is checked, under a category predicted present or absent alike (a
  model that marks a clause absent and still quotes something has quoted it). Placeholders that say there is
  no quote (`N/A`, `None`, `Not found`, `-`) are not quotes. A quote is grounded when it occurs in the full
  contract after both are normalised: curly quotes and apostrophes become `"`/`'`, every dash, hyphen and
  minus sign `-` (the Unicode dash category, U+2010 to U+2015, the non-breaking hyphen U+2011, U+2212...),
  `…` `...`, zero-width characters and soft hyphens (U+00AD) go, other characters get NFKC, and every run of
  whitespace becomes one space (trimmed). Line breaks and spacing therefore never matter; one changed word
  does. Where the contract's own spacing is an artefact of its layout, a space there may be in the quote or
  not: inside and at the edges of letter-spaced text (`Supp l i e r ' s  s t andard` grounds
  `Supplier's standard`; `R E C I T A L S` grounds `RECITALS`: a run of at least 3 single characters, 2 of
  them letters or digits, reaching over up to 3 longer tokens to the next single character), and after a
  hyphen that broke a line (`non- exclusive` grounds `non-exclusive`). Elsewhere spaces count both ways: a
  letter-spaced quote does not ground normal text, nor `the rapist` `therapist`. Matching is
  **case-sensitive**: a verbatim quote was asked for, and in legal text case carries meaning (a defined
  term such as "Confidential Information" is not "confidential information"; ALL-CAPS marks the conspicuous
  disclaimers that the law requires). A quote that is right apart from case is still ungrounded, but is
  counted as `differs_only_in_case` so that it can be told from an invented one. A quote with an ellipsis
  (`...`, `…`, `. . .`, `[...]`) is grounded when each part (of at least 3 words, so that "the ... the" is
  not) occurs, in order, without overlapping; quotation marks wrapped around the whole quote are ignored. An
  ungrounded quote is a **hallucinated clause reference**; the row's `grounded` is False when any quote of
  the category is one.
- Overlap: a grounded quote is mapped back to character offsets of the original text (`quote_span`) and
  compared with the union of the category's gold spans: `overlap` = |quote ∩ gold| / |quote ∪ gold|
  (Jaccard over characters) and `gold_coverage` = |quote ∩ gold| / |gold|. Where the quote occurs more than
  once, the occurrence that overlaps gold most is used; several quotes for one category are taken together
  (their grounded parts only). None when gold is absent, the category is predicted absent, or no quote of
  the category is grounded.
- Answer: for value categories (gold answer not Yes/No/empty) and only where gold is present: dates
  (Agreement/Effective/Expiration Date) compare as dates, month first as CUAD writes them (`6/21/99`), else as
  text (`Perpetual`); Governing Law by normalised containment either way (`State of California` matches
  `California`); Parties by the share of gold parties (`A ("a"); B` -> names before any parenthesis) found
  in the predicted answer, which must find them all; anything else by normalised equality or containment
  either way. Normalised: case, accents, whitespace and punctuation ignored. No `answer` is a wrong answer.
- `gold_in_window`: whether a gold span lies at least partly in the text the model was shown
  (`case.context["kept"]`; True when the input was not cut), so recall can also be read on visible clauses.

Per case also: `hallucinated_quotes` (count of ungrounded quotes; passes at 0), `quotes_grounded` (share of
the quotes given that are grounded; left out when none was given), `valid_json` and `case_pass` (every
category's presence right, no hallucinated quote, valid output). Answers do not decide `case_pass`. Quotes
are counted once per case: the same quote (after normalisation) under several categories is one quote, so a
date invented under 8 clause types is one hallucinated quote (its detail lists the distinct ungrounded quotes
and every category that gave one; `n_given` counts every quote given, repeats included).

`aggregate` gives per-category and micro precision/recall/F1 of presence, hallucination counts and rate,
mean overlap, and per-category answer accuracy. A case with no answer (failed call) counts every gold-present
category as a false negative and every gold value answer as wrong.
"""

from __future__ import annotations

import bisect
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from harness.providers.base import Completion
from harness.scoring.base import Metric, MetricInfo, Score, parse_detail
from harness.scoring.parse import normalize_text, parse_date, parse_json_output
from harness.suite.load import DEFAULT_CLAUSE_CATEGORIES, Case, Suite, clause_categories
from harness.suite.spec import ScorerSpec

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CATEGORIES = DEFAULT_CLAUSE_CATEGORIES

DATE_CATEGORIES = frozenset({"agreementdate", "effectivedate", "expirationdate"})

MIN_PART_WORDS = 3  # words in each part of a quote joined by an ellipsis
_TRUNCATE = 300  # characters kept of each quote or gold span in a detail
_MAX_LISTED = 5  # quotes or gold spans listed per detail
_MAX_OCCURRENCES = 50  # occurrences of one quote weighed against gold

_CHAR_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    # minus signs and hyphens outside the Unicode dash category (Pd), which all become "-" too
    "\u2212": "-", "\u2043": "-", "\u02d7": "-", "\u2796": "-",
    "\u2026": "...",
    "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": "", "\u00ad": "",
}
_SPECIAL = re.compile(r"\s+|[^\x00-\x7f]")
# "...", ". . .", "....", optionally in brackets: where a quote leaves text out
_ELLIPSIS = re.compile(r"[\[(]?\s*(?:\.\s?){3,}\s*[\])]?")
_QUOTE_MARKS = "\"'`"
# a space the contract's layout may have put in or left out: after a hyphen that ends a line ("non- exclusive")
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_]-) (?=[^\W\d_])")
LETTER_SPACED_MIN = 3  # single characters in a row, two of them letters or digits, that start a letter-spaced run
LETTER_SPACED_REACH = 3  # longer tokens a letter-spaced run reaches over to its next single character

_YES = frozenset({"yes", "y", "true", "present", "found", "1"})
_NO = frozenset({"no", "n", "false", "absent", "notpresent", "notfound", "none", "null", "na", "0", ""})
_WRAPPERS = ("clauses", "results", "categories", "answers", "output", "response")
_NAME_KEYS = ("category", "clausecategory", "clausetype", "name", "clause")
_PRESENT_KEYS = ("present", "ispresent", "found", "exists")
_QUOTE_KEYS = ("quote", "quotes", "text", "clausetext", "span", "spans", "evidence")
_ANSWER_KEYS = ("answer", "value")
# a "quote" that says there is none ("N/A", "None", "Not found"): no quote at all, never a hallucinated one
_PLACEHOLDERS = _NO | frozenset({
    "notapplicable", "notavailable", "notmentioned", "notspecified", "notstated", "notprovided", "nonefound",
    "noquote", "noclause", "nil", "unknown", "nothing",
})



# ---------------------------------------------------------------- normalisation and grounding


@lru_cache(maxsize=4096)
def _fold(char: str) -> str:
    """What one non-ASCII character becomes for grounding (possibly nothing, or several characters)."""
    mapped = _CHAR_MAP.get(char)
    if mapped is not None:
        return mapped
    if unicodedata.category(char) == "Pd":
        return "-"
    # NFKC may give another dash or quote (U+207B superscript minus -> U+2212): fold those too
    return "".join(c if c.isascii() else _CHAR_MAP.get(c, "-" if unicodedata.category(c) == "Pd" else c)
                   for c in unicodedata.normalize("NFKC", char))


def _normalize_with_map(text: str) -> tuple[str, list[int]]:
    """`text` normalised for grounding, and for each character of the result the index in `text` it came from."""
    out: list[str] = []
    pos: list[int] = []
    pending = -1  # start of a whitespace run not yet written (written only before further text: trimmed)
    last = 0

    def plain(start: int, end: int) -> None:
        nonlocal pending
        if pending >= 0 and pos:
            out.append(" ")
            pos.append(pending)
        pending = -1
        out.append(text[start:end])
        pos.extend(range(start, end))

    for match in _SPECIAL.finditer(text):
        start = match.start()
        if start > last:
            plain(last, start)
        token = match.group()
        if token.isspace():
            if pending < 0:
                pending = start
        else:  # one non-ASCII character
            for char in _fold(token):
                if char.isspace():
                    if pending < 0:
                        pending = start
                else:
                    if pending >= 0 and pos:
                        out.append(" ")
                        pos.append(pending)
                    pending = -1
                    out.append(char)
                    pos.append(start)
        last = match.end()
    if last < len(text):
        plain(last, len(text))
    return "".join(out), pos


def _normalize(text: str) -> str:
    return _normalize_with_map(text)[0]


def _soft_spaces(norm: str) -> list[int]:
    """Offsets in normalised text of the spaces that layout may have put in or left out: those inside and at the
    edges of letter-spaced runs (`Supp l i e r ' s`, `R E C I T A L S`) and after a hyphen that broke a line.

    A run starts at `LETTER_SPACED_MIN` single-character tokens in a row, at least two of them letters or digits,
    and reaches on, either way, to every further single character at most `LETTER_SPACED_REACH` tokens away."""
    tokens = [(m.start(), m.end()) for m in re.finditer(r"\S+", norm)]
    single = [end - start == 1 for start, end in tokens]
    in_run = [False] * len(tokens)
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and single[j]:
            j += 1
        if j - i >= LETTER_SPACED_MIN and sum(norm[tokens[k][0]].isalnum() for k in range(i, j)) >= 2:
            lo, hi = i, j - 1
            while True:  # reach left and right to the next single characters
                left = next((k for k in range(lo - 1, max(lo - 2 - LETTER_SPACED_REACH, -1), -1) if single[k]), None)
                right = next((k for k in range(hi + 1, min(hi + 2 + LETTER_SPACED_REACH, len(tokens))) if single[k]),
                             None)
                if left is None and right is None:
                    break
                lo, hi = left if left is not None else lo, right if right is not None else hi
            for k in range(lo, hi + 1):
                in_run[k] = True
            i = max(j, hi + 1)
        else:
            i = max(j, i + 1)
    soft = {m.start() for m in _HYPHEN_BREAK.finditer(norm)}
    for k in range(1, len(tokens)):
        if in_run[k - 1] or in_run[k]:
            soft.add(tokens[k][0] - 1)  # the one space before token k
    return sorted(soft)


@dataclass(frozen=True)
class _View:
    """Normalised text to search in, with its letters apart from the spaces for searching where spacing is soft."""

    norm: str
    chars: str = ""  # norm without its spaces
    at: tuple[int, ...] = ()  # chars[i] is norm[at[i]]
    spaced: frozenset[int] = frozenset()  # i: a space in norm before chars[i]
    soft: tuple[int, ...] = ()  # i, sorted: that place may have a space or not (see `_soft_spaces`)
    soft_set: frozenset[int] = frozenset()

    @classmethod
    def of(cls, norm: str) -> _View:
        soft_spaces = _soft_spaces(norm)
        if not soft_spaces:
            return cls(norm)
        at = tuple(i for i, c in enumerate(norm) if c != " ")
        index = {p: i for i, p in enumerate(at)}
        spaced = frozenset(index[p + 1] for p, c in enumerate(norm) if c == " ")
        soft = tuple(sorted(index[p + 1] for p in soft_spaces))
        return cls(norm, "".join(norm[p] for p in at), at, spaced, soft, frozenset(soft))

    def find(self, needle: str, start: int = 0) -> tuple[int, int] | None:
        """The first [start, end) in `norm`, at or after `start`, holding `needle` (normalised) verbatim, else
        up to soft spaces; None when there is none."""
        at = self.norm.find(needle, start)
        if at >= 0:
            return at, at + len(needle)
        if not self.soft:
            return None
        compact = needle.replace(" ", "")
        if not compact:
            return None
        gaps: set[int] = set()  # i: the needle has a space before compact[i]
        length = 0
        for word in needle.split(" ")[:-1]:
            length += len(word)
            gaps.add(length)
        i = bisect.bisect_left(self.at, start)
        while (i := self.chars.find(compact, i)) >= 0:
            end = i + len(compact)
            nearest = bisect.bisect_right(self.soft, i)
            # a verbatim match was looked for first: only one that differs at a soft space can be new
            if nearest < len(self.soft) and self.soft[nearest] < end and all(
                ((k - i) in gaps) == (k in self.spaced) or k in self.soft_set for k in range(i + 1, end)
            ):
                return self.at[i], self.at[end - 1] + 1
            i += 1
        return None


@dataclass(frozen=True)
class _Contract:
    """A contract normalised once, with the map back to the original offsets."""

    text: str
    norm: str
    pos: list[int]
    _views: dict[bool, _View] = field(default_factory=dict)

    def view(self, lower: bool = False) -> _View:
        """The normalised text to search, as it is or in lower case."""
        if lower not in self._views:
            self._views[lower] = _View.of(self.norm.lower() if lower else self.norm)
        return self._views[lower]

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Normalised [start, end) -> original [start, end)."""
        return self.pos[start], self.pos[end - 1] + 1


@lru_cache(maxsize=32)
def _contract(text: str) -> _Contract:
    norm, pos = _normalize_with_map(text)
    return _Contract(text, norm, pos)


def _variants(quote: str) -> list[str]:
    """The normalised quote, then without quotation marks wrapped around it."""
    norm = _normalize(quote)
    out = [norm] if norm else []
    if len(norm) >= 2 and norm[0] in _QUOTE_MARKS and norm[-1] in _QUOTE_MARKS:
        inner = norm[1:-1].strip()
        if inner:
            out.append(inner)
    return out


def _find_in(norm_quote: str, view: _View) -> list[tuple[str, tuple[int, int]]] | None:
    """The quote's parts with their normalised spans in the view (leftmost, in order), or None."""
    whole = view.find(norm_quote)
    if whole is not None:
        return [(norm_quote, whole)]
    if not _ELLIPSIS.search(norm_quote):
        return None
    parts = [p.strip() for p in _ELLIPSIS.split(norm_quote)]
    parts = [p for p in parts if p]
    # each part must say something: "the ... the" or "... of ..." would be found in any contract
    if not parts or any(len(p.split()) < MIN_PART_WORDS for p in parts):
        return None
    found: list[tuple[str, tuple[int, int]]] = []
    cursor = 0
    for part in parts:
        span = view.find(part, cursor)
        if span is None:
            return None
        found.append((part, span))
        cursor = span[1]
    return found


def _locate(quote: str, contract: _Contract, gold: list[tuple[int, int]] | None = None) -> list[tuple[int, int]] | None:
    """Original-text spans of a grounded quote's parts, or None when it is not grounded.

    With `gold`, a quote found whole or as one part that occurs several times is placed where it overlaps gold
    most."""
    view = contract.view()
    for variant in _variants(quote):
        found = _find_in(variant, view)
        if found is None:
            continue
        if gold and len(found) == 1:
            return [_best_occurrence(found[0][0], contract, found[0][1], gold)]
        return [contract.to_original(*span) for _, span in found]
    return None


def _best_occurrence(
    needle: str, contract: _Contract, first: tuple[int, int], gold: list[tuple[int, int]]
) -> tuple[int, int]:
    best = contract.to_original(*first)
    best_inter = _intersection([best], gold)
    view = contract.view()
    start = first[0]
    for _ in range(_MAX_OCCURRENCES):
        found = view.find(needle, start + 1)
        if found is None:
            break
        start = found[0]
        span = contract.to_original(*found)
        inter = _intersection([span], gold)
        if inter > best_inter:
            best, best_inter = span, inter
    return best


def _differs_only_in_case(quote: str, contract: _Contract) -> bool:
    lower = contract.view(lower=True)
    return any(_find_in(v.lower(), lower) is not None for v in _variants(quote))


def is_grounded(quote: str, text: str) -> bool:
    """Whether `quote` occurs in `text` once both are normalised (whitespace runs, curly quotes, dashes; case
    kept; spacing that layout broke, see `_soft_spaces`), or, for a quote with an ellipsis, whether its parts
    occur there in order."""
    if not isinstance(quote, str) or not quote.strip():
        return False
    return _locate(quote, _contract(text)) is not None


def quote_span(quote: str, text: str) -> tuple[int, int] | None:
    """Where a grounded quote lies in the original `text`, as [start, end) character offsets (its first
    occurrence; for a quote with an ellipsis, from its first part's start to its last part's end); None when
    the quote is not grounded. `text[start:end]` equals the quote up to normalisation."""
    if not isinstance(quote, str) or not quote.strip():
        return None
    spans = _locate(quote, _contract(text))
    if spans is None:
        return None
    return spans[0][0], spans[-1][1]


# ---------------------------------------------------------------- interval arithmetic


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(spans: list[tuple[int, int]]) -> int:
    return sum(end - start for start, end in _merge(spans))


def _intersection(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    a, b = _merge(a), _merge(b)
    i = j = total = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


# ---------------------------------------------------------------- gold


@dataclass
class _Gold:
    present: bool
    answer: str
    spans: list[tuple[int, int]]
    texts: list[str]
    missing: bool = False


def _gold_entries(gold: Any) -> dict[str, Any]:
    """Gold keyed by normalised category: a dict keyed by category, or a list of {"category", ...}."""
    if isinstance(gold, dict):
        return {normalize_text(k): v for k, v in gold.items()}
    if isinstance(gold, list):
        return {normalize_text(g.get("category")): g for g in gold if isinstance(g, dict) and g.get("category")}
    return {}


def _gold_for(entries: dict[str, Any], category: str, text: str) -> _Gold:
    entry = entries.get(normalize_text(category))
    if not isinstance(entry, dict):
        return _Gold(False, "", [], [], missing=True)
    spans: list[tuple[int, int]] = []
    texts: list[str] = []
    for span in entry.get("spans") or []:
        if not isinstance(span, dict):
            continue
        span_text = str(span.get("text") or "")
        start, end = span.get("start"), span.get("end")
        if not (isinstance(start, int) and isinstance(end, int)) and span_text:
            at = text.find(span_text)
            start, end = (at, at + len(span_text)) if at >= 0 else (None, None)
        if isinstance(start, int) and isinstance(end, int) and end > start:
            spans.append((start, end))
        if span_text:
            texts.append(span_text)
    present = _truth(entry.get("present"))
    if present is None:
        present = bool(spans)
    answer = entry.get("answer")
    return _Gold(present, "" if answer is None else str(answer).strip(), spans, texts)


def _in_window(gold: _Gold, context: dict[str, Any] | None) -> bool | None:
    """Whether any gold span lies at least partly in the kept ranges; None when gold is absent."""
    if not gold.present:
        return None
    if not isinstance(context, dict) or not isinstance(context.get("kept"), list) or not gold.spans:
        return True
    kept = [(int(r[0]), int(r[1])) for r in context["kept"] if isinstance(r, (list, tuple)) and len(r) == 2]
    return _intersection(gold.spans, kept) > 0


def _is_value_answer(answer: str) -> bool:
    return answer.strip().lower() not in ("", "yes", "no")


# ---------------------------------------------------------------- answers


def _norm_value(value: Any) -> str:
    decomposed = unicodedata.normalize("NFKD", str(value))
    return normalize_text("".join(c for c in decomposed if not unicodedata.combining(c)))


def _contains_either(gold: str, pred: str) -> bool:
    g, p = _norm_value(gold), _norm_value(pred)
    return bool(g) and bool(p) and (g in p or p in g)


def _parties(gold: str) -> list[str]:
    """`I-ESCROW, INC. ("i-Escrow"); 2THEMART.COM, INC.` -> ["iescrowinc", "2themartcominc"]."""
    names = []
    for part in gold.split(";"):
        name = _norm_value(part.split("(")[0].split("\u201c")[0].split('"')[0])
        if name and name not in names:
            names.append(name)
    return names


def answer_match(category: str, gold: str, pred: str | None) -> tuple[bool, float]:
    """Whether a predicted answer matches the gold answer of a value category, and a score in [0, 1]
    (the share of gold parties found, for Parties; else 1.0 or 0.0)."""
    if pred is None or not str(pred).strip():
        return False, 0.0
    key = normalize_text(category)
    if key == "parties":
        names = _parties(gold)
        if not names:
            ok = _contains_either(gold, pred)
            return ok, float(ok)
        found = _norm_value(pred)
        share = sum(name in found for name in names) / len(names)
        return share == 1.0, share
    if key in DATE_CATEGORIES:
        g, p = parse_date(gold, dayfirst=False), parse_date(pred, dayfirst=False)
        if g is not None:
            ok = p == g
            return ok, float(ok)
    ok = _contains_either(gold, pred)
    return ok, float(ok)


# ---------------------------------------------------------------- predictions


@dataclass
class _Pred:
    present: bool
    quotes: list[str]
    answer: str | None
    missing: bool = False


def _truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        word = normalize_text(value)
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value if v is not None and str(v).strip()]
    if value is None:
        return []
    return [str(value)]


def _quotes(value: Any) -> list[str]:
    return [q for q in _strings(value) if normalize_text(q) not in _PLACEHOLDERS]


def _answer_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, list):
        return "; ".join(str(v) for v in value if v is not None) or None
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    for key in keys:
        if key in obj:
            return True, obj[key]
    return False, None


def _pred_from(value: Any) -> _Pred:
    if isinstance(value, dict):
        obj = {normalize_text(k): v for k, v in value.items()}
        has_present, present_raw = _pick(obj, _PRESENT_KEYS)
        quotes = _quotes(_pick(obj, _QUOTE_KEYS)[1])
        answer = _answer_text(_pick(obj, _ANSWER_KEYS)[1])
        present = _truth(present_raw) if has_present else None
        if present is None:  # no usable "present": a quote or a real answer says present
            present = bool(quotes) or (answer is not None and _truth(answer) is not False)
        return _Pred(present, quotes, answer)
    if isinstance(value, list):
        quotes = _quotes(value)
        return _Pred(bool(quotes), quotes, None)
    truth = _truth(value)
    if truth is not None or value is None:
        return _Pred(bool(truth), [], None)
    quotes = _quotes(value)  # a bare string: the clause itself
    return _Pred(bool(quotes), quotes, _answer_text(value))


def _items(value: Any, categories: set[str]) -> dict[str, Any] | None:
    """The output's per-category entries keyed by normalised category, or None when the shape is unusable."""
    if isinstance(value, dict):
        keys = {normalize_text(k): v for k, v in value.items()}
        for wrapper in _WRAPPERS:
            if wrapper in keys and wrapper not in categories and isinstance(keys[wrapper], (dict, list)):
                return _items(keys[wrapper], categories)
        if "category" in keys and isinstance(keys["category"], str):
            return {normalize_text(keys["category"]): value}
        return keys
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, dict):
                continue
            obj = {normalize_text(k): v for k, v in item.items()}
            name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
            if name:
                out.setdefault(normalize_text(name), item)
        return out or None  # a list of no named objects says nothing about any category
    return None


def _parse(text: str, categories: set[str]) -> tuple[dict[str, Any] | None, str | None]:
    value, problem = parse_json_output(text)
    if problem is not None:  # JSON inside prose: from the first bracket to the last
        for opener, closer in (("{", "}"), ("[", "]")):
            start, end = text.find(opener), text.rfind(closer)
            if 0 <= start < end:
                candidate, again = parse_json_output(text[start:end + 1])
                if again is None:
                    value, problem = candidate, None
                    break
    if problem is not None:
        return None, problem
    items = _items(value, categories)
    if items is None:
        return None, f"JSON {type(value).__name__}, not an object or a list"
    return items, None


def _quote_key(quote: str) -> str:
    """What makes two quotes the same quote: their normalised text, quotation marks around it left out."""
    variants = _variants(quote)
    return variants[-1] if variants else ""


def _cut(text: str, limit: int = _TRUNCATE) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- the scorer


class ClausesScorer:
    """CUAD contract review: clause presence, quote grounding, overlap with gold spans, and answers."""

    METRICS: ClassVar[dict[str, MetricInfo]] = {
        "presence.micro_f1": MetricInfo(headline=True),
        "quotes.hallucinated": MetricInfo(better="lower", count=True, headline=True),
        "quotes.hallucination_rate": MetricInfo(better="lower"),
    }

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> ClausesScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `clauses` describes (`suite.load.clause_categories`)."""
        return cls(categories=clause_categories(suite.spec, spec), text_field=spec.text_field,
                   name=spec.name or spec.kind)

    def __init__(self, categories: list[str] | None = None, text_field: str = "text", name: str = "clauses") -> None:
        self.name = name
        self.categories = list(categories) if categories else list(DEFAULT_CATEGORIES)
        self.text_field = text_field

    def _text(self, case: Case) -> str:
        text = case.input.get(self.text_field) if isinstance(case.input, dict) else None
        return text if isinstance(text, str) else ""

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        """Score rows for one answer: `clause.<Category>` per category, then `hallucinated_quotes`,
        `quotes_grounded` (when a quote was given), `valid_json` and `case_pass`."""
        text = self._text(case)
        contract = _contract(text)
        gold_entries = _gold_entries(case.gold)
        items, problem = _parse(completion.text or "", {normalize_text(c) for c in self.categories})
        scores: list[Score] = []
        all_right = True
        given: dict[str, bool] = {}  # every distinct quote of the answer (normalised): whether it is grounded
        n_given = 0
        bad_quotes: list[str] = []
        bad_categories: list[str] = []
        case_only = 0
        for category in self.categories:
            gold = _gold_for(gold_entries, category, text)
            key = normalize_text(category)
            if items is None:
                pred = _Pred(False, [], None)
            elif key in items:
                pred = _pred_from(items[key])
            else:
                pred = _Pred(False, [], None, missing=True)
            grounded_spans: list[tuple[int, int]] = []
            flags: list[bool] = []
            for quote in pred.quotes:
                # placed where it overlaps gold most, gold not yet covered by an earlier quote first
                target = [g for g in gold.spans if not _intersection([g], grounded_spans)] or gold.spans
                spans = _locate(quote, contract, target if gold.present and pred.present else None)
                flags.append(spans is not None)
                key = _quote_key(quote)
                if spans is None:
                    if key not in given:
                        bad_quotes.append(_cut(quote))
                        case_only += _differs_only_in_case(quote, contract)
                    if category not in bad_categories:
                        bad_categories.append(category)
                elif pred.present:
                    grounded_spans.extend(spans)
                given.setdefault(key, spans is not None)
            n_given += len(flags)
            overlap = coverage = None
            if gold.present and gold.spans and grounded_spans:
                inter = _intersection(grounded_spans, gold.spans)
                union = _length(grounded_spans + gold.spans)
                overlap = inter / union if union else None
                coverage = inter / _length(gold.spans)
            if items is None:
                outcome = "invalid_output"
            elif gold.present:
                outcome = "tp" if pred.present else "fn"
            else:
                outcome = "fp" if pred.present else "tn"
            right = gold.present == pred.present
            all_right = all_right and right
            answer_ok: bool | None = None
            answer_score: float | None = None
            if gold.present and _is_value_answer(gold.answer):
                answer_ok, answer_score = answer_match(category, gold.answer, pred.answer if pred.present else None)
            quote_detail: str | list[str] | None = None
            if pred.quotes:
                cut = [_cut(q) for q in pred.quotes[:_MAX_LISTED]]
                quote_detail = cut[0] if len(pred.quotes) == 1 else cut
            detail: dict[str, Any] = {
                "outcome": outcome,
                "gold_present": gold.present,
                "pred_present": pred.present,
                "quote": quote_detail,
                "grounded": all(flags) if flags else None,
                "overlap": overlap,
                "gold_coverage": coverage,
                "answer_gold": _cut(gold.answer) if gold.answer else None,
                "answer_pred": _cut(pred.answer) if pred.answer is not None else None,
                "answer_ok": answer_ok,
                "gold_in_window": _in_window(gold, case.context),
                "gold_spans": [_cut(t) for t in gold.texts[:3]],
            }
            if answer_score is not None and normalize_text(category) == "parties":
                detail["answer_score"] = answer_score
            if pred.missing:
                detail["missing"] = True
            if gold.missing:
                detail["gold_missing"] = True
            scores.append(Score(f"clause.{category}", float(right), right, detail))
        n_quotes, n_grounded = len(given), sum(given.values())
        hallucinated = n_quotes - n_grounded
        scores.append(Score("hallucinated_quotes", float(hallucinated), hallucinated == 0, {
            "quotes": bad_quotes[:_MAX_LISTED], "categories": bad_categories,
            "n_quotes": n_quotes, "n_given": n_given, "differs_only_in_case": case_only,
        }))
        if n_quotes:
            scores.append(Score("quotes_grounded", n_grounded / n_quotes, None,
                                {"n_quotes": n_quotes, "grounded": n_grounded}))
        valid = items is not None
        scores.append(Score("valid_json", float(valid), valid, {} if valid else {"problem": problem}))
        ok = valid and all_right and hallucinated == 0
        scores.append(Score("case_pass", float(ok), ok))
        return scores

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]:
        """Run-level metrics for one provider from this scorer's rows; unanswered cases count as misses."""
        import pandas as pd

        counts: dict[str, dict[str, int]] = {}
        answers: dict[str, list[float]] = {}  # category -> [correct, n, score sum]
        order = list(self.categories)

        def tally(category: str, gold_present: bool, pred_present: bool, in_window: Any) -> None:
            if category not in counts:
                counts[category] = dict.fromkeys(("tp", "fp", "fn", "tn", "tp_win", "fn_win"), 0)
                if category not in order:
                    order.append(category)
            c = counts[category]
            key = ("tp" if pred_present else "fn") if gold_present else ("fp" if pred_present else "tn")
            c[key] += 1
            if gold_present and in_window is not False:
                c[key + "_win"] += 1

        def answered(category: str, ok: bool, score: float) -> None:
            a = answers.setdefault(category, [0.0, 0.0, 0.0])
            a[0] += float(ok)
            a[1] += 1
            a[2] += score

        hallucinated = n_quotes = 0
        overlaps: list[float] = []
        coverages: list[float] = []
        rows = scores if isinstance(scores, pd.DataFrame) and not scores.empty else pd.DataFrame(
            columns=["metric", "value", "detail"])
        for metric, value, raw in zip(rows["metric"], rows["value"], rows["detail"], strict=True):
            detail = parse_detail(raw)
            if metric.startswith("clause."):
                category = metric.removeprefix("clause.")
                gold_present, pred_present = bool(detail.get("gold_present")), bool(detail.get("pred_present"))
                tally(category, gold_present, pred_present, detail.get("gold_in_window"))
                if detail.get("answer_ok") is not None:
                    ok = bool(detail["answer_ok"])
                    answered(category, ok, float(detail.get("answer_score", float(ok))))
                if detail.get("overlap") is not None:
                    overlaps.append(float(detail["overlap"]))
                if detail.get("gold_coverage") is not None:
                    coverages.append(float(detail["gold_coverage"]))
            elif metric == "hallucinated_quotes":
                hallucinated += int(value) if pd.notna(value) else 0
                n_quotes += int(detail.get("n_quotes", 0))
        for case in unanswered:
            text = self._text(case)
            entries = _gold_entries(case.gold)
            for category in self.categories:
                gold = _gold_for(entries, category, text)
                if gold.present:
                    tally(category, True, False, _in_window(gold, case.context))
                    if _is_value_answer(gold.answer):
                        answered(category, False, 0.0)

        metrics: list[Metric] = []
        total = dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
        for category in order:
            if category not in counts:
                continue
            c = counts[category]
            for key in total:
                total[key] += c[key]
            precision, recall, f1 = _prf(c["tp"], c["fp"], c["fn"])
            recall_win = _ratio(c["tp_win"], c["tp_win"] + c["fn_win"])
            metrics.append(Metric(f"presence.{category}", f1, {
                "precision": precision, "recall": recall, "f1": f1, "tp": c["tp"], "fp": c["fp"], "fn": c["fn"],
                "tn": c["tn"], "recall_in_window": recall_win,
            }))
        precision, recall, f1 = _prf(total["tp"], total["fp"], total["fn"])
        metrics += [
            Metric("presence.micro_precision", precision, dict(total)),
            Metric("presence.micro_recall", recall, dict(total)),
            Metric("presence.micro_f1", f1, dict(total)),
            Metric("quotes.hallucinated", float(hallucinated), {"quotes": n_quotes}),
            Metric("quotes.hallucination_rate", _ratio(hallucinated, n_quotes),
                   {"hallucinated": hallucinated, "quotes": n_quotes}),
            Metric("quotes.mean_overlap", sum(overlaps) / len(overlaps) if overlaps else None, {"n": len(overlaps)}),
            Metric("quotes.mean_gold_coverage", sum(coverages) / len(coverages) if coverages else None,
                   {"n": len(coverages)}),
        ]
        for category in order:
            if category in answers:
                correct, n, score_sum = answers[category]
                metrics.append(Metric(f"answers.{category}", correct / n, {
                    "correct": int(correct), "n": int(n), "mean_score": score_sum / n,
                }))
        return metrics


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
