"""shadow: shadow-deployment evaluation of open LLMs against the APIs they would replace.

Library first; the `harness` command is a thin layer over these names.
"""

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
