"""The segment file format, version 1: byte layouts and their pure encoders/decoders.

docs/FORMAT.md is the normative description; this module is its executable twin. Nothing here does I/O.

File layout (all integers little-endian):

    Header            skippable frame 0x184D2A50
    ( Descriptor      skippable frame 0x184D2A51   -- says how big the next data frame is
      DataFrame )*    standard zstd frame, content size + content checksum
    FooterIndex       skippable frame 0x184D2A52   -- only in sealed files
    SeekTable         skippable frame 0x184D2A5E   -- zstd seekable format, only in sealed files

Each descriptor precedes its data frame so that a reader can hop over an unsealed file without
decompressing anything, and so that a truncated data frame is recognised by its size alone.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from operator import and_, itemgetter, sub
from typing import Any

import orjson

from recorder import native
from recorder.model.record import (
    BLOCK_COUNT,
    RECEIPT_BLOCK_KINDS,
    RECEIPT_BODY,
    RECORD_HEADER,
    RecordKind,
    Row,
)
from recorder.segment.ordered import merged

FORMAT_MAJOR = 1
FORMAT_MINOR = 1  # 1.1: receipts (record kind 4)

ZSTD_FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC_HEADER = 0x184D2A50
SKIPPABLE_MAGIC_DESCRIPTOR = 0x184D2A51
SKIPPABLE_MAGIC_INDEX = 0x184D2A52
SKIPPABLE_MAGIC_SEEK_TABLE = 0x184D2A5E
SKIPPABLE_MAGIC_MIN = 0x184D2A50
SKIPPABLE_MAGIC_MAX = 0x184D2A5F
SEEKABLE_MAGIC = 0x8F92EAB1
SEEK_TABLE_CHECKSUM_FLAG = 0x80
# XXH64 of zero bytes, low 32 bits: the seek-table checksum of a frame that decompresses to nothing.
XXH64_EMPTY_LOW32 = 0x51D8E999
SEEKABLE_MAX_FRAMES = 0x8000000

TAG_HEADER = b"IMEH"
TAG_DESCRIPTOR = b"IMED"
TAG_INDEX = b"IMEI"

SKIP_HEAD = struct.Struct("<II")  # magic, content size
U32 = struct.Struct("<I")


# Descriptor body (after the 4-byte tag, before the CRC).
DESCRIPTOR_BODY = struct.Struct("<IIIIIqqII")
DESCRIPTOR_CONTENT_SIZE = 4 + DESCRIPTOR_BODY.size + 4
DESCRIPTOR_FRAME_SIZE = SKIP_HEAD.size + DESCRIPTOR_CONTENT_SIZE

SEEK_ENTRY = struct.Struct("<III")
SEEK_FOOTER = struct.Struct("<IBI")
HEADER_FIXED = struct.Struct("<4sHHI")
INDEX_FIXED = struct.Struct("<4sI")
INDEX_ENTRY = struct.Struct("<Q")


class SegmentFormatError(Exception):
    """The bytes are not a valid segment (or not this part of one)."""


class TruncatedHeaderError(SegmentFormatError):
    """The file ends inside its header: it was cut before anything was recorded in it."""


class NewerFormatError(SegmentFormatError):
    """The file was written by a newer major format version this reader cannot read."""


def crc32(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def skippable(magic: int, content: bytes) -> bytes:
    return SKIP_HEAD.pack(magic, len(content)) + content


# --- header -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SegmentHeader:
    major: int
    minor: int
    meta: dict[str, Any]


def encode_header(meta: dict[str, Any]) -> bytes:
    meta_bytes = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)
    body = HEADER_FIXED.pack(TAG_HEADER, FORMAT_MAJOR, FORMAT_MINOR, len(meta_bytes)) + meta_bytes
    return skippable(SKIPPABLE_MAGIC_HEADER, body + U32.pack(crc32(body)))


def decode_header_content(content: bytes) -> SegmentHeader:
    if len(content) < HEADER_FIXED.size + 4:
        raise SegmentFormatError("header is too short")
    tag, major, minor, meta_len = HEADER_FIXED.unpack_from(content)
    if tag != TAG_HEADER:
        raise SegmentFormatError("header tag is not IMEH")
    if major > FORMAT_MAJOR:
        raise NewerFormatError(
            f"written by format version {major}.{minor}; this reader understands {FORMAT_MAJOR}.x "
            "— upgrade ime-recorder"
        )
    end = HEADER_FIXED.size + meta_len
    if end + 4 != len(content):
        raise SegmentFormatError("header length fields disagree")
    (stored,) = U32.unpack_from(content, end)
    if crc32(content[:end]) != stored:
        raise SegmentFormatError("header checksum mismatch")
    try:
        meta = orjson.loads(content[HEADER_FIXED.size:end])
    except orjson.JSONDecodeError as exc:
        raise SegmentFormatError(f"header metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SegmentFormatError("header metadata is not a JSON object")
    return SegmentHeader(major, minor, meta)


# --- frame descriptor ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What a descriptor says about the data frame that follows it."""

    seq: int
    compressed_size: int
    raw_size: int
    records: int
    events: int
    min_ts: int
    max_ts: int
    frame_crc: int
    checksum: int  # the zstd content checksum (low 32 bits of XXH64 of the block), for the seek table
    offset: int = -1  # file offset of the descriptor; -1 while unknown

    @property
    def data_offset(self) -> int:
        return self.offset + DESCRIPTOR_FRAME_SIZE

    @property
    def end_offset(self) -> int:
        return self.data_offset + self.compressed_size


def _descriptor_body(f: FrameInfo) -> bytes:
    """A descriptor's fields, as its frame and the footer index both hold them."""
    return DESCRIPTOR_BODY.pack(f.seq, f.compressed_size, f.raw_size, f.records, f.events, f.min_ts, f.max_ts,
                                f.frame_crc, f.checksum)


def encode_descriptor(info: FrameInfo) -> bytes:
    body = TAG_DESCRIPTOR + _descriptor_body(info)
    return skippable(SKIPPABLE_MAGIC_DESCRIPTOR, body + U32.pack(crc32(body)))


def decode_descriptor_content(content: bytes, offset: int) -> FrameInfo:
    if len(content) != DESCRIPTOR_CONTENT_SIZE:
        raise SegmentFormatError(f"frame descriptor has {len(content)} bytes, expected {DESCRIPTOR_CONTENT_SIZE}")
    if content[:4] != TAG_DESCRIPTOR:
        raise SegmentFormatError("frame descriptor tag is not IMED")
    (stored,) = U32.unpack_from(content, DESCRIPTOR_CONTENT_SIZE - 4)
    if crc32(content[:-4]) != stored:
        raise SegmentFormatError("frame descriptor checksum mismatch")
    return FrameInfo(*DESCRIPTOR_BODY.unpack_from(content, 4), offset=offset)


# --- data block (decompressed content of a data frame) ----------------------------------------

def block_payload_base(records: int) -> int:
    return BLOCK_COUNT.size + RECORD_HEADER.size * records


def decode_block(block: bytes, expected_records: int, conns: Mapping[int, int] | None = None,
                 expand: bool = True) -> list[Row]:
    """Split a verified block into (ts_ns, conn, kind, payload) tuples; raise if it is inconsistent.

    A receipt block (kind 5 or 6) is expanded into one receipt record (kind 4) per later copy, placed in
    receive-time order: readers only ever see receipts, whichever way they were stored. With `conns`, each
    record's connection id is conns[conn] (after the expansion, which reads the ids as stored).

    `expand=False` gives the records as stored, the receipt block as one record: record k of the result is then
    the block's record number k, the numbering every reader that names records shares (docs/FORMAT.md,
    "Record numbers"; the export's `record` column).
    """
    if _block is not None:
        # The C split takes every consistent block without receipt blocks; anything else comes back as None.
        records = _block.split(block, expected_records, conns, _DEFER_TO_PYTHON if expand else _DEFER_NOTHING)
        if records is not None:
            return records
    records = _split_block(block, expected_records)
    if expand and not RECEIPT_BLOCK_KINDS.isdisjoint([r[2] for r in records]):
        records = expand_receipt_blocks(records)
    if conns is not None:
        records = [(ts, conns[conn], kind, payload) for ts, conn, kind, payload in records]
    return records


# recorder/segment/_block.c, built at install when a compiler is there (recorder/native.py).
_block = native.module("block") if native.on("block") else None
# Kinds the C split leaves to Python, one flag per kind (the receipt blocks, which need expanding).
_DEFER_TO_PYTHON = bytes(kind in RECEIPT_BLOCK_KINDS for kind in range(256))
_DEFER_NOTHING = bytes(256)


def pack_headers(stamps: Sequence[int], conns: Sequence[int], kinds: Sequence[int], lengths: Sequence[int]) -> bytes:
    """The records' headers, exactly RECORD_HEADER.pack of each in turn: in C when it is built (the merge writes
    hundreds of thousands of records a second); struct packs, and raises, whatever the C side refuses."""
    if _block is not None:
        packed = _block.headers(stamps, conns, kinds, lengths)
        if packed is not None:
            return packed
    return b"".join(map(RECORD_HEADER.pack, stamps, conns, kinds, lengths))


def _split_block(block: bytes, expected_records: int) -> list[Row]:
    """The reference split (the C one must agree with it: tests/test_segment_format.py)."""
    if len(block) < BLOCK_COUNT.size:
        raise SegmentFormatError("data block shorter than its record count")
    (count,) = BLOCK_COUNT.unpack_from(block)
    if count != expected_records:
        raise SegmentFormatError(f"data block holds {count} records, descriptor says {expected_records}")
    base = block_payload_base(count)
    if base > len(block):
        raise SegmentFormatError("data block shorter than its record headers")
    out: list[Row] = []
    append = out.append
    pos = base
    for ts, conn, kind, length in RECORD_HEADER.iter_unpack(memoryview(block)[BLOCK_COUNT.size:base]):
        end = pos + length
        append((ts, conn, kind, block[pos:end]))
        pos = end
    if pos != len(block):
        raise SegmentFormatError("record lengths do not add up to the data block size")
    return out


# --- footer index -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FooterIndex:
    frames: tuple[FrameInfo, ...]
    seal: dict[str, Any]


def encode_index(frames: list[FrameInfo], seal: dict[str, Any]) -> bytes:
    parts = [INDEX_FIXED.pack(TAG_INDEX, len(frames))]
    for f in frames:
        parts.append(INDEX_ENTRY.pack(f.offset))
        parts.append(_descriptor_body(f))
    seal_bytes = orjson.dumps(seal, option=orjson.OPT_SORT_KEYS)
    parts.append(U32.pack(len(seal_bytes)))
    parts.append(seal_bytes)
    body = b"".join(parts)
    return skippable(SKIPPABLE_MAGIC_INDEX, body + U32.pack(crc32(body)))


def decode_index_content(content: bytes) -> FooterIndex:
    if len(content) < INDEX_FIXED.size + 8:
        raise SegmentFormatError("footer index is too short")
    (stored,) = U32.unpack_from(content, len(content) - 4)
    if crc32(content[:-4]) != stored:
        raise SegmentFormatError("footer index checksum mismatch")
    tag, count = INDEX_FIXED.unpack_from(content)
    if tag != TAG_INDEX:
        raise SegmentFormatError("footer index tag is not IMEI")
    entry = INDEX_ENTRY.size + DESCRIPTOR_BODY.size
    pos = INDEX_FIXED.size
    if pos + count * entry + 8 > len(content):
        raise SegmentFormatError("footer index is shorter than its frame count")
    frames = []
    for _ in range(count):
        (offset,) = INDEX_ENTRY.unpack_from(content, pos)
        fields = DESCRIPTOR_BODY.unpack_from(content, pos + INDEX_ENTRY.size)
        frames.append(FrameInfo(*fields, offset=offset))
        pos += entry
    (seal_len,) = U32.unpack_from(content, pos)
    pos += 4
    if pos + seal_len + 4 != len(content):
        raise SegmentFormatError("footer index length fields disagree")
    try:
        seal = orjson.loads(content[pos:pos + seal_len])
    except orjson.JSONDecodeError as exc:
        raise SegmentFormatError(f"footer seal metadata is not JSON: {exc}") from None
    return FooterIndex(tuple(frames), seal if isinstance(seal, dict) else {})


# --- seek table (zstd seekable format) ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SeekEntry:
    compressed_size: int
    decompressed_size: int
    checksum: int


def encode_seek_table(entries: list[SeekEntry]) -> bytes:
    if len(entries) > SEEKABLE_MAX_FRAMES:
        raise SegmentFormatError("too many frames for one seek table")
    body = b"".join(SEEK_ENTRY.pack(e.compressed_size, e.decompressed_size, e.checksum) for e in entries)
    footer = SEEK_FOOTER.pack(len(entries), SEEK_TABLE_CHECKSUM_FLAG, SEEKABLE_MAGIC)
    return skippable(SKIPPABLE_MAGIC_SEEK_TABLE, body + footer)


def decode_seek_footer(tail: bytes) -> int:
    """Number of frames, from the last 9 bytes of a sealed file."""
    frames, descriptor, magic = SEEK_FOOTER.unpack(tail)
    if magic != SEEKABLE_MAGIC:
        raise SegmentFormatError("no seek table at the end of the file (not sealed)")
    if descriptor != SEEK_TABLE_CHECKSUM_FLAG:
        raise SegmentFormatError(f"seek table descriptor {descriptor:#x} is not supported")
    if frames > SEEKABLE_MAX_FRAMES:
        raise SegmentFormatError("seek table frame count is out of range")
    return frames


def seek_table_size(frames: int) -> int:
    return SKIP_HEAD.size + frames * SEEK_ENTRY.size + SEEK_FOOTER.size


def decode_seek_table(frame: bytes) -> list[SeekEntry]:
    magic, size = SKIP_HEAD.unpack_from(frame)
    frames = decode_seek_footer(frame[-SEEK_FOOTER.size:])
    if magic != SKIPPABLE_MAGIC_SEEK_TABLE or size != len(frame) - SKIP_HEAD.size or (
        size != frames * SEEK_ENTRY.size + SEEK_FOOTER.size
    ):
        raise SegmentFormatError("seek table frame header is inconsistent")
    return [SeekEntry(*SEEK_ENTRY.unpack_from(frame, SKIP_HEAD.size + i * SEEK_ENTRY.size))
            for i in range(frames)]


def zstd_content_checksum(frame: bytes | bytearray | memoryview) -> int:
    """The content checksum a zstd frame carries in its last 4 bytes (low 32 bits of XXH64)."""
    (value,) = U32.unpack_from(frame, len(frame) - 4)
    return value


# --- receipt blocks ------------------------------------------------------------------------------
# A redundant recorder writes one receipt per later copy of a message. Stored one record each, a receipt
# costs ~9 compressed bytes (two random-looking timestamps: its own and its original's), a quarter of the
# message it repeats. So the receipts of a data block are stored together, as one record of columns: a copy
# whose original is in the same block points at it by its index (only the lag is left to carry information);
# one whose original is in an earlier block (its lag spans a frame cut) carries its own time and the original's
# connection. Kind 5 (format 1.1 as first written) held only the first sort, as plain columns; kind 6 holds both,
# delta-coded and byte-shuffled (the high bytes of lags and the repeating connection ids become long runs of
# equal bytes for zstd): on the redundancy benchmark's recordings, 4 % fewer bytes per frame than kind 5 with the
# same receipts, and far fewer than single receipt records for the copies that lag a frame cut (two copies on
# disk: 1.065x one copy, against 1.14x with kind 5).
# Columns are packed and unpacked by `array`, `accumulate` and slicing in C: the writer thread encodes a block
# while holding the GIL, and a Python loop over thousands of receipts there stalled the receive thread.

_TS = itemgetter(0)
_U32 = "I" if array("I").itemsize == 4 else "L"
_U32_MASK = (1 << 32) - 1
_U64_MASK = (1 << 64) - 1

NearReceipt = tuple[int, int, int]  # (original's index in the data block, lag ns ≥ 0, the copy's conn)
FarReceipt = tuple[int, int, int, int]  # (the copy's ts_ns, the copy's conn, the original's conn, lag ns ≥ 0)
NearColumns = tuple[Sequence[int], Sequence[int], Sequence[int]]
FarColumns = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]


def _shuffled(code: str, values: Iterable[int]) -> bytes:
    """A little-endian column, byte-shuffled: byte 0 of every value, then byte 1 of every value, ..."""
    column = array(code, values)
    if sys.byteorder != "little":
        column.byteswap()
    raw, width = column.tobytes(), column.itemsize
    return b"".join(raw[k::width] for k in range(width))


def _unshuffled(code: str, data: bytes | memoryview, count: int) -> array:
    width = array(code).itemsize
    raw = bytearray(width * count)
    for k in range(width):
        raw[k::width] = data[k * count:(k + 1) * count]
    column = array(code)
    column.frombytes(raw)
    if sys.byteorder != "little":
        column.byteswap()
    return column


def encode_receipt_columns(near: NearColumns, far: FarColumns) -> bytes:
    """A data block's receipts, each kind in arrival order, as one kind-6 payload (docs/FORMAT.md).

    Taken as columns (near: indexes, lags, conns; far: stamps, conns, orig conns, lags), the way the writer
    keeps them: a tuple per receipt held until its batch is cut survived into the garbage collector's oldest
    generation and made it run full collections, 10-15 ms stalls of the receive thread with two copies.
    Layout (little-endian; each column byte-shuffled): u32 n, u32 m; near: n × u32 index delta, n × u64 lag,
    n × u32 conn; far: m × u64 ts delta, m × u32 conn, m × u32 orig_conn, m × u64 lag. Deltas are from the
    previous entry of the same list (the first from 0), modulo 2^32 (index) or 2^64 (ts).
    """
    indexes, lags, conns = near
    stamps, far_conns, orig_conns, far_lags = far
    if not len(indexes) == len(lags) == len(conns) or not len(stamps) == len(far_conns) == len(orig_conns) == len(
            far_lags):
        raise ValueError("receipt columns of different lengths")
    return b"".join((
        struct.pack("<II", len(indexes), len(stamps)),
        _shuffled(_U32, map(and_, map(sub, indexes, (0, *indexes[:-1])), repeat(_U32_MASK))),
        _shuffled("Q", [max(x, 0) for x in lags]),
        _shuffled(_U32, conns),
        _shuffled("Q", map(and_, map(sub, stamps, (0, *stamps[:-1])), repeat(_U64_MASK))),
        _shuffled(_U32, far_conns),
        _shuffled(_U32, orig_conns),
        _shuffled("Q", [max(x, 0) for x in far_lags]),
    ))


def decode_receipt_columns(payload: bytes) -> tuple[list[NearReceipt], list[FarReceipt]]:
    if len(payload) < 8:
        raise SegmentFormatError("receipt columns are shorter than their counts")
    n, m = struct.unpack_from("<II", payload)
    if len(payload) != 8 + 16 * n + 24 * m:
        raise SegmentFormatError(f"receipt columns of {len(payload)} bytes cannot hold {n} + {m} receipts")
    view = memoryview(payload)
    at = 8
    columns = []
    for code, count in ((_U32, n), ("Q", n), (_U32, n), ("Q", m), (_U32, m), (_U32, m), ("Q", m)):
        size = array(code).itemsize * count
        columns.append(_unshuffled(code, view[at:at + size], count))
        at += size
    index_deltas, lags, conns, ts_deltas, far_conns, orig_conns, far_lags = columns
    indexes = map(and_, accumulate(index_deltas), repeat(_U32_MASK))
    stamps = map(_signed64, map(and_, accumulate(ts_deltas), repeat(_U64_MASK)))
    return (list(zip(indexes, lags, conns, strict=True)),
            list(zip(stamps, far_conns, orig_conns, far_lags, strict=True)))


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def receipts_in_block(kind: int, payload: bytes) -> int:
    """How many receipts a stored receipt block (kind 5 or 6) holds, from its counts alone."""
    if kind == RecordKind.RECEIPT_COLUMNS and len(payload) >= 8:
        n, m = struct.unpack_from("<II", payload)
        return n + m
    if kind == RecordKind.RECEIPT_BLOCK and len(payload) >= 4:
        return U32.unpack_from(payload)[0]
    return 0


def decode_receipt_block(payload: bytes) -> list[NearReceipt]:
    """A kind-5 payload (format 1.1 as first written): u32 n, n × u32 index, n × u64 lag_ns, n × u32 conn."""
    if len(payload) < 4:
        raise SegmentFormatError("receipt block is shorter than its count")
    (n,) = U32.unpack_from(payload)
    if len(payload) != 4 + 16 * n:
        raise SegmentFormatError(f"receipt block of {len(payload)} bytes cannot hold {n} receipts")
    indexes, lags, conns = array(_U32), array("Q"), array(_U32)
    indexes.frombytes(payload[4:4 + 4 * n])
    lags.frombytes(payload[4 + 4 * n:4 + 12 * n])
    conns.frombytes(payload[4 + 12 * n:])
    if sys.byteorder != "little":
        for part in (indexes, lags, conns):
            part.byteswap()
    return list(zip(indexes, lags, conns, strict=True))


# What a receipt cannot point at (an unknown kind, from a newer minor version, might be a message).
_NOT_ORIGINALS = frozenset((RecordKind.EVENT, RecordKind.RECEIPT, *RECEIPT_BLOCK_KINDS))


def expand_receipt_blocks(records: list[Row]) -> list[Row]:
    """Replace each receipt block by its receipts (kind 4, 12-byte payload), merged in by receive time."""
    kept: list[Row] = []
    receipts: list[Row] = []
    receipt = RecordKind.RECEIPT
    for ts, conn, kind, payload in records:
        if kind not in RECEIPT_BLOCK_KINDS:
            kept.append((ts, conn, kind, payload))
            continue
        if kind == RecordKind.RECEIPT_BLOCK:
            near, far = decode_receipt_block(payload), []
        else:
            near, far = decode_receipt_columns(payload)
        for index, lag, copy_conn in near:
            if not 0 <= index < len(records) or records[index][2] in _NOT_ORIGINALS:
                raise SegmentFormatError(f"receipt block points at record {index}, which is not a message")
            orig_ts, orig_conn = records[index][0], records[index][1]
            receipts.append((orig_ts + lag, copy_conn, receipt, RECEIPT_BODY.pack(orig_conn, lag)))
        receipts.extend((copy_ts, copy_conn, receipt, RECEIPT_BODY.pack(orig_conn, lag))
                        for copy_ts, copy_conn, orig_conn, lag in far)
    if not receipts:
        return kept
    # Receive-time order (stable: near receipts before far ones of equal time), merged with the records as the
    # readers merge shards: records before equal-time receipts, and each in its own order.
    receipts.sort(key=_TS)
    return list(chain.from_iterable(merged((iter((kept,)), iter((receipts,))))))
