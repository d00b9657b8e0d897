"""Segment store throughput on simulator data: append+compress and read, against same-run baselines.

Run: .venv/bin/pytest benchmarks/test_segment_io.py
Figures land in each benchmark's extra_info (records/s, MB/s, compression ratio, ratio to baseline).
"""

from __future__ import annotations

import gc
import gzip
import tempfile
import time
from pathlib import Path

import pytest
import zstandard
from workload import sim_records

from recorder.segment.reader import merge_records, open_segment
from recorder.segment.writer import SegmentWriter

N = 200_000
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _collector_as_in_a_fresh_process():
    """`ime-segments cat` reads in a process of its own; here the benchmarks before this module (a merge's inputs,
    an export's tables) leave hundreds of thousands of live objects, and every full collection the reader's
    tuples trigger walks them all: the reader measured 0.3-0.7x the plain split after `make bench`'s other
    modules and 0.95-1.0x alone. Frozen (as the recorder's worker freezes what it imported), they are not walked."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def records():
    return sim_records(N)


@pytest.fixture(scope="module")
def raw_bytes(records):
    return sum(len(p) for _, p in records)


def write_segment(directory: Path, records) -> tuple[float, Path]:
    writer = SegmentWriter(directory)
    append = writer.append
    t0 = time.perf_counter()
    for ts, payload in records:
        append(ts, 1, 1, payload)
    appended = time.perf_counter() - t0
    (sealed,) = writer.close()
    return appended, sealed.path


def test_write_append_and_compress(benchmark, records, raw_bytes, tmp_path_factory):
    """Whole write path: append on the caller's thread + compress/write/seal on the writer thread."""
    append_times = []

    def run():
        d = tmp_path_factory.mktemp("w")
        appended, path = write_segment(d, records)
        append_times.append(appended)
        return path

    path = benchmark.pedantic(run, rounds=3, iterations=1)
    best = benchmark.stats.stats.min
    size = path.stat().st_size
    RESULTS["write_rps"] = N / best
    benchmark.extra_info.update({
        "records": N,
        "records_per_s": round(N / best),
        "append_only_records_per_s": round(N / min(append_times)),
        "raw_MB_per_s": round(raw_bytes / best / 1e6, 1),
        "compression_ratio": round(raw_bytes / size, 2),
        "mean_record_bytes": round(raw_bytes / N, 1),
    })
    assert raw_bytes / size >= 8, "compression ratio target (DESIGN §6) is 8x on simulator data"


def test_write_baseline_gzip_lines(benchmark, records, raw_bytes, tmp_path_factory):
    """Baseline: the seed-style recorder's storage, newline-delimited payloads into a gzip file."""

    def run():
        p = tmp_path_factory.mktemp("g") / "seed.jsonl.gz"
        with gzip.open(p, "wb", compresslevel=6) as f:
            for _, payload in records:
                f.write(payload)
                f.write(b"\n")
        return p

    path = benchmark.pedantic(run, rounds=3, iterations=1)
    best = benchmark.stats.stats.min
    RESULTS["gzip_rps"] = N / best
    benchmark.extra_info.update({
        "records_per_s": round(N / best),
        "compression_ratio": round(raw_bytes / path.stat().st_size, 2),
        "segment_writer_speedup": round(RESULTS.get("write_rps", 0) / (N / best), 2),
    })


@pytest.fixture(scope="module")
def segment_path(records):
    d = Path(tempfile.mkdtemp(prefix="bench-seg-"))
    return write_segment(d, records)[1]


def test_read_records(benchmark, segment_path):
    """Raw iteration: every record verified (CRC, zstd checksum) and yielded with its timestamp."""

    def run():
        n = 0
        for _ in open_segment(segment_path).iter_records():
            n += 1
        return n

    assert benchmark.pedantic(run, rounds=5, iterations=1) == N
    best = benchmark.stats.stats.min
    RESULTS["read_rps"] = N / best
    benchmark.extra_info.update({"records_per_s": round(N / best)})


def test_read_baseline_zstd_lines(benchmark, records, tmp_path):
    """Baseline: one plain zstd file of newline-joined payloads, decompressed and split (no checks, no times)."""
    p = tmp_path / "plain.zst"
    p.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\n".join(pl for _, pl in records)))

    def run():
        data = zstandard.ZstdDecompressor().decompress(p.read_bytes())
        n = 0
        for _ in data.split(b"\n"):
            n += 1
        return n

    assert benchmark.pedantic(run, rounds=5, iterations=1) == N
    best = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "records_per_s": round(N / best),
        "segment_reader_ratio": round(RESULTS.get("read_rps", 0) / (N / best), 3),
    })
    if "read_rps" in RESULTS:
        # CI floor (docs): verified reading (CRCs, checksums, timestamps, record split) at ≥ 0.5× splitting one
        # plain zstd file with no checks; measured 0.89×. The absolute 1M records/s target is unchecked.
        assert RESULTS["read_rps"] / (N / best) >= 0.5, benchmark.extra_info


@pytest.fixture(scope="module")
def shard_paths(records):
    """The same records as four shards' files (record i on shard i % 4): what readers merge by time."""
    d = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    writers = [SegmentWriter(d, shard=k) for k in range(4)]
    for i, (ts, payload) in enumerate(records):
        writers[i % 4].append(ts, 1, 1, payload)
    return [s.path for w in writers for s in w.close()]


def test_read_merged_shards(benchmark, shard_paths):
    """Merged iteration (cat, stats, replay, the API): four shards' records, verified and merged by time."""

    def run():
        n = 0
        for _ in merge_records([open_segment(p) for p in shard_paths]):
            n += 1
        return n

    assert benchmark.pedantic(run, rounds=5, iterations=1) == N
    benchmark.extra_info.update({"records_per_s": round(N / benchmark.stats.stats.min)})
