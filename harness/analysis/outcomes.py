"""Case outcomes compared across providers: confidence intervals, paired outcomes and whether answers agree.

Pure functions over plain data, shared by the report and the runner (and usable by a gate): a case's status for
a provider is `pass`, `fail`, `error` (the call failed) or `missing` (no answer stored, e.g. an interrupted run);
only `pass` passes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from harness.scoring.parse import normalize_text, parse_json_output

PAIRED = ("regression", "win", "both_fail", "both_pass")


KILLED = ("its process stopped without finishing (killed, or the machine went down); the answers stored so far "
          "are kept")


def shown_status(status: str, reason: str | None) -> tuple[str, str | None]:
    """A stored run's (status, reason) as a reader should see them. A run still marked `running` when another
    process can read the file is `interrupted`: a running harness holds the DuckDB file's write lock, which keeps
    every other process out, so no process is running it any more. Not for the process that runs it."""
    if status == "running":
        return "interrupted", KILLED
    return status, reason


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None when n is 0.

    Chosen over the normal approximation because it stays inside [0, 1] and is honest at 0% and 100%,
    which small suites hit often."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def paired_category(incumbent_passed: bool, candidate_passed: bool) -> str:
    """`regression` (the incumbent passes, the candidate does not), `win`, `both_fail` or `both_pass`."""
    if incumbent_passed and not candidate_passed:
        return "regression"
    if candidate_passed and not incumbent_passed:
        return "win"
    return "both_pass" if candidate_passed else "both_fail"


def paired_counts(statuses: Mapping[str, Mapping[str, str]], incumbent: str, candidate: str) -> dict[str, int]:
    """Counts of each paired category over every case (`statuses[case_id][provider]`); a case either
    provider did not pass (failed, errored or has no answer) counts as a failure of that provider."""
    counts = Counter(
        paired_category(by.get(incumbent) == "pass", by.get(candidate) == "pass") for by in statuses.values()
    )
    return {name: counts.get(name, 0) for name in PAIRED}


def agreement(outputs_a: Mapping[str, Any], outputs_b: Mapping[str, Any], same: Any) -> tuple[int, int]:
    """(cases where both answered and `same(a, b)`, cases where both answered): agreement without gold."""
    both = [case for case in outputs_a if case in outputs_b]
    return sum(1 for case in both if same(outputs_a[case], outputs_b[case])), len(both)


def same_answer(a: str, b: str) -> bool:
    """Two answers say the same: equal JSON after normalising every text value, else equal normalised text."""
    return _canonical(a) == _canonical(b)


def _canonical(text: str) -> Any:
    value, problem = parse_json_output(text or "")
    return _normalized_json(value) if problem is None else normalize_text(text or "")


def _normalized_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {normalize_text(k): _normalized_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized_json(v) for v in value]
    return normalize_text(value) if value is not None else None
