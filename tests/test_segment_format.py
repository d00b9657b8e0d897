"""Pure encoders/decoders of the segment format."""

from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.model.record import RECEIPT_BLOCK_KINDS, RECORD_HEADER, RecordKind, encode_receipt
from recorder.segment import format as fmt
from recorder.segment.encoder import RecordBatch, SegmentEncoder
from recorder.segment.naming import parse_segment_name, segment_name

payloads = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=512).map(lambda s: s.encode()),
    st.just(b""),
    st.just(b"\xff\xfe\x00 not utf-8 \x80"),
)
records = st.lists(
    st.tuples(st.integers(-(1 << 62), 1 << 62), st.integers(0, (1 << 32) - 1), st.sampled_from([1, 2, 3]), payloads),
    max_size=60,
)


def test_header_round_trip_keeps_metadata():
    meta = {"shard": 3, "contracts": ["1001", "سکه-آزادی 1404/08"], "endpoint": "name"}
    frame = fmt.encode_header(meta)
    magic, size = fmt.SKIP_HEAD.unpack_from(frame)
    assert magic == fmt.SKIPPABLE_MAGIC_HEADER
    header = fmt.decode_header_content(frame[8:8 + size])
    assert header.meta == meta
    assert (header.major, header.minor) == (fmt.FORMAT_MAJOR, fmt.FORMAT_MINOR)


def test_header_from_a_newer_major_version_is_refused_clearly():
    body = fmt.HEADER_FIXED.pack(fmt.TAG_HEADER, fmt.FORMAT_MAJOR + 1, 0, 2) + b"{}"
    content = body + fmt.U32.pack(fmt.crc32(body))
    with pytest.raises(fmt.NewerFormatError, match="upgrade ime-recorder"):
        fmt.decode_header_content(content)


def test_newer_minor_version_is_read():
    body = fmt.HEADER_FIXED.pack(fmt.TAG_HEADER, fmt.FORMAT_MAJOR, fmt.FORMAT_MINOR + 7, 2) + b"{}"
    header = fmt.decode_header_content(body + fmt.U32.pack(fmt.crc32(body)))
    assert header.minor == fmt.FORMAT_MINOR + 7


@pytest.mark.parametrize("position", range(0, 30))
def test_header_detects_every_flipped_byte(position):
    frame = bytearray(fmt.encode_header({"a": 1}))
    content = frame[8:]
    content[position % len(content)] ^= 0x10
    with pytest.raises(fmt.SegmentFormatError):
        fmt.decode_header_content(bytes(content))


def test_descriptor_round_trip_and_crc():
    info = fmt.FrameInfo(7, 1234, 99999, 42, 3, -5, 10**18, 0xDEADBEEF, 0x12345678, offset=4096)
    frame = fmt.encode_descriptor(info)
    assert len(frame) == fmt.DESCRIPTOR_FRAME_SIZE
    assert fmt.decode_descriptor_content(frame[8:], 4096) == info
    broken = bytearray(frame[8:])
    broken[10] ^= 1
    with pytest.raises(fmt.SegmentFormatError, match="checksum"):
        fmt.decode_descriptor_content(bytes(broken), 4096)


def test_index_round_trip():
    frames = [fmt.FrameInfo(i, 100 + i, 1000 + i, i, 0, i, i + 5, i * 3, i * 7, offset=64 + i * 200) for i in range(5)]
    frame = fmt.encode_index(frames, {"reason": "closed", "records": 10})
    index = fmt.decode_index_content(frame[8:])
    assert list(index.frames) == frames
    assert index.seal == {"reason": "closed", "records": 10}


def test_seek_table_uses_the_zstd_seekable_layout():
    entries = [fmt.SeekEntry(10, 0, fmt.XXH64_EMPTY_LOW32), fmt.SeekEntry(300, 1000, 0xABCDEF01)]
    frame = fmt.encode_seek_table(entries)
    magic, size = struct.unpack_from("<II", frame)
    assert magic == 0x184D2A5E
    assert size == len(frame) - 8 == 2 * 12 + 9
    count, descriptor, seekable_magic = struct.unpack_from("<IBI", frame, len(frame) - 9)
    assert (count, descriptor, seekable_magic) == (2, 0x80, 0x8F92EAB1)
    assert fmt.decode_seek_table(frame) == entries


class Collected(bytearray):
    def write(self, data: bytes) -> None:
        self += data


def encode_frame(batch: RecordBatch, level: int) -> tuple[fmt.FrameInfo, bytes]:
    """The descriptor and data frame an encoder writes for `batch`, as the first frame after no header."""
    out = Collected()
    info = SegmentEncoder(out, level).add(batch)
    return info, bytes(out)


@settings(max_examples=60, deadline=None)
@given(records)
def test_batch_round_trips_through_a_checksummed_zstd_frame(recs):
    batch = RecordBatch()
    for ts, conn, kind, payload in recs:
        batch.append(ts, conn, kind, payload)
    info, data = encode_frame(batch, level=3)
    frame = data[fmt.DESCRIPTOR_FRAME_SIZE:]
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum
    assert params.content_size == info.raw_size
    block = zstandard.ZstdDecompressor().decompress(frame)
    assert fmt.decode_block(block, info.records) == [tuple(r) for r in recs]
    assert info.records == len(recs)
    assert info.events == sum(1 for r in recs if r[2] == RecordKind.EVENT)
    if recs:
        assert info.min_ts == min(r[0] for r in recs)
        assert info.max_ts == max(r[0] for r in recs)
    assert info.checksum == fmt.zstd_content_checksum(frame)


def test_multi_megabyte_payload_round_trips():
    big = bytes(range(256)) * (3 * 4096 + 17)
    batch = RecordBatch()
    batch.append(1, 2, RecordKind.BINARY, big)
    batch.append(2, 2, RecordKind.TEXT, b"")
    _, data = encode_frame(batch, level=1)
    block = zstandard.ZstdDecompressor().decompress(data[fmt.DESCRIPTOR_FRAME_SIZE:])
    assert fmt.decode_block(block, 2) == [(1, 2, 2, big), (2, 2, 1, b"")]


def test_block_with_inconsistent_lengths_is_rejected():
    batch = RecordBatch()
    batch.append(1, 1, 1, b"abc")
    block = bytearray(batch.block())
    block[-1:] = b""  # payload shorter than its header says
    with pytest.raises(fmt.SegmentFormatError):
        fmt.decode_block(bytes(block), 1)


def test_names_sort_by_time_and_carry_the_shard():
    a = segment_name("ime", 2, 1_732_449_000_000_000_000)
    b = segment_name("ime", 2, 1_732_449_000_001_000_000)
    c = segment_name("ime", 2, 1_732_449_001_000_000_000)
    assert a == "ime-s02-20241124T115000.000Z.zst"
    assert sorted([c, b, a]) == [a, b, c]
    assert parse_segment_name(a) == ("ime", 2, "20241124T115000.000")
    assert parse_segment_name(a + ".open") == ("ime", 2, "20241124T115000.000")
    assert parse_segment_name("notes.txt") is None


# --- the C split (recorder/segment/_block.c) against the reference (_split_block) --------------------------------

needs_c_split = pytest.mark.skipif(fmt._block is None, reason="recorder.segment._block is not built (no C compiler)")


def _block_of(recs) -> bytes:
    batch = RecordBatch()
    for ts, conn, kind, payload in recs:
        batch.append(ts, conn, kind, payload)
    return batch.block()


class _Numbering(dict):
    """Output ids handed out on first sight, like the merge's."""

    def __missing__(self, conn):
        new = self[conn] = 1000 + len(self)
        return new


def c_split(block: bytes, expected: int, conns=None):
    return fmt._block.split(block, expected, conns, fmt._DEFER_TO_PYTHON)


@needs_c_split
@settings(max_examples=150, deadline=None)
@given(records)
def test_the_c_split_reads_every_valid_block_as_the_reference_does(recs):
    block = _block_of(recs)
    expected = fmt._split_block(block, len(recs))
    assert c_split(block, len(recs)) == expected == [tuple(r) for r in recs]
    numbering = _Numbering()
    assert c_split(block, len(recs), numbering) == [(ts, numbering[c], k, p) for ts, c, k, p in expected]
    assert fmt.decode_block(block, len(recs), {c: c + 1 for c in numbering}) == [
        (ts, c + 1, k, p) for ts, c, k, p in expected]


@needs_c_split
@settings(max_examples=300, deadline=None)
@given(recs=records.filter(bool), data=st.data())
def test_the_c_split_refuses_what_the_reference_refuses_and_agrees_on_the_rest(recs, data):
    block = bytearray(_block_of(recs))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if how == "flip" and block:
            at = data.draw(st.integers(0, min(len(block) - 1, 4 + 17 * len(recs) + 8)))  # mostly the headers
            block[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del block[data.draw(st.integers(0, len(block))):]
        else:
            block += data.draw(st.binary(min_size=1, max_size=8))
    expected_records = data.draw(st.sampled_from([len(recs), len(recs) + 1]))
    got = c_split(bytes(block), expected_records)
    try:
        expected = fmt._split_block(bytes(block), expected_records)
    except fmt.SegmentFormatError:
        assert got is None
    else:
        if not RECEIPT_BLOCK_KINDS.isdisjoint(r[2] for r in expected):
            assert got is None  # the receipt blocks are expanded in Python
        else:
            assert got == expected


@needs_c_split
def test_receipt_blocks_are_left_to_python_and_conns_apply_after_their_expansion():
    batch = RecordBatch()
    batch.append(100, 1, RecordKind.TEXT, b"m")
    batch.append_near_receipt(130, 2, 0, 30)
    block = batch.block()
    assert c_split(block, batch.records) is None
    assert fmt.decode_block(block, batch.records) == [(100, 1, 1, b"m"), (130, 2, 4, encode_receipt(1, 30))]
    # The receipt's own connection is renumbered; the original's, inside its payload, stays as stored (the merge
    # re-points receipts itself).
    assert fmt.decode_block(block, batch.records, {1: 11, 2: 12}) == [
        (100, 11, 1, b"m"), (130, 12, 4, encode_receipt(1, 30))]


@needs_c_split
@settings(max_examples=100, deadline=None)
@given(records)
def test_the_c_header_packing_is_struct_packing(recs):
    cols = [list(c) for c in zip(*recs, strict=True)] if recs else [[], [], [], []]
    lengths = [len(p) for p in cols[3]]
    expected = b"".join(map(RECORD_HEADER.pack, cols[0], cols[1], cols[2], lengths))
    assert fmt._block.headers(cols[0], cols[1], cols[2], lengths) == expected
    assert fmt.pack_headers(cols[0], cols[1], cols[2], lengths) == expected


@pytest.mark.parametrize(("column", "value"), [(0, 1 << 63), (0, -(1 << 63) - 1), (1, 1 << 32), (1, -1),
                                               (2, 256), (3, 1 << 32), (2, 1.0)])
def test_a_header_value_out_of_range_is_refused_as_struct_refuses_it(column, value):
    cols = [[1, 2], [3, 4], [1, 1], [5, 6]]
    cols[column][1] = value
    if fmt._block is not None:
        assert fmt._block.headers(*cols) is None  # left to struct, which says what is wrong
    with pytest.raises(struct.error):
        fmt.pack_headers(*cols)
