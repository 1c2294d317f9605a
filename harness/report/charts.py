"""Charts for the static HTML failure report, rendered when the report is built to inline SVG strings.

Each public function returns the bare `<svg ...>...</svg>` element (no XML declaration, no DOCTYPE, no metadata) or
None when there is nothing to draw, ready to be embedded in an HTML page (mark it safe in the template: every piece of
text in it is escaped by matplotlib's SVG backend). The output:

- is responsive: `width="100%"`, no fixed height, the `viewBox` kept, so the browser keeps the aspect ratio, with a
  `max-width` at the natural size so that it does not blow up on wide screens;
- is deterministic: the same input gives the same bytes (fixed `svg.hashsalt`, no date in metadata);
- has ids unique to the chart: ids nobody refers to are dropped, the others (clip paths, markers) are prefixed with
  the chart id (`chart_id`, by default derived from a hash of the chart), so two charts in one page never clash;
- keeps text as text (`svg.fonttype = "none"`) and draws aggregated geometry (ECDF curves of at most
  `MAX_ECDF_POINTS` points), so that charts of 10,000s of values stay small;
- never treats untrusted text (provider names, row names, titles) as mathtext or as "hidden" legend labels.

Matplotlib is used through `matplotlib.figure.Figure` and `FigureCanvasSVG` only, never pyplot, so no global figure
state is created or leaks between calls; rc settings are applied through `matplotlib.rc_context`.
"""

from __future__ import annotations

import hashlib
import io
import math
import re

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

# Okabe-Ito, a colorblind-safe palette; the caller's first provider (the incumbent) gets the first color.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")  # cycled once the palette is exhausted, so that providers stay distinguishable
MAX_ECDF_POINTS = 500  # points drawn per provider in the latency ECDF
LOG_SPAN = 50.0  # the latency axis is logarithmic when max / min (of positive values) exceeds this
MAX_BAR_ROWS = 40  # rows drawn in metric_bars; the worst ones by the first provider are kept
MAX_LABEL_CHARS = 60  # untrusted labels are shortened to this many characters

_RC = {
    "svg.hashsalt": "shadow-report",  # deterministic clip-path and marker ids
    "svg.fonttype": "none",  # text as <text>, not glyph paths
    "text.parse_math": False,  # "$...$" in a provider name is text, not mathtext
    "text.usetex": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "path.simplify": True,
}
_FIG_WIDTH_IN = 7.5
_CHART_ID_RE = re.compile(r"[^A-Za-z0-9_-]")


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

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_FIG_WIDTH_IN, 3.6), layout="constrained")
        ax = fig.add_subplot()
        handles: list[Line2D | Patch] = []
        labels: list[str] = []
        for i, (name, arr) in enumerate(cleaned):
            color, style = _style(i)
            if not arr.size:
                handles.append(Line2D([], [], color=color, linestyle=style, linewidth=1.6))
                labels.append(f"{_short(name)} (no data)")
                continue
            x, y = _ecdf_points(arr)
            # steps for a full ECDF; between quantiles of a downsampled one, straight segments (half the vertices)
            drawstyle = "steps-post" if arr.size <= MAX_ECDF_POINTS else "default"
            (line,) = ax.plot(x, y, color=color, linestyle=style, linewidth=1.6, drawstyle=drawstyle)
            p50, p95 = np.quantile(arr, [0.5, 0.95])
            handles.append(line)
            labels.append(f"{_short(name)}  n={arr.size:,}  p50 {_secs(p50)}  p95 {_secs(p95)}")
        if use_log:
            ax.set_xscale("log", nonpositive="clip")
            lo_x, hi_x = float(positive.min()) / 1.2, hi * 1.2
            ax.set_xlim(lo_x, hi_x)
            decades = math.log10(hi_x / lo_x)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_fmt_seconds_tick))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xlim(0, hi * 1.05 if hi > 0 else 1.0)
        ax.set_ylim(0, 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xlabel("seconds" + (" (log scale)" if use_log else ""))
        ax.set_ylabel("answers within x")
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        _despine(ax)
        ax.set_title(_short(title, 120), loc="left")
        # explicit handles and labels: a label starting with "_" would otherwise be dropped from the legend
        ax.legend(handles, labels, loc="lower right", fontsize=8, frameon=True, framealpha=0.9)
        return _to_svg(fig, chart_id)


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
    height = 1.2 + n_rows * (0.09 * n_prov + 0.08)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_FIG_WIDTH_IN, height), layout="constrained")
        ax = fig.add_subplot()
        centers = np.arange(n_rows, dtype=float)
        for j in range(n_prov):
            offsets = centers - group / 2 + bar_h * (j + 0.5)
            col = grid[:, j]
            present = ~np.isnan(col)
            # all of a provider's bars as one compound path: one SVG element instead of one per bar
            ax.add_patch(_bars_patch(offsets[present], np.clip(col[present], 0.0, 1.0), bar_h * 0.92, _style(j)[0]))
            for y in offsets[~present]:
                ax.text(0.005, y, "n/a", va="center", ha="left", fontsize=6, color="#777777")
        ax.set_yticks(centers, names)
        ax.set_ylim(n_rows - 0.5, -0.5)  # first row at the top
        ax.set_xlim(0, 1.0)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xlabel(_short(xlabel, 80))
        ax.grid(True, axis="x", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(axis="y", length=0)
        if n_rows > 12:  # a tall chart: percent labels at the top too
            ax.tick_params(axis="x", top=True, labeltop=True)
        _despine(ax)
        handles = [Patch(color=_style(j)[0]) for j in range(n_prov)]
        # the title heads the legend: one block above the chart (a suptitle and an outside legend would overlap)
        fig.legend(handles, [_short(str(p)) for p in providers], loc="outside upper left", ncols=min(n_prov, 4),
                   fontsize=8, frameon=False, title=full_title, title_fontsize=10, alignment="left")
        return _to_svg(fig, chart_id)


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
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_FIG_WIDTH_IN, 3.6), layout="constrained")
        ax = fig.add_subplot()
        for i, key in enumerate(k for k in names if k in curves):
            y = np.asarray(curves[key], dtype=float)
            keep = (x > 0) & (y > 0)
            color, style = _style(i)
            ax.plot(x[keep], y[keep], color=color, linestyle=style, linewidth=1.6, label=names[key])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(volume, color="#555555", linewidth=0.8, linestyle=":")
        ax.annotate(f"your volume {volume:,.0f}", (volume, 0.02), xycoords=("data", "axes fraction"),
                    xytext=(3, 0), textcoords="offset points", fontsize=7, color="#555555")
        if break_even is not None and x.min() <= break_even <= x.max():
            ax.axvline(break_even, color=PALETTE[1], linewidth=0.8, linestyle="--")
            ax.annotate(f"break-even {break_even:,.0f}", (break_even, 0.92), xycoords=("data", "axes fraction"),
                        xytext=(3, 0), textcoords="offset points", fontsize=7, color=PALETTE[1])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("cases per month (log scale)")
        ax.set_ylabel("USD per month (log scale)")
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        _despine(ax)
        ax.set_title("Monthly cost against volume", loc="left")
        ax.legend(loc="upper left", fontsize=8, frameon=True, framealpha=0.9)
        return _to_svg(fig, chart_id)


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
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(_FIG_WIDTH_IN, 3.4), layout="constrained")
        ax = fig.add_subplot()
        band = ~(np.isnan(lo) | np.isnan(hi))
        if band.any():
            ax.fill_between(x[band], lo[band], hi[band], color=PALETTE[1], alpha=0.18, linewidth=0,
                            step="post", label="95% interval")
        ax.plot(x, y, color=PALETTE[1], linewidth=1.6, drawstyle="steps-post", label="hybrid quality")
        if incumbent is not None and math.isfinite(incumbent):
            ax.axhline(incumbent, color=PALETTE[0], linewidth=1.0, label="API alone")
            ax.axhline(incumbent - margin, color=PALETTE[0], linewidth=0.8, linestyle="--",
                       label=f"API - margin ({margin:g})")
        if picked is not None and 0 <= picked < x.size:
            ax.plot([x[picked]], [y[picked]], marker="o", color=PALETTE[3], linestyle="none",
                    label=f"picked (in-sample): {x[picked]:.0%} routed")
        if crossfit is not None and all(math.isfinite(v) for v in crossfit):
            share, quality, low, high = crossfit
            ax.errorbar([share], [quality], yerr=[[quality - low], [high - quality]], marker="D", markersize=8,
                        markerfacecolor="none", color=PALETTE[2], capsize=3, linestyle="none",
                        label=f"cross-fitted: {share:.0%} routed")
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xlabel("cases routed to the API")
        ax.set_ylabel("quality")
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        _despine(ax)
        ax.set_title("Hybrid: quality against share routed to the API", loc="left")
        ax.legend(loc="lower right", fontsize=8, frameon=True, framealpha=0.9)
        return _to_svg(fig, chart_id)


def _bars_patch(ys: np.ndarray, widths: np.ndarray, height: float, color: str) -> PathPatch:
    """Horizontal bars from x=0, centred on ys, as one patch made of one closed subpath per bar."""
    verts = np.zeros((ys.size * 5, 2))
    lo, hi = ys - height / 2, ys + height / 2
    verts[0::5] = np.column_stack([np.zeros_like(ys), lo])
    verts[1::5] = np.column_stack([widths, lo])
    verts[2::5] = np.column_stack([widths, hi])
    verts[3::5] = np.column_stack([np.zeros_like(ys), hi])
    verts[4::5] = verts[0::5]
    codes = np.tile([Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY], ys.size)
    return PathPatch(Path(verts, codes), facecolor=color, edgecolor="none", linewidth=0)


def _despine(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _fmt_seconds_tick(v: float, _pos: object = None) -> str:
    """A plain tick label for seconds on a log axis (the default one is mathtext, which is turned off)."""
    return f"{v:g}"


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


_ID_ATTR_RE = re.compile(r'\sid="([^"]*)"')
_REF_RE = re.compile(r'(url\(#|href="#)([^)"]*)')
_TAG_RE = re.compile(r"<[^>]*>")
_D_ATTR_RE = re.compile(r'(<path\b[^>]*?\sd=")([^"]*)"')
_NUM_RE = re.compile(r"-?\d+\.\d+")


def _round_path(d: str) -> str:
    """Path data with coordinates rounded to 0.01pt (invisible; about a third of the bytes) and one line."""
    d = _NUM_RE.sub(lambda m: f"{float(m.group(0)):.2f}".rstrip("0").rstrip("."), d)
    return " ".join(d.split())


def _to_svg(fig: Figure, chart_id: str | None) -> str:
    """The figure as a bare, responsive <svg> element whose ids are prefixed with the chart id."""
    buf = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buf, metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    # the backend's stylesheet uses a bare "*" selector, which inline in HTML would apply to the whole page
    svg = _D_ATTR_RE.sub(lambda m: m.group(1) + _round_path(m.group(2)) + '"', svg)
    svg = svg.replace("<style type=\"text/css\">*{", "<style type=\"text/css\">svg.shadow-chart *{", 1)
    if chart_id is None:
        chart_id = "c" + hashlib.sha256(svg.encode()).hexdigest()[:10]
    prefix = _CHART_ID_RE.sub("_", chart_id) or "chart"

    referenced: set[str] = set()
    for tag in _TAG_RE.findall(svg):
        referenced.update(m.group(2) for m in _REF_RE.finditer(tag))

    def fix_tag(m: re.Match[str]) -> str:
        tag = m.group(0)
        if tag.startswith("<svg "):
            return _root_tag(tag)
        tag = _ID_ATTR_RE.sub(lambda a: f' id="{prefix}-{a.group(1)}"' if a.group(1) in referenced else "", tag)
        return _REF_RE.sub(lambda r: f"{r.group(1)}{prefix}-{r.group(2)}", tag)

    # only markup is rewritten: text between tags (escaped labels) is left exactly as it is
    return _TAG_RE.sub(fix_tag, svg).strip()


def _root_tag(tag: str) -> str:
    """Root <svg> tag made responsive: width 100% up to the natural size, no fixed height, viewBox kept."""
    width = re.search(r'\swidth="([0-9.]+)pt"', tag)
    tag = re.sub(r'\s(width|height)="[^"]*"', "", tag)
    style = f' style="max-width: {width.group(1)}pt; height: auto"' if width else ""
    return tag.replace("<svg ", f'<svg class="shadow-chart" width="100%"{style} ', 1)


__all__ = [
    "MAX_BAR_ROWS", "MAX_ECDF_POINTS", "PALETTE", "cascade_chart", "cost_chart", "latency_chart", "metric_bars",
]
