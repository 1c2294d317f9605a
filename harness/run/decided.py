"""`harness run --until-decided`: ask the gate's question as answers arrive, and stop calling once it is answered.

The cases go out in a seeded random order (so that any prefix is a random sample of the suite). Each time a case
has both the candidate's and the incumbent's answer, its per-case value of the gate's metric is the gate's own
(`pass_rate`: 1 when every scorer's `case_pass` passed, 0 when not or when the candidate failed; a score metric:
its mean over the case's rows, 0 when the candidate failed; a case the incumbent failed is left out, as the gate
leaves it out), and the anytime-valid paired test of `harness.analysis.anytime` is asked again. When every
candidate has a verdict (pass or fail at the gate's confidence) the runner stops starting cases; the test stays
valid however often it is asked, so stopping at the first verdict keeps its error rates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.analysis.anytime import PairedSequential, paired_sequential_verdict
from harness.providers.base import Completion
from harness.scoring.base import Score
from harness.suite.load import Case

INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class StopRule:
    """The question `--until-decided` asks: the gate's metric, margin and confidence; `seed` orders the cases."""

    metric: str = "pass_rate"
    margin: float = 0.02
    confidence: float = 0.95
    seed: int = 0


def shuffled(cases: Sequence[Case], seed: int) -> list[Case]:
    """`cases` in the seeded random order `--until-decided` sends them in."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    return order


@dataclass
class DecisionWatch:
    """Per candidate, the paired per-case values so far and the anytime-valid verdict on them."""

    rule: StopRule
    candidates: list[str]
    incumbent: str
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)  # provider -> case -> value (None: out)
    verdicts: dict[str, PairedSequential] = field(default_factory=dict)
    decided_at: int | None = None  # paired cases seen when the last candidate got its verdict

    def record(self, case_id: str, provider: str, completion: Completion, scores: list[tuple[str, Score]]) -> None:
        """Take one stored answer with its scores; ask the question again for the candidates it completes a pair of."""
        if provider != self.incumbent and provider not in self.candidates:
            return
        self.values.setdefault(provider, {})[case_id] = self._value(provider, completion, scores)
        mine = [provider] if provider in self.candidates else self.candidates
        for candidate in mine:
            if case_id in self.values.get(candidate, {}) and case_id in self.values.get(self.incumbent, {}):
                self._ask(candidate)
        if self.decided and self.decided_at is None:
            self.decided_at = max(v.n for v in self.verdicts.values())

    def _value(self, provider: str, completion: Completion, scores: list[tuple[str, Score]]) -> float | None:
        if completion.error:
            return None if provider == self.incumbent else 0.0
        if self.rule.metric == "pass_rate":
            passes = [score.passed for _, score in scores if score.metric == "case_pass"]
            return float(bool(passes) and all(passes))
        values = [score.value for _, score in scores if score.metric == self.rule.metric and score.value is not None]
        return float(sum(values) / len(values)) if values else 0.0

    def _ask(self, candidate: str) -> None:
        theirs = self.values[self.incumbent]
        diffs = [value - theirs[case] for case, value in self.values[candidate].items()
                 if case in theirs and theirs[case] is not None and value is not None]
        self.verdicts[candidate] = paired_sequential_verdict(diffs, self.rule.margin, self.rule.confidence)

    @property
    def decided(self) -> bool:
        """Whether every candidate has a verdict: no case left to send would change the answer's direction."""
        return bool(self.candidates) and all(
            c in self.verdicts and self.verdicts[c].verdict != INCONCLUSIVE for c in self.candidates)

    def to_json(self, n_cases: int) -> dict[str, Any]:
        """The rule and where it stood, for `runs.stop_rule`."""
        return {
            "metric": self.rule.metric, "margin": self.rule.margin, "confidence": self.rule.confidence,
            "seed": self.rule.seed, "incumbent": self.incumbent, "n_cases": n_cases, "decided": self.decided,
            "decided_at": self.decided_at,
            "verdicts": {c: {"verdict": v.verdict, "n": v.n, "mean": v.mean, "low": v.low, "high": v.high,
                             "regressions": v.regressions, "wins": v.wins, "describe": v.describe()}
                         for c, v in self.verdicts.items()},
        }
