"""Choosing records: by contract (id or name), by receive time, with or without connection events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from recorder.feed.message import identifier_of
from recorder.model.record import Copy, Record, RecordError, RecordKind, decode_receipt
from recorder.segment.dedupe import ReceiptResolver
from recorder.segment.reader import SegmentFile, events_before, merge_records
from recorder.timeparse import TimeLocale, parse_window


@dataclass(frozen=True, slots=True)
class Selection:
    contracts: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    events: bool = True  # connection events are kept unless a contract filter is given
    # Kinds after EVENT (receipts: later copies of a message already recorded) are not messages:
    # skipped unless asked for, so that each message is shown once.
    all_copies: bool = False  # also every later copy (receipt) of a message, not only its first arrival

    @classmethod
    def parse(cls, segments: list[SegmentFile], contracts: Iterable[str], start: str | None, end: str | None,
              tz: TimeLocale | str | None, events: bool = True, all_copies: bool = False) -> Selection:
        """From the command line's --contract/--from/--to/--tz; a time of day is on the recording's first day."""
        span = recording_range(segments)
        lo, hi = parse_window(start, end, tz, span[0] if span is not None else None)
        return cls(frozenset(contracts), lo, hi, events, all_copies)

    @property
    def filtered(self) -> bool:
        return bool(self.contracts) or self.start_ns is not None or self.end_ns is not None

    def before(self, segments: list[SegmentFile]) -> tuple[int, Iterator[Record]] | None:
        """With --from: (its time, the events before it), for the connections opened before the window."""
        return None if self.start_ns is None else (self.start_ns, events_before(segments, self.start_ns))

    def window_misses(self, segments: list[SegmentFile]) -> bool:
        """True when there is a time window and, by the frame index alone, no record can be in it."""
        if self.start_ns is None and self.end_ns is None:
            return False
        lo = self.start_ns if self.start_ns is not None else -(1 << 63)
        hi = self.end_ns if self.end_ns is not None else 1 << 63
        return not any(f.records and f.max_ts >= lo and f.min_ts < hi for s in segments for f in s.frames)

    def nothing_selected(self, segments: list[SegmentFile], tz: TimeLocale | str | None) -> str:
        """The one line saying that the filter selects nothing, with the recording's time range to compare."""
        zone = TimeLocale.of(tz)
        what = "no records selected"
        if self.contracts:
            what += " for " + ", ".join(sorted(self.contracts))
        if self.start_ns is not None:
            what += f" from {zone.exact(self.start_ns)}"
        if self.end_ns is not None:
            what += f" to {zone.exact(self.end_ns)}"
        span = recording_range(segments)
        if span is None:
            return f"{what}: the recording holds no records"
        return f"{what}: the recording spans {zone.exact(span[0])} to {zone.exact(span[1])}"

    def rows(self, segments: list[SegmentFile], identify: bool = True) -> Iterator[tuple[Record, str | None]]:
        """(record, contract identifier or None), merged across files by receive time.

        With `identify=False` and no contract filter, frames are not parsed at all (raw output at full speed).
        Receipts (later copies of a recorded message) are shown only with `all_copies`, resolved to the message
        they repeat; kinds from a newer format are not messages: each message is shown once.
        """
        wanted = self.contracts
        parse = identify or bool(wanted)
        keep_events = self.events and not wanted
        text, event, receipt = RecordKind.TEXT, RecordKind.EVENT, RecordKind.RECEIPT
        records = merge_records(segments, self.start_ns, self.end_ns)
        shown: tuple[int, ...] = (text, RecordKind.BINARY)
        if self.all_copies:
            records, shown = _copies_shown(records), (*shown, receipt)
        for rec in records:
            kind = rec.kind
            if kind in shown:
                # A receipt's payload is its original's, when that was read (b"" when not).
                identified = parse and (kind == text or (kind == receipt and rec.payload))
                contract = identifier_of(rec.payload) if identified else None
                if not wanted or (contract is not None and contract in wanted):
                    yield rec, contract
            elif kind == event and keep_events:
                yield rec, None


def _copies_shown(records: Iterator[Record]) -> Iterator[Record]:
    """The records with each receipt resolved to the copy it records (`resolve_copy`)."""
    resolver = ReceiptResolver()
    messages, receipt = (RecordKind.TEXT, RecordKind.BINARY), RecordKind.RECEIPT
    for rec in records:
        kind = rec.kind
        if kind in messages:
            resolver.original(rec.ts_ns, rec.shard, rec.conn, rec.payload)
        elif kind == receipt:
            rec = resolve_copy(rec, resolver)
        yield rec


def resolve_copy(rec: Record, resolver: ReceiptResolver) -> Record:
    """A receipt as the copy it records: the original's payload (b"" when it was not read) and its `Copy`."""
    try:
        orig_conn, lag = decode_receipt(rec.payload)
    except RecordError:
        return rec._replace(payload=b"", copy=Copy(-1, 0, False))
    payload = resolver.resolve(rec.ts_ns - lag, rec.shard, orig_conn)
    return rec._replace(payload=payload or b"", copy=Copy(orig_conn, lag, payload is not None))


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
