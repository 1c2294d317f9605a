"""Charts for the static HTML failure report, written as inline SVG strings when the report is built.

Each public function returns the bare `<svg ...>...</svg>` element (no XML declaration, no DOCTYPE, no metadata) or
None when there is nothing to draw, ready to be embedded in an HTML page (mark it safe in the template: every piece of
text in it is escaped here, with `html.escape`). The output:

- is responsive: `width="100%"`, no fixed height, the `viewBox` kept, so the browser keeps the aspect ratio, with a
  `max-width` at the natural size so that it does not blow up on wide screens;
- is deterministic: the same input gives the same bytes;
- has ids unique to the chart: each id (the plot area's clip path) is prefixed with the chart id (`chart_id`, by
  default derived from a hash of the chart), so two charts in one page never clash;
- keeps text as text and draws aggregated geometry (ECDF curves of at most `MAX_ECDF_POINTS` points, a provider's
  bars as one path), so that charts of 10,000s of values stay small;
- never treats untrusted text (provider names, row names, titles) as markup: control characters become spaces, the
  rest is escaped.

The SVG is written directly (axes, ticks, legends: `_Axis` and `_Plot`) rather than through a plotting library:
matplotlib took most of a second to import, which every `harness run` paid for its report.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

# Okabe-Ito, a colorblind-safe palette; the caller's first provider (the incumbent) gets the first color.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")  # cycled once the palette is exhausted, so that providers stay distinguishable
MAX_ECDF_POINTS = 500  # points drawn per provider in the latency ECDF
LOG_SPAN = 50.0  # the latency axis is logarithmic when max / min (of positive values) exceeds this
MAX_BAR_ROWS = 40  # rows drawn in metric_bars; the worst ones by the first provider are kept
MAX_LABEL_CHARS = 60  # untrusted labels are shortened to this many characters

_WIDTH = 720.0  # px: the natural width of every chart
_FONT = 12.0  # px; tick labels and legends a little smaller, titles a little larger
_CHAR_W = 0.58  # average character width, in font sizes (DejaVu Sans / Arial): enough to leave room for labels
_DASHES = {"-": "", "--": "6 3", ":": "1.5 2.5", "-.": "6 2.5 1.5 2.5"}
_TEXT = "#262626"
_GRID = "#dddddd"
_MUTED = "#555555"
_CHART_ID_RE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = "\x00chart\x00"  # stands for the chart id until the chart is complete (the default id hashes the chart)
_STYLE = ('<style type="text/css">svg.shadow-chart *{stroke-linejoin: round; stroke-linecap: butt} '
          f"svg.shadow-chart text{{font-family: 'DejaVu Sans', Arial, Helvetica, sans-serif; fill: {_TEXT}}}</style>")


def latency_chart(
    latencies: dict[str, list[float]], title: str = "Latency per answer", chart_id: str | None = None
) -> str | None:
    """ECDF of the latency per answer, in seconds, one curve per provider, as an inline SVG string.

    `latencies` maps a provider (in the caller's order, incumbent first, which sets the colors) to its latencies in
    seconds. Non-finite and negative values are ignored; providers without values are listed in the legend as
    "no data". The x axis is logarithmic when the largest value is more than `LOG_SPAN` times the smallest positive
    one. The legend gives n, the median and the 95th percentile of each provider. Each curve is drawn from at most
    `MAX_ECDF_POINTS` quantiles, whatever the number of values.

    Returns None when no provider has any value.
    """
    cleaned: list[tuple[str, np.ndarray]] = []
    for name, values in latencies.items():
        arr = np.asarray(list(values), dtype=float)
        arr = np.sort(arr[np.isfinite(arr) & (arr >= 0)])
        cleaned.append((str(name), arr))
    if not any(arr.size for _, arr in cleaned):
        return None

    everything = np.concatenate([arr for _, arr in cleaned if arr.size])
    positive = everything[everything > 0]
    hi = float(everything.max())
    use_log = bool(positive.size) and hi / float(positive.min()) > LOG_SPAN
    if use_log:
        x_axis = _Axis(float(positive.min()) / 1.2, hi * 1.2, log=True, fmt=_plain)
    else:
        x_axis = _Axis(0.0, hi * 1.05 if hi > 0 else 1.0, fmt=_plain)
    plot = _Plot(346, x_axis, _Axis(0.0, 1.0, fmt=_percent), left=64, bottom=44, top=34,
                 title=_short(title, 120), xlabel="seconds" + (" (log scale)" if use_log else ""),
                 ylabel="answers within x")
    legend: list[tuple[str, str, str]] = []
    for i, (name, arr) in enumerate(cleaned):
        color, style = _style(i)
        if not arr.size:
            legend.append((color, style, f"{_short(name)} (no data)"))
            continue
        x, y = _ecdf_points(arr)
        # steps for a full ECDF; between quantiles of a downsampled one, straight segments (half the vertices)
        plot.line(x, y, color, style, steps=arr.size <= MAX_ECDF_POINTS)
        p50, p95 = np.quantile(arr, [0.5, 0.95])
        legend.append((color, style, f"{_short(name)}  n={arr.size:,}  p50 {_secs(p50)}  p95 {_secs(p95)}"))
    plot.legend(legend, "lower right")
    return plot.svg(chart_id)


def metric_bars(
    rows: list[str],
    providers: list[str],
    values: list[list[float | None]],
    title: str,
    xlabel: str = "score",
    chart_id: str | None = None,
) -> str | None:
    """Grouped horizontal bars, one group per row and one bar per provider, on a percent axis, as an inline SVG.

    `values[i][j]` is the value of row `rows[i]` (a field, a label, a clause category) for `providers[j]`, in [0, 1]
    (values outside are clipped to the axis); None or NaN is shown as a gap marked "n/a". Providers keep the caller's
    order (incumbent first), which sets the colors, the same as in `latency_chart`. Rows are drawn in the given order,
    top to bottom; when there are more than `MAX_BAR_ROWS`, only the worst `MAX_BAR_ROWS` by the first provider's value
    are drawn (rows where it has no value count as worst only after all valued ones), in the given order, and the
    title says so. The height grows with the number of rows drawn.

    Returns None when there are no rows or no providers. Raises ValueError when `values` does not have one list per
    row with one value per provider.
    """
    if not rows or not providers:
        return None
    if len(values) != len(rows) or any(len(v) != len(providers) for v in values):
        raise ValueError(f"values must be {len(rows)} rows x {len(providers)} providers")

    grid = np.array([[_as_float(v) for v in row] for row in values], dtype=float).reshape(len(rows), len(providers))
    keep = list(range(len(rows)))
    full_title = _short(title, 120)
    if len(rows) > MAX_BAR_ROWS:
        first = grid[:, 0]
        order = sorted(keep, key=lambda i: (math.isnan(first[i]), 0.0 if math.isnan(first[i]) else first[i], i))
        keep = sorted(order[:MAX_BAR_ROWS])
        full_title += f" (worst {MAX_BAR_ROWS} of {len(rows)} by {_short(providers[0], 40)})"
    grid = grid[keep]
    names = [_short(str(rows[i])) for i in keep]

    n_rows, n_prov = grid.shape
    group = 0.8
    bar_h = group / n_prov
    legend_rows = math.ceil(n_prov / min(n_prov, 4))
    top = 30 + 18 * legend_rows + (18 if n_rows > 12 else 6)
    height = top + 44 + n_rows * (9 * n_prov + 8) * 0.96
    left = min(12 + _text_width(max(names, key=len), _FONT * 0.9), _WIDTH * 0.45)
    plot = _Plot(height, _Axis(0.0, 1.0, fmt=_percent), _Axis(n_rows - 0.5, -0.5, ticks=[]), left=left,
                 bottom=40, top=top, xlabel=_short(xlabel, 80), x_grid_only=True, top_labels=n_rows > 12)
    centers = np.arange(n_rows, dtype=float)
    for j in range(n_prov):
        offsets = centers - group / 2 + bar_h * (j + 0.5)
        col = grid[:, j]
        present = ~np.isnan(col)
        plot.hbars(offsets[present], np.clip(col[present], 0.0, 1.0), bar_h * 0.92, _style(j)[0])
        for y in offsets[~present]:
            plot.text_at(0.005, y, "n/a", size=8, color="#777777", anchor="start")
    for y, name in zip(centers, names, strict=True):
        plot.y_label(y, name)
    # the title heads the legend: one block above the chart
    plot.top_legend(full_title, [(_style(j)[0], _short(str(p))) for j, p in enumerate(providers)])
    return plot.svg(chart_id)


def cost_chart(
    curves: dict[str, np.ndarray], volume: float, break_even: float | None, chart_id: str | None = None
) -> str | None:
    """Monthly cost of each option against volume (cases a month), log-log, as an inline SVG.

    `curves` holds `volume` and one array of monthly USD per option (`api`, `self_hosted`, `hybrid`), as
    `harness.cost.curve` returns it; the profile's `volume` and the `break_even` volume are marked. Returns None
    when there is nothing positive to draw."""
    x = np.asarray(curves.get("volume", []), dtype=float)
    if not x.size or not np.any(x > 0):
        return None
    names = {"api": "API", "self_hosted": "self-hosted", "hybrid": "hybrid (cascade)"}
    lines = []
    for key in (k for k in names if k in curves):
        y = np.asarray(curves[key], dtype=float)
        keep = (x > 0) & (y > 0) & np.isfinite(y)
        lines.append((key, x[keep], y[keep]))
    xs = x[x > 0]
    ys = np.concatenate([y for _, _, y in lines]) if lines else np.array([])
    y_lo, y_hi = (float(ys.min()), float(ys.max())) if ys.size else (1.0, 10.0)
    money = _thousands
    plot = _Plot(346, _Axis(float(xs.min()), float(xs.max()), log=True, fmt=money),
                 _Axis(y_lo / 1.3, y_hi * 1.3, log=True, fmt=money), left=78, bottom=44, top=34,
                 title="Monthly cost against volume", xlabel="cases per month (log scale)",
                 ylabel="USD per month (log scale)")
    legend = []
    for i, (key, lx, ly) in enumerate(lines):
        color, style = _style(i)
        if lx.size:
            plot.line(lx, ly, color, style)
        legend.append((color, style, names[key]))
    plot.vline(volume, _MUTED, ":", f"your volume {volume:,.0f}", at=0.02)
    if break_even is not None and xs.min() <= break_even <= xs.max():
        plot.vline(break_even, PALETTE[1], "--", f"break-even {break_even:,.0f}", at=0.92)
    plot.legend(legend, "upper left")
    return plot.svg(chart_id)


def cascade_chart(
    routed_share: list[float], quality: list[float], low: list[float | None], high: list[float | None],
    incumbent: float | None, margin: float, picked: int | None = None, chart_id: str | None = None,
    crossfit: tuple[float, float, float, float] | None = None,
) -> str | None:
    """The cascade curve: quality (with its interval band) against the share of cases routed to the API, the
    incumbent's quality and the gate's margin below it, the threshold picked on all cases (`picked`, an index), and
    the cross-fitted hybrid (`crossfit`: routed share, quality and the quality's interval) as a point with an
    error bar."""
    x = np.asarray(routed_share, dtype=float)
    y = np.asarray(quality, dtype=float)
    if not x.size:
        return None
    lo = np.array([_as_float(v) for v in low])
    hi = np.array([_as_float(v) for v in high])
    band = ~(np.isnan(lo) | np.isnan(hi))
    has_incumbent = incumbent is not None and math.isfinite(incumbent)
    has_crossfit = crossfit is not None and all(math.isfinite(v) for v in crossfit)
    seen = [y[np.isfinite(y)], lo[band], hi[band]]
    if has_incumbent:
        seen.append(np.array([incumbent, incumbent - margin]))
    if has_crossfit:
        seen.append(np.array(crossfit[1:]))
    values = np.concatenate(seen)
    y_lo, y_hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = max((y_hi - y_lo) * 0.05, 0.01)
    plot = _Plot(326, _Axis(0.0, 1.0, fmt=_percent), _Axis(y_lo - pad, y_hi + pad, fmt=_plain), left=60, bottom=44,
                 top=34, title="Hybrid: quality against share routed to the API", xlabel="cases routed to the API",
                 ylabel="quality")
    legend: list[tuple[str, str, str]] = []
    if band.any():
        plot.band(x[band], lo[band], hi[band], PALETTE[1], 0.18)
        legend.append((PALETTE[1], "band", "95% interval"))
    plot.line(x, y, PALETTE[1], "-", steps=True)
    legend.append((PALETTE[1], "-", "hybrid quality"))
    if has_incumbent:
        plot.hline(float(incumbent), PALETTE[0], "-", width=1.0)
        plot.hline(float(incumbent) - margin, PALETTE[0], "--", width=0.8)
        legend += [(PALETTE[0], "-", "API alone"), (PALETTE[0], "--", f"API - margin ({margin:g})")]
    if picked is not None and 0 <= picked < x.size:
        plot.marker(float(x[picked]), float(y[picked]), PALETTE[3], "o")
        legend.append((PALETTE[3], "o", f"picked (in-sample): {x[picked]:.0%} routed"))
    if has_crossfit:
        share, value, value_lo, value_hi = crossfit
        plot.errorbar(share, value, value_lo, value_hi, PALETTE[2])
        legend.append((PALETTE[2], "D", f"cross-fitted: {share:.0%} routed"))
    plot.legend(legend, "lower right")
    return plot.svg(chart_id)


# ----------------------------------------------------------------------------------------------------- drawing


class _Axis:
    """One axis: the data range [lo, hi] (hi < lo flips it), linear or log10, its ticks and how they read."""

    def __init__(self, lo: float, hi: float, log: bool = False, fmt: Callable[[float], str] | None = None,
                 ticks: list[float] | None = None) -> None:
        if log:
            lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        if lo == hi:
            lo, hi = (lo / 2, lo * 2) if log else (lo - 0.5, hi + 0.5)
        self.lo, self.hi, self.log = lo, hi, log
        self.fmt = fmt or _plain
        self._ticks = ticks
        self.p0 = self.p1 = 0.0  # pixel positions of lo and hi, set by the plot

    def _t(self, v: float) -> float:
        return math.log10(max(v, 1e-300)) if self.log else v

    def px(self, v: float) -> float:
        """The pixel position of data value v (values outside the range fall outside; a log axis clips v <= 0)."""
        a, b = self._t(self.lo), self._t(self.hi)
        return self.p0 + (self._t(v) - a) / (b - a) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        """Tick values inside the range: decades on a log axis (with 2 and 5 between when it spans 3 decades or
        fewer), else 1, 2, 2.5 or 5 times a power of ten, about six of them."""
        if self._ticks is not None:
            return self._ticks
        lo, hi = min(self.lo, self.hi), max(self.lo, self.hi)
        if self.log:
            first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            subs = (1.0,) if last - first > 3 else (1.0, 2.0, 5.0)
            out = [s * 10.0 ** e for e in range(first, last + 1) for s in subs]
        else:
            raw = (hi - lo) / 6
            power = 10.0 ** math.floor(math.log10(raw))
            step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
            out = [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
        return [v for v in out if lo * (1 - 1e-9) - 1e-12 <= v <= hi * (1 + 1e-9) + 1e-12]


class _Plot:
    """An SVG drawing: the title, the plot area (`left`, `bottom`, `top` margins in px), both axes with their grid,
    tick labels and labels, the data drawn into the area (clipped to it) and a legend."""

    def __init__(self, height: float, x: _Axis, y: _Axis, *, left: float, bottom: float, top: float,
                 title: str = "", xlabel: str = "", ylabel: str = "", x_grid_only: bool = False,
                 top_labels: bool = False) -> None:
        self.height, self.x, self.y = float(height), x, y
        self.right = 34.0  # room for the last x tick label, centred on the right edge
        x.p0, x.p1 = left, _WIDTH - self.right
        y.p0, y.p1 = self.height - bottom, top
        self.left, self.bottom, self.top = left, bottom, top
        self.back: list[str] = []  # grid, below the data
        self.data: list[str] = []  # clipped to the plot area
        self.front: list[str] = []  # axes, labels, legend
        if title:
            self.front.append(_text(left, 20, title, size=_FONT * 1.1, anchor="start"))
        for v in x.ticks():
            px = x.px(v)
            self.back.append(f'<path d="M{_n(px)} {_n(y.p0)}V{_n(y.p1)}" style="stroke: {_GRID}; stroke-width: 0.6"/>')
            self.front.append(_text(px, y.p0 + 15, x.fmt(v), size=_FONT * 0.85))
            if top_labels:
                self.front.append(_text(px, y.p1 - 6, x.fmt(v), size=_FONT * 0.85))
        for v in [] if x_grid_only else y.ticks():
            py = y.px(v)
            self.back.append(f'<path d="M{_n(x.p0)} {_n(py)}H{_n(x.p1)}" style="stroke: {_GRID}; stroke-width: 0.6"/>')
            self.front.append(_text(x.p0 - 5, py + 4, y.fmt(v), size=_FONT * 0.85, anchor="end"))
        spines = f"M{_n(x.p0)} {_n(y.p1)}V{_n(y.p0)}" + ("" if x_grid_only else f"H{_n(x.p1)}")
        self.front.append(f'<path d="{spines}" style="fill: none; stroke: {_TEXT}; stroke-width: 0.8"/>')
        if xlabel:
            self.front.append(_text((x.p0 + x.p1) / 2, self.height - 10, xlabel))
        if ylabel:
            cy = (y.p0 + y.p1) / 2
            self.front.append(_text(14, cy, ylabel, extra=f' transform="rotate(-90 14 {_n(cy)})"'))

    # -- data

    def line(self, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, color: str, style: str,
             steps: bool = False, width: float = 1.6) -> None:
        """A polyline through the points; `steps`: horizontal to each next x, then vertical (steps-post)."""
        px = [self.x.px(float(v)) for v in xs]
        py = [self.y.px(float(v)) for v in ys]
        if not px:
            return
        d = [f"M{_n(px[0])} {_n(py[0])}"]
        for a, b in zip(px[1:], py[1:], strict=True):
            d.append(f"H{_n(a)}V{_n(b)}" if steps else f"L{_n(a)} {_n(b)}")
        self.data.append(f'<path d="{"".join(d)}" style="{_stroke(color, style, width)}"/>')

    def band(self, xs: np.ndarray, lows: np.ndarray, highs: np.ndarray, color: str, alpha: float) -> None:
        """The area between two step curves (steps-post), filled."""
        px = [self.x.px(float(v)) for v in xs]
        top = [self.y.px(float(v)) for v in highs]
        bottom = [self.y.px(float(v)) for v in lows]
        d = [f"M{_n(px[0])} {_n(top[0])}"]
        d += [f"H{_n(px[i])}V{_n(top[i])}" for i in range(1, len(px))]
        d.append(f"L{_n(px[-1])} {_n(bottom[-1])}")
        d += [f"V{_n(bottom[i - 1])}H{_n(px[i - 1])}" for i in range(len(px) - 1, 0, -1)]
        d.append("Z")
        self.data.append(f'<path d="{"".join(d)}" style="fill: {color}; fill-opacity: {alpha}; stroke: none"/>')

    def hbars(self, ys: np.ndarray, widths: np.ndarray, height: float, color: str) -> None:
        """Horizontal bars from x=0, centred on ys, as one path (one SVG element for all of a provider's bars)."""
        if not ys.size:
            return
        x0 = self.x.px(0.0)
        d = []
        for yc, w in zip(ys, widths, strict=True):
            top, bottom = self.y.px(float(yc) - height / 2), self.y.px(float(yc) + height / 2)
            d.append(f"M{_n(x0)} {_n(top)}H{_n(self.x.px(float(w)))}V{_n(bottom)}H{_n(x0)}Z")
        self.data.append(f'<path d="{"".join(d)}" style="fill: {color}; stroke: none"/>')

    def hline(self, value: float, color: str, style: str, width: float = 1.0) -> None:
        """A horizontal line across the plot at y = value."""
        py = self.y.px(value)
        d = f"M{_n(self.x.p0)} {_n(py)}H{_n(self.x.p1)}"
        self.data.append(f'<path d="{d}" style="{_stroke(color, style, width)}"/>')

    def vline(self, value: float, color: str, style: str, label: str, at: float) -> None:
        """A vertical line at x = value, labelled at the height `at` (a fraction of the plot's height)."""
        px = self.x.px(value)
        self.data.append(f'<path d="M{_n(px)} {_n(self.y.p0)}V{_n(self.y.p1)}" style="{_stroke(color, style, 0.8)}"/>')
        py = self.y.p0 + at * (self.y.p1 - self.y.p0)
        self.front.append(_text(px + 3, py, label, size=_FONT * 0.75, anchor="start", color=color))

    def marker(self, x: float, y: float, color: str, shape: str) -> None:
        """A filled circle ("o") or an open diamond ("D") at (x, y)."""
        self.data.append(_marker(self.x.px(x), self.y.px(y), color, shape))

    def errorbar(self, x: float, y: float, low: float, high: float, color: str) -> None:
        """An open diamond at (x, y) with a capped vertical bar from low to high."""
        px, lo, hi = self.x.px(x), self.y.px(low), self.y.px(high)
        bar = f"M{_n(px)} {_n(lo)}V{_n(hi)}M{_n(px - 3)} {_n(lo)}H{_n(px + 3)}M{_n(px - 3)} {_n(hi)}H{_n(px + 3)}"
        self.data.append(f'<path d="{bar}" style="{_stroke(color, "-", 1.2)}"/>')
        self.data.append(_marker(px, self.y.px(y), color, "D"))

    def text_at(self, x: float, y: float, text: str, size: float, color: str, anchor: str) -> None:
        """Text at a data position (middle of the text at y)."""
        self.front.append(_text(self.x.px(x) + 2, self.y.px(y) + size * 0.35, text, size=size, color=color,
                                anchor=anchor))

    def y_label(self, y: float, text: str) -> None:
        """A category's name left of the plot, at y."""
        self.front.append(_text(self.x.p0 - 6, self.y.px(y) + _FONT * 0.3, text, size=_FONT * 0.9, anchor="end"))

    # -- legends

    def legend(self, entries: list[tuple[str, str, str]], where: str) -> None:
        """A framed legend inside the plot area: (color, line style, "o"/"D" marker or "band", label) entries."""
        if not entries:
            return
        size, line_h = _FONT * 0.8, _FONT * 1.35
        width = 38 + max(_text_width(label, size) for _, _, label in entries)
        height = 8 + line_h * len(entries)
        x0 = self.x.p0 + 8 if "left" in where else self.x.p1 - 8 - width
        y0 = self.y.p1 + 6 if "upper" in where else self.y.p0 - 8 - height
        out = [f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{_n(width)}" height="{_n(height)}" rx="2" '
               'style="fill: #ffffff; fill-opacity: 0.9; stroke: #cccccc; stroke-width: 0.8"/>']
        for k, (color, style, label) in enumerate(entries):
            cy = y0 + 4 + line_h * (k + 0.5)
            if style == "band":
                out.append(f'<rect x="{_n(x0 + 8)}" y="{_n(cy - 5)}" width="22" height="10" '
                           f'style="fill: {color}; fill-opacity: 0.18; stroke: none"/>')
            elif style in ("o", "D"):
                out.append(_marker(x0 + 19, cy, color, style))
            else:
                out.append(f'<path d="M{_n(x0 + 8)} {_n(cy)}H{_n(x0 + 30)}" style="{_stroke(color, style, 1.6)}"/>')
            out.append(_text(x0 + 36, cy + size * 0.35, label, size=size, anchor="start"))
        self.front.extend(out)

    def top_legend(self, title: str, entries: list[tuple[str, str]]) -> None:
        """The title, and under it color patches with their labels, up to four to a line, above the plot."""
        self.front.append(_text(self.left, 20, title, size=_FONT * 1.1, anchor="start"))
        per_line = min(len(entries), 4)
        column = (_WIDTH - self.left - self.right) / max(per_line, 1)
        for k, (color, label) in enumerate(entries):
            x0 = self.left + column * (k % per_line)
            cy = 38 + 18 * (k // per_line)
            self.front.append(f'<rect x="{_n(x0)}" y="{_n(cy - 5)}" width="14" height="10" '
                              f'style="fill: {color}; stroke: none"/>')
            self.front.append(_text(x0 + 20, cy + 4, label, size=_FONT * 0.8, anchor="start"))

    # -- output

    def svg(self, chart_id: str | None) -> str:
        """The bare, responsive <svg> element, its ids prefixed with the chart id."""
        clip = f"{_PREFIX}-plot"
        area = (f'<rect x="{_n(self.x.p0)}" y="{_n(self.y.p1)}" width="{_n(self.x.p1 - self.x.p0)}" '
                f'height="{_n(self.y.p0 - self.y.p1)}"/>')
        body = "".join([
            _STYLE, f'<defs><clipPath id="{clip}">{area}</clipPath></defs>', *self.back,
            f'<g clip-path="url(#{clip})">', *self.data, "</g>", *self.front,
        ])
        if chart_id is None:
            chart_id = "c" + hashlib.sha256(body.encode()).hexdigest()[:10]
        body = body.replace(_PREFIX, _CHART_ID_RE.sub("_", chart_id) or "chart")
        w, h = _n(_WIDTH), _n(self.height)
        return (f'<svg class="shadow-chart" width="100%" style="max-width: {w}px; height: auto" '
                f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" version="1.1">{body}</svg>')


def _text(x: float, y: float, text: str, size: float = _FONT, anchor: str = "middle", color: str | None = None,
          extra: str = "") -> str:
    fill = f"; fill: {color}" if color else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" style="font-size: {_n(size)}px; text-anchor: {anchor}{fill}"{extra}>'
            f"{html.escape(_short(text, 400), quote=True)}</text>")


def _stroke(color: str, style: str, width: float) -> str:
    dash = _DASHES.get(style, "")
    return f"fill: none; stroke: {color}; stroke-width: {width}" + (f"; stroke-dasharray: {dash}" if dash else "")


def _marker(x: float, y: float, color: str, shape: str) -> str:
    if shape == "D":
        r = 5.5
        return (f'<path d="M{_n(x)} {_n(y - r)}L{_n(x + r)} {_n(y)}L{_n(x)} {_n(y + r)}L{_n(x - r)} {_n(y)}Z" '
                f'style="fill: none; stroke: {color}; stroke-width: 1.4"/>')
    return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="4" style="fill: {color}; stroke: none"/>'


def _n(v: float) -> str:
    """A coordinate to 0.01 px (invisible, and a third of the bytes)."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _text_width(text: str, size: float) -> float:
    return len(text) * size * _CHAR_W


def _plain(v: float) -> str:
    """A plain tick label (`0.1`, `1`, `10`, `2.5`)."""
    return f"{v:g}"


def _percent(v: float) -> str:
    return f"{v * 100:.0f}%"


def _thousands(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _style(i: int) -> tuple[str, str]:
    """Color and line style of the i-th provider."""
    return PALETTE[i % len(PALETTE)], LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]


def _short(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """One line of at most `limit` characters (control characters, which XML 1.0 cannot carry, become spaces)."""
    text = "".join(c if c.isprintable() else " " for c in str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_float(v: float | None) -> float:
    if v is None:
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _secs(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}s"
    if v >= 1:
        return f"{v:.2f}s"
    return f"{v * 1000:.0f}ms"


def _ecdf_points(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_ECDF_POINTS (x, share of values <= x) points of the ECDF of sorted values, ends included."""
    n = sorted_values.size
    if n <= MAX_ECDF_POINTS:
        idx = np.arange(n)
    else:
        idx = np.unique(np.round(np.linspace(0, n - 1, MAX_ECDF_POINTS)).astype(int))
    x = sorted_values[idx]
    y = (idx + 1) / n
    # start the curve at 0% on the smallest value, so that the first step is visible
    return np.concatenate([[x[0]], x]), np.concatenate([[0.0], y])


__all__ = [
    "MAX_BAR_ROWS", "MAX_ECDF_POINTS", "PALETTE", "cascade_chart", "cost_chart", "latency_chart", "metric_bars",
]
