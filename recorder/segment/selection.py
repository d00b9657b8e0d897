"""Choosing records: by contract (id or name), by receive time, with or without connection events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from recorder.feed.message import identifier_of
from recorder.segment.format import RecordKind
from recorder.segment.reader import Record, SegmentFile, merge_records
from recorder.timeparse import format_local, parse_tz, parse_window

_TEXT = int(RecordKind.TEXT)
_BINARY = int(RecordKind.BINARY)
_EVENT = int(RecordKind.EVENT)


@dataclass(frozen=True, slots=True)
class Selection:
    contracts: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    events: bool = True  # connection events are kept unless a contract filter is given
    # Kinds after EVENT (receipts: later copies of a message already recorded) are not messages:
    # skipped unless asked for, so that each message is shown once.
    all_copies: bool = False

    @classmethod
    def parse(cls, segments: list[SegmentFile], contracts: Iterable[str], start: str | None, end: str | None,
              tz: str | None, events: bool = True) -> Selection:
        """From the command line's --contract/--from/--to/--tz; a time of day is on the recording's first day."""
        span = recording_range(segments)
        lo, hi = parse_window(start, end, tz, span[0] if span is not None else None)
        return cls(frozenset(contracts), lo, hi, events)

    @property
    def filtered(self) -> bool:
        return bool(self.contracts) or self.start_ns is not None or self.end_ns is not None

    def window_misses(self, segments: list[SegmentFile]) -> bool:
        """True when there is a time window and, by the frame index alone, no record can be in it."""
        if self.start_ns is None and self.end_ns is None:
            return False
        lo = self.start_ns if self.start_ns is not None else -(1 << 63)
        hi = self.end_ns if self.end_ns is not None else 1 << 63
        return not any(f.records and f.max_ts >= lo and f.min_ts < hi for s in segments for f in s.frames)

    def nothing_selected(self, segments: list[SegmentFile], tz: str | None) -> str:
        """The one line saying that the filter selects nothing, with the recording's time range to compare."""
        zone = parse_tz(tz)
        what = "no records selected"
        if self.contracts:
            what += " for " + ", ".join(sorted(self.contracts))
        if self.start_ns is not None:
            what += f" from {format_local(self.start_ns, zone)}"
        if self.end_ns is not None:
            what += f" to {format_local(self.end_ns, zone)}"
        span = recording_range(segments)
        if span is None:
            return f"{what}: the recording holds no records"
        return f"{what}: the recording spans {format_local(span[0], zone)} to {format_local(span[1], zone)}"

    def rows(self, segments: list[SegmentFile], identify: bool = True) -> Iterator[tuple[Record, str | None]]:
        """(record, contract identifier or None), merged across files by receive time.

        With `identify=False` and no contract filter, frames are not parsed at all (raw output at full speed).
        """
        wanted = self.contracts
        keep_events = self.events and not wanted
        parse = identify or bool(wanted)
        for rec in merge_records(segments, self.start_ns, self.end_ns):
            kind = rec.kind
            if kind == _TEXT:
                if not parse:
                    yield rec, None
                    continue
                contract = identifier_of(rec.payload)
                if wanted and contract not in wanted:
                    continue
                yield rec, contract
            elif kind == _EVENT:
                if keep_events:
                    yield rec, None
            elif not wanted and (kind == _BINARY or self.all_copies):
                yield rec, None


def recording_range(segments: list[SegmentFile]) -> tuple[int, int] | None:
    """(first, last) receive time over all files, from their indexes; None when there are no records."""
    lows = [s.min_ts for s in segments if s.min_ts is not None]
    highs = [s.max_ts for s in segments if s.max_ts is not None]
    return (min(lows), max(highs)) if lows and highs else None


def recorded_contracts(segments: list[SegmentFile]) -> set[str]:
    """The contracts the recorder subscribed to, from the file headers (no decompression)."""
    found: set[str] = set()
    for seg in segments:
        contracts = seg.header.meta.get("contracts")
        if isinstance(contracts, list):
            found.update(str(c) for c in contracts)
    return found
