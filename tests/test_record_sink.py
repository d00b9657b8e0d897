"""The sink of a recording connection (recorder/record/sink.py) on a real SegmentWriter, read back from the files."""

from __future__ import annotations

import random
from pathlib import Path

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind, decode_receipt
from recorder.record.sink import Dedupers, first_arrival_sink
from recorder.segment.reader import open_segment
from recorder.segment.writer import SegmentWriter

T0 = 1_795_000_000_000_000_000


def _read(directory: Path) -> list[tuple[int, int, int, bytes]]:
    out = []
    for path in sorted(directory.glob("*.zst")):
        seg = open_segment(path)
        assert seg.verify() == []
        out += [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()]
    return out


def test_two_copies_record_each_message_once_and_every_later_copy_as_a_receipt(tmp_path: Path) -> None:
    """Copies race (either may come first, some a frame later): the first arrival is the record and the one the
    live output gets; the later one a receipt naming its connection and lag. Events pass through, not teed."""
    writer = SegmentWriter(tmp_path, frame_bytes=2048, flush_ms=1e9, rotate_seconds=0, rotate_bytes=1 << 40)
    dedupers = Dedupers(2.0)
    deduper = dedupers.new()
    teed: list[tuple[int, int, bytes]] = []
    sinks = [first_arrival_sink(writer, deduper, source, lambda ts, conn, _kind, p: teed.append((ts, conn, p)))
             for source in range(2)]
    rng = random.Random(5)
    arrivals = []
    for i in range(300):
        ts = T0 + i * 1_000_000
        first = rng.randrange(2)
        arrivals.append((ts, first, f"m{i}".encode() * rng.randint(1, 40)))
        arrivals.append((ts + rng.randint(1, 3_000_000), 1 - first, arrivals[-1][2]))
    arrivals.sort()
    expected_messages, expected_receipts, seen = [], [], {}
    for ts, source, payload in arrivals:
        sinks[source](ts, 10 + source, RecordKind.TEXT, payload)
        if payload in seen:
            orig_ts, orig_conn = seen[payload]
            expected_receipts.append((ts, 10 + source, orig_conn, ts - orig_ts))
        else:
            seen[payload] = (ts, 10 + source)
            expected_messages.append((ts, 10 + source, payload))
    event = encode_event(Event.RECONNECT, conn=11)
    sinks[1](T0 + 10**9, 11, RecordKind.EVENT, event)
    writer.close()
    records = _read(tmp_path)
    assert [(ts, conn, p) for ts, conn, kind, p in records if kind == RecordKind.TEXT] == expected_messages
    assert [(ts, conn, *decode_receipt(p)) for ts, conn, kind, p in records
            if kind == RecordKind.RECEIPT] == expected_receipts
    assert [(ts, conn, p) for ts, conn, kind, p in records if kind == RecordKind.EVENT] == [(T0 + 10**9, 11, event)]
    assert teed == expected_messages
    assert dedupers.copies == len(expected_receipts) == 300
    dedupers.retire(deduper)
    assert dedupers.copies == 300  # a retired Deduper's receipts still count


def test_one_copy_without_live_output_is_the_writers_own_append(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path)
    try:
        assert first_arrival_sink(writer, None, 0) == writer.append
    finally:
        writer.close()
