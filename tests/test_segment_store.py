"""SegmentWriter and reader on real files: round trips, sealing, rotation, truncation, corruption, disk full."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment_util import ime_payload, read_all, unsealed_copy, write_records

from recorder.model.record import RecordKind
from recorder.segment.files import SegmentWriteError
from recorder.segment.format import SegmentFormatError
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.segment.recover import recover
from recorder.segment.writer import SegmentWriter

ZSTD = shutil.which("zstd")
needs_zstd = pytest.mark.skipif(ZSTD is None, reason="the zstd command-line tool is not installed")

payloads = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=300).map(lambda s: s.encode()),
    st.just(b""),
    st.just("سکه‌ی طلا".encode()),
    st.just(b"\x80\x81 invalid utf-8 \xff"),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(0, 9), st.sampled_from([1, 2, 3]), payloads),
                max_size=80),
       st.integers(64, 4096))
def test_round_trip_of_arbitrary_payloads(recs, frame_bytes):
    with tempfile.TemporaryDirectory() as d:
        paths = write_records(Path(d), recs, frame_bytes=frame_bytes)
        assert len(paths) == 1
        seg, got = read_all(paths[0])
        assert got == [tuple(r) for r in recs]
        assert seg.sealed and not seg.damage
        assert seg.verify() == []


def test_multi_megabyte_payloads_round_trip(tmp_path):
    big = os.urandom(3 << 20)
    recs = [(1, 1, RecordKind.BINARY, big), (2, 1, RecordKind.TEXT, b""), (3, 1, RecordKind.TEXT, big[:5000])]
    (path,) = write_records(tmp_path, recs)
    assert read_all(path)[1] == recs


@needs_zstd
def test_sealed_segment_is_a_standard_zstd_file(tmp_path):
    recs = [(i, 1, 1, ime_payload(i)) for i in range(3000)]
    (path,) = write_records(tmp_path, recs, frame_bytes=32 << 10)
    assert len(open_segment(path).frames) > 5
    subprocess.run([ZSTD, "-q", "-t", str(path)], check=True)
    out = subprocess.run([ZSTD, "-dc", str(path)], check=True, capture_output=True).stdout
    # zstd -dc yields the data blocks back to back; every payload is in there, in order.
    assert len(out) == open_segment(path).raw_bytes
    pos = 0
    for _, _, _, payload in recs:
        pos = out.index(payload, pos) + len(payload)


def test_file_is_open_while_written_then_sealed_0640(tmp_path):
    writer = SegmentWriter(tmp_path, shard=7, meta={"endpoint": "id"})
    writer.append(time.time_ns(), 1, 1, b"{}")
    assert writer.flush(timeout=10)
    (open_file,) = tmp_path.iterdir()
    assert open_file.name.startswith("ime-s07-") and open_file.name.endswith(".zst.open")
    assert stat.S_IMODE(open_file.stat().st_mode) == 0o640
    seg = open_segment(open_file)
    assert not seg.sealed and seg.records == 1 and not seg.damage
    (sealed,) = writer.close()
    assert not open_file.exists()
    assert sealed.path.name == open_file.name[: -len(".open")]
    assert stat.S_IMODE(sealed.path.stat().st_mode) == 0o640
    seg = open_segment(sealed.path)
    assert seg.sealed and seg.header.meta["shard"] == 7 and seg.header.meta["endpoint"] == "id"
    assert seg.seal["reason"] == "closed"


def test_frames_are_cut_by_age_without_new_records(tmp_path):
    writer = SegmentWriter(tmp_path, flush_ms=50)
    writer.append(time.time_ns(), 1, 1, b"x")
    deadline = time.monotonic() + 5
    while writer.frames_written == 0 and time.monotonic() < deadline:
        writer.tick()
        time.sleep(0.01)
    assert writer.frames_written == 1
    writer.close()


def test_frames_are_cut_by_size(tmp_path):
    recs = [(i, 1, 1, b"y" * 1000) for i in range(100)]
    (path,) = write_records(tmp_path, recs, frame_bytes=10_000)
    seg = open_segment(path)
    assert len(seg.frames) >= 9
    assert all(f.raw_size <= 10_000 + 1100 for f in seg.frames)


def test_rotation_by_size_seals_consecutive_files(tmp_path):
    recs = [(i, 1, 1, os.urandom(500)) for i in range(400)]
    paths = write_records(tmp_path, recs, frame_bytes=4096, rotate_bytes=20_000)
    assert len(paths) > 3
    assert paths == sorted(paths)
    got = [(r.ts_ns, r.conn, r.kind, r.payload) for r in merge_records([open_segment(p) for p in paths])]
    assert got == recs
    assert [open_segment(p).seal["reason"] for p in paths] == ["rotated"] * (len(paths) - 1) + ["closed"]


def test_rotation_by_time(tmp_path):
    writer = SegmentWriter(tmp_path, rotate_seconds=0.3, flush_ms=20)
    t_end = time.monotonic() + 1.2
    i = 0
    while time.monotonic() < t_end:
        writer.append(time.time_ns(), 1, 1, b"%d" % i)
        writer.tick()
        i += 1
        time.sleep(0.005)
    sealed = writer.close()
    assert len(sealed) >= 3
    assert sum(s.records for s in sealed) == i


def test_merge_across_shards_is_by_time_and_stable(tmp_path):
    a = [(10, 1, 1, b"a0"), (20, 1, 1, b"a1"), (20, 1, 1, b"a2"), (40, 1, 1, b"a3")]
    b = [(5, 1, 1, b"b0"), (20, 1, 1, b"b1"), (30, 1, 1, b"b2")]
    pa = write_records(tmp_path, a, shard=1)
    pb = write_records(tmp_path, b, shard=0)
    segs = [open_segment(p) for p in pa + pb]
    got = [(r.ts_ns, r.shard, r.payload) for r in merge_records(segs)]
    assert got == [(5, 0, b"b0"), (10, 1, b"a0"), (20, 0, b"b1"), (20, 1, b"a1"), (20, 1, b"a2"),
                   (30, 0, b"b2"), (40, 1, b"a3")]
    # The same answer whatever order the files are given in.
    assert [(r.ts_ns, r.shard, r.payload) for r in merge_records(segs[::-1])] == got


def test_each_shard_keeps_its_order_where_its_clock_stepped_back(tmp_path):
    """A wall clock that steps back (NTP) must not reorder a shard's records: readers give them in the order they
    were received, merged with the other shards' by time."""
    a = [(10, 1, 1, b"a0"), (30, 1, 1, b"a1"), (15, 1, 1, b"a2"), (40, 1, 1, b"a3")]  # stepped back 30 -> 15
    b = [(12, 1, 1, b"b0"), (20, 1, 1, b"b1"), (35, 1, 1, b"b2")]
    segs = [open_segment(p) for p in write_records(tmp_path, a, shard=0) + write_records(tmp_path, b, shard=1)]
    got = [r.payload for r in merge_records(segs)]
    assert got == [b"a0", b"b0", b"b1", b"a1", b"a2", b"b2", b"a3"]


_batches = st.lists(st.lists(st.integers(0, 12), max_size=6), max_size=5)  # a stream: its batches' times


@settings(max_examples=400, deadline=None)
@given(streams=st.lists(_batches, max_size=5), native=st.booleans())
def test_the_one_merge_gives_heapq_merges_order(streams, native):
    """ordered.merged, batch by batch, yields exactly what heapq.merge yields row by row: by time, equal times in
    stream order, and each stream in its own order where its times step back (few distinct times: many ties,
    many at batch boundaries)."""
    import heapq
    from operator import itemgetter

    from recorder.segment import ordered

    rows = [[[(ts, n, b, i) for i, ts in enumerate(batch)] for b, batch in enumerate(stream)]
            for n, stream in enumerate(streams)]
    expected = list(heapq.merge(*([r for batch in stream for r in batch] for stream in rows), key=itemgetter(0)))
    if not native:
        ordered.first_descent, saved = ordered._first_descent, ordered.first_descent
    try:
        got = [r for batch in ordered.merged(iter(stream) for stream in rows) for r in batch]
    finally:
        if not native:
            ordered.first_descent = saved
    assert got == expected


def test_time_seek_skips_frames_by_index(tmp_path):
    recs = [(i * 1000, 1, 1, ime_payload(i)) for i in range(5000)]
    (path,) = write_records(tmp_path, recs, frame_bytes=16 << 10)
    seg = open_segment(path)
    assert len(seg.frames) > 10
    got = [r.ts_ns for r in seg.iter_records(start_ns=4_000_000, end_ns=4_100_000)]
    assert got == list(range(4_000_000, 4_100_000, 1000))
    # Only the frames that overlap the window were decompressed.
    assert seg.records_salvaged < 2 * (16 << 10) // 200


def test_truncation_at_every_offset_within_the_last_frames(tmp_path):
    recs = [(i, 1, 1, ime_payload(i)) for i in range(600)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=4096)
    full = unsealed_copy(sealed, tmp_path / "full.zst.open").read_bytes()
    seg = open_segment(sealed)
    assert len(seg.frames) >= 4
    last_three = seg.frames[-3:]
    per_frame_end = [(f.end_offset, f.records) for f in seg.frames]
    probe = tmp_path / "cut.zst.open"
    for cut in range(last_three[0].offset - 3, len(full)):
        probe.write_bytes(full[:cut])
        cut_seg = open_segment(probe)
        complete = sum(n for end, n in per_frame_end if end <= cut)
        got = [(r.ts_ns, r.payload) for r in cut_seg.iter_records()]
        assert got == [(ts, p) for ts, _, _, p in recs[:complete]], cut
        at_boundary = cut in {end for end, _ in per_frame_end}
        assert bool(cut_seg.damage) == (not at_boundary), cut
        if cut_seg.damage:
            assert "truncated" in cut_seg.damage[0].reason


def test_truncated_file_is_reported_with_records_salvaged(tmp_path):
    recs = [(i, 1, 1, ime_payload(i)) for i in range(300)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=4096)
    data = unsealed_copy(sealed, tmp_path / "x.zst.open").read_bytes()
    (tmp_path / "x.zst.open").write_bytes(data[:-100])
    seg = open_segment(tmp_path / "x.zst.open")
    n = sum(1 for _ in seg.iter_records())
    assert seg.records_salvaged == n and 0 < n < 300
    (damage,) = seg.damage
    assert "missing its last 100 bytes" in damage.reason
    assert damage.records_lost and n + damage.records_lost == 300


def test_every_flipped_byte_is_detected_by_verify(tmp_path):
    recs = [(i, i % 3, 1 + i % 3, ime_payload(i)[: 40 + i]) for i in range(60)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=1500)
    original = sealed.read_bytes()
    assert len(open_segment(sealed).frames) >= 3
    assert open_segment(sealed).verify() == []
    probe = tmp_path / "flip.zst"
    undetected = []
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= 0x01 << (pos % 8)
        probe.write_bytes(data)
        try:
            problems = open_segment(probe).verify()
        except SegmentFormatError:
            continue
        if not problems:
            undetected.append(pos)
    assert undetected == []


def test_a_corrupt_frame_in_the_middle_is_skipped_and_reported(tmp_path):
    recs = [(i, 1, 1, ime_payload(i)) for i in range(400)]
    (sealed,) = write_records(tmp_path, recs, frame_bytes=4096)
    seg = open_segment(sealed)
    victim = seg.frames[2]
    data = bytearray(sealed.read_bytes())
    data[victim.data_offset + victim.compressed_size // 2] ^= 0xFF
    sealed.write_bytes(data)
    seg = open_segment(sealed)
    got = [r.ts_ns for r in seg.iter_records()]
    assert len(got) == 400 - victim.records
    (damage,) = seg.damage
    assert damage.frame == 2 and damage.records_lost == victim.records


def test_recover_seals_an_open_file_keeping_complete_frames(tmp_path):
    recs = [(i, 1, 1, ime_payload(i)) for i in range(500)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=4096)
    name = sealed.name + ".open"
    data = unsealed_copy(sealed, tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:-77])
    result = recover(tmp_path / name)
    assert result.sealed == tmp_path / sealed.name
    assert not (tmp_path / name).exists()
    seg, got = read_all(result.sealed)
    assert seg.sealed and seg.verify() == []
    assert got == [tuple(r) for r in recs[: result.records]]
    assert result.records == sum(f.records for f in open_segment(sealed).frames[:-1])
    assert result.tail is not None and result.tail.stat().st_size == result.dropped_bytes > 0
    assert seg.seal["reason"] == "recovered"


def test_recover_of_a_file_cut_inside_its_header_keeps_the_bytes(tmp_path):
    p = tmp_path / "ime-s00-20261124T000000.000Z.zst.open"
    p.write_bytes(b"\x50\x2a\x4d\x18\x40\x00\x00\x00IMEH")
    result = recover(p)
    assert result.sealed is None and result.records == 0
    assert result.tail is not None and result.tail.read_bytes().endswith(b"IMEH")


def test_not_a_segment_is_a_clear_error(tmp_path):
    p = tmp_path / "notes.zst"
    p.write_text("hello, this is not a segment\n")
    with pytest.raises(SegmentFormatError, match="not an ime-recorder segment"):
        open_segment(p)
    import zstandard

    p.write_bytes(zstandard.ZstdCompressor().compress(b"plain zstd"))
    with pytest.raises(SegmentFormatError, match="a zstd file, but not an ime-recorder segment"):
        open_segment(p)


def test_unwritable_directory_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SegmentWriteError, match="cannot write"):
        SegmentWriter(blocker / "sub")


def test_disk_full_stops_with_one_clear_error_and_keeps_sealed_files(tmp_path):
    errors = []
    writer = SegmentWriter(tmp_path, frame_bytes=2048, rotate_bytes=8192, fault_enospc_after_bytes=40_000,
                           on_error=errors.append)
    i = 0
    while writer.error is None and i < 100_000:
        writer.append(i, 1, 1, os.urandom(300))
        i += 1
        if i % 50 == 0:
            writer.flush(timeout=10)
    assert writer.error is not None
    assert errors == [writer.error]
    message = str(writer.error)
    assert "disk full" in message and "\n" not in message
    with pytest.raises(SegmentWriteError):
        writer.close()
    files = discover([tmp_path])
    assert len(files) >= 3
    for f in files:
        seg = open_segment(f)
        assert seg.verify() == [], f
    reasons = [open_segment(f).seal.get("reason") for f in files]
    assert reasons.count("rotated") == len(files) - 1 and reasons[-1] == "write-error"
    recorded = [r.ts_ns for r in merge_records([open_segment(f) for f in files])]
    assert recorded == list(range(len(recorded)))  # a gap-free prefix of what was appended


def test_backpressure_is_signalled_and_released(tmp_path):
    events = []
    gate = threading.Event()
    writer = SegmentWriter(tmp_path, frame_bytes=1024, max_backlog_bytes=8192, on_backlog=events.append)
    # Hold the writer thread so the backlog builds up deterministically.
    original_write = writer.files.write

    def slow(batch):
        gate.wait(5)
        original_write(batch)

    writer.files.write = slow  # type: ignore[method-assign]
    for i in range(200):
        writer.append(i, 1, 1, b"z" * 200)
    assert events == [True]
    gate.set()
    writer.close()
    assert events == [True, False]
    assert open_segment(discover([tmp_path])[0]).records == 200


KILL_CHILD = r"""
import sys, time
from recorder.segment.writer import SegmentWriter
w = SegmentWriter(sys.argv[1], shard=3, flush_ms=20, frame_bytes=8192)
i = 0
while True:
    for _ in range(50):
        w.append(i, 1, 1, b'{"contractId":"1001","n":%d}' % i)
        i += 1
    w.flush(timeout=10)
    print(i, flush=True)
    time.sleep(0.002)
"""


def test_sigkill_mid_stream_then_recover_keeps_every_flushed_frame(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        flushed = 0
        assert proc.stdout is not None
        while flushed < 3000:
            line = proc.stdout.readline()
            assert line, "writer child died"
            flushed = int(line)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    (open_file,) = [p for p in tmp_path.iterdir() if p.name.endswith(".open")]
    result = recover(open_file)
    assert result.sealed is not None
    seg, got = read_all(result.sealed)
    assert seg.verify() == []
    assert len(got) >= flushed
    assert [ts for ts, *_ in got] == list(range(len(got)))
    assert got[flushed - 1][3] == b'{"contractId":"1001","n":%d}' % (flushed - 1)


def _frames(directory: Path) -> list[tuple]:
    segs = [open_segment(p) for p in discover([directory])]
    return [((f.records, f.events, f.raw_size, f.min_ts, f.max_ts), blk)
            for s in segs for f, blk in zip(s.frames, s.iter_blocks(), strict=True)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 3_000), st.integers(1, 4), st.sampled_from([1, 2, 3, 4]),
                               st.binary(max_size=300)), max_size=200),
       cuts=st.lists(st.integers(0, 200), max_size=6), frame_bytes=st.integers(40, 3_000),
       flush_ms=st.sampled_from([0.0, 0.001, 0.5]))
def test_extend_cuts_the_same_frames_as_one_append_per_record(tmp_path, rows, cuts, frame_bytes, flush_ms):
    """The merge's bulk writes: the same frames, byte for byte in their blocks, as appending record by record
    (timestamps step back now and then, so the age cut sees a clock step too)."""
    stamped = [(1_000_000 + ts * 997 - (ts % 7) * 5_000, conn, kind, payload) for ts, conn, kind, payload in rows]
    run = tempfile.mkdtemp(dir=tmp_path)
    one = SegmentWriter(Path(run) / "one", frame_bytes=frame_bytes, flush_ms=flush_ms, rotate_seconds=0)
    many = SegmentWriter(Path(run) / "many", frame_bytes=frame_bytes, flush_ms=flush_ms, rotate_seconds=0)
    for row in stamped:
        one.append(*row)
    bounds = sorted({0, len(stamped), *(c for c in cuts if c < len(stamped))})
    for n, (lo, hi) in enumerate(pairwise(bounds)):
        if n % 2:  # as the merge does: runs of messages in bulk, a connection event on its own between them
            for row in stamped[lo:hi]:
                many.append(*row)
        else:
            many.extend(stamped[lo:hi])
    one.close()
    many.close()
    assert _frames(Path(run) / "many") == _frames(Path(run) / "one")
