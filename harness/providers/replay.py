"""A provider that answers from production logs: the incumbent's real answers, no API called.

`log:PATH` in a suite or on the command line (`--incumbent log:prod.jsonl`). Log lines are matched to the
suite's cases by case id or by the rendered input (see `harness.logs`); a case with no log line is recorded
as failed with error kind `not_in_log`, and the lines that matched no case are counted in the run's stats.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from harness.providers.base import Completion, Request
from harness.providers.logs import LogEntry, LogMatch, match_log, read_log
from harness.providers.plan import ProviderPlan
from harness.suite.load import Case


class LogReplay:
    """Answers each request with the logged answer to the same case."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.entries = read_log(path)
        self.match: LogMatch | None = None

    def prepare(self, cases: list[Case]) -> LogMatch:
        """Match the log's lines to the run's cases; call before `complete`."""
        self.match = match_log(self.entries, [(case.id, case.messages) for case in cases])
        return self.match

    def stats(self) -> dict[str, Any]:
        """How the log matched the cases, for the run's provenance and the report."""
        if self.match is None:
            return {}
        return {
            "log": self.path,
            "log_lines": len(self.entries),
            "matched_by_id": sum(1 for how in self.match.matched_by.values() if how == "id"),
            "matched_by_input": sum(1 for how in self.match.matched_by.values() if how == "input"),
            "unmatched_cases": len(self.match.unmatched_cases),
            "unmatched_lines": self.match.unmatched_lines[:100],
            "duplicate_lines": self.match.duplicate_lines[:100],
            "summary": self.match.summary(),
        }

    async def complete(self, request: Request) -> Completion:
        """The logged answer for `request.case_id`, or a `not_in_log` failure."""
        entry = self.match.entries.get(request.case_id or "") if self.match else None
        if entry is None:
            return Completion(
                text="", model=None, input_tokens=None, output_tokens=None, ttft_ms=None, latency_ms=0.0,
                finish_reason=None, error=f"no line of {self.path} matches this case (by case id or rendered input)",
                error_kind="not_in_log", source="log",
            )
        return _completion(entry)

    async def aclose(self) -> None:
        """Nothing to close."""


def _completion(entry: LogEntry) -> Completion:
    return Completion(
        text=entry.text,
        model=entry.model,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        ttft_ms=entry.ttft_ms,
        latency_ms=entry.latency_ms,
        finish_reason=entry.finish_reason,
        error=f"the logged call failed: {entry.error}" if entry.error else None,
        error_kind="logged_error" if entry.error else None,
        usage_source="log" if entry.input_tokens is not None or entry.output_tokens is not None else None,
        cached_input_tokens=entry.cached_input_tokens,
        started_at=entry.started_at or datetime.now(UTC),
        source="log",
    )


def from_plan(plan: ProviderPlan) -> LogReplay:
    """The client of a ready `log:` plan."""
    return LogReplay(plan.name, plan.log_path or "")
