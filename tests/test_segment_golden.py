"""The segment format checked against docs/FORMAT.md itself, not against recorder/segment/format.py.

Round trips through format.py cannot catch a layout change made on both sides at once (a swapped field, a CRC
over the wrong span, a wrong magic): writer and reader would agree with each other and disagree with the
document. Here a hand-built file, laid out field by field from the document, must be read by the project's
reader, and a file written by SegmentWriter must be parsed by the small parser below, which is written from
the document alone (it imports nothing from recorder.segment.format).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from recorder.segment.reader import open_segment
from recorder.segment.writer import SegmentWriter

# Numbers copied from docs/FORMAT.md, not imported.
HEADER_MAGIC, DESCRIPTOR_MAGIC, INDEX_MAGIC, SEEK_MAGIC = 0x184D2A50, 0x184D2A51, 0x184D2A52, 0x184D2A5E
ZSTD_MAGIC = 0xFD2FB528
SEEKABLE_MAGIC = 0x8F92EAB1
EMPTY_CHECKSUM = 0x51D8E999
S = 1_000_000_000
T0 = 1_764_000_000 * S


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def skippable(magic: int, content: bytes) -> bytes:
    return struct.pack("<II", magic, len(content)) + content


def block(records: list[tuple[int, int, int, bytes]]) -> bytes:
    """u32 count, count × (i64 ts, u32 conn, u8 kind, u32 length), then the payloads in the same order."""
    heads = b"".join(struct.pack("<qIBI", ts, conn, kind, len(p)) for ts, conn, kind, p in records)
    return struct.pack("<I", len(records)) + heads + b"".join(p for *_, p in records)


def descriptor_fields(seq: int, frame: bytes, raw: bytes, records: list[tuple[int, int, int, bytes]]) -> bytes:
    """seq … checksum (44 bytes): the part a footer index entry repeats."""
    times = [r[0] for r in records]
    checksum = int.from_bytes(frame[-4:], "little")  # a zstd frame with Content_Checksum ends with it
    return struct.pack("<IIIIIqqII", seq, len(frame), len(raw), len(records), sum(r[2] == 3 for r in records),
                       min(times), max(times), crc(frame), checksum)


def hand_built_segment(meta: dict[str, object], frames: list[list[tuple[int, int, int, bytes]]],
                       seal: dict[str, object]) -> bytes:
    """A sealed segment written byte by byte from docs/FORMAT.md."""
    meta_json = json.dumps(meta).encode()
    head_content = b"IMEH" + struct.pack("<HHI", 1, 0, len(meta_json)) + meta_json
    out = bytearray(skippable(HEADER_MAGIC, head_content + struct.pack("<I", crc(head_content))))
    seek: list[tuple[int, int, int]] = [(len(out), 0, EMPTY_CHECKSUM)]
    index_entries = b""
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    for seq, records in enumerate(frames):
        raw = block(records)
        frame = cctx.compress(raw)
        fields = descriptor_fields(seq, frame, raw, records)
        body = b"IMED" + fields
        desc = skippable(DESCRIPTOR_MAGIC, body + struct.pack("<I", crc(body)))
        index_entries += struct.pack("<Q", len(out)) + fields
        out += desc + frame
        seek += [(len(desc), 0, EMPTY_CHECKSUM), (len(frame), len(raw), int.from_bytes(frame[-4:], "little"))]
    seal_json = json.dumps(seal).encode()
    index_content = b"IMEI" + struct.pack("<I", len(frames)) + index_entries + struct.pack("<I", len(seal_json)) \
        + seal_json
    index = skippable(INDEX_MAGIC, index_content + struct.pack("<I", crc(index_content)))
    out += index
    seek.append((len(index), 0, EMPTY_CHECKSUM))
    table = b"".join(struct.pack("<III", *e) for e in seek) + struct.pack("<IBI", len(seek), 0x80, SEEKABLE_MAGIC)
    out += skippable(SEEK_MAGIC, table)
    return bytes(out)


@dataclass
class Parsed:
    meta: dict[str, object]
    records: list[tuple[int, int, int, bytes]]
    seal: dict[str, object] | None
    frames: int
    blocks: bytes  # the data blocks, concatenated: what `zstd -dc` prints


def parse(data: bytes) -> Parsed:
    """A minimal reader written from docs/FORMAT.md: every CRC, size, magic and the seek table are checked."""
    magic, size = struct.unpack_from("<II", data, 0)
    assert magic == HEADER_MAGIC
    content = data[8:8 + size]
    assert content[:4] == b"IMEH"
    major, _minor, meta_len = struct.unpack_from("<HHI", content, 4)
    assert major == 1
    assert 12 + meta_len + 4 == size
    assert struct.unpack_from("<I", content, 12 + meta_len)[0] == crc(content[:12 + meta_len])
    meta = json.loads(content[12:12 + meta_len])
    pos = 8 + size
    seek_sizes = [8 + size]
    descriptors: list[tuple[int, bytes]] = []
    records: list[tuple[int, int, int, bytes]] = []
    blocks = b""
    seal = None
    dctx = zstandard.ZstdDecompressor()
    while pos < len(data):
        magic, size = struct.unpack_from("<II", data, pos)
        content = data[pos + 8:pos + 8 + size]
        assert len(content) == size, "frame runs past the end of the file"
        if magic == DESCRIPTOR_MAGIC:
            assert size == 52 and content[:4] == b"IMED"
            assert struct.unpack_from("<I", content, 48)[0] == crc(content[:48])
            seq, csize, rsize, nrec, nevents, min_ts, max_ts, frame_crc, checksum = struct.unpack_from(
                "<IIIIIqqII", content, 4)
            assert seq == len(descriptors)
            frame = data[pos + 60:pos + 60 + csize]
            assert len(frame) == csize and struct.unpack_from("<I", frame)[0] == ZSTD_MAGIC
            assert crc(frame) == frame_crc
            assert int.from_bytes(frame[-4:], "little") == checksum
            raw = dctx.decompress(frame)
            assert len(raw) == rsize
            blocks += raw
            (count,) = struct.unpack_from("<I", raw, 0)
            assert count == nrec
            heads = [struct.unpack_from("<qIBI", raw, 4 + 17 * i) for i in range(count)]
            assert len(raw) == 4 + 17 * count + sum(h[3] for h in heads)
            at = 4 + 17 * count
            for ts, conn, kind, length in heads:
                records.append((ts, conn, kind, raw[at:at + length]))
                at += length
            assert sum(h[2] == 3 for h in heads) == nevents
            # Receive times in the block: its records', and those of the copies a receipt block stands for.
            frame_records = records[-count:]
            times = [h[0] for h in heads] + [t for r in frame_records for t in receipt_times(r, frame_records)]
            assert min(times) == min_ts and max(times) == max_ts
            descriptors.append((pos, content[4:48]))
            seek_sizes += [60, csize]
            pos += 60 + csize
        elif magic == INDEX_MAGIC:
            assert content[:4] == b"IMEI"
            assert struct.unpack_from("<I", content, size - 4)[0] == crc(content[:size - 4])
            (nframes,) = struct.unpack_from("<I", content, 4)
            entries = [(struct.unpack_from("<Q", content, 8 + 52 * i)[0], content[16 + 52 * i:8 + 52 * (i + 1)])
                       for i in range(nframes)]
            assert entries == descriptors, "the footer index repeats every descriptor and its offset"
            at = 8 + 52 * nframes
            (seal_len,) = struct.unpack_from("<I", content, at)
            assert at + 4 + seal_len + 4 == size
            seal = json.loads(content[at + 4:at + 4 + seal_len])
            seek_sizes.append(8 + size)
            pos += 8 + size
        elif magic == SEEK_MAGIC:
            assert seal is not None and pos + 8 + size == len(data), "the seek table comes last, after the index"
            nframes, flag, seekable = struct.unpack_from("<IBI", content, size - 9)
            assert (flag, seekable) == (0x80, SEEKABLE_MAGIC)
            entries = [struct.unpack_from("<III", content, 12 * i) for i in range(nframes)]
            assert size == 12 * nframes + 9
            assert [e[0] for e in entries] == seek_sizes, "one entry per frame before the seek table"
            assert sum(e[0] for e in entries) == pos
            pos += 8 + size
        else:
            raise AssertionError(f"unexpected frame magic {magic:#x} at {pos}")
    return Parsed(meta, records, seal, len(descriptors), blocks)


RECORDS = [
    [(T0, 1, 3, b'{"event":"opened","conn":1}'),
     (T0 + 5, 1, 1, b'{"channel":"IME Stream","contractId":"1001","data":{}}'),
     (T0 + 3, 2, 2, bytes(range(256)))],  # the wall clock stepped back: min/max, not first/last
    [(T0 + S, 1, 1, "{\"contractName\":\"سکه\"}".encode()), (T0 + S, 1, 1, b"")],
]


def test_the_document_parser_accepts_its_own_hand_built_file():
    data = hand_built_segment({"format": "1.0", "shard": 3}, RECORDS, {"reason": "closed", "records": 5})
    parsed = parse(data)
    assert parsed.records == [r for frame in RECORDS for r in frame]
    assert parsed.meta["shard"] == 3 and parsed.seal == {"reason": "closed", "records": 5} and parsed.frames == 2


def test_the_projects_reader_reads_a_file_laid_out_by_the_document(tmp_path):
    path = tmp_path / "ime-s03-20251124T160000.000Z.zst"
    path.write_bytes(hand_built_segment({"format": "1.0", "shard": 3}, RECORDS, {"reason": "closed",
                                                                                "records": 5}))
    seg = open_segment(path)
    assert seg.sealed and seg.verify() == []
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == [r for f in RECORDS for r in f]
    assert seg.shard == 3 and seg.records == 5 and seg.events == 1
    assert (seg.min_ts, seg.max_ts) == (T0, T0 + S)


def test_a_file_written_by_segment_writer_follows_the_document(tmp_path):
    flat = [r for frame in RECORDS for r in frame] * 40
    writer = SegmentWriter(tmp_path, shard=2, frame_bytes=4096, meta={"endpoint": "id", "contracts": ["1001"]})
    for ts, conn, kind, payload in flat:
        writer.append(ts, conn, kind, payload)
    (sealed,) = writer.close()
    data = sealed.path.read_bytes()
    parsed = parse(data)
    assert parsed.records == flat
    assert parsed.frames >= 2, "small frames: the index and seek table cover several"
    assert parsed.meta["shard"] == 2 and str(parsed.meta["format"]).startswith("1.") and parsed.meta["endpoint"] == "id"
    assert parsed.seal is not None and parsed.seal["reason"] == "closed" and parsed.seal["records"] == len(flat)
    if shutil.which("zstd"):  # "a standard zstd file": the reference decoder agrees, skippable frames and all
        out = subprocess.run(["zstd", "-dc", str(sealed.path)], capture_output=True, check=True).stdout
        assert out == parsed.blocks


def test_an_open_file_is_the_header_and_whole_descriptor_frame_pairs(tmp_path):
    writer = SegmentWriter(tmp_path, frame_bytes=4096)
    flat = [r for frame in RECORDS for r in frame] * 10
    for ts, conn, kind, payload in flat:
        writer.append(ts, conn, kind, payload)
    assert writer.flush(10)
    open_path = writer.current_path
    assert open_path is not None and open_path.name.endswith(".zst.open")
    data = Path(open_path).read_bytes()
    writer.close()
    parsed = parse(data)  # no index, no seek table: the parser walks descriptor → frame pairs to the end
    assert parsed.seal is None and parsed.records == flat


# --- receipts (format 1.1): kind 5 as first written, kind 6 since, both laid out from the document ---------------


def shuffled(values: list[int], width: int) -> bytes:
    """A little-endian column, byte-shuffled: byte 0 of every value, then byte 1 of every value, ..."""
    raw = [v.to_bytes(width, "little") for v in values]
    return b"".join(bytes(r[k] for r in raw) for k in range(width))


def unshuffled(data: bytes, count: int, width: int) -> list[int]:
    return [int.from_bytes(bytes(data[k * count + i] for k in range(width)), "little") for i in range(count)]


def receipt_columns(near: list[tuple[int, int, int]], far: list[tuple[int, int, int, int]]) -> bytes:
    """Kind 6: u32 n, u32 m; near: index delta (mod 2^32), lag, conn; far: ts delta (mod 2^64), conn, orig_conn, lag."""
    index_deltas = [(r[0] - (near[i - 1][0] if i else 0)) % 2**32 for i, r in enumerate(near)]
    ts_deltas = [(r[0] - (far[i - 1][0] if i else 0)) % 2**64 for i, r in enumerate(far)]
    return (struct.pack("<II", len(near), len(far)) + shuffled(index_deltas, 4) + shuffled([r[1] for r in near], 8)
            + shuffled([r[2] for r in near], 4) + shuffled(ts_deltas, 8) + shuffled([r[1] for r in far], 4)
            + shuffled([r[2] for r in far], 4) + shuffled([r[3] for r in far], 8))


def parse_receipt_columns(payload: bytes) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int, int]]]:
    n, m = struct.unpack_from("<II", payload)
    assert len(payload) == 8 + 16 * n + 24 * m
    cols, at = [], 8
    for count, width in ((n, 4), (n, 8), (n, 4), (m, 8), (m, 4), (m, 4), (m, 8)):
        cols.append(unshuffled(payload[at:at + count * width], count, width))
        at += count * width
    index, stamp, near, far = 0, 0, [], []
    for delta, lag, conn in zip(cols[0], cols[1], cols[2], strict=True):
        index = (index + delta) % 2**32
        near.append((index, lag, conn))
    for delta, conn, orig_conn, lag in zip(cols[3], cols[4], cols[5], cols[6], strict=True):
        stamp = (stamp + delta) % 2**64
        far.append((stamp - 2**64 if stamp >= 2**63 else stamp, conn, orig_conn, lag))
    return near, far


def receipt_times(record: tuple[int, int, int, bytes], block_records: list[tuple[int, int, int, bytes]]) -> list[int]:
    """The receive times of the copies a kind-5 or kind-6 record stands for (none for other kinds)."""
    _, _, kind, payload = record
    if kind == 5:
        (n,) = struct.unpack_from("<I", payload)
        indexes, lags = struct.unpack_from(f"<{n}I", payload, 4), struct.unpack_from(f"<{n}Q", payload, 4 + 4 * n)
        return [block_records[i][0] + lag for i, lag in zip(indexes, lags, strict=True)]
    if kind == 6:
        near, far = parse_receipt_columns(payload)
        return [block_records[i][0] + lag for i, lag, _ in near] + [r[0] for r in far]
    return []


def receipt(ts: int, conn: int, orig_conn: int, lag: int) -> tuple[int, int, int, bytes]:
    """Kind 4: ts_ns and conn of the copy; payload u32 orig_conn, u64 lag_ns."""
    return ts, conn, 4, struct.pack("<IQ", orig_conn, lag)


MESSAGES = [(T0 + 10, 1, 1, b'{"m":1}'), (T0 + 20, 1, 1, b'{"m":2}'), (T0 + 30, 1, 1, b'{"m":3}')]


def test_the_projects_reader_expands_receipt_blocks_of_both_kinds(tmp_path):
    """A kind-5 block (files written before kind 6) and a kind-6 block with near and far receipts, laid out from
    the document: the reader shows one kind-4 receipt per copy, merged into the records by receive time (a record
    before a receipt of equal time). Copy times stay within the frame's records' [min, max], as a writer's do."""
    kind5 = struct.pack("<I2I2Q2I", 2, 0, 1, 7, 5, 2, 2)  # copies of records 0 and 1 on conn 2
    later = [(T0 + S + r[0] - T0, *r[1:]) for r in MESSAGES]
    near = [(1, 5, 2), (0, 12, 3)]  # index, lag, conn: copies at S+25 and S+22 (arrival order is not time order)
    far = [(T0 + S + 25, 2, 1, 4_000), (T0 + S + 10, 3, 1, 70)]  # ts, conn, orig_conn, lag; the clock stepped back
    frames = [[*MESSAGES, (T0 + 17, 0, 5, kind5)], [*later, (T0 + S + 25, 0, 6, receipt_columns(near, far))]]
    path = tmp_path / "ime-s00-20251124T160000.000Z.zst"
    path.write_bytes(hand_built_segment({"format": "1.1", "shard": 0}, frames, {"reason": "closed", "records": 8}))
    seg = open_segment(path)
    assert seg.verify() == []
    got = [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()]
    first = [MESSAGES[0], receipt(T0 + 17, 2, 1, 7), MESSAGES[1], receipt(T0 + 25, 2, 1, 5), MESSAGES[2]]
    second = [later[0], receipt(T0 + S + 10, 3, 1, 70), later[1], receipt(T0 + S + 22, 3, 1, 12),
              receipt(T0 + S + 25, 2, 1, 5), receipt(T0 + S + 25, 2, 1, 4_000), later[2]]
    assert got == first + second


def test_receipts_written_by_segment_writer_follow_the_document(tmp_path):
    """Near and far copies from SegmentWriter: the document's kind-6 layout, decoded here, names exactly the
    receipts the project's reader shows."""
    writer = SegmentWriter(tmp_path, frame_bytes=1 << 20, flush_ms=1e9, rotate_seconds=0)
    shown = []
    positions = []
    for i in range(30):
        ts = T0 + 1_000 * i
        positions.append((ts, writer.position()))
        writer.append(ts, 1, 1, b'{"m":%d}' % i)
        if i % 3 == 2:
            orig_ts, pos = positions[i - 2]
            writer.append_receipt(ts + 7, 2, orig_ts, 1, pos)
            shown.append(receipt(ts + 7, 2, 1, ts + 7 - orig_ts))
        if i == 14:
            writer.cut()
        if i == 15:  # a copy whose original is in the first frame: far
            orig_ts, pos = positions[13]
            writer.append_receipt(ts + 3, 3, orig_ts, 1, pos)
            shown.append(receipt(ts + 3, 3, 1, ts + 3 - orig_ts))
    (sealed,) = writer.close()
    parsed = parse(sealed.path.read_bytes())
    columns = [r for r in parsed.records if r[2] == 6]
    assert len(columns) == 2 and not any(r[2] in (4, 5) for r in parsed.records)
    messages = [r for r in parsed.records if r[2] == 1]
    from_document = []
    for frame_start, (_, conn, _, payload) in zip((0, 15), columns, strict=True):
        assert conn == 0
        near, far = parse_receipt_columns(payload)
        for index, lag, copy_conn in near:
            orig = messages[frame_start + index]
            from_document.append(receipt(orig[0] + lag, copy_conn, orig[1], lag))
        from_document.extend(receipt(*r) for r in far)
        assert len(far) == (1 if frame_start else 0)
    seg = open_segment(sealed.path)
    assert sorted(from_document) == sorted(shown) == sorted(
        (r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records() if r.kind == 4)
