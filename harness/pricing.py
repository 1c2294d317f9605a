"""API prices per model: a versioned built-in table (`pricing.toml`) that override files extend or correct.

`load_pricing(overrides)` reads the built-in table and then each override file in turn; an override entry
replaces the built-in entry of the same key. `PricingTable.lookup` finds the `Price` of a call, and
`Price.cost` turns its token counts into USD. A model with no entry has no price: the harness shows its
cost as unknown, never as zero.

Token convention (the harness normalizes every provider to it): `input_tokens` counts ALL input tokens,
cache reads and cache writes included; `cached_input_tokens` and `cache_write_tokens` are the parts of it
read from and written to the prompt cache.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from harness.errors import PricingError

PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
ENTRY_KEYS = (*PRICE_FIELDS, "provider")
_TOP_LEVEL_KEYS = ("version", "sources", "models")
_BUILT_IN = "harness/pricing.toml"

# A dated snapshot or moving alias at the end of a model name: gpt-4o-mini-2024-07-18, gpt-4-0613,
# claude-3-5-haiku-20241022, claude-3-5-haiku@20241022 (Vertex), claude-3-5-haiku-latest.
_SNAPSHOT_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|[-@]\d{8}|-\d{4}|-latest)$")


@dataclass(frozen=True)
class Price:
    """What one model costs, in USD per 1M tokens, and where that price came from."""

    model: str  # the table key that matched
    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    source: str = ""  # "built-in <version>" or the override file's path

    def cost(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = 0,
        cache_write_tokens: int | None = 0,
    ) -> float | None:
        """USD for one call. `input_tokens` includes the cached and cache-write tokens (see the module doc).

        None when a count is unknown (input or output is None) or the counts contradict each other
        (negative, or more cached and cache-write tokens than input tokens): unknown, never a wrong number.
        None for `cached_input_tokens` or `cache_write_tokens` means 0. Tokens read from or written to
        the cache are billed at `input` when the entry has no price for them.
        """
        if input_tokens is None or output_tokens is None:
            return None
        cached = cached_input_tokens or 0
        written = cache_write_tokens or 0
        uncached = input_tokens - cached - written
        if min(uncached, cached, written, output_tokens) < 0:
            return None
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        usd = uncached * self.input + cached * cached_price + written * write_price + output_tokens * self.output
        return usd / 1_000_000


@dataclass(frozen=True)
class PricingTable:
    """Prices by key (a model name or a provider id), with the provenance of the table as a whole."""

    version: str  # the built-in table's date, plus "+<file name>" for each override applied
    prices: Mapping[str, Price]
    sources: Mapping[str, str] = field(default_factory=dict)  # pricing pages the built-in prices came from

    def lookup(self, model: str, *, provider_id: str | None = None, answered_model: str | None = None) -> Price | None:
        """The price of a call, or None when no entry matches (e.g. a local model).

        Tried in order: `provider_id` exactly (e.g. "azure:prod-4o", so that a user entry can price one
        deployment), then `model`, then `answered_model` (the model the API said answered), then each of
        those with a dated snapshot suffix removed ("-2024-07-18", "-20241022", "-latest", ...).
        """
        names = [name for name in (provider_id, model, answered_model) if name]
        for name in [*names, *(_SNAPSHOT_SUFFIX.sub("", name) for name in names)]:
            price = self.prices.get(name)
            if price is not None:
                return price
        return None

    def to_json(self) -> dict[str, Any]:
        """The table as plain JSON data, to record which prices a run was costed with."""
        models = {
            name: {key: getattr(price, key) for key in (*PRICE_FIELDS, "source")}
            for name, price in self.prices.items()
        }
        return {"version": self.version, "sources": dict(self.sources), "models": models}


def load_pricing(overrides: Sequence[str | Path] = ()) -> PricingTable:
    """The built-in table with each override file applied in order (a later file wins, entry by entry).

    Raises `PricingError` naming the file and the field when a file is missing, is not TOML or holds an
    invalid entry.
    """
    text = resources.files("harness").joinpath("pricing.toml").read_text(encoding="utf-8")
    data = _parse_toml(_BUILT_IN, text)
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise PricingError(f'{_BUILT_IN}: version must be the date the prices were checked, e.g. "2026-11-22"')
    prices = _read_models(_BUILT_IN, data, source=f"built-in {version}")
    sources = _read_sources(_BUILT_IN, data)
    applied = []
    for override in overrides:
        path = Path(override)
        data = _parse_toml(str(path), _read_file(path))
        if "version" in data and not isinstance(data["version"], str):
            raise PricingError(f'{path}: version must be a string, e.g. version = "2026-11-22", or left out')
        prices.update(_read_models(str(path), data, source=str(path)))
        sources.update(_read_sources(str(path), data))
        applied.append(path.name)
    return PricingTable(version="+".join([version, *applied]), prices=prices, sources=sources)


def _read_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PricingError(f"{path}: pricing file not found; check the path") from None
    except OSError as exc:
        raise PricingError(f"{path}: cannot read pricing file: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PricingError(f"{path}: not valid TOML: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _parse_toml(label: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{label}: not valid TOML: {exc}") from None


def _read_sources(label: str, data: dict[str, Any]) -> dict[str, str]:
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(url, str) for url in sources.values()):
        raise PricingError(f'{label}: [sources] must map names to pricing page URLs, e.g. openai = "https://..."')
    return dict(sources)


def _read_models(label: str, data: dict[str, Any], source: str) -> dict[str, Price]:
    unknown = [key for key in data if key not in _TOP_LEVEL_KEYS]
    if unknown:
        raise PricingError(
            f'{label}: unknown top-level key "{unknown[0]}"; allowed: {", ".join(_TOP_LEVEL_KEYS)} '
            f'(a price goes in [models."<model>"])'
        )
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise PricingError(f'{label}: no prices; add entries like [models."gpt-4o-mini"] with input and output')
    return {name: _read_entry(label, name, entry, source) for name, entry in models.items()}


def _read_entry(label: str, name: str, entry: Any, source: str) -> Price:
    where = f"{label}: models.{json.dumps(name)}"
    if not name:
        raise PricingError(f"{where}: the model name is empty; name the model or provider id the price is for")
    if not isinstance(entry, dict):
        raise PricingError(f"{where} must be a table: [models.{json.dumps(name)}] with input = ... and output = ...")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise PricingError(f'{where} has unknown key "{key}"; allowed: {", ".join(ENTRY_KEYS)}')
    if "provider" in entry and not isinstance(entry["provider"], str):
        raise PricingError(f'{where}.provider must be a string such as "openai", got {_show(entry["provider"])}')
    for key in ("input", "output"):
        if key not in entry:
            raise PricingError(f"{where}.{key} is missing; give the USD price per 1M {key} tokens, e.g. {key} = 0.6")
    prices = {key: _usd(f"{where}.{key}", entry[key]) for key in PRICE_FIELDS if key in entry}
    return Price(model=name, source=source, **prices)


def _usd(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PricingError(f"{where} must be a number of USD per 1M tokens, got {_show(value)}")
    if not math.isfinite(value) or value < 0:
        raise PricingError(f"{where} must be a number of USD per 1M tokens, 0 or more, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    """A value as it would be written in TOML, e.g. "cheap" with its quotes, true, -1."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, default=str)
