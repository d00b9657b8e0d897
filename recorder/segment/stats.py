"""Per-contract statistics over records: pure accumulators shared by `ime-segments stats` and `ime-replay --list`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from recorder.events import decode_event
from recorder.segment.format import RecordKind

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

    def add(self, ts_ns: int, kind: int, payload: bytes, identify: Callable[[bytes], str | None]) -> None:
        self.kinds[kind] += 1
        if kind > RecordKind.EVENT:
            return  # not a message (e.g. a receipt: a later copy of one already counted); only counted by kind
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
            return
        if kind == RecordKind.RECEIPT:
            return  # a later copy of a message already counted (redundant capture)
        contract = identify(payload) if kind == RecordKind.TEXT else None
        key = contract if contract is not None else NO_CONTRACT
        stats = self.contracts.get(key)
        if stats is None:
            stats = self.contracts[key] = ContractStats()
        stats.add(ts_ns)
