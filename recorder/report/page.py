"""The report's HTML: one file, no script, nothing loaded from anywhere; the figures inline, tables, and the same
figures as JSON (`<script type="application/json" id="ime-report-data">`) for tools and tests to read back."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from recorder.humanize import human_duration
from recorder.report.collect import ReportData
from recorder.report.figures import MAX_DRAWN, Drawn, drawable, drawn_contracts, lag_series, lane_lag, zone_label
from recorder.segment.coverage import GroupCoverage
from recorder.segment.stats import stats_document
from recorder.timeparse import PERSIAN, TimeLocale

_NS = 1_000_000_000
MAX_LISTED_GAPS = 2000  # per lane in the JSON block (the longest, when there are more)
MAX_LISTED_EVENTS = 500  # rows of the events table (the JSON block holds as many)
SCHEMA = 1

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1400px;
  padding:0 16px;color:#1b1b1b;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;margin:0 0 12px}.meta b{color:#1b1b1b}
.verdict{padding:10px 14px;border-radius:6px;margin:12px 0;border:1px solid}
.ok{background:#eaf6ea;border-color:#7bc47b}.warn{background:#fdecea;border-color:#e08a80}
.verdict ul{margin:4px 0 0 18px;padding:0}
table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fdecea}.first{color:#777}
svg.figure{width:100%;height:auto;display:block}figure{margin:0}
figcaption{color:#555;font-size:13px;margin:2px 0 10px}
.note{color:#555;font-size:13px}td[data-ns],td.n,time{white-space:nowrap}
"""


def local_time(ts_ns: int, zone: TimeLocale) -> str:
    """`2026-11-24T09:00:00.123+03:30`: to the millisecond (cut, never rounded up), always with its zone; the date
    in the --calendar's."""
    return zone.format(ts_ns, 3)


def later_time(ts_ns: int, since_ns: int, zone: TimeLocale) -> str:
    """The end of an interval: its time of day (with its zone) when it is on the day it began, else in full."""
    text, start = local_time(ts_ns, zone), local_time(since_ns, zone)
    return text[11:] if text[:10] == start[:10] else text


def duration(seconds: float) -> str:
    """As elsewhere in the CLI (850ms, 4.2min), and µs below a millisecond: a 60 µs gap is not "0ms"."""
    return f"{seconds * 1e6:.0f}µs" if seconds < 0.001 else human_duration(seconds)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time_cell(ts_ns: int, zone: TimeLocale) -> str:
    return f'<td data-ns="{ts_ns}"><time>{_e(local_time(ts_ns, zone))}</time></td>'


def _table(head: Sequence[str], rows: Iterable[str], attrs: str = "") -> str:
    return (f"<table{attrs}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def first_wait(g: GroupCoverage, start_ns: int) -> bool:
    """The gap from a group's start to its first connection: the connect itself, not a drop (unless the group
    began before the window: then it is the window's start, and the group was down)."""
    return g.from_start and start_ns == g.start_ns


def _group_rows(groups: list[GroupCoverage], connections: dict[str, Any], zone: TimeLocale) -> list[str]:
    rows = []
    for g, doc in zip(groups, connections["groups"], strict=True):
        listed = []
        for gap in doc["longest_gaps"]:
            a, b = gap["from_ns"], gap["to_ns"]
            first = first_wait(g, a)
            listed.append(f'<li data-from-ns="{a}" data-to-ns="{b}"{" class=first" if first else ""}>'
                          f"<time>{_e(local_time(a, zone))}</time> → <time>{_e(later_time(b, a, zone))}</time>: "
                          f"{_e(duration(gap['s']))}{' (first connection)' if first else ''}</li>")
        dropped = g.uncovered_ns - g.initial_ns > 0
        # Its contracts moved to new groups (a refusal bisected) or were refused: it ended there, not dropped.
        replaced = '<br><span class="note">then replaced</span>' if g.contracts and not g.held else ""
        rows.append(
            f'<tr class="group{" bad" if dropped else ""}" data-shard="{g.shard}" data-worker="{g.epoch}" '
            f'data-group="{g.group}" data-uncovered-s="{doc["uncovered_s"]}" data-gaps="{doc["gaps"]}">'
            f'<td class=n>{g.shard}</td><td class=n>{g.epoch}</td><td class=n>{g.group}</td>'
            f'<td class=n title="{_e(", ".join(g.contracts))}">{doc["contracts"]}</td>'
            f'{_time_cell(g.start_ns, zone)}<td class=n>{_e(duration(doc["span_s"]))}{replaced}</td>'
            f'<td class=n>{doc["uncovered_s"]:.3f} s</td><td class=n>{doc["gaps"]}</td>'
            f'<td class=n>{100 * doc["connected_fraction"]:.3f}%</td>'
            f'<td><ul style="margin:0;padding-left:16px">{"".join(listed) or "–"}</ul></td></tr>')
    return rows


def _copy_rows(connections: dict[str, Any]) -> list[str]:
    rows = []
    for doc in connections["groups"]:
        for copy, c in doc["copies"].items():
            lag = c["lag_when_later_us"]
            lag_cells = (f'<td class=n>{lag["p50"]:,.0f}</td><td class=n>{lag["p99"]:,.0f}</td>'
                         f'<td class=n>{lag["max"]:,.0f}</td>') if lag else "<td>–</td><td>–</td><td>–</td>"
            rows.append(f'<tr data-shard="{doc["shard"]}" data-worker="{doc["worker"]}" data-group="{doc["group"]}" '
                        f'data-copy="{copy}" data-share-first="{c["share_first"]}">'
                        f'<td class=n>{doc["shard"]}</td><td class=n>{doc["worker"]}</td>'
                        f'<td class=n>{doc["group"]}</td>'
                        f'<td class=n>{copy}</td><td class=n>{c["first"]}</td><td class=n>{c["later"]}</td>'
                        f'<td class=n>{100 * c["share_first"]:.1f}%</td>{lag_cells}</tr>')
    return rows


def _verdict(data: ReportData, connections: dict[str, Any], zone: TimeLocale, damage: int, skipped: int) -> str:
    problems: list[str] = []
    drops = [(a, b, g) for g in data.groups for a, b in g.gaps if b > a and not first_wait(g, a)]
    dropped_ns = sum(g.uncovered_ns - g.initial_ns for g in data.groups)
    waiting_ns = sum(g.initial_ns for g in data.groups)
    if dropped_ns > 0:
        a, b, g = max(drops, key=lambda d: d[1] - d[0]) if drops else (0, 0, data.groups[0])
        longest = (f"; the longest {duration((b - a) / 1e9)} from {local_time(a, zone)} "
                   f"(shard {g.shard}, group {g.group})") if drops else ""
        count = sum(g.gap_count - (1 if g.from_start and g.gap_count else 0) for g in data.groups)
        problems.append(f"no copy of a group was connected for {dropped_ns / 1e9:.3f} s in {count} gap(s) after "
                        f"its first connection{longest}: messages published then can be missing")
    events = data.stats.events
    restarts = sum(1 for e in data.events.marked if e.name == "worker_restarted")
    for count, text in ((restarts, "worker restart(s)"), (events.get("rejected", 0), "refusal(s): contracts excluded"),
                        (events.get("stall", 0), "stall(s) in trading hours"),
                        (sum(1 for e in data.events.marked if e.name == "backpressure" and "paused" in e.detail),
                         "backpressure pause(s): the disk could not keep up"),
                        (events.get("disk", 0), "disk space warning(s)"),
                        (damage, "damaged frame(s) or file(s): see stderr of the command"),
                        (skipped, "file(s) that could not be opened")):
        if count:
            problems.append(f"{count} {text}")
    fraction = connections["connected_fraction"]
    summary = (f"connected {100 * fraction:.3f}% of the time; {connections['uncovered_s']:.3f} s with no copy of a "
               f"group connected, {waiting_ns / 1e9:.3f} s of it waiting for first connections"
               if fraction is not None else "no connection events in this window")
    if problems:
        return ('<div class="verdict warn" id="verdict"><b>Attention.</b> ' + _e(summary) + "<ul>"
                + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul></div>")
    return ('<div class="verdict ok" id="verdict"><b>Complete.</b> ' + _e(summary)
            + ": every group had a copy connected at all other times.</div>")


def _listed_gaps(gaps: list[tuple[int, int]]) -> list[list[int]]:
    kept = gaps if len(gaps) <= MAX_LISTED_GAPS else sorted(gaps, key=lambda g: g[0] - g[1])[:MAX_LISTED_GAPS]
    return [[a, b] for a, b in sorted(kept)]


def data_block(data: ReportData, document: dict[str, Any], zone: TimeLocale, tz_name: str) -> dict[str, Any]:
    """Everything the figures show, as numbers: the `stats --json` document verbatim, and the series drawn."""
    top, rest = drawn_contracts(data)
    width_s = data.bins.width_ns / _NS
    span = max(1, data.end_ns - data.start_ns)
    return {
        "schema": SCHEMA,
        "tz": tz_name,
        "zone": zone_label(zone.tz, data.start_ns, data.end_ns),
        "calendar": zone.calendar,
        "span": {"from_ns": data.start_ns, "to_ns": data.end_ns, "from": local_time(data.start_ns, zone),
                 "to": local_time(data.end_ns, zone)},
        "stats": document,
        "bins": {"origin_ns": data.bins.origin_ns, "width_s": width_s, "count": data.bins.count},
        "rates": {
            "contracts": {c: {"counts": data.rates.counts[c], "peaks": data.rates.peaks[c]} for c in top},
            "others": {"contracts": rest,
                       "counts": [sum(data.rates.counts[c][i] for c in rest) for i in range(data.bins.count)]}
            if rest else None,
            "total": {"counts": data.rates.total_counts, "peaks": data.rates.total_peaks},
        },
        "timeline": [
            {"shard": lane.shard, "group": lane.group, "workers": lane.workers, "contracts": sorted(lane.contracts),
             "gaps": _listed_gaps(lane.gaps), "gaps_total": len(lane.gaps),
             # As drawn: joined where less than a pixel apart when there are thousands (see figures.drawable).
             "connected": {str(c): [[a, b] for a, b in drawable(iv, span)] for c, iv in sorted(lane.connected.items())},
             "connected_joined_below_ns":
                 span // MAX_DRAWN if any(len(iv) > MAX_DRAWN for iv in lane.connected.values()) else 0,
             "drops": {str(c): len(t) for c, t in sorted(lane.drops.items())}}
            for _, lane in sorted(data.timeline.lanes.items())
        ],
        "lag": [
            {"shard": s, "group": g, "copy": c, "count": h.count, "p50_us": h.percentile(50) / 1e3,
             "p99_us": h.percentile(99) / 1e3, "max_us": h.max / 1e3,
             "p99_us_per_bin": [[b, v] for b, v in lag_series(data, (s, g, c), 99)]}
            for (s, g, c), h in sorted(lane_lag(data).items())
        ],
        "events": [{"ts_ns": e.ts_ns, "time": local_time(e.ts_ns, zone), "shard": e.shard, "event": e.name,
                    "detail": e.detail} for e in data.events.marked],
        "events_omitted": data.events.omitted,
    }


def _json_script(value: dict[str, Any]) -> str:
    text = orjson.dumps(value).decode()
    # "</" could end the script element early; "\/" is the same string in JSON.
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render(data: ReportData, figures: list[Drawn], zone: TimeLocale, tz_name: str, sources: Sequence[str],
           files: int, damage: int, skipped: int, window: tuple[int | None, int | None], generated_ns: int) -> str:
    document = stats_document(data.stats, data.groups)
    connections = document["connections"]
    block = data_block(data, document, zone, tz_name)
    by_name = {f.name: f for f in figures}
    zone_text = zone_label(zone.tz, data.start_ns, data.end_ns) + " (--tz)"
    if zone.calendar == PERSIAN:
        zone_text += ", dates in the Solar Hijri calendar (--calendar persian)"
    window_text = ", ".join(f"{k} {local_time(v, zone)}" for k, v in (("--from", window[0]), ("--to", window[1]))
                            if v is not None) or "the whole recording"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ime-recorder report: {_e(', '.join(sources))}</title><style>{CSS}</style></head><body>",
        f"<h1>Recording health: {_e(', '.join(sources))}</h1>",
        f'<p class="meta">From <b><time>{_e(local_time(data.start_ns, zone))}</time></b> to '
        f'<b><time>{_e(local_time(data.end_ns, zone))}</time></b> '
        f"({_e(human_duration((data.end_ns - data.start_ns) / 1e9))}; {_e(window_text)}); "
        f"{data.stats.records:,} records, {len(data.stats.contracts)} contracts, {files} files. "
        f"Times in {_e(zone_text)}. Generated <time>{_e(local_time(generated_ns, zone))}</time>.</p>",
        _verdict(data, connections, zone, damage, skipped),
        "<h2>Connections</h2>",
    ]
    if "timeline" in by_name:
        parts.append('<figure data-figure="timeline">' + by_name["timeline"].svg + "<figcaption>Per shard and "
                     "connection group: when each copy (connection) was up, and when none was — the only time a "
                     "message can be missing. Events of the shard on its own row.</figcaption></figure>")
    else:
        parts.append('<p class="note">No connection events in what was read: nothing to draw.</p>')
    parts += [
        "<h2>Gaps: time with no copy of a group connected</h2>",
        _table(["shard", "worker", "group", "contracts", "from", "span", "no copy", "gaps", "connected",
                "longest gaps"], _group_rows(data.groups, connections, zone), ' id="groups"')
        if data.groups else '<p class="note">No connection events in this window.</p>',
        "<h2>Copies: who delivered first, and how late the others were</h2>",
        _table(["shard", "worker", "group", "copy", "first", "later", "share first", "lag p50 µs",
                "lag p99 µs", "lag max µs"], _copy_rows(connections), ' id="copies"')
        if data.groups else "",
        "<h2>Messages per second</h2>",
        '<figure data-figure="rates">' + by_name["rates"].svg + "</figure>" if "rates" in by_name else "",
        "<h2>Lag of later copies</h2>",
        ('<figure data-figure="lag">' + by_name["lag"].svg + "<figcaption>When a copy delivered a message after "
         "another copy had: how much later (left, all of it; right, the 99th percentile over time).</figcaption>"
         "</figure>") if "lag" in by_name else
        '<p class="note">No later copies: one copy per group (no --redundancy), or none delivered late.</p>',
        "<h2>Events</h2>",
        _table(["event", "count"], [f"<tr><td>{_e(k)}</td><td class=n>{v}</td></tr>"
                                    for k, v in sorted(data.stats.events.items())], ' id="event-counts"'),
    ]
    if data.stats.close_codes:
        parts.append('<p class="note">Close codes: ' + _e(", ".join(
            f"{k}×{v}" for k, v in sorted(data.stats.close_codes.items()))) + "</p>")
    marked = data.events.marked
    if marked:
        parts.append(_table(["time", "shard", "event", "detail"], [
            f'<tr data-event="{_e(e.name)}">{_time_cell(e.ts_ns, zone)}<td class=n>{e.shard}</td>'
            f"<td>{_e(e.name)}</td><td>{_e(e.detail)}</td></tr>" for e in marked[:MAX_LISTED_EVENTS]],
            ' id="events"'))
        if len(marked) > MAX_LISTED_EVENTS or data.events.omitted:
            parts.append(f'<p class="note">{len(marked) + data.events.omitted - MAX_LISTED_EVENTS} more events '
                         "not listed.</p>")
    parts += [
        "<h2>Contracts</h2>",
        _table(["contract", "records", "first", "last", "mean/s", "max/s", "largest gap", "after"], [
            f'<tr data-contract="{_e(name)}"><td>{_e(name)}</td><td class=n>{c.records:,}</td>'
            f"{_time_cell(c.first_ns, zone)}{_time_cell(c.last_ns, zone)}<td class=n>{c.mean_rate:,.1f}</td>"
            f"<td class=n>{c.max_per_second:,}</td><td class=n>{_e(duration(c.largest_gap_ns / 1e9))}</td>"
            + (_time_cell(c.largest_gap_at_ns, zone) if c.records > 1 else "<td>–</td>") + "</tr>"
            for name, c in sorted(data.stats.contracts.items())], ' id="contracts"'),
    ]
    if data.stats.other_kinds:
        parts.append('<p class="note">Not counted as messages (receipts: later copies), by record kind: '
                     + _e(", ".join(f"{k}×{v}" for k, v in data.stats.other_kinds.items())) + "</p>")
    parts.append(f'<p class="note">Rates are binned in {data.bins.width_ns / _NS:g} s bins; the figures as '
                 "numbers, and the <code>ime-segments stats --json</code> document, are in the script element "
                 '<code>#ime-report-data</code> of this file.</p>')
    parts.append('<script type="application/json" id="ime-report-data">' + _json_script(block) + "</script>")
    parts.append("</body></html>")
    return "\n".join(parts)
