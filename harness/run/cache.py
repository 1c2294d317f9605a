"""The response cache: a stored answer is reused for a request that would produce the same output.

The key is a sha256 over what decides the output: the provider (and, for a generic OpenAI-compatible
endpoint, which server), the exact model requested, every generation parameter sent, the response format
and the rendered messages; and, where asked for, what is stored beside the answer (log-probabilities, extra
samples). The answers themselves are the `responses` rows of earlier runs; a response carries its key and the
parts the key was made of (`cache_parts`), so `explain` can say why a case missed.

Modes: `replay` uses a stored answer where there is one and calls for the rest; `fresh` calls for every
case (the answers still become cache entries); `off` neither reads nor writes keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import StoreError
from harness.providers.base import Request, public_url

if TYPE_CHECKING:
    from harness.providers.plan import ProviderPlan
    from harness.store.db import Store

MODES = ("replay", "fresh", "off")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _provider_part(kind: str, server: tuple[str, str] | None, where: str) -> str:
    # the same model name at two endpoints may be two different models; a managed server's port is not part of it
    if server is not None:
        return f"{kind}@managed:{server[0]}:{server[1]}"
    return f"{kind}@{public_url(where)}"


_FORMATS: dict[tuple[int, bool], tuple[Any, str]] = {}  # id(schema), json -> (schema, digest): one schema a suite


def _format_part(schema: dict[str, Any] | None, json_output: bool) -> str | None:
    if schema is None and not json_output:
        return None
    known = _FORMATS.get((id(schema), json_output))
    if known is not None and known[0] is schema:
        return known[1]
    digest = _digest({"schema": schema, "json": json_output})[:16]
    if len(_FORMATS) > 64:
        _FORMATS.clear()
    _FORMATS[(id(schema), json_output)] = (schema, digest)
    return digest


def cache_parts(plan: ProviderPlan, request: Request) -> dict[str, Any]:
    """What the cache key of `request` to `plan`'s provider is made of: readable where short, hashed where long.
    Called for every request: the parts that are the same for every request of a run are worked out once."""
    server = (plan.server.engine, plan.server.model) if plan.server is not None else None
    provider = _provider_part(plan.kind, server, plan.base_url or plan.log_path or "")
    response_format = _format_part(request.response_schema, request.json_output)
    parts: dict[str, Any] = {
        "provider": provider,
        "model": plan.request_model,
        "params": {k: v for k, v in sorted(request.params.items()) if v is not None},
        "response_format": response_format,
        "messages": _digest(request.messages)[:16],
    }
    # What is stored with an answer besides its text is part of the key too, so that a replayed answer carries
    # it: its log-probabilities, and the extra samples (and agreement) drawn with it. Added only when asked
    # for, so the keys of other requests stay as they were.
    if request.logprobs:
        parts["logprobs"] = True
    if plan.spec.samples > 1:
        parts["samples"] = {"n": plan.spec.samples, "temperature": plan.spec.sample_temperature}
    return parts


def cache_key(parts: dict[str, Any]) -> str:
    """The content address of a request, from its `cache_parts`."""
    return _digest(parts)


@dataclass(frozen=True)
class Explanation:
    """Why one case's answer from one provider was, or was not, taken from the cache."""

    case_id: str
    provider: str
    hit: bool
    reason: str


_PART_NAMES = {
    "provider": "the provider or endpoint",
    "model": "the model",
    "params": "generation parameters",
    "response_format": "the response format (output schema)",
    "messages": "the rendered prompt (template, system prompt or case input)",
    "logprobs": "whether token log-probabilities were asked for",
    "samples": "the extra samples drawn (samples, sample_temperature)",
}


def explain(store: Store, run_id: str, case_id: str | None = None, provider: str | None = None) -> list[Explanation]:
    """For each response of `run_id` (narrowed to a case and/or provider), whether it came from the cache
    and, if not, why: no earlier answer, an earlier one that failed, or which part of the request changed."""
    run = store.run(run_id)
    from harness.store import queries  # here: the parser takes MODES without loading the store

    rows = queries.cache_sources(store, run_id, case_id, provider)
    if not rows:
        narrowed = [f"case '{case_id}'"] if case_id else []
        narrowed += [f"provider '{provider}'"] if provider else []
        raise StoreError(f"run {run_id} has no responses" + (" for " + " and ".join(narrowed) if narrowed else ""))
    earlier = queries.earlier_calls(store, run_id)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in earlier.to_dict("records"):
        by_pair.setdefault((row["case_id"], row["provider"]), []).append(row)
    mode = run.get("cache_mode") or "off"
    return [_explain_one(row, by_pair.get((row["case_id"], row["provider"]), []), mode) for row in rows]


def _explain_one(row: dict[str, Any], earlier: list[dict[str, Any]], mode: str) -> Explanation:
    case, provider = row["case_id"], row["provider"]
    if row["source"] == "cache":
        return Explanation(case, provider, True, f"answer reused from run {row['cached_from']}")
    if row["source"] == "log":
        return Explanation(case, provider, False, "answer taken from a production log, not the cache")
    if mode != "replay":
        return Explanation(case, provider, False, f"the run's cache mode was '{mode}': the cache was not read")
    if row["cache_key"] is None:
        return Explanation(case, provider, False, "no cache key was recorded for this response")
    if not earlier:
        return Explanation(case, provider, False, "no earlier answer from this provider for this case")
    same = [e for e in earlier if e["cache_key"] == row["cache_key"]]
    if same:
        return Explanation(case, provider, False, f"the earlier answer to the same request (run {same[0]['run_id']}) "
                                                  f"failed ({_first(same[0]['error'])}); failures are not reused")
    latest = earlier[0]
    now, before = json.loads(row["cache_parts"]), json.loads(latest["cache_parts"])
    changes = [_describe_change(name, before.get(name), now.get(name)) for name in _PART_NAMES
               if before.get(name) != now.get(name)]
    return Explanation(case, provider, False, f"differs from run {latest['run_id']} in " + "; ".join(changes))


def _describe_change(name: str, before: Any, now: Any) -> str:
    if name == "params":
        before, now = before or {}, now or {}
        diffs = [f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in sorted(set(before) | set(now))
                 if before.get(k) != now.get(k)]
        return "generation parameters (" + ", ".join(diffs) + ")"
    if name in ("provider", "model"):
        return f"{_PART_NAMES[name]} ({before} → {now})"
    return _PART_NAMES[name]


def _first(text: str | None) -> str:
    return (text or "").splitlines()[0][:120] if text else "error"
