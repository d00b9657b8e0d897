"""ime-replay: throughput to a pipe (raw, jsonl) and pacing lateness at 1x, against same-run baselines.

    .venv/bin/pytest benchmarks/test_replay.py

Throughput runs the real command (`ime-replay --speed max > /dev/null`) on 1 M simulator records (300 k in
quick mode); the baseline is the least any reader must do: decompress one plain zstd file of the same
payloads and write them out, in the same interpreter. Pacing replays 20 k msgs/s at 1x and reports the
tool's own lateness histogram; the baseline is the naive pacer (sleep the gap before each record).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from e2e import QUICK
from workload import sim_records

from recorder.histogram import Histogram
from recorder.segment.writer import SegmentWriter

RECORDS = 300_000 if QUICK else 1_000_000
PACED_SECONDS = 3 if QUICK else 8
RESULTS: dict[str, float] = {}
REPLAY_RAW_FLOOR = 0.25
PACING_P99_VS_NAIVE_MAX = 0.1
if QUICK:
    # A 3 s paced run on a loaded 2-core CI runner: the replay process gets a fraction of a core and its p99 reached
    # 0.05× the naive pacer's at load average 5; the quick gate only catches an accumulating (naive-like) pacer.
    PACING_P99_VS_NAIVE_MAX = 0.25


def write_recording(directory: Path, records: tuple[tuple[int, bytes], ...]) -> Path:
    writer = SegmentWriter(directory, meta={"endpoint": "id", "contracts": [str(1001 + i) for i in range(50)]})
    for ts, payload in records:
        writer.append(ts, 1, 1, payload)
    writer.close()
    return directory


@pytest.fixture(scope="module")
def big_recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("big"), sim_records(RECORDS, rate=20_000))


@pytest.fixture(scope="module")
def paced_recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("paced"), sim_records(20_000 * PACED_SECONDS, rate=20_000))


def run_replay(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    with open("/dev/null", "wb") as sink:
        out = subprocess.run([sys.executable, "-m", "recorder.cli.replay", *args], stdout=sink, stderr=subprocess.PIPE,
                             timeout=600, check=True)
    return time.perf_counter() - t0, out.stderr.decode()


def report_wall(stderr: str) -> float:
    m = re.search(r"in ([\d.]+)s wall", stderr)
    assert m, stderr
    return float(m[1])


@pytest.mark.parametrize("fmt", ["raw", "jsonl"])
def test_replay_throughput(benchmark, big_recording, fmt):
    """Records/s of the real command to /dev/null; the replay loop's own time (excluding start-up) too."""
    box: list[tuple[float, str]] = []
    benchmark.pedantic(lambda: box.append(run_replay(str(big_recording), "--speed", "max", "--format", fmt)),
                       rounds=1 if QUICK else 3, iterations=1)
    best_total = min(t for t, _ in box)
    best_loop = min(report_wall(err) for _, err in box)
    RESULTS[fmt] = RECORDS / best_loop
    benchmark.extra_info.update({
        "key": f"replay/{fmt}", "records": RECORDS,
        "records_per_s": round(RECORDS / best_loop),
        "records_per_s_including_startup": round(RECORDS / best_total),
    })


def test_replay_baseline_plain_zstd(benchmark, tmp_path):
    """The least a per-record reader must do: decompress one plain zstd file of the payloads, split it into
    records and hand each to a buffered writer; no checks, no timestamps, no merge."""
    records = sim_records(RECORDS, rate=20_000)
    path = tmp_path / "plain.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\n".join(p for _, p in records)))

    def run() -> None:
        with open("/dev/null", "wb") as sink:
            write = sink.write
            for line in zstandard.ZstdDecompressor().decompress(path.read_bytes()).split(b"\n"):
                write(line)
                write(b"\n")

    benchmark.pedantic(run, rounds=3, iterations=1)
    rate = RECORDS / benchmark.stats.stats.min
    benchmark.extra_info.update({
        "key": "replay/baseline_plain_zstd", "records_per_s": round(rate),
        "replay_raw_ratio": round(RESULTS.get("raw", 0) / rate, 3),
    })
    if "raw" in RESULTS:
        # CI floor (docs): the whole command (verify, merge, pace, write) at ≥ 0.25× the bare decompress-and-split
        # loop in the same interpreter; measured 0.5×. The absolute 500k/s target is machine-dependent, unchecked.
        assert RESULTS["raw"] / rate >= REPLAY_RAW_FLOOR, benchmark.extra_info


def test_pacing_lateness_1x_20k(benchmark, paced_recording):
    box: list[str] = []
    benchmark.pedantic(lambda: box.append(run_replay(str(paced_recording), "--speed", "1x", "--format", "raw")[1]),
                       rounds=1, iterations=1)
    text = box[0]
    figures = {k: float(v) for k, v in re.findall(r"(p50|p99|p99\.9|max) ([\d.]+)µs", text)}
    speed = float(re.search(r"effective speed ([\d.]+)x", text)[1])
    RESULTS["paced_p99_us"] = figures["p99"]
    benchmark.extra_info.update({"key": "replay/pacing_1x_20k", "lateness_us": figures, "effective_speed": speed,
                                 "rate": 20_000, "seconds": PACED_SECONDS})
    assert speed == pytest.approx(1.0, abs=0.01)


def test_pacing_baseline_naive_sleep(benchmark):
    """A naive pacer: sleep the gap to the previous record, then emit. Its error accumulates."""
    records = sim_records(20_000 * 2, rate=20_000)
    late = Histogram()

    def run() -> float:
        start = time.perf_counter()
        t0 = records[0][0]
        prev = t0
        with open("/dev/null", "wb") as sink:
            for ts, payload in records:
                gap = (ts - prev) / 1e9
                if gap > 0:
                    time.sleep(gap)
                prev = ts
                sink.write(payload + b"\n")
                due = start + (ts - t0) / 1e9
                late.record(int(max(0.0, time.perf_counter() - due) * 1e9))
        return time.perf_counter() - start

    box: list[float] = []
    benchmark.pedantic(lambda: box.append(run()), rounds=1, iterations=1)
    span = (records[-1][0] - records[0][0]) / 1e9
    benchmark.extra_info.update({
        "key": "replay/pacing_baseline_naive", "lateness_us": {k: round(v, 1) for k, v in late.summary().items()},
        "effective_speed": round(span / box[0], 3),
        "replay_p99_vs_naive": round(RESULTS.get("paced_p99_us", 0) / (late.percentile(99) / 1e3), 4),
    })
    if "paced_p99_us" in RESULTS:
        # CI floor (docs): the absolute schedule keeps p99 lateness ≤ 0.1× the naive sleep-the-gap pacer's, whose
        # error accumulates (measured 0.0001×). The absolute "p99 ≤ 1 ms" is machine-dependent, unchecked.
        assert RESULTS["paced_p99_us"] / (late.percentile(99) / 1e3) <= PACING_P99_VS_NAIVE_MAX, benchmark.extra_info
