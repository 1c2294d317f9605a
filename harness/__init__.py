"""shadow: shadow-deployment evaluation of open LLMs against the APIs they would replace.

Library first; the `harness` command is a thin layer over these names.

Every name is imported on first use (PEP 562 `__getattr__`), so that `import harness` and the `harness`
command cost only what they use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AdaptiveLimiter": "harness.providers.resilience",
    "AnthropicMessages": "harness.providers.anthropic_client",
    "Case": "harness.suite.load",
    "Completion": "harness.providers.base",
    "CostError": "harness.errors",
    "HarnessError": "harness.errors",
    "LogError": "harness.errors",
    "ManagedServer": "harness.providers.server",
    "OpenAICompatible": "harness.providers.openai_client",
    "Outcome": "harness.analysis.outcomes",
    "OutcomeTable": "harness.analysis.outcomes",
    "PricingError": "harness.errors",
    "PricingTable": "harness.pricing",
    "ProfileError": "harness.errors",
    "Provider": "harness.providers.base",
    "ProviderError": "harness.errors",
    "ProviderPlan": "harness.providers.plan",
    "Request": "harness.providers.base",
    "Resilient": "harness.providers.resilience",
    "RetryPolicy": "harness.providers.resilience",
    "RunError": "harness.errors",
    "RunProviders": "harness.analysis.outcomes",
    "RunResult": "harness.run.runner",
    "Score": "harness.scoring.base",
    "Scorer": "harness.scoring.base",
    "ServerError": "harness.errors",
    "Store": "harness.store.db",
    "StoreError": "harness.errors",
    "Suite": "harness.suite.load",
    "SuiteError": "harness.errors",
    "SuiteSpec": "harness.suite.spec",
    "build_scorers": "harness.scoring.registry",
    "field_metrics": "harness.analysis.summary",
    "load_pricing": "harness.pricing",
    "load_suite": "harness.suite.load",
    "outcome_table": "harness.analysis.outcomes",
    "plan_provider": "harness.providers.plan",
    "render_report": "harness.report.html",
    "run_providers": "harness.analysis.outcomes",
    "shadow_run": "harness.run.runner",
    "summarize": "harness.analysis.summary",
}

__all__ = [
    "AdaptiveLimiter",
    "AnthropicMessages",
    "Case",
    "Completion",
    "CostError",
    "HarnessError",
    "LogError",
    "ManagedServer",
    "OpenAICompatible",
    "Outcome",
    "OutcomeTable",
    "PricingError",
    "PricingTable",
    "ProfileError",
    "Provider",
    "ProviderError",
    "ProviderPlan",
    "Request",
    "Resilient",
    "RetryPolicy",
    "RunError",
    "RunProviders",
    "RunResult",
    "Score",
    "Scorer",
    "ServerError",
    "Store",
    "StoreError",
    "Suite",
    "SuiteError",
    "SuiteSpec",
    "build_scorers",
    "field_metrics",
    "load_pricing",
    "load_suite",
    "outcome_table",
    "plan_provider",
    "render_report",
    "run_providers",
    "shadow_run",
    "summarize",
]

if TYPE_CHECKING:
    from harness.analysis.outcomes import Outcome, OutcomeTable, RunProviders, outcome_table, run_providers
    from harness.analysis.summary import field_metrics, summarize
    from harness.errors import (
        CostError,
        HarnessError,
        LogError,
        PricingError,
        ProfileError,
        ProviderError,
        RunError,
        ServerError,
        StoreError,
        SuiteError,
    )
    from harness.pricing import PricingTable, load_pricing
    from harness.providers.anthropic_client import AnthropicMessages
    from harness.providers.base import Completion, Provider, Request
    from harness.providers.openai_client import OpenAICompatible
    from harness.providers.plan import ProviderPlan, plan_provider
    from harness.providers.resilience import AdaptiveLimiter, Resilient, RetryPolicy
    from harness.providers.server import ManagedServer
    from harness.report.html import render_report
    from harness.run.runner import RunResult, shadow_run
    from harness.scoring.base import Score, Scorer
    from harness.scoring.registry import build_scorers
    from harness.store.db import Store
    from harness.suite.load import Case, Suite, load_suite
    from harness.suite.spec import SuiteSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
