"""Choosing records: by contract (id or name), by receive time, with or without connection events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from recorder.feed.message import identifier_of
from recorder.segment.dedupe import ReceiptResolver
from recorder.segment.format import RecordKind, SegmentFormatError, decode_receipt
from recorder.segment.reader import Record, SegmentFile, merge_records

_TEXT = int(RecordKind.TEXT)
_BINARY = int(RecordKind.BINARY)
_EVENT = int(RecordKind.EVENT)
_RECEIPT = int(RecordKind.RECEIPT)


class CopyRecord(NamedTuple):
    """A later copy of a message (a receipt), shown with the original's payload when that could be found."""

    ts_ns: int
    shard: int
    conn: int
    kind: int  # RecordKind.RECEIPT
    payload: bytes  # the original's payload; b"" when the original is not in what was read
    orig_conn: int
    lag_ns: int


@dataclass(frozen=True, slots=True)
class Selection:
    contracts: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    events: bool = True  # connection events are kept unless a contract filter is given
    all_copies: bool = False  # also every later copy (receipt) of a message, not only its first arrival

    def rows(self, segments: list[SegmentFile], identify: bool = True) -> Iterator[tuple[Record, str | None]]:
        """(record, contract identifier or None), merged across files by receive time.

        With `identify=False` and no contract filter, frames are not parsed at all (raw output at full speed).
        """
        wanted = self.contracts
        keep_events = self.events and not wanted
        parse = identify or bool(wanted)
        resolver = ReceiptResolver() if self.all_copies else None
        for rec in merge_records(segments, self.start_ns, self.end_ns):
            kind = rec.kind
            if resolver is not None:
                if kind in (_TEXT, _BINARY):
                    resolver.original(rec.ts_ns, rec.shard, rec.conn, rec.payload)
                elif kind == _RECEIPT:
                    copy = resolve_copy(rec, resolver)
                    contract = identifier_of(copy.payload) if parse and copy.payload else None
                    if not wanted or contract in wanted:
                        yield copy, contract  # type: ignore[misc]
                    continue
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
            elif kind == _RECEIPT:
                continue  # each message once by default: a receipt is a later copy of a recorded message
            elif not wanted:
                yield rec, None


def resolve_copy(rec: Record, resolver: ReceiptResolver) -> CopyRecord:
    try:
        orig_conn, lag = decode_receipt(rec.payload)
    except SegmentFormatError:
        return CopyRecord(rec.ts_ns, rec.shard, rec.conn, rec.kind, b"", -1, 0)
    payload = resolver.resolve(rec.ts_ns - lag, rec.shard, orig_conn) or b""
    return CopyRecord(rec.ts_ns, rec.shard, rec.conn, rec.kind, payload, orig_conn, lag)


def recorded_contracts(segments: list[SegmentFile]) -> set[str]:
    """The contracts the recorder subscribed to, from the file headers (no decompression)."""
    found: set[str] = set()
    for seg in segments:
        contracts = seg.header.meta.get("contracts")
        if isinstance(contracts, list):
            found.update(str(c) for c in contracts)
    return found
