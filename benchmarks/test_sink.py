"""The receive path after the listener: a connection's sink (recorder/record/sink.py) into a real SegmentWriter.

    .venv/bin/pytest benchmarks/test_sink.py
    .venv/bin/pytest benchmarks/test_sink.py --benchmark-timer time.thread_time   # on a busy machine

Per message, on the receive thread: one copy (the writer's own append), one copy with the live tee, and two copies
(a shared Deduper: each message's first arrival recorded, its second a receipt). Frames are large enough that no
batch is cut while timing, so the writer thread is idle and only the caller's cost is measured. ns per message in
each benchmark's extra_info (two copies: per message, both arrivals).

2026-12-07, the machine shared (load ~3), thread time, the sink before and after the writer named a receipt's
original (`original_ref`/`append_copy`: no tuple and no packing in the sink), medians of 8 alternating runs:
one copy 701 -> 711 ns, with the live tee 802 -> 806 ns (the same code), two copies 2230 -> 2062 ns, with the tee
2394 -> 2074 ns (two copies through the C dedupe of the time, since removed).
"""

from __future__ import annotations

import tempfile

import pytest
from workload import sim_records

from recorder.model.record import RecordKind
from recorder.record.sink import first_arrival_sink
from recorder.segment.dedupe import Deduper
from recorder.segment.writer import SegmentWriter

N = 30_000


@pytest.fixture(scope="module")
def records():
    return sim_records(N)


@pytest.mark.parametrize(("copies", "live"), [(1, False), (1, True), (2, False), (2, True)],
                         ids=["one-copy", "one-copy-live", "two-copies", "two-copies-live"])
def test_sink_per_message(benchmark, records, copies, live):
    teed = []

    def setup():
        directory = tempfile.mkdtemp(prefix="bench-sink-")
        writer = SegmentWriter(directory, frame_bytes=1 << 40, flush_ms=1e12, max_backlog_bytes=1 << 40)
        deduper = Deduper(2_000_000_000) if copies > 1 else None
        tee = (lambda *_: teed.append(1)) if live else None
        sinks = [first_arrival_sink(writer, deduper, source, tee) for source in range(copies)]
        return (writer, sinks), {}

    def run(writer, sinks):
        for ts, payload in records:
            for source, sink in enumerate(sinks):
                sink(ts + source * 1000, source + 1, RecordKind.TEXT, payload)

    def teardown(writer, sinks):
        writer.close()

    benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=5, iterations=1)
    benchmark.extra_info.update({"messages": N, "ns_per_message": round(benchmark.stats.stats.min / N * 1e9)})
    if live:
        assert len(teed) == 5 * N  # each message once, whatever the copies
