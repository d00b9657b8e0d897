"""The report's figures, drawn with matplotlib into inline SVG (text kept as text: the browser shapes Persian names).

Every figure's x axis is receive time in the report's zone (its dates in its calendar), named in the axis label.
Element counts are bounded (binned series, intervals joined below a pixel when there are thousands), so a day draws
as small as a minute.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import matplotlib
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from recorder.histogram import Histogram
from recorder.report.collect import Lane, ReportData
from recorder.timeparse import GREGORIAN, PERSIAN, TimeLocale

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
WIDTH_IN = 13.5  # at 100 dpi: 1350 px, a laptop's browser window
MAX_DRAWN = 3000  # intervals per lane beyond which those closer than a pixel are drawn joined
TOP_CONTRACTS = 10  # contracts drawn on their own in the rate figure; the rest as one line
COPY_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22")
GAP_COLOUR = "#d62728"
EVENT_STYLE: dict[str, tuple[str, str]] = {  # event → (marker, colour)
    "worker_restarted": ("X", "#d62728"),
    "worker_stopping": ("s", "#7f7f7f"),
    "rejected": ("D", "#e377c2"),
    "token_refreshed": ("^", "#17becf"),
    "backpressure": ("v", "#ff7f0e"),
    "stall": ("P", "#8c564b"),
    "stall_over": ("o", "#8c564b"),
    "disk": ("*", "#bcbd22"),
    "idle_timeout": ("<", "#9467bd"),
    "error": ("x", "#000000"),
}
OTHER_EVENT_STYLE = (".", "#555555")

_EPOCH_NUM = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))


def num(ts_ns: int) -> float:
    """Receive time (epoch ns) in matplotlib's date units (days)."""
    return _EPOCH_NUM + ts_ns / _DAY_NS


def zone_label(zone: tzinfo, start_ns: int, end_ns: int) -> str:
    """`UTC (Z)`, `Asia/Tehran (+03:30)`, or `Europe/Berlin (+01:00 → +02:00)` when the offset changes."""
    offsets = []
    for ts in (start_ns, end_ns):
        offset = datetime.fromtimestamp(ts // _NS, zone).strftime("%z")
        text = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:5]}"
        if text not in offsets:
            offsets.append(text)
    name = getattr(zone, "key", None) or ("UTC" if offsets == ["Z"] else None)
    shown = " → ".join(offsets)
    return f"{name} ({shown})" if name else shown


@dataclass(frozen=True, slots=True)
class Drawn:
    """A figure as inline SVG."""

    name: str
    svg: str


def coalesce(intervals: Sequence[tuple[int, int]], resolution_ns: int) -> list[tuple[int, int]]:
    """Intervals in time order, those less than `resolution_ns` apart joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a - out[-1][1] < resolution_ns:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def drawable(intervals: Sequence[tuple[int, int]], span_ns: int) -> list[tuple[int, int]]:
    return list(intervals) if len(intervals) <= MAX_DRAWN else coalesce(intervals, max(1, span_ns // MAX_DRAWN))


def drawn_drops(times: Sequence[int], start_ns: int, span_ns: int) -> list[int]:
    """Times a connection went down, one per ~pixel column when there are thousands (a flapping day)."""
    if len(times) <= MAX_DRAWN // 3:
        return list(times)
    column = max(1, span_ns // 1500)
    seen: dict[int, int] = {}
    for t in times:
        seen.setdefault((t - start_ns) // column, t)
    return list(seen.values())


def _svg(fig: Figure, name: str) -> Drawn:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"ime-report-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # Scales with the page; the viewBox keeps the proportions.
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="figure" role="img"', text, count=1)
    return Drawn(name, text)


def _time_axis(ax: Axes, zone: tzinfo, data: ReportData, label: bool = True, calendar: str = GREGORIAN) -> None:
    locator = mdates.AutoDateLocator(tz=zone, minticks=6, maxticks=14)
    ax.xaxis.set_major_locator(locator)
    text = f"receive time, {zone_label(zone, data.start_ns, data.end_ns)}"
    if calendar == PERSIAN:
        # matplotlib knows the Gregorian calendar only: the ticks stay where its locator puts them (hours and days
        # are the same in both calendars), and their dates are written in the Solar Hijri one.
        shown = TimeLocale(zone, PERSIAN)
        one_day = data.end_ns - data.start_ns <= _DAY_NS
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: persian_tick(x, shown, one_day)))
        text += f", Solar Hijri dates, from {shown.date(data.start_ns)}"
    else:
        # The date at the axis' end carries its offset too (Z for UTC), as every time the report shows.
        suffix = " Z" if zone_label(zone, data.start_ns, data.end_ns).endswith("(Z)") else " %z"
        offsets = ["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d %H:%M"]
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
            locator, tz=zone, offset_formats=[f + suffix if f else f for f in offsets]))
    ax.set_xlim(num(data.start_ns), num(data.end_ns))
    if label:
        ax.set_xlabel(text)


def persian_tick(x: float, shown: TimeLocale, one_day: bool) -> str:
    """A tick's label: its time of day (`09:30`), or at a midnight of a longer span its Solar Hijri `MM-DD`."""
    stamp = shown.format(round((x - _EPOCH_NUM) * 86_400) * _NS, 0)  # to the second: days as floats are inexact
    clock = stamp[11:16]
    return clock if one_day or clock != "00:00" else stamp[5:10]


def _style(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)


def _copies(data: ReportData, lane: Lane) -> list[int]:
    copies: set[int] = set(lane.connected) | set(lane.drops)
    for g in data.groups:
        if (g.shard, g.group) == (lane.shard, lane.group):
            copies.update(g.copies)
    return sorted(copies) or [0]


def timeline(data: ReportData, zone: tzinfo, calendar: str = GREGORIAN) -> Drawn | None:
    """Per shard and group: one row per copy (connected), one for the time no copy was, and the shard's events."""
    if not data.timeline.lanes and not data.events.marked:
        return None  # no connection event in what was read (a window inside one long connection, or no recorder)
    span = max(1, data.end_ns - data.start_ns)
    min_width = span / 500  # ~3 px: a 5 ms gap in a day is still seen
    lanes = [data.timeline.lanes[k] for k in sorted(data.timeline.lanes)]
    shards = sorted({lane.shard for lane in lanes} | {e.shard for e in data.events.marked})
    rows: list[str] = []
    fig = Figure(figsize=(WIDTH_IN, 1.0 + 0.32 * (sum(len(_copies(data, ln)) + 1 for ln in lanes) + len(shards))))
    ax = fig.add_subplot()
    gap_marks_x: list[float] = []
    gap_marks_y: list[float] = []
    drop_x: list[float] = []
    drop_y: list[float] = []
    used_events: dict[str, bool] = {}
    copies_seen: set[int] = set()
    for shard in shards:
        shard_first = len(rows)
        for lane in (ln for ln in lanes if ln.shard == shard):
            group_first = len(rows)
            for copy in _copies(data, lane):
                copies_seen.add(copy)
                y = len(rows)
                rows.append(f"shard {shard} · group {lane.group} · copy {copy}")
                bars = drawable(lane.connected.get(copy, []), span)
                ax.broken_barh([(num(a), (b - a) / _DAY_NS) for a, b in bars], (y - 0.32, 0.64),
                               facecolors=COPY_COLOURS[copy % len(COPY_COLOURS)], linewidth=0)
                for t in drawn_drops(lane.drops.get(copy, []), data.start_ns, span):
                    drop_x.append(num(t))
                    drop_y.append(y)
            y = len(rows)
            rows.append(f"shard {shard} · group {lane.group} · no copy connected")
            gaps = drawable([g for g in lane.gaps if g[1] >= g[0]], span)
            widths = [(num(a), max(b - a, min_width) / _DAY_NS) for a, b in gaps]
            # The whole group's rows are tinted where nothing of it was connected: data can only be missing there.
            ax.broken_barh(widths, (group_first - 0.5, y - group_first + 1), facecolors=GAP_COLOUR, alpha=0.12,
                           linewidth=0)
            ax.broken_barh(widths, (y - 0.32, 0.64), facecolors=GAP_COLOUR, linewidth=0)
            for a, _ in gaps:
                gap_marks_x.append(num(a))
                gap_marks_y.append(y - 0.42)
            ax.axhline(y + 0.5, color="#bbbbbb", linewidth=0.6)
        y = len(rows)
        rows.append(f"shard {shard} · events")
        by_name: dict[str, list[float]] = {}
        for e in data.events.marked:
            if e.shard == shard:
                by_name.setdefault(e.name, []).append(num(e.ts_ns))
        for name, xs in by_name.items():
            marker, colour = EVENT_STYLE.get(name, OTHER_EVENT_STYLE)
            used_events[name] = True
            ax.plot(xs, [y] * len(xs), marker=marker, color=colour, markersize=7, linestyle="none")
            if name == "worker_restarted":
                ax.vlines(xs, shard_first - 0.5, y + 0.5, colors=colour, linestyles="dashed", linewidth=1)
        ax.axhline(y + 0.5, color="#666666", linewidth=0.9)
    if drop_x:
        # Shorter than the bar, so that its colour still shows on a lane that flapped all day.
        ax.plot(drop_x, drop_y, marker="|", color="#222222", markersize=6, markeredgewidth=1, linestyle="none")
    if gap_marks_x:
        ax.plot(gap_marks_x, gap_marks_y, marker="v", color=GAP_COLOUR, markersize=6, linestyle="none")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    _time_axis(ax, zone, data, calendar=calendar)
    _style(ax)
    ax.tick_params(axis="y", length=0)
    handles: list[Patch | Line2D] = [Patch(color=COPY_COLOURS[c % len(COPY_COLOURS)], label=f"copy {c} connected")
                                     for c in sorted(copies_seen)]
    handles += [
        Line2D([], [], marker="|", color="#222222", linestyle="none", markersize=9, label="connection went down"),
        Patch(color=GAP_COLOUR, label="no copy connected: data can be missing"),
    ]
    for name in sorted(used_events):
        marker, colour = EVENT_STYLE.get(name, OTHER_EVENT_STYLE)
        handles.append(Line2D([], [], marker=marker, color=colour, linestyle="none", markersize=7,
                              label=name.replace("_", " ")))
    ncol = min(len(handles), 5)
    legend_in = 0.25 * -(-len(handles) // ncol)
    height = fig.get_figheight() + legend_in
    fig.set_figheight(height)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.05 / height))
    fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.15 / height, bottom=(0.75 + legend_in) / height)
    return _svg(fig, "timeline")


def drawn_contracts(data: ReportData) -> tuple[list[str], list[str]]:
    """(contracts drawn on their own, the busiest first; the rest, drawn summed as one line)."""
    ranked = sorted(data.rates.counts, key=lambda c: (-sum(data.rates.counts[c]), c))
    return ranked[:TOP_CONTRACTS], ranked[TOP_CONTRACTS:]


def per_second(data: ReportData, counts: Sequence[int]) -> list[float]:
    """Mean messages/s in each bin over the part of it inside the span drawn (the first and last are partial);
    a bin less than a fifth inside is left out (NaN): a few messages in a sliver would read as a burst."""
    out = []
    for i, n in enumerate(counts):
        lo = max(data.bins.start(i), data.start_ns)
        hi = min(data.bins.start(i + 1), data.end_ns)
        inside = hi - lo
        out.append(n * _NS / inside if inside >= data.bins.width_ns / 5 else math.nan)
    return out


def _steps(ax: Axes, data: ReportData, values: Sequence[float], **style: object) -> None:
    bins = data.bins
    xs = [num(bins.start(i)) for i in range(bins.count + 1)]
    # Lines end where the data ends (no edge down to zero); a filled area keeps its baseline.
    ax.stairs(values, xs, baseline=0 if style.get("fill") else None, **style)  # type: ignore[arg-type]


def rates(data: ReportData, zone: tzinfo, calendar: str = GREGORIAN) -> Drawn:
    """Messages per second per contract (mean over each bin), and all contracts with their busiest second."""
    width_s = data.bins.width_ns / _NS
    top, rest = drawn_contracts(data)
    fig = Figure(figsize=(WIDTH_IN, 6.4))
    ax, total = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    palette = matplotlib.colormaps["tab10"]
    for i, contract in enumerate(top):
        _steps(ax, data, per_second(data, data.rates.counts[contract]), color=palette(i % 10),
               linewidth=1.2, label=contract)
    if rest:
        # Their mean, not their sum: on the same scale as the contracts drawn (the sum is in the panel below).
        summed = per_second(data, [sum(data.rates.counts[c][i] for c in rest) for i in range(data.bins.count)])
        _steps(ax, data, [v / len(rest) for v in summed], color="#7f7f7f", linewidth=1.2, linestyle="--",
               label=f"mean of the {len(rest)} other contracts")
    unit = "s" if width_s == 1 else f"{width_s:g} s bin"
    ax.set_ylabel("messages/s" + ("" if width_s == 1 else f"\n(mean per {unit})"))
    if top:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), frameon=False, fontsize=9)
    _steps(total, data, per_second(data, data.rates.total_counts), fill=True, color="#c6dbef",
           label="all contracts" + ("" if width_s == 1 else f", mean per {unit}"))
    if width_s > 1:
        _steps(total, data, data.rates.total_peaks, color="#08519c", linewidth=1, label="busiest second in the bin")
    total.set_ylabel("messages/s, all")
    gaps = drawable([g for lane in data.timeline.lanes.values() for g in lane.gaps if g[1] > g[0]],
                    max(1, data.end_ns - data.start_ns))
    for a, b in gaps:
        for axis in (ax, total):
            axis.axvspan(num(a), num(max(b, a + (data.end_ns - data.start_ns) // 500)), color=GAP_COLOUR,
                         alpha=0.15, linewidth=0)
    handles, labels = total.get_legend_handles_labels()
    if gaps:
        handles.append(Patch(color=GAP_COLOUR, alpha=0.15))
        labels.append("a group had no copy connected")
    total.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.005, 1), frameon=False, fontsize=9)
    for axis in (ax, total):
        _style(axis)
        axis.set_ylim(bottom=0)
        _time_axis(axis, zone, data, label=axis is total, calendar=calendar)
    fig.subplots_adjust(left=0.07, right=0.8, top=0.97, bottom=0.1, hspace=0.08)
    return _svg(fig, "rates")


def lane_lag(data: ReportData) -> dict[tuple[int, int, int], Histogram]:
    """Each copy's lag when it was later, over all worker incarnations of its group (Coverage's histograms)."""
    merged: dict[tuple[int, int, int], Histogram] = {}
    for g in data.groups:
        for copy, figures in g.copies.items():
            if figures.lag.count:
                merged.setdefault((g.shard, g.group, copy), Histogram()).merge(figures.lag)
    return merged


def lag_series(data: ReportData, key: tuple[int, int, int], percentile: float) -> list[tuple[int, float]]:
    """(bin, lag in µs at `percentile`) for the bins in which this copy was later at all."""
    per_bin = data.timeline.lags.get(key, {})
    return [(i, per_bin[i].percentile(percentile) / 1e3) for i in sorted(per_bin)]


def lag(data: ReportData, zone: tzinfo, calendar: str = GREGORIAN) -> Drawn | None:
    """How much later each copy delivered a message when another copy was first: distribution and over time."""
    hists = lane_lag(data)
    if not hists:
        return None
    legend_in = 0.22 * -(-len(hists) // 2)
    height = 4.2 + legend_in
    fig = Figure(figsize=(WIDTH_IN, height))
    cdf_ax, time_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 3]})
    palette = matplotlib.colormaps["tab10"]
    half = data.bins.width_ns // 2
    for i, (key, hist) in enumerate(sorted(hists.items())):
        shard, group, copy = key
        colour = palette(i % 10)
        points = hist.cdf()
        cdf_ax.step([max(v / 1e3, 0.1) for v, _ in points], [f for _, f in points], where="post", color=colour,
                    linewidth=1.3, label=f"shard {shard} · group {group} · copy {copy}: "
                                         f"p50 {hist.percentile(50) / 1e3:,.0f} µs, "
                                         f"p99 {hist.percentile(99) / 1e3:,.0f} µs, {hist.count:,} later copies")
        series = dict(lag_series(data, key, 99))
        if series:
            # Every bin from the first to the last, NaN where this copy was never later: no line across those.
            span = range(min(series), max(series) + 1)
            time_ax.plot([num(data.bins.start(b) + half) for b in span],
                         [max(series[b], 0.1) if b in series else math.nan for b in span],
                         color=colour, linewidth=1, marker="." if len(span) < 200 else None, markersize=4)
    cdf_ax.set_xscale("log")
    cdf_ax.set_xlabel("lag when later, µs (log)")
    cdf_ax.set_ylabel("fraction of its later copies")
    cdf_ax.set_ylim(0, 1.02)
    cdf_ax.grid(color="#e5e5e5", linewidth=0.6)
    width_s = data.bins.width_ns / _NS
    low, high = time_ax.get_ylim()
    wide = high / max(low, 0.1) > 20  # log only where it spans decades: a narrow log axis reads as noise
    if wide:
        time_ax.set_yscale("log")
    else:
        time_ax.set_ylim(bottom=0)
    time_ax.set_ylabel(f"p99 lag when later, µs{' (log)' if wide else ''}, per {width_s:g} s")
    _time_axis(time_ax, zone, data, calendar=calendar)
    time_ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    for axis in (cdf_ax, time_ax):
        _style(axis)
    fig.legend(*cdf_ax.get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.05 / height))
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.15 / height, bottom=(0.75 + legend_in) / height,
                        wspace=0.22)
    return _svg(fig, "lag")


def draw_all(data: ReportData, zone: tzinfo, calendar: str = GREGORIAN) -> list[Drawn]:
    figures: Iterable[Drawn | None] = (timeline(data, zone, calendar), rates(data, zone, calendar),
                                       lag(data, zone, calendar))
    return [f for f in figures if f is not None]
