"""`ime-record --redundancy 2` against one copy, at 20k msgs/s from ime-sim, measured in the same run.

    .venv/bin/pytest benchmarks/test_redundancy.py                      # full: 8 s per run, 3 rounds each
    IME_BENCH_QUICK=1 .venv/bin/pytest benchmarks/test_redundancy.py    # CI: 3 s per run, 1 round each

Two copies receive every message twice; the first arrival is the record and the later copy a receipt. What it
costs and buys, as ratios of two copies to one (medians over rounds, the runs alternating): recorded message
rate (both must keep up: 1.0), receive-latency p99 of the first arrival (two copies race, so the tail should
not grow), worker CPU per recorded message, and bytes on disk per recorded message (receipts: target ≤ 1.1).
"""

from __future__ import annotations

import statistics
import threading
from typing import Any

from e2e import QUICK, Run, new_connections, run_ceiling, run_recorder, sim

SECONDS = 3.0 if QUICK else 8.0
RATE = 20_000
ROUNDS = 1 if QUICK else 3
# Gates (documented): both keep up with the offered rate; the receipts' disk cost stays within its 1.1 target
# (receipt columns, record kind 6: 1.065-1.067 in full runs, 1.045-1.05 in quick ones; kind 5 with single far
# receipts was 1.13-1.14 and 1.09-1.11).
# On loopback both copies come from one simulator process, so the race cannot shorten the tail; the second copy
# is extra work for the receive thread (hash, dedupe, receipt: ~2x CPU per message with the Python dedupe; with
# the C one, _dedupe.c, 1.74x against 2.08x in one full run each, alternating), which lengthens it when
# messages queue: measured 1.4x, 1.8x and 2.5x in full runs, 1.4-3.2x in quick runs next to the rest of the suite
# (the target, <= 1x, is not met). With receipt columns (2026-11-25, load 2-3.5): 0.43x, 23x and 1.97x in full runs
# (the 23x run's two-copy rounds had a 52.7 ms p99). That was the garbage collector: a tuple per receipt, held
# until its batch was cut, reached the oldest generation and set off full collections of the ~27k objects of a
# worker, 10-15 ms each, in two-copy runs only; receipts are now columns of ints and the worker freezes its
# start-up objects (gc.freeze), and no collection over 0.5 ms beyond a single 2-3 ms one per run is left.
# Then, on a quiet machine: 2.8x and 3.0x (p99 0.37-0.49 ms -> 1.1-1.4 ms; p99.9 5.6 -> 2.4 ms). The late first
# arrivals are mostly the second copy's: both copies waited while the worker drained a burst at twice the work.
# The floor catches a collapse (a 20 ms stall per second made it 22x), in both modes.
FLOORS = {
    "rate_ratio_min": 0.97,
    "disk_per_message_ratio_max": 1.1,
    "p99_ratio_max": 5.0,
}


def per_message(run: Run, key: str) -> float:
    received = run.extra["received"]
    return run.extra[key] / received if received else 0.0


def test_redundancy_two_copies_vs_one_at_20k(benchmark: Any, tmp_path: Any) -> None:
    runs: dict[int, list[Run]] = {1: [], 2: []}
    with sim(tmp_path, RATE) as s:
        def measure() -> None:
            for _ in range(ROUNDS):
                for copies in (1, 2):
                    before = s.connections()
                    # One copy runs beside a bare counting client on the same contracts, so that the simulator
                    # writes every message twice in both runs: the comparison is the recorder's, not the feed's.
                    other = None
                    if copies == 1:
                        other = threading.Thread(target=run_ceiling, args=(s, SECONDS, tmp_path, False))
                        other.start()
                    run = run_recorder(s, SECONDS, tmp_path, latency=True,
                                       extra_args=("--redundancy", str(copies)))
                    if other is not None:
                        other.join()
                    counters = new_connections(before, s.connections())
                    # The live market drops for a client that cannot keep up: none may be dropped.
                    assert counters["dropped"] == 0, (copies, counters)
                    runs[copies].append(run)

        benchmark.pedantic(measure, rounds=1, iterations=1)

    def median(copies: int, fn: Any) -> float:
        return statistics.median(fn(r) for r in runs[copies])

    figures: dict[str, float] = {}
    for copies in (1, 2):
        figures[f"rate_{copies}"] = median(copies, lambda r: r.rate)
        figures[f"p50_us_{copies}"] = median(copies, lambda r: r.latency.percentile(50) / 1e3)
        figures[f"p99_us_{copies}"] = median(copies, lambda r: r.latency.percentile(99) / 1e3)
        figures[f"p999_us_{copies}"] = median(copies, lambda r: r.latency.percentile(99.9) / 1e3)
        figures[f"cpu_us_per_message_{copies}"] = median(copies, lambda r: 1e6 * per_message(r, "worker_cpu_s"))
        figures[f"disk_bytes_per_message_{copies}"] = median(copies, lambda r: per_message(r, "disk_bytes"))
    ratios = {
        "rate_ratio": figures["rate_2"] / figures["rate_1"],
        "p99_ratio": figures["p99_us_2"] / figures["p99_us_1"],
        "cpu_per_message_ratio": figures["cpu_us_per_message_2"] / figures["cpu_us_per_message_1"],
        "disk_per_message_ratio": figures["disk_bytes_per_message_2"] / figures["disk_bytes_per_message_1"],
    }
    benchmark.extra_info.update({k: round(v, 3) for k, v in {**figures, **ratios}.items()})
    benchmark.extra_info["floors"] = FLOORS
    benchmark.extra_info["key"] = "redundancy/2-vs-1@20k"
    assert ratios["rate_ratio"] >= FLOORS["rate_ratio_min"], ratios
    assert ratios["disk_per_message_ratio"] <= FLOORS["disk_per_message_ratio_max"], ratios
    assert ratios["p99_ratio"] <= FLOORS["p99_ratio_max"], ratios
