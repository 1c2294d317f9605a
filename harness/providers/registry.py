"""Provider kind -> client: `build_provider` turns a ready plan into its client, importing the client's module
(and its SDK) only when that kind is used.
"""

from __future__ import annotations

from harness.errors import ProviderError
from harness.providers.base import Provider
from harness.providers.plan import ProviderPlan


def build_provider(plan: ProviderPlan) -> Provider:
    """The client for a ready plan whose endpoint is known (after any server was started)."""
    if plan.status != "ready" or not (plan.base_url or plan.log_path):
        raise ProviderError(f"provider '{plan.name}' is not ready: {plan.reason or 'no endpoint'}")
    if plan.kind == "log":
        from harness.providers.replay import LogReplay

        return LogReplay(plan.name, plan.log_path or "")
    if plan.kind == "anthropic":
        from harness.providers.anthropic_client import AnthropicMessages

        return AnthropicMessages(plan.name, plan.model, plan.api_key, plan.base_url, timeout=plan.timeout)
    from harness.providers.openai_client import OpenAICompatible, OpenAISDK

    if plan.kind in ("openai", "azure"):
        # the APIs: the SDK handles their endpoints, Azure's API versions and api-key header
        return OpenAISDK(
            plan.name, plan.request_model, plan.base_url or "", plan.api_key,
            schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, timeout=plan.timeout,
            max_tokens_param=plan.max_tokens_param, azure_api_version=plan.api_version,
        )
    # self-hosted servers (local, vllm, openai-compatible): the lean aiohttp client, so that the client is never
    # the bottleneck of a fast server
    token_count_url = None
    if plan.server is not None and plan.server.engine == "llama_cpp":
        token_count_url = (plan.base_url or "").removesuffix("/v1") + "/extras/tokenize/count"
    return OpenAICompatible(
        plan.name, plan.request_model, plan.base_url or "", plan.api_key,
        schema_style=plan.schema_style, usage_in_stream=plan.usage_in_stream, token_count_url=token_count_url,
        timeout=plan.timeout, max_tokens_param=plan.max_tokens_param,
    )
