"""Per connection group: when no copy was connected, which copy delivered first, and how much later the others.

A pure accumulator over records in receive-time order (as `merge_records` yields them). It reads only the
recorder's connection events (`worker_started`, `connecting`, `opened`, `closed`, `unsubscribed`,
`worker_stopping`, with their `group` and `copy` fields) and the record kinds — never the market data itself.

The time when *no* copy of a group was connected is the only time a message of its contracts can be missing
from the recording; with one copy it is simply the reconnect downtime.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from recorder.events import decode_event
from recorder.histogram import Histogram
from recorder.segment.format import RecordKind, SegmentFormatError, decode_receipt

_TEXT = int(RecordKind.TEXT)
_BINARY = int(RecordKind.BINARY)
_EVENT = int(RecordKind.EVENT)
_RECEIPT = int(RecordKind.RECEIPT)
MAX_GAPS = 20  # the longest uncovered intervals kept per group


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
    open_conns: set[int] = field(default_factory=set)
    uncovered_since: int | None = None
    uncovered_ns: int = 0
    gap_count: int = 0  # uncovered intervals, the wait for the first connection included
    initial_ns: int = 0  # the wait for the first connection (not a drop)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    copies: dict[int, CopyFigures] = field(default_factory=dict)
    ended: bool = False

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
            if self.gap_count == 0:
                self.initial_ns = gap[1] - gap[0]
            self.gap_count += 1
            self.gaps.append(gap)
            if len(self.gaps) > MAX_GAPS:
                self.gaps.sort(key=lambda g: g[0] - g[1])
                del self.gaps[MAX_GAPS:]

    def end(self, ts: int) -> None:
        if not self.ended:
            self.end_ns = max(self.end_ns, ts)
            self._cover(ts)
            self.ended = True


@dataclass(slots=True)
class Coverage:
    groups: dict[tuple[int, int, int], GroupCoverage] = field(default_factory=dict)
    _epoch: dict[int, int] = field(default_factory=dict)
    _conns: dict[tuple[int, int, int], tuple[int, int]] = field(default_factory=dict)  # → (group, copy)
    _last_ts: dict[int, int] = field(default_factory=dict)

    def add(self, ts_ns: int, shard: int, conn: int, kind: int, payload: bytes) -> None:
        previous = self._last_ts.get(shard, ts_ns)
        self._last_ts[shard] = ts_ns
        epoch = self._epoch.get(shard, 0)
        if kind == _EVENT:
            self._event(ts_ns, shard, epoch, conn, decode_event(payload), previous)
            return
        where = self._conns.get((shard, epoch, conn))
        if where is None:
            return
        group = self.groups[(shard, epoch, where[0])]
        figures = group.copies.setdefault(where[1], CopyFigures())
        group.end_ns = ts_ns
        if kind == _RECEIPT:
            figures.later += 1
            with contextlib.suppress(SegmentFormatError):
                figures.lag.record(decode_receipt(payload)[1])
        elif kind in (_TEXT, _BINARY):
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
                group = self.groups[key] = GroupCoverage(shard, epoch, group_id, start_ns=ts, end_ns=ts)
                group._uncover(ts)
            if isinstance(contracts, list):
                # A reload may resubscribe the group with another list (the connections overlap: no gap).
                group.contracts = tuple(str(c) for c in contracts)
            group.copies.setdefault(copy, CopyFigures())
            return
        group = self.groups.get(key)
        if group is None or group.ended:
            return
        group.end_ns = max(group.end_ns, ts)
        if name == "opened":
            group.open_conns.add(conn)
            group._cover(ts)
        elif name == "closed" and conn in group.open_conns:
            group.open_conns.discard(conn)
            if not group.open_conns:
                group._uncover(ts)
        elif name == "unsubscribed":
            # A reload removed the group's contracts, or a refusal split or excluded it: its connections close for
            # good, which is not a gap.
            group.end(ts)

    def _end_shard(self, shard: int, epoch: int, ts: int, down_since: int | None = None) -> None:
        """End a worker's groups at `ts`; with `down_since`, its open connections died then (a crash)."""
        for (s, e, _), group in self.groups.items():
            if s == shard and e == epoch and not group.ended:
                if down_since is not None and group.open_conns:
                    group.open_conns.clear()
                    group._uncover(down_since)
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
