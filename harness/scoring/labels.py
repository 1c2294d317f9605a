"""Classification against a fixed label set: one label per case, metrics by scikit-learn.

Per case, the answer's label is read from the JSON key `label_key` (or the whole stripped text, or a JSON
string). It counts as a valid label when it is one of the suite's labels, exactly or after folding case,
spaces and punctuation to the label set's spelling (`Card Arrival` -> `card_arrival`, `reverted card payment`
-> `reverted_card_payment?`); anything else is an invalid label: wrong, and counted apart (as a share of the
answers), since a constrained decoder would never produce it.

Over a provider's answers, `LabelScorer.aggregate` computes accuracy, macro- and weighted-F1, per-class
precision/recall/F1 and the confusion matrix (stored in full, so the report can list the most confused
pairs). Invalid labels and failed calls count as a wrong prediction of the pseudo-label `(invalid)`/
`(no answer)`: they lower recall of the gold class, never the precision of a real class.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from harness.providers.base import Completion
from harness.scoring.base import Metric, MetricInfo, Score
from harness.scoring.parse import parse_json_output
from harness.suite.load import Case, Suite
from harness.suite.spec import ScorerSpec

if TYPE_CHECKING:
    import pandas as pd

INVALID = "(invalid)"
NO_ANSWER = "(no answer)"


def _fold(label: str) -> str:
    return re.sub(r"[\W_]+", "", label.casefold())


class LabelScorer:
    """One label per case from a fixed set; see the module docstring for the rules."""

    METRICS: ClassVar[dict[str, MetricInfo]] = {
        "accuracy": MetricInfo(headline=True), "macro_f1": MetricInfo(headline=True),
        "weighted_f1": MetricInfo(headline=True), "invalid_label_rate": MetricInfo(better="lower", headline=True),
        "confused_pairs": MetricInfo(better="neither", count=True),
    }

    @classmethod
    def from_spec(cls, spec: ScorerSpec, suite: Suite, number: int) -> LabelScorer:
        """The scorer a suite's `[[scorers]]` entry of kind `label` describes (the suite's label set)."""
        return cls(suite.labels or [], label_key=suite.spec.output.label_key, name=spec.name or spec.kind)

    def __init__(self, labels: list[str], label_key: str = "label", name: str = "label") -> None:
        self.name = name
        self.labels = list(labels)
        self.label_key = label_key
        folded: dict[str, list[str]] = {}
        for label in labels:
            folded.setdefault(_fold(label), []).append(label)
        # two labels that fold alike ("card-arrival", "card_arrival") accept only their exact spellings
        self._folded = {key: names[0] for key, names in folded.items() if len(names) == 1}

    def read_label(self, text: str) -> tuple[str | None, Any]:
        """(the canonical label or None when it is not in the set, the raw prediction)."""
        value, problem = parse_json_output(text)
        raw: Any = text.strip()
        if problem is None and isinstance(value, dict):
            raw = value.get(self.label_key)
        elif problem is None and isinstance(value, str):
            raw = value
        if not isinstance(raw, str):
            return None, raw
        if raw in self.labels:
            return raw, raw
        return self._folded.get(_fold(raw)), raw

    def __call__(self, case: Case, completion: Completion) -> list[Score]:
        label, raw = self.read_label(completion.text)
        gold = str(case.gold)
        ok = label == gold
        detail = {"gold": gold, "pred": label if label is not None else INVALID}
        if label is None or label != raw:
            detail["raw"] = raw if isinstance(raw, str) and len(raw) <= 300 else str(raw)[:300]
        return [
            Score("valid_label", float(label is not None), label is not None),
            Score("case_pass", float(ok), ok, detail),
        ]

    def aggregate(self, scores: pd.DataFrame, unanswered: list[Case]) -> list[Metric]:
        """Accuracy, macro/weighted F1, invalid-label rate, per-class P/R/F1 and the confusion matrix."""
        from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

        rows = scores[scores["metric"] == "case_pass"]
        gold = [str(d.get("gold")) for d in rows["detail"]] + [str(c.gold) for c in unanswered]
        pred = [str(d.get("pred")) for d in rows["detail"]] + [NO_ANSWER] * len(unanswered)
        if not gold:
            return []
        invalid = sum(p == INVALID for p in pred)
        answered = len(pred) - len(unanswered)
        present = [x for x in self.labels if x in set(gold) | set(pred)]
        extra = [x for x in (INVALID, NO_ANSWER) if x in pred]
        # Averages run over the classes that occur in gold or in the answers; the pseudo-labels are left out
        # of the averages, so an invalid answer costs recall of its gold class and nothing else.
        p, r, f, support = precision_recall_fscore_support(gold, pred, labels=present, zero_division=0)
        _, _, macro, _ = precision_recall_fscore_support(gold, pred, labels=present, average="macro", zero_division=0)
        _, _, weighted, _ = precision_recall_fscore_support(
            gold, pred, labels=present, average="weighted", zero_division=0
        )
        matrix_labels = present + extra
        matrix = confusion_matrix(gold, pred, labels=matrix_labels)
        per_class = {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, label in enumerate(present)
        }
        confused = [
            {"gold": matrix_labels[i], "pred": matrix_labels[j], "count": int(matrix[i, j])}
            for i in range(len(matrix_labels)) for j in range(len(matrix_labels))
            if i != j and matrix[i, j] > 0
        ]
        confused.sort(key=lambda x: (-x["count"], x["gold"], x["pred"]))
        return [
            Metric("accuracy", float(accuracy_score(gold, pred)), {"n": len(gold)}),
            Metric("macro_f1", float(macro), {"classes": len(present)}),
            Metric("weighted_f1", float(weighted), {"classes": len(present)}),
            Metric("invalid_label_rate", invalid / answered if answered else None, {"invalid": invalid, "n": answered}),
            Metric("per_class", None, per_class),
            Metric("confusion_matrix", None, {"labels": matrix_labels, "matrix": matrix.tolist()}),
            Metric("confused_pairs", float(len(confused)), {"pairs": confused[:50]}),
        ]
