"""Per-contract statistics over records: pure accumulators shared by `ime-segments stats` and `ime-replay --list`,
and the one pass (`accumulate`) that `ime-segments stats` and `ime-segments report` both make over a recording."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from recorder.events import decode_event
from recorder.model.record import Record, RecordKind
from recorder.segment.coverage import Coverage, CoverageObserver, GroupCoverage, summarise
from recorder.timeparse import format_ns

NO_CONTRACT = "(none)"


@dataclass(slots=True)
class ContractStats:
    records: int = 0
    first_ns: int = 0
    last_ns: int = 0
    largest_gap_ns: int = 0
    largest_gap_at_ns: int = 0
    # Records per whole second of receive time; the busiest second is the max rate.
    _second: int = -1
    _in_second: int = 0
    max_per_second: int = 0

    def add(self, ts_ns: int) -> None:
        if self.records == 0:
            self.first_ns = ts_ns
        else:
            gap = ts_ns - self.last_ns
            if gap > self.largest_gap_ns:
                self.largest_gap_ns = gap
                self.largest_gap_at_ns = self.last_ns
        self.last_ns = ts_ns
        self.records += 1
        second = ts_ns // 1_000_000_000
        if second == self._second:
            self._in_second += 1
        else:
            self._second = second
            self._in_second = 1
        if self._in_second > self.max_per_second:
            self.max_per_second = self._in_second

    @property
    def span_s(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9

    @property
    def mean_rate(self) -> float:
        """Records per second over the whole seconds the records touch: never above the busiest second."""
        seconds = self.last_ns // 1_000_000_000 - self.first_ns // 1_000_000_000 + 1
        return self.records / seconds if self.records else 0.0


@dataclass(slots=True)
class RecordingStats:
    contracts: dict[str, ContractStats] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    kinds: Counter[int] = field(default_factory=Counter)
    records: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    @property
    def other_kinds(self) -> dict[int, int]:
        """Records of kinds that are not messages (receipts, kinds newer than this reader), by kind."""
        return {k: n for k, n in sorted(self.kinds.items()) if k > RecordKind.EVENT}

    def add(self, ts_ns: int, kind: int, payload: bytes, identify: Callable[[bytes], str | None]) -> str | None:
        """Count one record; returns the contract a message was counted under (None for anything else)."""
        self.kinds[kind] += 1
        if kind > RecordKind.EVENT:
            return None  # not a message (e.g. a receipt: a later copy of one already counted); only counted by kind
        self.records += 1
        if self.first_ns is None or ts_ns < self.first_ns:
            self.first_ns = ts_ns
        if self.last_ns is None or ts_ns > self.last_ns:
            self.last_ns = ts_ns
        if kind == RecordKind.EVENT:
            event = decode_event(payload)
            name = str(event.get("event"))
            self.events[name] += 1
            code = event.get("code")
            if name == "closed" and isinstance(code, int):
                self.close_codes[code] += 1
            return None
        contract = identify(payload) if kind == RecordKind.TEXT else None
        key = contract if contract is not None else NO_CONTRACT
        stats = self.contracts.get(key)
        if stats is None:
            stats = self.contracts[key] = ContractStats()
        stats.add(ts_ns)
        return key


def accumulate(records: Iterable[Record], identify: Callable[[bytes], str | None],
               observer: CoverageObserver | None = None,
               on_record: Callable[[Record, str | None], object] | None = None,
               before: tuple[int, Iterable[Record]] | None = None,
               ) -> tuple[RecordingStats, list[GroupCoverage]]:
    """Per-contract statistics and per-group coverage of records in receive-time order (`merge_records`).

    `before`: (the window's start, the events before it: `events_before`), so that connections opened before
    the window are known in it; only their state is taken, nothing before the window is counted.
    `ime-segments stats` prints what this returns; `ime-segments report` draws it, seeing every step through
    `observer` (coverage) and `on_record` (each record with the contract it was counted under), so that the
    two never disagree.
    """
    stats = RecordingStats()
    if before is None:
        coverage = Coverage(observer=observer)
    else:
        coverage = Coverage()
        start_ns, events = before
        for rec in events:
            coverage.add(rec.ts_ns, rec.shard, rec.conn, rec.kind, rec.payload)
        coverage.observer = observer
        coverage.start_at(start_ns)
    count, cover = stats.add, coverage.add
    for rec in records:
        contract = count(rec.ts_ns, rec.kind, rec.payload, identify)
        cover(rec.ts_ns, rec.shard, rec.conn, rec.kind, rec.payload)
        if on_record is not None:
            on_record(rec, contract)
    return stats, coverage.finish()


def stats_document(stats: RecordingStats, groups: list[GroupCoverage]) -> dict[str, Any]:
    """What `ime-segments stats --json` prints (and `ime-segments report` embeds): times in UTC, to the ns."""
    return {
        "records": stats.records,
        "first": format_ns(stats.first_ns) if stats.first_ns is not None else None,
        "last": format_ns(stats.last_ns) if stats.last_ns is not None else None,
        "contracts": {
            name: {
                "records": c.records,
                "first": format_ns(c.first_ns),
                "last": format_ns(c.last_ns),
                "mean_rate_per_s": round(c.mean_rate, 3),
                "max_rate_per_s": c.max_per_second,
                "largest_gap_s": round(c.largest_gap_ns / 1e9, 6),
                "largest_gap_after": format_ns(c.largest_gap_at_ns) if c.records > 1 else None,
            }
            for name, c in sorted(stats.contracts.items())
        },
        "events": dict(stats.events),
        "close_codes": {str(k): v for k, v in sorted(stats.close_codes.items())},
        "other_kinds": {str(k): v for k, v in stats.other_kinds.items()},
        "connections": summarise(groups),
    }
