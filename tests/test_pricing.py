from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.pricing import PricingError, load_pricing


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    """An override with literal prices, so that arithmetic is checked against numbers set here."""
    return _write(
        tmp_path / "prices.toml",
        """
version = "team-1"

[models."test-model"]
input = 2.0
output = 8.0
cached_input = 0.5
cache_write = 2.5

[models."plain-model"]
input = 3
output = 12

[models."azure:prod-4o"]
provider = "openai"
input = 2.75
output = 11.0
""",
    )


def test_cost_bills_uncached_cached_and_cache_write_tokens_at_their_prices(prices: Path):
    price = load_pricing([prices]).lookup("test-model")
    # 10_000 input = 6_000 uncached + 3_000 cache reads + 1_000 cache writes; 500 output.
    expected = (6_000 * 2.0 + 3_000 * 0.5 + 1_000 * 2.5 + 500 * 8.0) / 1_000_000
    assert price.cost(10_000, 500, cached_input_tokens=3_000, cache_write_tokens=1_000) == pytest.approx(expected)
    assert price.cost(10_000, 500) == pytest.approx((10_000 * 2.0 + 500 * 8.0) / 1_000_000)


def test_cache_tokens_without_a_cache_price_are_billed_at_the_input_price(prices: Path):
    price = load_pricing([prices]).lookup("plain-model")
    assert price.cached_input is None and price.cache_write is None
    expected = (1_000 * 3 + 500 * 12) / 1_000_000
    assert price.cost(1_000, 500, cached_input_tokens=400, cache_write_tokens=100) == pytest.approx(expected)


def test_unknown_token_counts_give_an_unknown_cost_never_zero(prices: Path):
    price = load_pricing([prices]).lookup("test-model")
    assert price.cost(None, 500) is None
    assert price.cost(1_000, None) is None
    # None for the cache counts means none were reported.
    assert price.cost(1_000, 0, cached_input_tokens=None, cache_write_tokens=None) == pytest.approx(2_000 / 1e6)
    # Counts that contradict each other are not priced.
    assert price.cost(100, 10, cached_input_tokens=80, cache_write_tokens=30) is None
    assert price.cost(-1, 10) is None


def test_provider_id_beats_model(prices: Path):
    table = load_pricing([prices])
    price = table.lookup("gpt-4o", provider_id="azure:prod-4o")
    assert (price.model, price.input, price.output) == ("azure:prod-4o", 2.75, 11.0)
    assert table.lookup("gpt-4o", provider_id="openai:gpt-4o").model == "gpt-4o"


def test_dated_snapshot_suffix_resolves_to_the_base_entry():
    table = load_pricing()
    assert table.lookup("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"
    assert table.lookup("claude-3-5-haiku-20241022").model == "claude-3-5-haiku"
    assert table.lookup("claude-3-5-haiku@20241022").model == "claude-3-5-haiku"
    assert table.lookup("claude-3-5-haiku-latest").model == "claude-3-5-haiku"
    # An exact entry beats the suffix fallback: this snapshot kept its own, higher price.
    assert table.lookup("gpt-4o-2024-05-13").model == "gpt-4o-2024-05-13"


def test_model_then_answered_model_then_their_base_names():
    table = load_pricing()
    assert table.lookup("my-alias", answered_model="gpt-4.1-mini").model == "gpt-4.1-mini"
    assert table.lookup("gpt-4.1", answered_model="gpt-4.1-mini").model == "gpt-4.1"
    # An exact answered model beats the requested model's base name.
    assert table.lookup("gpt-4.1-2099-01-01", answered_model="gpt-4.1-mini").model == "gpt-4.1-mini"
    assert table.lookup("my-alias", answered_model="gpt-4.1-nano-2025-04-14").model == "gpt-4.1-nano"


def test_unknown_and_local_models_have_no_price():
    table = load_pricing()
    assert table.lookup("qwen2.5-7b-instruct") is None
    assert table.lookup("smollm2", provider_id="local:smollm2", answered_model="SmolLM2-360M-Instruct") is None


def test_override_replaces_a_whole_entry_and_extends_the_table(tmp_path: Path):
    builtin = load_pricing()
    assert builtin.lookup("gpt-4o-mini").cached_input is not None
    override = _write(tmp_path / "prices.toml", '[models."gpt-4o-mini"]\ninput = 1.0\noutput = 4.0\n')
    extra = _write(tmp_path / "extra.toml", '[models."my-finetune"]\ninput = 0.3\noutput = 1.2\n')
    table = load_pricing([override, str(extra)])

    replaced = table.lookup("gpt-4o-mini")
    assert (replaced.input, replaced.output, replaced.cached_input, replaced.cache_write) == (1.0, 4.0, None, None)
    assert replaced.source == str(override)
    assert table.lookup("my-finetune").source == str(extra)
    untouched = table.lookup("gpt-4.1")
    assert untouched == builtin.lookup("gpt-4.1")
    assert untouched.source == f"built-in {builtin.version}"
    assert set(table.prices) == set(builtin.prices) | {"my-finetune"}


def test_a_later_override_wins(tmp_path: Path):
    first = _write(tmp_path / "a.toml", '[models."m"]\ninput = 1\noutput = 2\n')
    second = _write(tmp_path / "b.toml", '[models."m"]\ninput = 3\noutput = 4\n')
    assert load_pricing([first, second]).lookup("m").input == 3
    assert load_pricing([second, first]).lookup("m").input == 1


def test_version_records_the_overrides(prices: Path, tmp_path: Path):
    builtin = load_pricing()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", builtin.version)
    other = _write(tmp_path / "other.toml", '[models."m"]\ninput = 1\noutput = 2\n')
    assert load_pricing([prices, other]).version == f"{builtin.version}+prices.toml+other.toml"


def test_to_json_records_version_and_each_price(prices: Path):
    data = load_pricing([prices]).to_json()
    assert data["version"].endswith("+prices.toml")
    assert data["models"]["test-model"] == {
        "input": 2.0,
        "output": 8.0,
        "cached_input": 0.5,
        "cache_write": 2.5,
        "source": str(prices),
    }
    assert data["sources"]["openai"].startswith("https://")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('input = "cheap"\noutput = 1', 'models."gpt-x".input must be a number of USD per 1M tokens, got "cheap"'),
        ("input = 1\noutput = true", 'models."gpt-x".output must be a number of USD per 1M tokens, got true'),
        (
            "input = 1\noutput = 2\ncached_input = -0.5",
            'models."gpt-x".cached_input must be a number of USD per 1M tokens, 0 or more, got -0.5',
        ),
        (
            "input = 1\noutput = 2\ncache_write = nan",
            'models."gpt-x".cache_write must be a number of USD per 1M tokens, 0 or more, got nan',
        ),
        ("output = 2", 'models."gpt-x".input is missing; give the USD price per 1M input tokens, e.g. input = 0.6'),
        (
            "input = 1\noutput = 2\ninptu = 3",
            'models."gpt-x" has unknown key "inptu"; allowed: input, output, cached_input, cache_write, provider',
        ),
        (
            "input = 1\noutput = 2\nprovider = 1",
            'models."gpt-x".provider must be a string such as "openai", got 1',
        ),
    ],
)
def test_bad_entry_names_file_and_field(tmp_path: Path, entry: str, message: str):
    path = _write(tmp_path / "prices.toml", f'[models."gpt-x"]\n{entry}\n')
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value) == f"{path}: {message}"


def test_entry_that_is_not_a_table(tmp_path: Path):
    path = _write(tmp_path / "prices.toml", '[models]\n"gpt-x" = 0.5\n')
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value) == (
        f'{path}: models."gpt-x" must be a table: [models."gpt-x"] with input = ... and output = ...'
    )


def test_unknown_top_level_key(tmp_path: Path):
    path = _write(tmp_path / "prices.toml", '[gpt-x]\ninput = 1\noutput = 2\n')
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value) == (
        f'{path}: unknown top-level key "gpt-x"; allowed: version, sources, models (a price goes in [models."<model>"])'
    )


def test_file_without_prices(tmp_path: Path):
    path = _write(tmp_path / "prices.toml", 'version = "1"\n')
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value) == f'{path}: no prices; add entries like [models."gpt-4o-mini"] with input and output'


def test_missing_file_is_named(tmp_path: Path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value) == f"{path}: pricing file not found; check the path"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path):
    path = _write(tmp_path / "prices.toml", '[models."gpt-x"]\ninput = 1\noutput = = 2\n')
    with pytest.raises(PricingError) as err:
        load_pricing([path])
    assert str(err.value).startswith(f"{path}: not valid TOML: ")
    assert "line 3" in str(err.value)
    assert "\n" not in str(err.value)


def test_pricing_error_is_a_harness_error():
    assert issubclass(PricingError, HarnessError)


def test_every_built_in_price_is_positive_with_output_at_least_input():
    table = load_pricing()
    assert len(table.prices) >= 20
    assert {"gpt-4o-mini", "gpt-4.1", "o4-mini", "gpt-5-mini", "claude-haiku-4-5", "claude-3-5-haiku"} <= set(
        table.prices
    )
    for name, price in table.prices.items():
        assert price.model == name
        assert price.input > 0 and price.output > 0, name
        assert price.output >= price.input, name
        if price.cached_input is not None:
            assert 0 < price.cached_input <= price.input, name
        if price.cache_write is not None:
            assert price.cache_write >= price.input, name
        assert price.source == f"built-in {table.version}"
