"""How far a run's judges can be trusted, and what they said: `judge_summaries(store, run_id)`.

Per judge scorer (`pairwise`, `rubric`): the judge(s) that answered, calls made and answered from the cache,
outputs that were no verdict, failed calls and their cost; for a pairwise scorer each candidate's wins, ties,
losses and unjudged cases and the share of order-inconsistent verdicts (the two orders disagreeing); and, where
cases carry human-labelled examples (`judge_labels`), the judge's agreement with the humans on them.

Agreement with humans: accuracy (an example the judge gave no verdict on counts as a disagreement) and Cohen's
kappa, chance-corrected agreement (Cohen 1960), through scikit-learn's `cohen_kappa_score`: unweighted for the
pairwise labels (a, b, tie; a missing verdict is its own category), quadratically weighted for rubric scores
(Fleiss & Cohen 1973: an ordinal scale, where 4 against a human's 5 is a smaller miss than 1), on the examples
with a verdict. Kappa is None when it is undefined (every label and verdict the same), and the summary says how
many examples it rests on: a handful of labels gives a rough figure, which the report says.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.scoring.judges import ORDERS, UNJUDGED, combine, preference
from harness.store import queries
from harness.store.db import Store
from harness.suite.spec import JUDGE_KINDS

OUTCOMES = ("win", "tie", "loss", "unjudged")


@dataclass
class HumanAgreement:
    """The judge against the humans on the labelled examples: `n` examples, `accuracy`, Cohen's `kappa`
    (`weights`: none or quadratic), `no_verdict` examples the judge gave no verdict on."""

    n: int
    accuracy: float
    kappa: float | None
    weights: str
    no_verdict: int
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # human label -> judge label -> count


@dataclass
class JudgeSummary:
    """What one judge scorer's judge did in a run (see the module docstring)."""

    scorer: str
    kind: str
    judges: list[str]
    calls: int = 0
    cached: int = 0
    invalid: int = 0
    errors: int = 0
    cost_usd: float | None = 0.0  # every call, those answered from the cache at what they first cost
    paid_usd: float | None = 0.0  # the calls made for this run
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # pairwise: candidate -> outcome -> cases
    inconsistent: int = 0  # pairwise: cases judged in both orders whose orders disagreed
    judged_both: int = 0  # pairwise: cases with a verdict in both orders
    against: str | None = None  # pairwise: incumbent or reference
    human: HumanAgreement | None = None

    @property
    def inconsistent_rate(self) -> float | None:
        """The share of cases judged in both orders whose two verdicts disagreed (None when there are none)."""
        return self.inconsistent / self.judged_both if self.judged_both else None

    @property
    def validated(self) -> bool:
        """Whether the judge was checked against human labels in this run."""
        return self.human is not None and self.human.n > 0


def judge_summaries(store: Store, run_id: str) -> list[JudgeSummary]:
    """One summary per judge scorer of `run_id` that stored judge calls or judged scores ([] for a run without)."""
    calls = queries.judgements_of(store, run_id)
    scorers = store.run(run_id).get("scorers")
    specs = json.loads(scorers) if isinstance(scorers, str) else []
    judge_scorers = [s.get("name") or s["kind"] for s in specs if s.get("kind") in JUDGE_KINDS]
    judged = queries.scores_with_detail(store, run_id, judge_scorers)
    names = list(dict.fromkeys([c["scorer"] for c in calls] + [r["scorer"] for r in judged]))
    out = []
    for name in names:
        mine = [c for c in calls if c["scorer"] == name]
        rows = [r for r in judged if r["scorer"] == name]
        pairwise = any(r["metric"] == "pairwise.preference" for r in rows) or any(
            c["item"].endswith(ORDERS) for c in mine)
        summary = JudgeSummary(scorer=name, kind="pairwise" if pairwise else "rubric",
                               judges=sorted({c["judge"] for c in mine}))
        for c in mine:
            summary.cached += bool(c["cached"])
            summary.calls += not c["cached"]
            summary.errors += c["error"] is not None
            summary.invalid += c["error"] is None and c["verdict"] is None
            summary.cost_usd = _add(summary.cost_usd, c["cost_usd"])
            if not c["cached"]:
                summary.paid_usd = _add(summary.paid_usd, c["cost_usd"])
        if pairwise:
            _pairwise(summary, mine, rows)
            summary.human = _pairwise_humans(mine)
        else:
            summary.human = _rubric_humans(mine)
        out.append(summary)
    return out


def _pairwise(summary: JudgeSummary, calls: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["metric"] != "case_pass" or row["detail"].get("verdict") not in OUTCOMES:
            continue
        counts = summary.outcomes.setdefault(row["provider"], dict.fromkeys(OUTCOMES, 0))
        counts[row["detail"]["verdict"]] += 1
        summary.against = summary.against or row["detail"].get("against")
        if row["detail"].get("verdict") != UNJUDGED and row["detail"].get("orders"):
            summary.judged_both += 1
            summary.inconsistent += row["detail"].get("consistent") is False


def _pairwise_humans(calls: list[dict[str, Any]]) -> HumanAgreement | None:
    examples: dict[tuple[str, str], dict[str, Any]] = {}
    for c in calls:
        if c["provider"] is None and c["human"] is not None:
            label, _, order = c["item"].rpartition(" ")
            examples.setdefault((c["case_id"], label), {"human": c["human"]})[order] = c["verdict"]
    if not examples:
        return None
    as_label = {"win": "b", "loss": "a", "tie": "tie", UNJUDGED: "no verdict"}
    humans, judged = [], []
    for example in examples.values():
        outcome, _ = combine(*(preference(o, example.get(o)) for o in ORDERS))
        humans.append(example["human"])
        judged.append(as_label[outcome])
    return _agreement(humans, judged, ["a", "b", "tie", "no verdict"], weights=None)


def _rubric_humans(calls: list[dict[str, Any]]) -> HumanAgreement | None:
    humans, judged = [], []
    for c in calls:
        if c["provider"] is None and c["human"] is not None:
            humans.append(c["human"])
            judged.append(c["verdict"] if c["verdict"] is not None else "no verdict")
    if not humans:
        return None
    return _agreement(humans, judged, None, weights="quadratic")


def _agreement(humans: list[str], judged: list[str], labels: list[str] | None, weights: str | None) -> HumanAgreement:
    from sklearn.metrics import cohen_kappa_score  # scikit-learn costs a second to import: only when asked

    n = len(humans)
    accuracy = sum(h == j for h, j in zip(humans, judged, strict=True)) / n
    confusion: dict[str, dict[str, int]] = {}
    for h, j in zip(humans, judged, strict=True):
        confusion.setdefault(h, Counter())[j] += 1
    no_verdict = judged.count("no verdict")
    if weights == "quadratic":
        pairs = [(int(h), int(j)) for h, j in zip(humans, judged, strict=True) if j != "no verdict"]
        scale = sorted({v for pair in pairs for v in pair})
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        scale, a, b = labels, humans, judged
    kappa = None
    if len(a) >= 2 and len(set(a) | set(b)) > 1:
        with warnings.catch_warnings():  # a label no one used makes sklearn warn; the figure stands
            warnings.simplefilter("ignore")
            value = float(cohen_kappa_score(a, b, labels=scale, weights=weights))
        kappa = value if value == value else None
    return HumanAgreement(n=n, accuracy=accuracy, kappa=kappa, weights=weights or "none", no_verdict=no_verdict,
                          confusion={h: dict(c) for h, c in confusion.items()})


def _add(total: float | None, cost: Any) -> float | None:
    if total is None or cost is None or cost != cost:
        return None
    return total + float(cost)
