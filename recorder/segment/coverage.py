"""Per connection group: when no copy was connected, which copy delivered first, and how much later the others.

A pure accumulator over records in receive-time order (as `merge_records` yields them). It reads only the
recorder's connection events (`worker_started`, `connecting`, `opened`, `closed`, `unsubscribed`,
`worker_stopping`, with their `group` and `copy` fields) and the record kinds — never the market data itself.

The time when *no* copy of a group was connected is the only time a message of its contracts can be missing
from the recording; with one copy it is simply the reconnect downtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from recorder.events import decode_event
from recorder.histogram import Histogram
from recorder.model.record import MESSAGE_KINDS, RecordError, RecordKind, decode_receipt

MAX_GAPS = 20  # the longest uncovered intervals kept per group


class CoverageObserver(Protocol):
    """Told every step of the computation as it happens, for a picture over time (`ime-segments report`).

    The figures stay Coverage's own; an observer only sees when each copy was up, every uncovered interval
    (Coverage keeps the longest `MAX_GAPS`), and each later copy's lag with its time.
    """

    def connected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None: ...

    def disconnected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None: ...

    def uncovered(self, group: GroupCoverage, start_ns: int, end_ns: int) -> None: ...

    def lag(self, group: GroupCoverage, copy: int, ts_ns: int, lag_ns: int) -> None: ...


@dataclass(slots=True)
class CopyFigures:
    first: int = 0  # messages this copy delivered first (recorded as the message)
    later: int = 0  # copies it delivered after another copy (receipts)
    lag: Histogram = field(default_factory=Histogram)  # how much later, when it was later


@dataclass(slots=True)
class GroupCoverage:
    shard: int
    epoch: int  # worker incarnation within the shard, counted from the records
    group: int
    contracts: tuple[str, ...] = ()
    start_ns: int = 0
    end_ns: int = 0
    open_conns: dict[int, int] = field(default_factory=dict)  # conn → its copy
    uncovered_since: int | None = None
    uncovered_ns: int = 0
    gap_count: int = 0  # uncovered intervals, the wait for the first connection included
    initial_ns: int = 0  # the wait for the first connection (not a drop)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    copies: dict[int, CopyFigures] = field(default_factory=dict)
    ended: bool = False
    observer: CoverageObserver | None = None
    held: set[str] = field(default_factory=set)  # its contracts not yet taken over by other groups or rejected
    from_start: bool = True  # its first uncovered interval is the wait for its first connection (not a window's)

    @property
    def span_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def covered_fraction(self) -> float:
        span = self.span_ns
        return 1.0 - self.uncovered_ns / span if span else 0.0

    def _uncover(self, ts: int) -> None:
        if self.uncovered_since is None:
            self.uncovered_since = ts

    def _cover(self, ts: int) -> None:
        if self.uncovered_since is not None:
            gap = (self.uncovered_since, ts)
            self.uncovered_ns += max(0, ts - self.uncovered_since)
            self.uncovered_since = None
            if self.gap_count == 0 and self.from_start:
                self.initial_ns = gap[1] - gap[0]
            self.gap_count += 1
            self.gaps.append(gap)
            if self.observer is not None:
                self.observer.uncovered(self, *gap)
            if len(self.gaps) > MAX_GAPS:
                self.gaps.sort(key=lambda g: g[0] - g[1])
                del self.gaps[MAX_GAPS:]

    def end(self, ts: int) -> None:
        if not self.ended:
            self.end_ns = max(self.end_ns, ts)
            if self.observer is not None:
                for copy in self.open_conns.values():
                    self.observer.disconnected(self, copy, self.end_ns)
            self._cover(ts)
            self.ended = True

    def drop_all(self, ts: int) -> None:
        """Every open connection went down at `ts` (the worker died then)."""
        if self.observer is not None:
            for copy in self.open_conns.values():
                self.observer.disconnected(self, copy, ts)
        self.open_conns.clear()
        self._uncover(ts)


@dataclass(slots=True)
class Coverage:
    groups: dict[tuple[int, int, int], GroupCoverage] = field(default_factory=dict)
    _epoch: dict[int, int] = field(default_factory=dict)
    _conns: dict[tuple[int, int, int], tuple[int, int]] = field(default_factory=dict)  # → (group, copy)
    _last_ts: dict[int, int] = field(default_factory=dict)
    observer: CoverageObserver | None = None

    def add(self, ts_ns: int, shard: int, conn: int, kind: int, payload: bytes) -> None:
        previous = self._last_ts.get(shard, ts_ns)
        self._last_ts[shard] = ts_ns
        epoch = self._epoch.get(shard, 0)
        if kind == RecordKind.EVENT:
            self._event(ts_ns, shard, epoch, conn, decode_event(payload), previous)
            return
        where = self._conns.get((shard, epoch, conn))
        if where is None:
            return
        group = self.groups[(shard, epoch, where[0])]
        figures = group.copies.setdefault(where[1], CopyFigures())
        group.end_ns = ts_ns
        if kind == RecordKind.RECEIPT:
            figures.later += 1
            try:
                lag = decode_receipt(payload)[1]
            except RecordError:
                return
            figures.lag.record(lag)
            if self.observer is not None:
                self.observer.lag(group, where[1], ts_ns, lag)
        elif kind in MESSAGE_KINDS:
            figures.first += 1

    def _event(self, ts: int, shard: int, epoch: int, conn: int, event: dict[str, Any], previous: int) -> None:
        name = event.get("event")
        if name == "worker_started":
            # A worker that stopped cleanly ended its groups already; one that was killed did not: its
            # connections went down with its last record, and nothing was covered until this restart.
            self._end_shard(shard, epoch, ts, down_since=previous)
            self._epoch[shard] = epoch + 1
            return
        if name == "worker_stopping":
            self._end_shard(shard, epoch, ts)
            return
        if event.get("probe"):
            return
        group_id = event.get("group")
        if not isinstance(group_id, int):
            group_id = 0  # a recording made before format 1.1: one group per shard is the best guess
        copy = event.get("copy")
        copy = copy if isinstance(copy, int) else 0
        key = (shard, epoch, group_id)
        if name == "connecting":
            self._conns[(shard, epoch, conn)] = (group_id, copy)
            group = self.groups.get(key)
            contracts = event.get("contracts")
            if group is None:
                held = tuple(str(c) for c in contracts) if isinstance(contracts, list) else ()
                # A worker splits a refused group into new ones (bisection): each contract is in one group at a
                # time, so a group whose contracts all moved on is gone, not uncovered until the recording ends
                # (recordings before the `unsubscribed` event say so only this way).
                self._release(shard, epoch, ts, held)
                group = self.groups[key] = GroupCoverage(shard, epoch, group_id, held, start_ns=ts, end_ns=ts,
                                                         observer=self.observer, held=set(held))
                group._uncover(ts)
            elif isinstance(contracts, list):
                # A reload may resubscribe the group with another list (the connections overlap: no gap).
                group.contracts = tuple(str(c) for c in contracts)
                group.held = set(group.contracts)
            group.copies.setdefault(copy, CopyFigures())
            return
        if name == "rejected":
            contracts = event.get("contracts")
            if isinstance(contracts, list):
                self._release(shard, epoch, ts, [str(c) for c in contracts])
            return
        group = self.groups.get(key)
        if group is None or group.ended:
            return
        group.end_ns = max(group.end_ns, ts)
        if name == "opened":
            if self.observer is not None and conn not in group.open_conns:
                self.observer.connected(group, copy, ts)
            group.open_conns[conn] = copy
            group._cover(ts)
        elif name == "closed" and conn in group.open_conns:
            copy = group.open_conns.pop(conn)
            if self.observer is not None:
                self.observer.disconnected(group, copy, ts)
            if not group.open_conns:
                group._uncover(ts)
        elif name == "unsubscribed":
            # A reload removed the group's contracts, or a refusal split or excluded it: its connections close for
            # good, which is not a gap.
            group.end(ts)

    def start_at(self, ts: int) -> None:
        """Count from `ts` on, in the state the events so far left (a window's start: `--from`).

        Fed the events before a window, the groups connected then are known at its start: they are counted from
        `ts` (uncovered from `ts` if no copy was connected), and groups that had ended are not in the window.
        """
        for key, group in list(self.groups.items()):
            if group.ended:
                del self.groups[key]
                continue
            group.start_ns = group.end_ns = ts
            group.uncovered_since = None if group.open_conns else ts
            group.uncovered_ns = group.gap_count = group.initial_ns = 0
            group.gaps = []
            group.copies = {copy: CopyFigures() for copy in group.copies}
            group.from_start = False
            group.observer = self.observer
            if self.observer is not None:
                for copy in set(group.open_conns.values()):
                    self.observer.connected(group, copy, ts)
        for shard in self._last_ts:
            self._last_ts[shard] = ts

    def _release(self, shard: int, epoch: int, ts: int, contracts: Iterable[str]) -> None:
        """`contracts` now belong to a new group (or are excluded): end the groups left holding none."""
        moved = set(contracts)
        if not moved:
            return
        for (s, e, _), group in self.groups.items():
            if s == shard and e == epoch and not group.ended and group.held & moved:
                group.held -= moved
                if not group.held and not group.open_conns:
                    group.end(ts)

    def _end_shard(self, shard: int, epoch: int, ts: int, down_since: int | None = None) -> None:
        """End a worker's groups at `ts`; with `down_since`, its open connections died then (a crash)."""
        for (s, e, _), group in self.groups.items():
            if s == shard and e == epoch and not group.ended:
                if down_since is not None and group.open_conns:
                    group.drop_all(down_since)
                group.end(ts)

    def finish(self) -> list[GroupCoverage]:
        """End every group at its shard's last record (a recording that was cut without a clean stop)."""
        for (shard, _, _), group in self.groups.items():
            group.end(self._last_ts.get(shard, group.end_ns))
        return sorted(self.groups.values(), key=lambda g: (g.shard, g.epoch, g.group))


def summarise(groups: list[GroupCoverage]) -> dict[str, Any]:
    """The JSON-ready figures `ime-segments stats` prints."""
    span = sum(g.span_ns for g in groups)
    uncovered = sum(g.uncovered_ns for g in groups)
    return {
        "connected_fraction": round(1.0 - uncovered / span, 6) if span else None,
        "uncovered_s": round(uncovered / 1e9, 6),
        "groups": [
            {
                "shard": g.shard,
                "worker": g.epoch,
                "group": g.group,
                "contracts": len(g.contracts),
                "span_s": round(g.span_ns / 1e9, 6),
                "uncovered_s": round(g.uncovered_ns / 1e9, 6),
                "gaps": g.gap_count,
                "connected_fraction": round(g.covered_fraction(), 6),
                "longest_gaps": [{"from_ns": a, "to_ns": b, "s": round((b - a) / 1e9, 6)}
                                 for a, b in sorted(g.gaps, key=lambda x: x[0] - x[1])[:5] if b > a],
                "copies": {
                    str(k): {
                        "first": c.first,
                        "later": c.later,
                        # Of all the group's messages, the share this copy delivered before any other.
                        "share_first": round(c.first / firsts, 6) if (firsts := sum(
                            x.first for x in g.copies.values())) else 0.0,
                        "lag_when_later_us": {"p50": c.lag.percentile(50) / 1e3, "p99": c.lag.percentile(99) / 1e3,
                                              "max": c.lag.max / 1e3} if c.lag.count else None,
                    }
                    for k, c in sorted(g.copies.items())
                },
            }
            for g in groups
        ],
    }
