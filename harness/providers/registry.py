"""Provider kind -> client (`CLIENTS`): `build_provider` turns a ready plan into its client, importing the
client's module (and its SDK) only when that kind is used.
"""

from __future__ import annotations

import importlib

from harness.errors import ProviderError
from harness.providers.base import Provider
from harness.providers.plan import ProviderPlan

# provider kind (the `kind` of `kind:model`) -> "module:function" making the client of a ready plan
CLIENTS: dict[str, str] = {
    "local": "harness.providers.openai_client:compatible_from_plan",
    "vllm": "harness.providers.openai_client:compatible_from_plan",
    "openai-compatible": "harness.providers.openai_client:compatible_from_plan",
    "openai": "harness.providers.openai_client:sdk_from_plan",
    "azure": "harness.providers.openai_client:sdk_from_plan",
    "anthropic": "harness.providers.anthropic_client:from_plan",
    "log": "harness.providers.replay:from_plan",
}


def build_provider(plan: ProviderPlan) -> Provider:
    """The client for a ready plan whose endpoint is known (after any server was started)."""
    if plan.status != "ready" or not (plan.base_url or plan.log_path):
        raise ProviderError(f"provider '{plan.name}' is not ready: {plan.reason or 'no endpoint'}")
    if plan.kind not in CLIENTS:
        raise ProviderError(f"provider '{plan.name}': no client for kind '{plan.kind}' (have {', '.join(CLIENTS)})")
    module, _, function = CLIENTS[plan.kind].partition(":")
    return getattr(importlib.import_module(module), function)(plan)
