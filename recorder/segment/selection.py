"""Choosing records: by contract (id or name), by receive time, with or without connection events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from recorder.feed.message import identifier_of
from recorder.segment.format import RecordKind
from recorder.segment.reader import Record, SegmentFile, merge_records

_TEXT = int(RecordKind.TEXT)
_EVENT = int(RecordKind.EVENT)


@dataclass(frozen=True, slots=True)
class Selection:
    contracts: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    events: bool = True  # connection events are kept unless a contract filter is given

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
            elif not wanted:
                yield rec, None


def recorded_contracts(segments: list[SegmentFile]) -> set[str]:
    """The contracts the recorder subscribed to, from the file headers (no decompression)."""
    found: set[str] = set()
    for seg in segments:
        contracts = seg.header.meta.get("contracts")
        if isinstance(contracts, list):
            found.update(str(c) for c in contracts)
    return found
