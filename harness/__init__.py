"""shadow: shadow-deployment evaluation of open LLMs against the APIs they would replace.

Library first; the `harness` command is a thin layer over these names.
"""

from harness.anthropic_client import AnthropicMessages
from harness.errors import HarnessError, ProviderError, ServerError, StoreError, SuiteError
from harness.logs import LogError
from harness.openai_client import OpenAICompatible
from harness.pricing import PricingError, PricingTable, load_pricing
from harness.providers import Completion, Provider, ProviderPlan, Request, plan_provider
from harness.report import render_report
from harness.resilience import AdaptiveLimiter, Resilient, RetryPolicy
from harness.runner import RunResult, shadow_run
from harness.scorers import Score, Scorer, build_scorers, field_metrics, summarize
from harness.server import ManagedServer
from harness.store import Store
from harness.suite import Case, Suite, SuiteSpec, load_suite

__all__ = [
    "AdaptiveLimiter",
    "AnthropicMessages",
    "Case",
    "Completion",
    "HarnessError",
    "LogError",
    "ManagedServer",
    "OpenAICompatible",
    "PricingError",
    "PricingTable",
    "Provider",
    "ProviderError",
    "ProviderPlan",
    "Request",
    "Resilient",
    "RetryPolicy",
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
    "plan_provider",
    "render_report",
    "shadow_run",
    "summarize",
]
