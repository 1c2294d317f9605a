"""Providers: one interface (`Provider.complete`) over every chat API the harness talks to.

A provider is named `kind:model`. `plan_provider` turns a suite's provider entry into a `ProviderPlan`:
ready (with the endpoint to call, or the local server to start first) or skipped (with the reason, e.g. a
missing API key). API keys live only in the plan and the client; they are never stored or printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ProviderError
from harness.providers.base import public_url, redact
from harness.suite.spec import PROVIDER_KINDS, ProviderSpec

DEFAULT_CONCURRENCY = {
    "local": 1, "vllm": 64, "openai-compatible": 16, "openai": 8, "anthropic": 8, "azure": 8, "log": 64,
}


# seconds per attempt: a self-hosted server may queue requests behind others; an API answers or fails sooner
DEFAULT_TIMEOUT_S = {"local": 600.0, "vllm": 600.0, "openai-compatible": 300.0}


API_TIMEOUT_S = 120.0


DEFAULT_MAX_ATTEMPTS = 4


AZURE_API_VERSION = "2024-10-21"


@dataclass
class ServerPlan:
    """A local model server the harness must start before the provider can be called."""

    engine: str  # "llama_cpp" or "vllm"
    model: str  # GGUF path for llama.cpp; a model name or path for vLLM
    served_name: str


@dataclass
class ProviderPlan:
    """How a suite's provider entry will run: ready (maybe after starting a server) or skipped."""

    spec: ProviderSpec
    kind: str
    model: str
    status: str  # "ready" or "skipped"
    reason: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    server: ServerPlan | None = None
    schema_style: str = "json_schema"
    usage_in_stream: bool = True
    served_model: str | None = None  # the name sent as `model`, when the server's differs from `model`
    checked: bool = False  # whether a given server was asked which models it serves
    max_tokens_param: str = "max_tokens"
    api_version: str | None = None  # Azure OpenAI
    log_path: str | None = None  # `log:` providers: the production log file

    @property
    def timeout(self) -> float:
        """Seconds one attempt may take, first byte to last token."""
        return self.spec.timeout or DEFAULT_TIMEOUT_S.get(self.kind, API_TIMEOUT_S)

    @property
    def max_attempts(self) -> int:
        """Attempts per case, the first call included."""
        return self.spec.max_attempts or DEFAULT_MAX_ATTEMPTS

    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def concurrency(self) -> int:
        return self.spec.concurrency or DEFAULT_CONCURRENCY[self.kind]

    def describe_endpoint(self) -> str:
        """Where calls go, for provenance: a URL, or the server the harness starts."""
        if self.server is not None:
            return f"managed {self.server.engine} server ({self.server.model})"
        if self.log_path is not None:
            return f"log file {self.log_path}"
        return public_url(self.base_url or "")

    @property
    def request_model(self) -> str:
        """The `model` sent in each request."""
        if self.served_model:
            return self.served_model
        return self.server.served_name if self.server else self.model


def split_id(provider_id: str) -> tuple[str, str]:
    """`"openai:gpt-4o-mini"` -> `("openai", "gpt-4o-mini")`. Raises ProviderError for an unknown kind."""
    kind, _, model = provider_id.partition(":")
    if kind not in PROVIDER_KINDS or not model:
        raise ProviderError(
            f"provider '{provider_id}': unknown kind '{kind}'; use one of {', '.join(PROVIDER_KINDS)} as 'kind:model'"
        )
    return kind, model


def plan_provider(
    spec: ProviderSpec, env: dict[str, str] | None = None, base_url: str | None = None, suite_dir: Path | None = None
) -> ProviderPlan:
    """Decide how to run `spec`. `base_url` (the CLI's --base-url) points local/vllm candidates at a
    running server; a `log:` path is looked up in the current folder, then in `suite_dir`.
    Never raises for missing keys or software: those give a skipped plan with the reason. A `log:` file
    that does not exist raises ProviderError (it is bad input, not a missing credential)."""
    env = dict(os.environ if env is None else env)
    kind, model = split_id(spec.id)
    plan = ProviderPlan(spec=spec, kind=kind, model=model, status="ready")

    if kind in ("local", "vllm"):
        url = spec.base_url or base_url or env.get("VLLM_BASE_URL")
        if url:
            plan.base_url = _v1(url)
            plan.api_key = env.get("VLLM_API_KEY")
            return plan
        if kind == "local":
            plan.server = ServerPlan(engine="llama_cpp", model=model, served_name=model)
            plan.schema_style = "json_object_schema"
            return plan
        if importlib.util.find_spec("vllm") is None:
            return _skip(plan, "vllm is not installed (pip install 'shadow-harness[gpu]') and VLLM_BASE_URL is not set")
        plan.server = ServerPlan(engine="vllm", model=model, served_name=model)
        return plan

    if kind == "openai-compatible":
        url = spec.base_url or env.get("OPENAI_COMPATIBLE_BASE_URL")
        if not url:
            return _skip(plan, "no base URL: set base_url for this provider or OPENAI_COMPATIBLE_BASE_URL")
        plan.base_url = url
        plan.api_key = env.get("OPENAI_COMPATIBLE_API_KEY")
        return plan

    if kind == "openai":
        key = env.get("OPENAI_API_KEY")
        if not key:
            return _skip(plan, "OPENAI_API_KEY is not set")
        plan.base_url = spec.base_url or env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        plan.api_key = key
        plan.max_tokens_param = "max_completion_tokens"  # the o-series and gpt-5 models refuse max_tokens
        return plan

    if kind == "anthropic":
        key = env.get("ANTHROPIC_API_KEY")
        if not key:
            return _skip(plan, "ANTHROPIC_API_KEY is not set")
        plan.base_url = spec.base_url or env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        plan.api_key = key
        return plan

    if kind == "azure":
        key = env.get("AZURE_OPENAI_API_KEY")
        endpoint = spec.base_url or env.get("AZURE_OPENAI_ENDPOINT")
        if not key:
            return _skip(plan, "AZURE_OPENAI_API_KEY is not set")
        if not endpoint:
            return _skip(plan, "no endpoint: set base_url for this provider or AZURE_OPENAI_ENDPOINT "
                               "(https://<resource>.openai.azure.com)")
        plan.base_url = endpoint
        plan.api_key = key
        plan.api_version = (
            spec.api_version or env.get("AZURE_OPENAI_API_VERSION") or env.get("OPENAI_API_VERSION")
            or AZURE_API_VERSION
        )
        plan.max_tokens_param = "max_completion_tokens"
        return plan

    # log: answers come from a production log file, no API is called
    path = Path(model).expanduser()
    if not path.is_absolute() and not path.exists() and suite_dir is not None and (suite_dir / path).exists():
        path = suite_dir / path
    if not path.is_file():
        raise ProviderError(f"provider '{spec.id}': no log file {model} (looked in the current folder"
                            f"{' and ' + str(suite_dir) if suite_dir else ''}); give the path of a JSONL log")
    plan.log_path = str(path)
    return plan


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> list[str] | None:
    """The model ids an OpenAI-compatible server lists at /models, or None if it cannot tell."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return [m["id"] for m in json.loads(response.read())["data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def match_served_model(plan: ProviderPlan, served: list[str] | None) -> ProviderPlan:
    """Fit a self-hosted plan (`local:`/`vllm:` with a base URL) to the model its server serves.

    `local:` uses the server's model when it serves exactly one; `vllm:` must name a served model.
    A mismatch that cannot be resolved skips the provider with the names the server offers.
    """
    if plan.kind not in ("local", "vllm") or plan.server is not None or not served or plan.model in served:
        return plan
    if plan.kind == "local" and len(served) == 1:
        plan.served_model = served[0]
        return plan
    offered = ", ".join(served[:5])
    return _skip(plan, f"the server at {redact(plan.base_url or '')} serves {offered}, not '{plan.model}'; "
                       f"name the candidate {plan.kind}:<one of those>")


def resolve_served_models(plans: list[ProviderPlan]) -> None:
    """Ask each given self-hosted server (`local:`/`vllm:` with a base URL) what it serves and fit its plan
    to that (see `match_served_model`). Done once: a plan already fitted is left alone."""
    for plan in plans:
        if plan.status == "ready" and plan.server is None and plan.kind in ("local", "vllm") and not plan.checked:
            match_served_model(plan, served_models(plan.base_url or "", plan.api_key))
            plan.checked = True


def _skip(plan: ProviderPlan, reason: str) -> ProviderPlan:
    plan.status = "skipped"
    plan.reason = reason
    return plan


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"
