"""Scoring without gold: does an answer say the same as a reference answer (the incumbent's, on live traffic)?

The reference is the case's gold: the incumbent's answer as text, or the JSON value it parsed to. An answer
agrees when, after normalisation (`scoring.parse.canonical_answer`: case, spacing and punctuation of every text
value, key spelling), it is the same JSON value or, for text, the same text. JSON objects are also compared
field by field (`agree.FIELD` rows, so the report's failure taxonomy names the fields that differ), and a
classification answer (`{"label": ...}` or a bare string) by its label. Besides agreement, each answer is checked
for what needs no reference at all: validity against the JSON schema the request asked for (the case field
`response_schema`, an OpenAI `response_format`), and refusals.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, ClassVar

import jsonschema

from harness.providers.base import Completion
from harness.scoring.base import MetricInfo, Score
from harness.scoring.parse import canonical_answer, parse_json_output
from harness.suite.load import Case, Suite
from harness.suite.spec import ScorerSpec

SCHEMA_FIELD = "response_schema"  # the case field holding the JSON schema the answer must follow, if any

# An answer that declines instead of answering: the opening of the stock phrasings of OpenAI, Anthropic and open
# models, and the finish reasons servers give for a filtered answer. A heuristic: a refusal is reported as such,
# and it fails agreement like any other different answer.
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i apologi[sz]e|i (?:can(?:'|no)?t|cannot|am unable to|"
    r"won'?t|will not) (?:help|assist|comply|provide|do that|answer|fulfil)|as an ai\b)",
    re.IGNORECASE,
)
_FILTERED = frozenset({"content_filter", "refusal"})


def is_refusal(text: str, finish_reason: str | None = None) -> bool:
    """Whether an answer declines: a filtered finish reason, or text opening with a stock refusal."""
    return finish_reason in _FILTERED or bool(_REFUSAL.match(text[:200]))


class AgreementScorer:
    """`kind = "agreement"`: the answer against the reference answer in the case's gold (see the module)."""

    METRICS: ClassVar[dict[str, MetricInfo]] = {}

    def __init__(self, name: str = "agreement", label_key: str = "label") -> None:
        self.name = name
        self.label_key = label_key

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> AgreementScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `agreement` describes."""
        return cls(name=spec.name or spec.kind, label_key=suite.spec.output.label_key)

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        text = completion.text
        value, problem = parse_json_output(text)
        scores = []
        schema = case.input.get(SCHEMA_FIELD) if isinstance(case.input, dict) else None
        valid = True
        if isinstance(schema, dict):
            why = problem or _schema_problem(schema, value)
            valid = why is None
            scores.append(Score("valid", float(valid), valid, {"error": why} if why else {}))
        refused = is_refusal(text, completion.finish_reason)
        scores.append(Score("refusal", float(refused), None))
        reference = case.gold
        if reference is None:
            scores.append(Score("case_pass", 0.0, False, {"reason": "no reference answer (the incumbent's call "
                                                                     "failed)"}))
            return scores
        ref_value = reference if not isinstance(reference, str) else parse_json_output(reference)[0]
        if isinstance(ref_value, dict) and isinstance(value, dict):
            scores.extend(self._fields(ref_value, value))
        if isinstance(ref_value, dict) and isinstance(value, dict) and self.label_key in ref_value:
            # a classification: the label decides, whatever else (a reason, a confidence) the answers add
            agrees = _same(ref_value[self.label_key], json.dumps(value.get(self.label_key)), value.get(self.label_key))
        else:
            agrees = _same(reference, text, value if problem is None else None)
        detail: dict[str, Any] = {"reference": _short(reference)}
        if not agrees:
            detail["pred"] = _short(value if problem is None else text)
            if refused:
                detail["refusal"] = True
        ok = agrees and valid
        scores.append(Score("case_pass", float(ok), ok, detail))
        return scores

    def _fields(self, reference: dict[str, Any], value: dict[str, Any]) -> list[Score]:
        """One `agree.FIELD` row per field of the reference (a field the answer lacks disagrees), and per field
        only the answer has."""
        rows = []
        for key in sorted(set(reference) | set(value)):
            same = key in reference and key in value and canonical_answer(json.dumps(reference[key])) == \
                canonical_answer(json.dumps(value.get(key)))
            detail = {} if same else {"reference": _short(reference.get(key)), "pred": _short(value.get(key))}
            rows.append(Score(f"agree.{key}", float(same), same, detail))
        return rows


def _same(reference: Any, text: str, value: Any) -> bool:
    if isinstance(reference, str):
        return canonical_answer(reference) == canonical_answer(text if value is None or isinstance(value, str)
                                                                else json.dumps(value))
    return value is not None and canonical_answer(json.dumps(reference)) == canonical_answer(json.dumps(value))


def _schema_problem(schema: dict[str, Any], value: Any) -> str | None:
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except (jsonschema.SchemaError, ValueError):
        return None  # the caller's schema is not one we can check: nothing to say about the answer
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"[:300]


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _short(value: Any, limit: int = 300) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    text = json.dumps(value, ensure_ascii=False)
    return value if len(text) <= limit else text[:limit] + "…"
