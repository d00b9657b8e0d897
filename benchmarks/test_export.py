"""`ime-segments export`: throughput on one core against a naive same-run baseline, peak memory, Parquet size.

    .venv/bin/pytest benchmarks/test_export.py                       # 300 k messages, 1 GB recording for memory
    IME_BENCH_QUICK=1 .venv/bin/pytest benchmarks/test_export.py     # CI: 30 k messages, 40 MB recording

Throughput: the exporter (recorder.export.run.export_segments, all tables, Parquet written) on a sealed segment
of simulator messages, pinned to one CPU with pyarrow limited to one thread; with the C scanner when it is built
(extra_info "parser" says which ran), and once more with the pure-Python paths for comparison. Baseline, same run
and same pin: what a researcher writes first — json.loads per message, pandas.json_normalize, DataFrame.to_parquet.
Memory: `ime-segments export` in a subprocess on a large recording (streamed from the simulator into segments,
never held in memory), its peak RSS (VmHWM); bounded means it does not grow with the recording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
from e2e import QUICK
from workload import iso_micro, sim_records

from recorder.segment.reader import open_segment
from recorder.segment.writer import SegmentWriter
from recorder.sim.market import Market, make_contracts, message_prefix

MESSAGES = 30_000 if QUICK else 300_000
BASELINE_MESSAGES = 10_000 if QUICK else 100_000  # the baseline is slow; its rate does not depend on the count
MEMORY_RECORDING_BYTES = (40 << 20) if QUICK else (1 << 30)  # raw payload bytes of the large recording
# Issue targets: >= 5x the naive baseline and >= 250k messages/s on one core, reported as met or not in extra_info
# (the rate depends on the machine and its load; the ratio is what is gated). The C scanner (recorder/export/_scan.c)
# parses a message in ~0.6 us where orjson.loads alone takes ~2.4 us; the rest is reading the segment (~0.7 us)
# and pyarrow building and writing Parquet (~1.3 us). Measured on the shared 2-core dev machine under load from
# other jobs (docs/performance.md, "Export to Parquet"; three full and three quick runs): 12.9-26.5x the baseline and
# 287-420k msgs/s; the pure-Python paths 2.5-4.4x. The floor is under the lowest ratio measured with the scanner
# and above what the Python paths reach: a slower scanner fails the gate, and so does an install where it was
# not built (setup.py's optional build hides a compile error; the message then says so).
RATIO_TARGET = 5.0
RATE_TARGET = 250_000
RATIO_FLOOR = 8.0
PEAK_RSS_CEILING_MB = 600
RESULTS: dict[str, float] = {}
NS = 1_000_000_000


@pytest.fixture(scope="module", autouse=True)
def one_core():
    """Both contenders get the same single CPU; pyarrow's pools get one thread."""
    before = os.sched_getaffinity(0)
    cpu_threads, io_threads = pa.cpu_count(), pa.io_thread_count()
    os.sched_setaffinity(0, {min(before)})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    yield
    os.sched_setaffinity(0, before)
    pa.set_cpu_count(cpu_threads)
    pa.set_io_thread_count(io_threads)


@pytest.fixture(scope="module")
def records():
    return sim_records(MESSAGES)


@pytest.fixture(scope="module")
def segment(records, tmp_path_factory):
    writer = SegmentWriter(tmp_path_factory.mktemp("seg"), meta={"contracts": []})
    for ts, payload in records:
        writer.append(ts, 1, 1, payload)
    (sealed,) = writer.close()
    return sealed.path


def export_rounds(benchmark, segment, tmp_path_factory, rounds: int):
    from recorder.export.run import ExportOptions, export_segments

    seg = open_segment(segment)
    summaries = []

    def run():
        summary = export_segments([seg], ExportOptions(tmp_path_factory.mktemp("out")))
        summaries.append(summary)
        return summary

    benchmark.pedantic(run, rounds=rounds, iterations=1)
    summary = summaries[-1]
    assert summary.rows["best_limit"] == MESSAGES
    return seg, summary, benchmark.stats.stats.min


def test_export_throughput(benchmark, segment, records, tmp_path_factory):
    """All tables to Parquet: read + verify + parse + check types + write, on one core."""
    seg, summary, best = export_rounds(benchmark, segment, tmp_path_factory, rounds=3)
    parser = "C" if summary.native else "Python"
    if summary.native:
        assert summary.counts["parsed_c"] == MESSAGES  # simulator frames never need the Python paths
    raw = sum(len(p) for _, p in records)
    RESULTS["export_mps"] = MESSAGES / best
    RESULTS["parser"] = parser
    benchmark.extra_info.update({
        "parser": parser,
        "messages": MESSAGES,
        "messages_per_s": round(MESSAGES / best),
        "rate_target": RATE_TARGET,
        "rate_target_met": MESSAGES / best >= RATE_TARGET,
        "raw_MB_per_s": round(raw / best / 1e6, 1),
        "segment_bytes": seg.size,
        "parquet_bytes": summary.output_bytes,
        "parquet_to_segment": round(summary.output_bytes / seg.size, 3),
        "parquet_to_raw": round(summary.output_bytes / raw, 3),
        "files": summary.files,
    })


def test_export_c_scanner_vs_python_paths(benchmark, segment, tmp_path_factory, monkeypatch):
    """The same export with the C scanner switched off (what an install without a compiler gets, or IME_NATIVE=0),
    and the scanner's rate over it: recorder/native.py keeps the scanner at >= 2x."""
    import recorder.export.flatten as flatten

    monkeypatch.setattr(flatten, "NATIVE", False)
    # Three rounds like the scanner's: the two are compared (the project keeps native code only at >= 2x).
    _, summary, best = export_rounds(benchmark, segment, tmp_path_factory, rounds=3)
    assert not summary.native and not summary.counts["parsed_c"]
    RESULTS["python_mps"] = MESSAGES / best
    benchmark.extra_info.update({"parser": "Python", "messages": MESSAGES, "messages_per_s": round(MESSAGES / best)})
    if "export_mps" in RESULTS:
        benchmark.extra_info["c_scanner_over_python_paths"] = round(RESULTS["export_mps"] / RESULTS["python_mps"], 2)


def test_export_baseline_naive(benchmark, segment, tmp_path):
    """Baseline: read the records, json.loads + pandas.json_normalize + to_parquet (pyarrow): the first attempt."""
    pd = pytest.importorskip("pandas")

    def run():
        stamps, objs = [], []
        for rec in open_segment(segment).iter_records():
            stamps.append(rec.ts_ns)
            objs.append(json.loads(rec.payload))
            if len(objs) == BASELINE_MESSAGES:
                break
        frame = pd.json_normalize(objs)
        frame["recv_time"] = pd.to_datetime(stamps, unit="ns", utc=True)
        frame.to_parquet(tmp_path / "naive.parquet")
        return frame.shape

    shape = benchmark.pedantic(run, rounds=2, iterations=1)
    assert shape[0] == BASELINE_MESSAGES
    subset = range(BASELINE_MESSAGES)
    best = benchmark.stats.stats.min
    rate = len(subset) / best
    ratio = RESULTS.get("export_mps", 0.0) / rate
    parser = str(RESULTS.get("parser", "C"))
    floor = RATIO_FLOOR
    export_mps = RESULTS.get("export_mps", 0.0)
    benchmark.extra_info.update({
        "messages": len(subset),
        "messages_per_s": round(rate),
        "parser": parser,
        "export_ratio": round(ratio, 2),
        "ratio_target": RATIO_TARGET,
        "ratio_target_met": ratio >= RATIO_TARGET,
        "ratio_floor": floor,
        "export_messages_per_s": round(export_mps),
        "rate_target": RATE_TARGET,
        "rate_target_met": export_mps >= RATE_TARGET,
        "python_paths_ratio": round(RESULTS.get("python_mps", 0.0) / rate, 2),
    })
    print(f"\nexport ({parser} parser): {export_mps:,.0f} msgs/s on one core "
          f"(target {RATE_TARGET:,}: {'met' if export_mps >= RATE_TARGET else 'NOT met'}), {ratio:.1f}x the naive "
          f"baseline's {rate:,.0f} msgs/s (target {RATIO_TARGET}x: {'met' if ratio >= RATIO_TARGET else 'NOT met'}, "
          f"floor {floor}x); Python paths {RESULTS.get('python_mps', 0.0):,.0f} msgs/s")
    if "export_mps" in RESULTS:
        assert parser == "C", "recorder.export._scan is not built (no C compiler or Python headers at install?)"
        assert ratio >= floor, f"export is {ratio:.1f}x the naive baseline; the floor is {floor}x"


def write_large_recording(directory: Path, raw_bytes: int) -> tuple[int, int]:
    """Simulator messages streamed into segments until `raw_bytes` of payload; returns (messages, bytes)."""
    specs = make_contracts(50, 11)
    market = Market(specs, seed=11, start_ns=1_764_000_000 * NS)
    prefixes = [message_prefix("contractId", s.id) for s in specs]
    writer = SegmentWriter(directory, meta={"contracts": []}, rotate_bytes=256 << 20, rotate_seconds=0)
    t0 = 1_764_000_000 * NS
    total = count = 0
    while total < raw_bytes:
        ts = t0 + count * 50_000
        i, tail = market.step()
        payload = prefixes[i] + iso_micro(ts) + tail
        writer.append(ts + 150_000, 1, 1, payload)
        total += len(payload)
        count += 1
    writer.close()
    return count, total


# `ime-segments export` in a fresh interpreter that reports its own high-water RSS (VmHWM: per process image,
# so unlike wait4's ru_maxrss it does not count the forked benchmark process before exec).
CHILD = """
import sys
from recorder.cli.segments import cli
try:
    cli(["export", *sys.argv[1:]], prog_name="ime-segments", standalone_mode=False)
finally:
    print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def test_export_peak_memory_is_bounded(benchmark, tmp_path_factory):
    """`ime-segments export` in a child process: its peak RSS, against the recording's size."""
    rec = tmp_path_factory.mktemp("large")
    messages, raw = write_large_recording(rec, MEMORY_RECORDING_BYTES)
    segment_bytes = sum(p.stat().st_size for p in rec.iterdir())
    peaks: list[float] = []

    def run():
        out = Path(tempfile.mkdtemp(prefix="bench-export-", dir=tmp_path_factory.getbasetemp()))
        done = subprocess.run([sys.executable, "-c", CHILD, str(rec), "--out", str(out), "-q"],
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr
        peaks.append(int(done.stdout.split()[-1]) / 1024)  # kB -> MiB
        return out

    started = time.perf_counter()
    out = benchmark.pedantic(run, rounds=1, iterations=1)
    elapsed = time.perf_counter() - started
    parquet = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    peak = max(peaks)
    benchmark.extra_info.update({
        "messages": messages,
        "raw_MB": round(raw / 1e6, 1),
        "segment_MB": round(segment_bytes / 1e6, 1),
        "parquet_MB": round(parquet / 1e6, 1),
        "parquet_to_segment": round(parquet / segment_bytes, 3),
        "peak_rss_MB": round(peak, 1),
        "messages_per_s_cli": round(messages / elapsed),
    })
    assert peak < PEAK_RSS_CEILING_MB, f"export peaked at {peak:.0f} MB for a {raw / 1e6:.0f} MB recording"
