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
from pathlib import Path
from typing import Any

from harness.errors import SuiteError
from harness.providers.base import Completion
from harness.scoring.base import SEVERAL_VALUES, Score, is_empty
from harness.scoring.parse import compare, parse_json_output, several_values
from harness.suite.load import Case, Suite
from harness.suite.spec import ScorerSpec

MAX_VALUES_SHOWN = 5  # candidate values listed in a `several values` field's detail


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

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> FieldsScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `fields` describes."""
        return cls(dict(spec.fields), dayfirst=spec.dayfirst, name=spec.name or spec.kind,
                   gold_in_input_field=spec.gold_in_input_field)

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
            several = several_values(p, kind, self.dayfirst) if problem is None and not is_empty(g) else []
            if isinstance(p, (dict, list)) and not isinstance(g, list):
                p = json.dumps(p)
            ok = not is_empty(p) and not is_empty(g) and compare(g, p, kind, self.dayfirst)
            if problem is not None:
                outcome = "invalid_output"
            elif ok:
                outcome = "correct"
            elif is_empty(p) and is_empty(g):
                outcome, ok = "absent", True  # nothing to find and nothing found: outside precision and recall
            elif is_empty(p):
                outcome = "missing"
            elif is_empty(g):
                outcome = "extra"
            elif several:
                outcome = SEVERAL_VALUES
            else:
                outcome = "wrong"
            all_ok = all_ok and ok
            detail = {"gold": g, "pred": p, "outcome": outcome}
            if outcome == SEVERAL_VALUES:
                detail["values"] = several[:MAX_VALUES_SHOWN]
            if isinstance(flags.get(name), bool):
                detail["gold_in_input"] = flags[name]
            scores.append(Score(f"field.{name}", float(ok), ok, detail))
        scores.append(Score("case_pass", float(all_ok), all_ok))
        return scores


class ExactScorer:
    """Exact label match after stripping; a JSON output's `label` field is used when present."""

    def __init__(self, name: str = "exact") -> None:
        self.name = name

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> ExactScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `exact` describes."""
        return cls(name=spec.name or spec.kind)

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

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> PythonScorer:
        """The scorer a suite's `[[scorers]]` entry number `number` (kind `python`) describes. Raises SuiteError
        when its function cannot be loaded."""
        where = f"{suite.path / 'suite.toml'}: scorers[{number}].function"
        function = load_function(spec.function or "", suite.path, where)
        return cls(function, name=spec.name or spec.kind, threshold=spec.threshold, options=dict(spec.options))

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
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, module_name.split(".")[0]):  # the module is there; an import in it failed
            raise SuiteError(f"{where}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
        raise SuiteError(
            f"{where}: no module '{module_name}' (looked for {module_name}.py in the suite folder and on the path)"
        ) from None
    except Exception as exc:  # the user's module failed to import
        raise SuiteError(f"{where}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise SuiteError(f"{where}: module '{module_name}' has no function '{attr}'")
    return function
