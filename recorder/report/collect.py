"""The report's one pass over a recording: `ime-segments stats`' accumulators, and what they saw over time.

`accumulate` (recorder/segment/stats.py) computes the figures `stats` prints; this module only watches it work
(a CoverageObserver, and each record with the contract it was counted under), binning what it sees into at
most `MAX_BINS` time bins so that a day of recording draws as quickly and as small as a minute of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recorder.events import decode_event
from recorder.feed.message import identifier_of
from recorder.histogram import Histogram
from recorder.model.record import Record, RecordKind
from recorder.segment.coverage import GroupCoverage
from recorder.segment.reader import SegmentFile, merge_records
from recorder.segment.selection import Selection
from recorder.segment.stats import RecordingStats, accumulate

_NS = 1_000_000_000

MAX_BINS = 1200  # time bins of the rate and lag series: ~one per pixel column of a figure
BIN_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_EVENTS = 5000  # notable events kept for the list and the timeline (all are counted)
# Connection events the lanes of the timeline already show; everything else is marked on its shard's events row.
LANE_EVENTS = frozenset({"connecting", "opened", "closed", "reconnect"})


def bin_width_ns(span_ns: int) -> int:
    """The smallest round bin (1 s, 2 s, 5 s, ... a day, then whole days) that cuts `span_ns` into ≤ MAX_BINS."""
    for step in BIN_STEPS_S:
        if span_ns <= step * _NS * MAX_BINS:
            return step * _NS
    days = -(-span_ns // (86_400 * _NS * MAX_BINS))
    return days * 86_400 * _NS


@dataclass(frozen=True, slots=True)
class Bins:
    """Time bins aligned to multiples of their width since the epoch, so 1 s bins are stats' whole seconds."""

    origin_ns: int
    width_ns: int
    count: int

    @classmethod
    def over(cls, start_ns: int, end_ns: int) -> Bins:
        width = bin_width_ns(max(1, end_ns - start_ns))
        origin = start_ns // width * width
        return cls(origin, width, max(1, -(-(end_ns + 1 - origin) // width)))

    def index(self, ts_ns: int) -> int:
        return min(self.count - 1, max(0, (ts_ns - self.origin_ns) // self.width_ns))

    def start(self, i: int) -> int:
        return self.origin_ns + i * self.width_ns


@dataclass(slots=True)
class RateSeries:
    """Messages per bin and the busiest whole second within each bin, per contract (stats' keys)."""

    bins: Bins
    counts: dict[str, list[int]] = field(default_factory=dict)
    peaks: dict[str, list[int]] = field(default_factory=dict)  # busiest second in the bin, messages
    _second: dict[str, list[int]] = field(default_factory=dict)  # contract → [second, messages in it]
    total_counts: list[int] = field(default_factory=list)
    total_peaks: list[int] = field(default_factory=list)
    _total_second: list[int] = field(default_factory=lambda: [-1, 0])

    def __post_init__(self) -> None:
        self.total_counts = [0] * self.bins.count
        self.total_peaks = [0] * self.bins.count

    def add(self, ts_ns: int, contract: str) -> None:
        i = self.bins.index(ts_ns)
        second = ts_ns // _NS
        counts = self.counts.get(contract)
        if counts is None:
            counts = self.counts[contract] = [0] * self.bins.count
            self.peaks[contract] = [0] * self.bins.count
            self._second[contract] = [-1, 0]
        counts[i] += 1
        _bump(self._second[contract], second, self.peaks[contract], i)
        self.total_counts[i] += 1
        _bump(self._total_second, second, self.total_peaks, i)


def _bump(current: list[int], second: int, peaks: list[int], i: int) -> None:
    if current[0] == second:
        current[1] += 1
    else:
        current[0], current[1] = second, 1
    if current[1] > peaks[i]:
        peaks[i] = current[1]


@dataclass(slots=True)
class Lane:
    """One connection group of a shard over the whole recording (every worker incarnation), for the timeline."""

    shard: int
    group: int
    contracts: set[str] = field(default_factory=set)
    workers: list[int] = field(default_factory=list)  # the GroupCoverage epochs drawn on this lane
    connected: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # copy → intervals it was up
    drops: dict[int, list[int]] = field(default_factory=dict)  # copy → times a connection of it went down
    gaps: list[tuple[int, int]] = field(default_factory=list)  # every interval with no copy connected
    _up: dict[int, tuple[int, int]] = field(default_factory=dict)  # copy → (open connections, up since)


@dataclass(slots=True)
class Timeline:
    """A CoverageObserver: when each copy was up, every uncovered interval, and lag per time bin."""

    bins: Bins
    lanes: dict[tuple[int, int], Lane] = field(default_factory=dict)
    lags: dict[tuple[int, int, int], dict[int, Histogram]] = field(default_factory=dict)  # (shard, group, copy)

    def _lane(self, g: GroupCoverage) -> Lane:
        lane = self.lanes.get((g.shard, g.group))
        if lane is None:
            lane = self.lanes[(g.shard, g.group)] = Lane(g.shard, g.group)
        if not lane.workers or lane.workers[-1] != g.epoch:
            lane.workers.append(g.epoch)
            lane.contracts.update(g.contracts)
        return lane

    def connected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None:
        lane = self._lane(group)
        lane.connected.setdefault(copy, [])
        n, since = lane._up.get(copy, (0, ts_ns))
        lane._up[copy] = (n + 1, since if n else ts_ns)

    def disconnected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None:
        lane = self._lane(group)
        n, since = lane._up.get(copy, (0, ts_ns))
        lane.drops.setdefault(copy, []).append(ts_ns)
        if n <= 1:
            lane._up.pop(copy, None)
            if n == 1:
                lane.connected.setdefault(copy, []).append((since, max(since, ts_ns)))
        else:
            lane._up[copy] = (n - 1, since)

    def uncovered(self, group: GroupCoverage, start_ns: int, end_ns: int) -> None:
        self._lane(group).gaps.append((start_ns, end_ns))

    def lag(self, group: GroupCoverage, copy: int, ts_ns: int, lag_ns: int) -> None:
        per_bin = self.lags.get((group.shard, group.group, copy))
        if per_bin is None:
            per_bin = self.lags[(group.shard, group.group, copy)] = {}
        i = self.bins.index(ts_ns)
        hist = per_bin.get(i)
        if hist is None:
            hist = per_bin[i] = Histogram()
        hist.record(lag_ns)


@dataclass(frozen=True, slots=True)
class MarkedEvent:
    ts_ns: int
    shard: int
    name: str  # the event's own name, or "worker_restarted" for a worker_started after the first
    detail: str


@dataclass(slots=True)
class EventLog:
    """The events worth a mark on the timeline (not the connection churn the lanes show), in time order."""

    marked: list[MarkedEvent] = field(default_factory=list)
    omitted: int = 0

    def add(self, ts_ns: int, shard: int, payload: bytes) -> None:
        event = decode_event(payload)
        name = str(event.get("event"))
        if name in LANE_EVENTS or event.get("probe"):
            return
        if name == "worker_started":
            incarnation = event.get("incarnation")
            if not isinstance(incarnation, int) or incarnation <= 1:
                return  # the first start of a shard begins its lanes; restarts are what matter
            name = "worker_restarted"
        if len(self.marked) >= MAX_EVENTS:
            self.omitted += 1
            return
        self.marked.append(MarkedEvent(ts_ns, shard, name, describe_event(name, event)))


def _rejected(event: dict[str, Any]) -> str:
    contracts = event.get("contracts") or []
    shown = ", ".join(str(c) for c in contracts[:8]) + (f" and {len(contracts) - 8} more" if len(contracts) > 8
                                                         else "")
    return f"refused by the server (code {event.get('code')}), excluded: {shown}"


def _disk(event: dict[str, Any]) -> str:
    level = event.get("level")
    free = event.get("free_bytes")
    shown = f"{free / (1 << 30):.2f} GiB free" if isinstance(free, int) else "free space unknown"
    return {"low": f"disk low: {shown} (below --warn-free-gb)",
            "critical": f"disk critical: {shown} (below --min-free-gb): recording stopped",
            "ok": f"disk space back above the threshold: {shown}"}.get(str(level), f"disk {level}: {shown}")


# The events the report knows, each in words; any other is shown as its key=value fields.
_DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "rejected": _rejected,
    "backpressure": lambda e: "reading paused: the disk could not keep up" if e.get("paused") else "reading resumed",
    "stall": lambda e: f"no message for {e.get('silent_s')} s during a trading session",
    "stall_over": lambda e: "messages arrive again",
    "token_refreshed": lambda e: f"a fresh token (generation {e.get('gen')})",
    "worker_restarted": lambda e: f"worker restarted (incarnation {e.get('incarnation')}, pid {e.get('pid')})",
    "disk": _disk,
    "worker_stopping": lambda e: f"worker stopping: {e.get('reason')}",
}


def describe_event(name: str, event: dict[str, Any]) -> str:
    """A short line of what an event says; URLs and headers are left out (they say nothing about health)."""
    known = _DESCRIBE.get(name)
    if known is not None:
        return known(event)
    parts = []
    for key, value in event.items():
        if key in ("event", "url", "headers", "contracts") or isinstance(value, dict | list):
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)[:200]


@dataclass(slots=True)
class ReportData:
    stats: RecordingStats
    groups: list[GroupCoverage]
    bins: Bins
    rates: RateSeries
    timeline: Timeline
    events: EventLog
    start_ns: int  # the span drawn: the window, or the recording's first and last record
    end_ns: int


def collect(segments: list[SegmentFile], start_ns: int, end_ns: int, selection: Selection) -> ReportData:
    """One pass over the records `selection` (stats' --from/--to) selects, binned over [start_ns, end_ns]."""
    bins = Bins.over(start_ns, end_ns)
    rates = RateSeries(bins)
    timeline = Timeline(bins)
    events = EventLog()
    rate = rates.add
    mark = events.add

    def seen(rec: Record, contract: str | None) -> None:
        if contract is not None:
            rate(rec.ts_ns, contract)
        elif rec.kind == RecordKind.EVENT:
            mark(rec.ts_ns, rec.shard, rec.payload)

    stats, groups = accumulate(merge_records(segments, selection.start_ns, selection.end_ns), identifier_of,
                               timeline, seen, selection.before(segments))
    return ReportData(stats, groups, bins, rates, timeline, events, start_ns, end_ns)
