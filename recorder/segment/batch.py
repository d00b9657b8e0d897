"""Accumulating records into one data frame, and encoding that frame: pure, no I/O.

`RecordBatch.append` runs on the recorder's event-loop thread for every WebSocket frame, so it only
packs a 17-byte header and keeps a reference to the payload; joining and compressing happen later,
on the writer thread (zstandard releases the GIL while it compresses).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import zstandard

from recorder.segment.format import (
    BLOCK_COUNT,
    RECORD_HEADER,
    FrameInfo,
    RecordKind,
    crc32,
    encode_descriptor,
    encode_receipt_columns,
    pack_headers,
    zstd_content_checksum,
)

_EVENT = int(RecordKind.EVENT)
_RECEIPT = int(RecordKind.RECEIPT)
_RECEIPT_COLUMNS = int(RecordKind.RECEIPT_COLUMNS)
RECEIPT_TS = struct.Struct("<q")  # the ts_ns at the start of a packed record header
_FAR_RAW = 24  # a far receipt's bytes in the receipt columns


class RecordBatch:
    """The records of one future data frame, in arrival order."""

    __slots__ = ("events", "far", "first_ts", "headers", "max_ts", "min_ts", "near", "payloads", "raw_size",
                 "receipts", "records", "serial")
    near: tuple[list[int], list[int], list[int]]
    far: tuple[list[int], list[int], list[int], list[int]]

    def __init__(self, serial: int = 0) -> None:
        self.serial = serial  # tells the writer whether an original is still in this batch
        # Receipts as columns of ints, never a tuple each (see encode_receipt_columns on the garbage collector).
        self.near = ([], [], [])  # whose original is in this batch: index, lag, conn
        self.far = ([], [], [], [])  # the others, once it holds a record: ts, conn, orig conn, lag
        self.headers = bytearray()
        self.payloads: list[bytes] = []
        self.records = 0
        self.events = 0
        self.receipts = 0
        self.raw_size = BLOCK_COUNT.size
        self.first_ts = 0
        self.min_ts = 0
        self.max_ts = 0

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None:
        self.headers += RECORD_HEADER.pack(ts_ns, conn, kind, len(payload))
        self.payloads.append(payload)
        self.raw_size += RECORD_HEADER.size + len(payload)
        if self.records == 0:
            self.first_ts = self.min_ts = self.max_ts = ts_ns
        elif ts_ns > self.max_ts:
            self.max_ts = ts_ns
        elif ts_ns < self.min_ts:
            # The wall clock can step backwards (NTP); the index must still bound every record.
            self.min_ts = ts_ns
        self.records += 1
        if kind == _EVENT:
            self.events += 1
        elif kind == _RECEIPT:
            self.receipts += 1

    def extend(self, stamps: Sequence[int], conns: Sequence[int], kinds: Sequence[int],
               payloads: Sequence[bytes]) -> None:
        """`append` for each record of these columns in turn (same bytes, same figures), with no Python loop:
        `ime-segments merge` writes hundreds of thousands of records a second."""
        if not stamps:
            return
        lengths = list(map(len, payloads))
        self.headers += pack_headers(stamps, conns, kinds, lengths)
        self.payloads.extend(payloads)
        self.raw_size += RECORD_HEADER.size * len(lengths) + sum(lengths)
        lo, hi = min(stamps), max(stamps)
        if self.records == 0:
            self.first_ts, self.min_ts, self.max_ts = stamps[0], lo, hi
        else:
            self.min_ts, self.max_ts = min(self.min_ts, lo), max(self.max_ts, hi)
        self.records += len(lengths)
        self.events += kinds.count(_EVENT)
        self.receipts += kinds.count(_RECEIPT)

    def append_near_receipt(self, ts_ns: int, conn: int, orig_index: int, lag_ns: int) -> None:
        """A later copy of the record at `orig_index` of this batch: stored as columns at the end of the block."""
        indexes, lags, conns = self.near
        indexes.append(orig_index)
        lags.append(lag_ns)
        conns.append(conn)
        self._receipt(ts_ns, 6)  # about what its columns take; only steers when the batch is cut

    def append_far_receipt(self, ts_ns: int, conn: int, orig_conn: int, lag_ns: int) -> None:
        """A later copy of a record of an earlier batch (its lag spans a cut), in the same columns. Only once the
        batch holds a record: a batch is cut, and its columns written, only when it does."""
        stamps, conns, orig_conns, lags = self.far
        stamps.append(ts_ns)
        conns.append(conn)
        orig_conns.append(orig_conn)
        lags.append(lag_ns)
        self._receipt(ts_ns, _FAR_RAW)

    def _receipt(self, ts_ns: int, size: int) -> None:
        self.receipts += 1
        self.raw_size += size
        if ts_ns > self.max_ts:
            self.max_ts = ts_ns
        elif ts_ns < self.min_ts:
            self.min_ts = ts_ns

    def block(self) -> bytes:
        near_indexes, near_lags, _ = self.near
        far_stamps = self.far[0]
        if near_indexes or far_stamps:
            # One record holds them all; its time is a copy's, inside the block's [min, max].
            if near_indexes:
                ts = RECEIPT_TS.unpack_from(self.headers, near_indexes[0] * RECORD_HEADER.size)[0] + near_lags[0]
            else:
                ts = far_stamps[0]
            payload = encode_receipt_columns(self.near, self.far)
            self.near, self.far = ([], [], []), ([], [], [], [])
            raw_size = self.raw_size  # the writer's backlog was charged with this size at the cut
            self.append(ts, 0, _RECEIPT_COLUMNS, payload)
            self.raw_size = raw_size
        return b"".join((BLOCK_COUNT.pack(self.records), self.headers, *self.payloads))


def new_compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def encode_frame(batch: RecordBatch, seq: int, offset: int,
                 cctx: zstandard.ZstdCompressor) -> tuple[FrameInfo, bytes]:
    """Compress a batch; return its FrameInfo and the bytes to append (descriptor + data frame)."""
    block = batch.block()
    frame = cctx.compress(block)
    info = FrameInfo(
        seq=seq,
        compressed_size=len(frame),
        raw_size=len(block),
        records=batch.records,
        events=batch.events,
        min_ts=batch.min_ts,
        max_ts=batch.max_ts,
        frame_crc=crc32(frame),
        checksum=zstd_content_checksum(frame),
        offset=offset,
    )
    return info, encode_descriptor(info) + frame
