"""`ime-segments merge` throughput: two recordings of one simulated feed (independent drops), merged.

Run: .venv/bin/pytest benchmarks/test_merge.py -s        (IME_BENCH_QUICK=1: a smaller feed, well under 15 s)

Inputs: the simulator's market rendered as ime-sim sends it (~750-byte messages, 50 contracts); input A is two
shards, input B one, B receives each message 40 µs after A, and each input misses its own reconnect windows
(so ~3 % of messages come only from one input). Timed: the whole merge as the command does it — read and
verify every frame of both inputs, dedupe, write and seal the output (compression on the writer threads).
Throughput counts the messages read (every copy), and is compared with a same-run baseline that reads both
inputs and writes every record to one SegmentWriter without dedupe (a plain `cat` of the inputs).
Target (issue 10): >= 500k messages/s on a quiet machine; reported (`meets_target`), not asserted, because
the figure depends on the machine and its load. Asserted: the merge is at least half as fast as the plain copy.
With the C block split (_block.c) and the Python dedupe (2026-12-07, two full runs, load 1.2-1.6): 524k and 410k
messages read a second, 0.95x and 1.15x the plain copy; the code before, with a C dedupe (_dedupe.c), in runs
alternating with these: 859k and 806k, 1.49x and 1.38x. Wall time is the limit under load (the writer threads
compress on the other core), not the merging thread's CPU.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from workload import NS, iso_micro

from recorder.events import Event, encode_event
from recorder.segment.merge import merge
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.segment.writer import SegmentWriter
from recorder.sim.market import Market, make_contracts, message_prefix

QUICK = os.environ.get("IME_BENCH_QUICK") == "1"
N = int(os.environ.get("IME_BENCH_MERGE_MESSAGES", "100000" if QUICK else "600000"))
ROUNDS = 1 if QUICK else 3
TARGET = 500_000
CONTRACTS = 50
RATE = 20_000  # messages per second of recording time
T0 = 1_764_000_000 * NS
_results: dict[str, float] = {}


def build_inputs(root: Path) -> tuple[Path, Path]:
    """Stream the feed into both inputs at once (no list of N messages in memory)."""
    specs = make_contracts(CONTRACTS, 7)
    ids = [s.id for s in specs]
    market = Market(specs, seed=7, start_ns=T0)
    prefixes = [message_prefix("contractId", s.id) for s in specs]
    a = [SegmentWriter(root / "a", shard=k, meta={"endpoint": "id", "contracts": ids[k::2]}) for k in (0, 1)]
    b = SegmentWriter(root / "b", meta={"endpoint": "id", "contracts": ids})
    # Reconnect windows: A misses 30 ms every 1.1 s, B 30 ms every 1.3 s (rarely at the same time).
    a_gap = lambda ts: (ts - T0) % (11 * NS // 10) < 30_000_000  # noqa: E731
    b_gap = lambda ts: (ts - T0) % (13 * NS // 10) < 30_000_000  # noqa: E731
    for k in (0, 1):
        a[k].append(T0 - 1, 1, 3, encode_event(Event.OPENED, conn=1, contracts=ids[k::2]))
    b.append(T0 - 1, 1, 3, encode_event(Event.OPENED, conn=1, contracts=ids))
    step = NS // RATE
    for n in range(N):
        ts = T0 + n * step
        i, tail = market.step()
        payload = prefixes[i] + iso_micro(ts) + tail
        if not a_gap(ts):
            a[i % 2].append(ts + 150_000, 1, 1, payload)
        if not b_gap(ts):
            b.append(ts + 190_000, 1, 1, payload)
    for w in (*a, b):
        w.close()
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_inputs(tmp_path_factory.mktemp("merge-inputs"))


def opened(paths: tuple[Path, ...]) -> list[tuple[str, list]]:
    return [(str(p), [open_segment(f) for f in discover([p])]) for p in paths]


def run_merge(paths: tuple[Path, ...], out: Path) -> tuple[float, int, int, float]:
    shutil.rmtree(out, ignore_errors=True)
    writers: list[SegmentWriter] = []

    def writer_for(number: int, shard: int):
        writers.append(SegmentWriter(out, shard=len(writers), flush_ms=1000, rotate_seconds=0))
        return writers[-1]

    started, cpu = time.perf_counter(), time.thread_time()
    result = merge(opened(paths), writer_for)
    for w in writers:
        w.close()
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    read = sum(st.messages for st in result.inputs)
    return seconds, read, result.messages, cpu


def run_copy(paths: tuple[Path, ...], out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    writer = SegmentWriter(out, flush_ms=1000, rotate_seconds=0)
    append = writer.append
    n = 0
    for rec in merge_records([s for _, segs in opened(paths) for s in segs]):
        append(rec.ts_ns, rec.conn, rec.kind, rec.payload)
        n += 1
    writer.close()
    return time.perf_counter() - started, n


def test_merge_throughput(benchmark, inputs, tmp_path):
    copies: list[tuple[float, int]] = []
    merges: list[tuple[float, int, int, float]] = []
    for _ in range(ROUNDS):
        copies.append(run_copy(inputs, tmp_path / "copy"))
    benchmark.pedantic(lambda: merges.append(run_merge(inputs, tmp_path / "merged")), rounds=ROUNDS, iterations=1)
    seconds, read, written, cpu = min(merges)
    copy_seconds, copied = min(copies)
    rate = read / seconds
    baseline = copied / copy_seconds
    benchmark.extra_info.update({
        "messages_read": read, "messages_written": written, "merge_msgs_read_per_s": round(rate),
        "merge_msgs_written_per_s": round(written / seconds), "copy_baseline_records_per_s": round(baseline),
        "ratio_merge_to_copy": round(rate / baseline, 2), "target_msgs_per_s": TARGET,
        # Less sensitive to other processes on the machine: messages per CPU-second of the merging thread.
        "merge_msgs_read_per_main_thread_cpu_s": round(read / cpu),
        "load_average_1m": round(os.getloadavg()[0], 2),
    })
    print(f"\nmerge: {rate:,.0f} messages read/s ({written / seconds:,.0f} written/s, {read} read, {written} "
          f"written; {read / cpu:,.0f} per CPU-second of the merging thread); plain copy of the inputs: "
          f"{baseline:,.0f} records/s; ratio {rate / baseline:.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    assert written < read and written > read // 2  # the inputs overlap: about half of what was read is copies
    # Dedupe (a hash and a window lookup per message) may cost something over a plain copy, not a multiple.
    assert rate >= 0.5 * baseline
    # The absolute target depends on the machine and its load (this one is shared): reported, not asserted.
    benchmark.extra_info["meets_target"] = rate >= TARGET
    if rate < TARGET:
        print(f"merge: BELOW TARGET ({rate:,.0f} < {TARGET:,} messages/s) at load average {os.getloadavg()[0]:.1f}")
