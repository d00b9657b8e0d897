"""Receipts on disk: the copies of a data block go into its receipt columns (by index when the original is in the
block, with their own time otherwise); a copy in a batch with no record yet is a single receipt record. Readers
see one receipt record per copy, in receive-time order, however it was stored, kind-5 blocks of older files too."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.model.record import RecordKind, decode_receipt
from recorder.segment.format import (
    SegmentFormatError,
    decode_receipt_block,
    decode_receipt_columns,
    encode_receipt_columns,
)
from recorder.segment.reader import open_segment
from recorder.segment.writer import SegmentWriter

TEXT, RECEIPT = int(RecordKind.TEXT), int(RecordKind.RECEIPT)


def kind5(receipts: list[tuple[int, int, int]]) -> bytes:
    """A kind-5 payload as docs/FORMAT.md lays it out (files written before kind 6 hold these)."""
    n = len(receipts)
    return struct.pack(f"<I{n}I{n}Q{n}I", n, *(r[0] for r in receipts), *(r[1] for r in receipts),
                       *(r[2] for r in receipts))


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2**40), st.integers(0, 2**32 - 1)), max_size=50))
def test_kind5_receipt_blocks_still_decode(receipts):
    assert decode_receipt_block(kind5(receipts)) == receipts


def columns(rows: list[tuple[int, ...]], width: int) -> tuple[list[int], ...]:
    return tuple(map(list, zip(*rows, strict=True))) if rows else tuple([] for _ in range(width))


@given(near=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                     max_size=50),
       far=st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                              st.integers(0, 2**64 - 1)), max_size=50))
def test_receipt_columns_round_trip_exactly(near, far):
    """Any order (indexes and times may step back), the full range of every field."""
    assert decode_receipt_columns(encode_receipt_columns(columns(near, 3), columns(far, 4))) == (near, far)


def test_truncated_receipt_blocks_are_format_errors():
    columns6 = encode_receipt_columns(([1], [300], [7]), ([10**18], [7], [3], [90]))
    for data, decode in ((kind5([(1, 300, 7), (2, 5000, 7)]), decode_receipt_block),
                         (columns6, decode_receipt_columns)):
        for cut in range(len(data)):
            try:
                decode(data[:cut])
            except SegmentFormatError:
                continue
            raise AssertionError(f"cut at {cut} was accepted")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), frame_bytes=st.sampled_from([4096, 1 << 20]), copies=st.integers(1, 3))
def test_writer_stores_every_copy_and_readers_see_each_once_in_time_order(tmp_path_factory, seed, frame_bytes, copies):
    """Originals and their copies, some far enough apart to fall in another frame (or file): every copy reads
    back as a receipt with its own receive time and connection, pointing at its original's conn and time."""
    tmp = tmp_path_factory.mktemp("receipts")
    rng = random.Random(seed)
    writer = SegmentWriter(tmp, frame_bytes=frame_bytes, flush_ms=1e9, rotate_seconds=0, rotate_bytes=1 << 40)
    ts = 1_795_000_000_000_000_000
    expected_receipts = []
    expected_messages = []
    pending: list[tuple[int, int, tuple[int, int], int]] = []  # (orig ts, orig conn, position, copies left)
    for i in range(400):
        ts += rng.randint(1, 50_000)
        if pending and rng.random() < 0.5:
            k = rng.randrange(len(pending))
            orig_ts, orig_conn, pos, left = pending[k]
            conn = 10 + left
            writer.append_receipt(ts, conn, orig_ts, orig_conn, pos)
            expected_receipts.append((ts, conn, orig_conn, ts - orig_ts))
            pending[k] = (orig_ts, orig_conn, pos, left - 1)
            if left == 1:
                pending.pop(k)
            continue
        conn = rng.randint(1, 3)
        pos = writer.position()
        payload = f"m{i}".encode() * rng.randint(1, 200)
        writer.append(ts, conn, TEXT, payload)
        expected_messages.append((ts, conn, payload))
        if copies > 1:
            pending.append((ts, conn, pos, copies - 1))
    writer.close()
    got_receipts, got_messages, last = [], [], 0
    for path in sorted(tmp.glob("*.zst")):
        seg = open_segment(path)
        for rec in seg.iter_records():
            assert rec.ts_ns >= last  # one stream, in receive-time order
            last = rec.ts_ns
            if rec.kind == RECEIPT:
                orig_conn, lag = decode_receipt(rec.payload)
                got_receipts.append((rec.ts_ns, rec.conn, orig_conn, lag))
            else:
                got_messages.append((rec.ts_ns, rec.conn, rec.payload))
        assert seg.verify() == []
        assert seg.seal.get("receipts") == sum(1 for r in got_receipts)  # one file here (no rotation)
    assert got_messages == expected_messages
    assert got_receipts == expected_receipts
