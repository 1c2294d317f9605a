"""Free-text answers against a reference answer (the `reference` scorer): how much of the reference an answer says.

The reference is the case's gold: a string, or for a JSON object gold with a `reference` or `text` key the value
there (`reference` first); any other gold is compared as text (`str()` of a number, the JSON of a list or object).
A case with no reference (gold absent, None, blank, `{}`, or a null/blank `reference`) gets no scores at all from
this scorer.

Per answer with a reference, three measures (each in [0, 1]) and the case's pass:
- `ref.exact`: 1.0 when the answer is the reference after normalisation (Unicode NFKC, case folded, runs of
  whitespace made one space, punctuation, quotes and spaces around the text stripped; punctuation inside is kept:
  `"Paris."` = `paris`, `New York` ≠ `NewYork`).
- `ref.token_f1`: ROUGE-1 F-measure, i.e. F1 of the answer's and the reference's unigram tokens (clipped counts).
- `ref.rouge_l`: ROUGE-L F-measure, from the longest common subsequence of tokens (word order counts).
- `case_pass`: the suite's `measure` (default `rouge_l`) at or above its `threshold` (`DEFAULT_THRESHOLDS`: 1.0 for
  `exact`, 0.3 for `token_f1` and `rouge_l`: a loose bar, to be set per suite).

ROUGE comes from Google's `rouge-score` package (`rouge_score.rouge_scorer`), imported when the scorer is made,
not with this module (it imports nltk: about two seconds). Tokens are those of rouge-score's own tokenizer
(lowercased runs of letters and digits, everything else a separator) but Unicode-aware: rouge-score's default
keeps only `[a-z0-9]`, so `café` became `caf` and a Chinese or Russian answer had no tokens at all (ROUGE 0 even
when identical to the reference); on ASCII text the tokens are the same. No stemming: the Porter stemmer is
English-only and its output has changed between nltk releases, so stemmed scores would differ between installs
and mangle other languages. ROUGE-L's table is quadratic in length (about 0.75 s for two 2,000-token texts).

An empty answer scores 0 on every measure. Over a provider's answers (`aggregate`): the means of the measures over
the cases that have a reference, an unanswered one (a failed call) counting 0 on each.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import TYPE_CHECKING, Any, ClassVar

from harness.providers.base import Completion
from harness.scoring.base import Metric, MetricInfo, Score
from harness.suite.load import Case, Suite
from harness.suite.spec import ScorerSpec

if TYPE_CHECKING:
    import pandas as pd

# the threshold `case_pass` applies to each measure when the suite's `threshold` is not set
DEFAULT_THRESHOLDS: dict[str, float] = {"exact": 1.0, "token_f1": 0.3, "rouge_l": 0.3}
MEASURES = {"exact": "ref.exact", "token_f1": "ref.token_f1", "rouge_l": "ref.rouge_l"}  # measure -> metric
REFERENCE_KEYS = ("reference", "text")  # gold object keys holding the reference text, first found used
_TOLERANCE = 1e-9  # an F-measure of 3/4 computed as 0.7499999999999999 still reaches a threshold of 0.75
_SHOWN = 300  # characters of the reference and the answer kept in a failed exact match's detail

_NOT_TOKEN = re.compile(r"[\W_]+")  # rouge-score's `[^a-z0-9]+`, for every script
_SPACES = re.compile(r"\s+")
_QUOTES = "`´"  # quote marks that Unicode files as symbols; every other quote mark is punctuation (P*)


class _Tokenizer:
    """rouge-score's tokenizer (lowercase; runs of letters and digits) for every script, without stemming."""

    def tokenize(self, text: str) -> list[str]:
        return [t for t in _NOT_TOKEN.split(unicodedata.normalize("NFKC", text).casefold()) if t]


def reference_text(gold: Any) -> str | None:
    """The reference answer of a case's gold (see the module), or None when it has none."""
    if isinstance(gold, dict) and any(k in gold for k in REFERENCE_KEYS):
        gold = next((gold[k] for k in REFERENCE_KEYS if gold.get(k) is not None), None)
    elif isinstance(gold, dict) and not gold:
        return None
    if gold is None:
        return None
    text = gold if isinstance(gold, str) else json.dumps(gold, ensure_ascii=False) if isinstance(
        gold, (dict, list)) else str(gold)
    return text if text.strip() else None


def normalize(text: str) -> str:
    """The form `ref.exact` compares: NFKC, case folded, whitespace collapsed, surrounding punctuation stripped."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    start, end = 0, len(text)
    while start < end and _trimmed(text[start]):
        start += 1
    while end > start and _trimmed(text[end - 1]):
        end -= 1
    return text[start:end]


def _trimmed(char: str) -> bool:
    return char.isspace() or char in _QUOTES or unicodedata.category(char).startswith("P")


class ReferenceScorer:
    """`kind = "reference"`: a free-text answer against the case's reference answer (see the module)."""

    METRICS: ClassVar[dict[str, MetricInfo]] = {
        "ref.token_f1_mean": MetricInfo(headline=True),
        "ref.rouge_l_mean": MetricInfo(headline=True),
        "ref.exact_rate": MetricInfo(),
    }

    def __init__(self, measure: str = "rouge_l", threshold: float | None = None, name: str = "reference") -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}")
        self.name = name
        self.measure = measure
        self.threshold = DEFAULT_THRESHOLDS[measure] if threshold is None else float(threshold)
        self._rouge: Any = None  # made on the first answer: rouge-score imports nltk (seconds), `validate` needs none

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> ReferenceScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `reference` describes."""
        return cls(measure=spec.measure, threshold=spec.threshold, name=spec.name or spec.kind)

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        reference = reference_text(case.gold)
        if reference is None:
            return []
        text = completion.text or ""
        wanted = normalize(text)
        exact = bool(wanted) and wanted == normalize(reference)
        if self._rouge is None:
            from rouge_score import rouge_scorer

            self._rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False, tokenizer=_Tokenizer())
        rouge = self._rouge.score(reference, text)  # (target, prediction)
        values = {"exact": float(exact), "token_f1": float(rouge["rouge1"].fmeasure),
                  "rouge_l": float(rouge["rougeL"].fmeasure)}
        shown = {} if exact else {"reference": _short(reference), "pred": _short(text)}
        value = values[self.measure]
        ok = value >= self.threshold - _TOLERANCE
        return [
            Score("ref.exact", values["exact"], exact, shown),
            *(Score(MEASURES[key], values[key], None, {"precision": float(rouge[kind].precision),
                                                       "recall": float(rouge[kind].recall)})
              for key, kind in (("token_f1", "rouge1"), ("rouge_l", "rougeL"))),
            Score("case_pass", float(ok), ok, {"measure": self.measure, "value": value, "threshold": self.threshold}),
        ]

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]:
        """Mean token F1, mean ROUGE-L and the exact-match rate over the cases with a reference; each unanswered
        one (with a reference) counts 0. None when no case has a reference."""
        import pandas as pd

        missed = sum(reference_text(case.gold) is not None for case in unanswered)
        rows = scores if {"metric", "value"} <= set(scores.columns) else pd.DataFrame(columns=["metric", "value"])
        out = []
        for name, metric in (("ref.token_f1_mean", "ref.token_f1"), ("ref.rouge_l_mean", "ref.rouge_l"),
                             ("ref.exact_rate", "ref.exact")):
            values = pd.to_numeric(rows.loc[rows["metric"] == metric, "value"], errors="coerce").fillna(0.0)
            n = len(values) + missed
            out.append(Metric(name, float(values.sum()) / n if n else None,
                              {"n": n, "answered": len(values), "unanswered": missed}))
        return out


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
