"""Encoding one segment file, header to seal, into an output: pure format, no file policy.

As MCAP's `Writer(output)` only does start, add, finish, `SegmentEncoder` turns records into the bytes of
docs/FORMAT.md and hands them to an `Output` in order: `start` the header, `add` a batch of records as a frame
descriptor and its data frame (or `add_frame` a frame copied from another file, as recovery does), `finish` the
footer index and the seek table. It keeps the frame index it needs for the seal. Naming, rotation, fsync, the
writer thread and backpressure are the writer's (writer.py); recovery and the reader's seal check use the same
seek-table layout (`seek_entries`).

`RecordBatch` accumulates one data frame's records on the caller's thread. `append` runs for every WebSocket frame
the recorder receives, so it only packs a 17-byte header and keeps a reference to the payload; joining and
compressing happen when the batch is added, on the writer thread (zstandard releases the GIL while it compresses).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import zstandard

from recorder.model.record import BLOCK_COUNT, RECORD_HEADER, RecordKind
from recorder.model.settings import DEFAULTS
from recorder.segment.format import (
    DESCRIPTOR_FRAME_SIZE,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    XXH64_EMPTY_LOW32,
    FrameInfo,
    SeekEntry,
    crc32,
    encode_descriptor,
    encode_header,
    encode_index,
    encode_receipt_columns,
    encode_seek_table,
    pack_headers,
    zstd_content_checksum,
)

FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
RECEIPT_TS = struct.Struct("<q")  # the ts_ns at the start of a packed record header
_KIND_AT = 12  # offset of the kind byte in a packed record header
_FAR_RAW = 24  # a far receipt's bytes in the receipt columns
_NEAR_RAW = 6  # about what a near receipt takes in the columns; only steers when the batch is cut


class RecordBatch:
    """The records of one future data frame, in arrival order."""

    __slots__ = ("far", "first_ts", "headers", "max_ts", "min_ts", "near", "payloads", "raw_size", "records",
                 "serial")
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

    def append_near_receipt(self, ts_ns: int, conn: int, orig_index: int, lag_ns: int) -> None:
        """A later copy of the record at `orig_index` of this batch: stored as columns at the end of the block."""
        indexes, lags, conns = self.near
        indexes.append(orig_index)
        lags.append(lag_ns)
        conns.append(conn)
        self._receipt(ts_ns, _NEAR_RAW)

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
        self.raw_size += size
        if ts_ns > self.max_ts:
            self.max_ts = ts_ns
        elif ts_ns < self.min_ts:
            self.min_ts = ts_ns

    def count(self, kind: int) -> int:
        """Records of `kind` stored so far (counted from the packed headers, once a frame, not per append)."""
        return self.headers[_KIND_AT::RECORD_HEADER.size].count(kind)

    @property
    def receipts(self) -> int:
        """Later copies in this batch: single receipt records and those in the receipt columns."""
        return self.count(RecordKind.RECEIPT) + len(self.near[0]) + len(self.far[0])

    def block(self) -> bytes:
        """The data block; the receipt columns become its last record."""
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
            self.append(ts, 0, RecordKind.RECEIPT_COLUMNS, payload)
            self.raw_size = raw_size
        return b"".join((BLOCK_COUNT.pack(self.records), self.headers, *self.payloads))


class Output(Protocol):
    """Where an encoder's bytes go, in order. A write that raises wrote nothing the encoder counts."""

    def write(self, data: bytes, /) -> None: ...


def new_compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def seek_entries(header_size: int, frames: Sequence[FrameInfo], index_size: int) -> list[SeekEntry]:
    """The seek table of a file with this header, these frames and a footer index of this size (docs/FORMAT.md):
    every skippable frame is an entry of its own, so zstd's seekable format walks the whole file."""
    out = [SeekEntry(header_size, 0, XXH64_EMPTY_LOW32)]
    for f in frames:
        out.append(SeekEntry(DESCRIPTOR_FRAME_SIZE, 0, XXH64_EMPTY_LOW32))
        out.append(SeekEntry(f.compressed_size, f.raw_size, f.checksum))
    out.append(SeekEntry(index_size, 0, XXH64_EMPTY_LOW32))
    return out


class SegmentEncoder:
    """One segment file's bytes, in order, into `output` (see the module docstring)."""

    def __init__(self, output: Output, level: int = DEFAULTS.storage.level) -> None:
        self.output = output  # the writer may hand it another file descriptor to seal after a failure
        self.level = level
        self.frames: list[FrameInfo] = []
        self.offset = 0
        self.header_size = 0
        self.records = 0
        self.receipts: int | None = 0  # None once a copied frame's receipts are unknown (recovery)
        self.raw_bytes = 0
        self._cctx: zstandard.ZstdCompressor | None = None

    def start(self, meta: dict[str, Any]) -> None:
        """The header, with the format's version in its metadata."""
        self.start_with(encode_header({"format": FORMAT_VERSION, **meta}))

    def start_with(self, header: bytes) -> None:
        """A header copied as it is (recovery keeps the crashed file's)."""
        self._write(header)
        self.header_size = len(header)

    def add(self, batch: RecordBatch) -> FrameInfo:
        """A batch as one data frame, after its descriptor."""
        if self._cctx is None:
            self._cctx = new_compressor(self.level)
        receipts = batch.receipts
        block = batch.block()
        frame = self._cctx.compress(block)
        info = FrameInfo(
            seq=len(self.frames),
            compressed_size=len(frame),
            raw_size=len(block),
            records=batch.records,
            events=batch.count(RecordKind.EVENT),
            min_ts=batch.min_ts,
            max_ts=batch.max_ts,
            frame_crc=crc32(frame),
            checksum=zstd_content_checksum(frame),
            offset=self.offset,
        )
        self._write(encode_descriptor(info) + frame)
        self._added(info, receipts)
        return info

    def add_frame(self, info: FrameInfo, chunk: bytes) -> FrameInfo:
        """A verified frame of another file (its descriptor and data frame, `chunk`), copied as it is."""
        moved = replace(info, offset=self.offset)
        self._write(chunk)
        self._added(moved, None)
        return moved

    def finish(self, seal: dict[str, Any]) -> None:
        """The footer index (with `seal`, and the records and receipts counted) and the seek table."""
        counted = {"records": self.records} | ({"receipts": self.receipts} if self.receipts is not None else {})
        index = encode_index(self.frames, {**seal, **counted})
        table = encode_seek_table(seek_entries(self.header_size, self.frames, len(index)))
        self._write(index + table)

    def _added(self, info: FrameInfo, receipts: int | None) -> None:
        self.frames.append(info)
        self.records += info.records
        self.receipts = None if receipts is None or self.receipts is None else self.receipts + receipts
        self.raw_bytes += info.raw_size

    def _write(self, data: bytes) -> None:
        self.output.write(data)
        self.offset += len(data)
