"""shadow: shadow-deployment evaluation of open LLMs against the APIs they would replace.

Library first; the `harness` command is a thin layer over these names.
"""

from harness.errors import HarnessError, ProviderError, ServerError, StoreError, SuiteError
from harness.providers import Completion, OpenAICompatible, Provider, ProviderPlan, Request, plan_provider
from harness.report import render_report
from harness.runner import RunResult, shadow_run
from harness.scorers import Score, Scorer, build_scorers, field_metrics, summarize
from harness.server import ManagedServer
from harness.store import Store
from harness.suite import Case, Suite, SuiteSpec, load_suite

__all__ = [
    "Case",
    "Completion",
    "HarnessError",
    "ManagedServer",
    "OpenAICompatible",
    "Provider",
    "ProviderError",
    "ProviderPlan",
    "Request",
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
    "load_suite",
    "plan_provider",
    "render_report",
    "shadow_run",
    "summarize",
]
