"""Accumulating records into one data frame, and encoding that frame: pure, no I/O.

`RecordBatch.append` runs on the recorder's event-loop thread for every WebSocket frame, so it only
packs a 17-byte header and keeps a reference to the payload; joining and compressing happen later,
on the writer thread (zstandard releases the GIL while it compresses).
"""

from __future__ import annotations

import zstandard

from recorder.segment.format import (
    BLOCK_COUNT,
    RECORD_HEADER,
    FrameInfo,
    RecordKind,
    crc32,
    encode_descriptor,
    zstd_content_checksum,
)

_EVENT = int(RecordKind.EVENT)
_RECEIPT = int(RecordKind.RECEIPT)


class RecordBatch:
    """The records of one future data frame, in arrival order."""

    __slots__ = ("events", "first_ts", "headers", "max_ts", "min_ts", "payloads", "raw_size", "receipts", "records")

    def __init__(self) -> None:
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

    def block(self) -> bytes:
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
