"""Tests of harness/report/charts.py: inline SVG charts for the HTML report."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from harness.report import charts

SVG_NS = "{http://www.w3.org/2000/svg}"


def _latencies(n: int = 10_000, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {
        "gpt-4o": rng.lognormal(0.0, 1.0, n).tolist(),
        "claude-3-5-sonnet": rng.lognormal(0.5, 1.2, n).tolist(),
        "local/qwen2.5-7b": rng.lognormal(-1.0, 0.5, n).tolist(),
    }


def _bars_input(n_rows: int = 40, seed: int = 1) -> tuple[list[str], list[str], list[list[float | None]]]:
    rng = np.random.default_rng(seed)
    rows = [f"field_{i}" for i in range(n_rows)]
    providers = ["gpt-4o", "claude-3-5-sonnet", "local/qwen2.5-7b"]
    values: list[list[float | None]] = [
        [float(rng.random()), None if i % 7 == 0 else float(rng.random()), float(rng.random())] for i in range(n_rows)
    ]
    return rows, providers, values


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return root


def _texts(root: ET.Element) -> list[str]:
    return ["".join(el.itertext()) for el in root.iter(f"{SVG_NS}text")]


def _ids(root: ET.Element) -> set[str]:
    ids = [el.get("id") for el in root.iter() if el.get("id") is not None]
    assert len(ids) == len(set(ids)), "duplicate ids inside one chart"
    return set(ids)


def _x_tick_labels(root: ET.Element) -> list[str]:
    # the tick labels are the <text> elements that only hold a number (or a percent)
    return [t for t in _texts(root) if re.fullmatch(r"[0-9.e+-]+%?", t)]


# --- empty input ---


def test_latency_chart_none_without_values():
    assert charts.latency_chart({}) is None
    assert charts.latency_chart({"a": [], "b": []}) is None
    assert charts.latency_chart({"a": [float("nan"), float("inf"), -1.0]}) is None


def test_metric_bars_none_without_rows_or_providers():
    assert charts.metric_bars([], ["a"], [], "t") is None
    assert charts.metric_bars(["r"], [], [[]], "t") is None


def test_metric_bars_rejects_misshapen_values():
    with pytest.raises(ValueError):
        charts.metric_bars(["r1", "r2"], ["a"], [[0.5]], "t")
    with pytest.raises(ValueError):
        charts.metric_bars(["r1"], ["a", "b"], [[0.5]], "t")


# --- shape of the output ---


@pytest.mark.parametrize("which", ["latency", "bars"])
def test_bare_responsive_svg_element(which):
    if which == "latency":
        svg = charts.latency_chart({"a": [0.5, 0.7, 1.2], "b": [0.9]})
    else:
        svg = charts.metric_bars(["r1", "r2"], ["a", "b"], [[0.5, 0.25], [None, 1.0]], "F1 per field")
    assert svg is not None
    assert svg.startswith("<svg ") and svg.endswith("</svg>")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<metadata" not in svg
    assert svg.count("<svg") == 1
    root = _parse(svg)
    assert root.get("width") == "100%"
    assert root.get("height") is None
    assert root.get("viewBox")
    # the backend's "*" stylesheet is scoped to the charts, not the whole page
    assert "svg.shadow-chart *{" in svg


def test_provider_and_row_names_appear_as_text():
    lat = charts.latency_chart({"incumbent-api": [1.0, 2.0], "open-model": [0.5, 3.0]})
    texts = " ".join(_texts(_parse(lat)))
    assert "incumbent-api" in texts and "open-model" in texts

    bars = charts.metric_bars(["invoice_number", "total"], ["incumbent-api", "open-model"],
                              [[0.9, 0.8], [0.7, None]], "Accuracy per field")
    texts = _texts(_parse(bars))
    joined = " ".join(texts)
    for name in ("incumbent-api", "open-model", "invoice_number", "total", "Accuracy per field"):
        assert name in joined
    assert "n/a" in texts  # the missing value is marked, not drawn as 0%


def test_provider_without_latencies_is_listed_as_no_data():
    svg = charts.latency_chart({"a": [1.0, 2.0], "b": []})
    assert any(t.startswith("b") and "no data" in t for t in _texts(_parse(svg)))


def test_legend_keeps_underscore_and_dollar_names():
    # matplotlib hides legend labels starting with "_" and parses "$...$" as mathtext unless told otherwise
    names = {"_private": [1.0, 2.0], "cost $x^$ model": [0.5, 1.0]}
    joined = " ".join(_texts(_parse(charts.latency_chart(names))))
    assert "_private" in joined and "cost $x^$ model" in joined
    bars = charts.metric_bars(["$\\frac{$"], list(names), [[0.5, 0.5]], "$oops")
    joined = " ".join(_texts(_parse(bars)))
    assert "$\\frac{$" in joined and "_private" in joined and "$oops" in joined


# --- untrusted text ---


def test_untrusted_text_is_escaped():
    evil_provider = "<script>alert(1)</script>"
    evil_row = 'a&b"<img onerror=x>'
    lat = charts.latency_chart({evil_provider: [0.1, 0.2, 5.0], "ok": [1.0]}, title=evil_row)
    bars = charts.metric_bars([evil_row, "fine"], [evil_provider, "ok"], [[0.5, None], [0.1, 0.9]],
                              title=evil_provider, xlabel=evil_row)
    for svg in (lat, bars):
        lowered = svg.lower()
        assert "<script" not in lowered
        assert "<img" not in lowered
        root = _parse(svg)
        assert not list(root.iter(f"{SVG_NS}script"))
        joined = " ".join(_texts(root))
        assert evil_provider in joined  # shown, as text
        assert evil_row in joined


def test_control_characters_do_not_break_xml():
    svg = charts.metric_bars(["bad\x00row\x1b[31m"], ["p\x07"], [[0.5]], "t\x0b")
    _parse(svg)


# --- ids, determinism, size ---


def test_ids_unique_across_charts_in_one_page():
    lat = charts.latency_chart(_latencies(2_000))
    rows, providers, values = _bars_input()
    bars = charts.metric_bars(rows, providers, values, "F1 per field")
    lat_ids, bar_ids = _ids(_parse(lat)), _ids(_parse(bars))
    assert lat_ids and bar_ids
    assert not lat_ids & bar_ids
    # every reference resolves inside its own chart
    for svg, ids in ((lat, lat_ids), (bars, bar_ids)):
        refs = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', svg))
        assert refs and refs <= ids


def test_explicit_chart_id_prefixes_ids():
    a = charts.metric_bars(["r"], ["p"], [[0.5]], "t", chart_id="one")
    b = charts.metric_bars(["r"], ["p"], [[0.5]], "t", chart_id="two")
    a_ids, b_ids = _ids(_parse(a)), _ids(_parse(b))
    assert a_ids and all(i.startswith("one-") for i in a_ids)
    assert b_ids and all(i.startswith("two-") for i in b_ids)
    assert not a_ids & b_ids
    weird = charts.metric_bars(["r"], ["p"], [[0.5]], "t", chart_id='x" onload="y')
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in _ids(_parse(weird)))


def test_deterministic_output():
    lat = _latencies(3_000)
    assert charts.latency_chart(lat) == charts.latency_chart(lat)
    rows, providers, values = _bars_input(55)
    assert charts.metric_bars(rows, providers, values, "t") == charts.metric_bars(rows, providers, values, "t")


def test_size_bound_with_10000_latencies_per_provider():
    svg = charts.latency_chart(_latencies(10_000))
    assert len(svg.encode()) < 100_000
    root = _parse(svg)
    # aggregated geometry: no path carries anything like 10,000 vertices
    for path in root.iter(f"{SVG_NS}path"):
        assert len(re.findall(r"[ML]", path.get("d", ""))) <= charts.MAX_ECDF_POINTS + 10
    rows, providers, values = _bars_input(40)
    assert len(charts.metric_bars(rows, providers, values, "t").encode()) < 100_000


# --- axes ---


def test_log_axis_for_skewed_latencies():
    skewed = charts.latency_chart({"a": [0.05, 0.1, 0.2, 0.5], "b": [1.0, 4.0, 30.0]})  # max/min = 600
    root = _parse(skewed)
    assert "seconds (log scale)" in _texts(root)
    ticks = _x_tick_labels(root)
    assert {"0.1", "1", "10"} <= set(ticks)  # decades, as plain numbers, not mathtext
    assert not any("mathdefault" in t for t in _texts(root))

    narrow = charts.latency_chart({"a": [1.0, 2.0, 3.0], "b": [4.0, 10.0]})  # max/min = 10
    texts = _texts(_parse(narrow))
    assert "seconds" in texts and "seconds (log scale)" not in texts


def test_percent_axis_and_row_cap():
    rows, providers, values = _bars_input(57)
    svg = charts.metric_bars(rows, providers, values, "F1 per field")
    texts = _texts(_parse(svg))
    assert "100%" in texts and "0%" in texts
    assert any("worst 40 of 57 by gpt-4o" in t for t in texts)
    shown = [t for t in texts if t.startswith("field_")]
    assert len(set(shown)) == charts.MAX_BAR_ROWS
    # the kept rows are the 40 lowest of the first provider
    worst = sorted(range(57), key=lambda i: values[i][0])[: charts.MAX_BAR_ROWS]
    assert set(shown) == {rows[i] for i in worst}

    few = charts.metric_bars(rows[:5], providers, values[:5], "F1 per field")
    assert not any("worst" in t for t in _texts(_parse(few)))


def test_height_grows_with_rows():
    def height(n: int) -> float:
        rows, providers, values = _bars_input(n)
        view_box = _parse(charts.metric_bars(rows, providers, values, "t")).get("viewBox")
        return float(view_box.split()[3])

    assert height(3) < height(10) < height(40)
    assert height(40) == height(80)  # capped


def test_palette_follows_caller_order():
    palette = [c.lower() for c in charts.PALETTE]

    def fills(svg: str) -> list[str]:
        return [c for c in re.findall(r"fill: (#[0-9a-f]{6})", svg.lower()) if c in palette]

    a = fills(charts.metric_bars(["r"], ["incumbent", "challenger"], [[0.5, 0.6]], "t"))
    b = fills(charts.metric_bars(["r"], ["challenger", "incumbent"], [[0.6, 0.5]], "t"))
    # bars then legend patches, in the caller's order: the first provider always gets the first color
    assert a == b == palette[:2] * 2
