"""`ime-record --redundancy 2` against one copy, at 20k msgs/s from ime-sim, measured in the same run.

    .venv/bin/pytest benchmarks/test_redundancy.py                      # full: 8 s per run, 3 rounds each (~4 min)
    IME_BENCH_QUICK=1 .venv/bin/pytest benchmarks/test_redundancy.py    # CI: 3 s per run, 3 rounds each (~50 s)

Two copies receive every message twice; the first arrival is the record and the later copy a receipt. What it
costs and buys, as ratios of two copies to one (medians over rounds, the runs alternating): recorded message
rate (both must keep up: 1.0), receive-latency p99 (and p99.9) of the first arrival, worker CPU per recorded
message, and bytes on disk per recorded message (receipts: target ≤ 1.1). Measured twice, each with its own
simulator:

- clean loopback (`test_redundancy_two_copies_vs_one_at_20k`): both copies come from one simulator process over
  one path with no jitter, so the race cannot win anything and the second copy is pure cost: first-arrival p99
  1.16-1.53x in full runs, 0.83-1.94x in quick ones (2026-11-25, load 1.4-3, the machine shared).
- path hiccups (`..._with_path_hiccups`): ime-sim `--delay-every 0.5 --delay-for 0.02`, each connection's
  messages held for 20 ms at its own random times then sent at once (none lost). One copy's p99 is 16-17 ms (the
  hiccups); the first of two arrivals dodges them: p99 ratio 0.05 / 0.11 / 0.19 in full runs (p99 0.75 / 1.9 /
  3.1 ms), 0.03-0.24 in six quick runs; p99.9 ratio 0.50-0.59 full (10-12 ms: the rare moments both paths are
  held), 0.07-0.92 quick. Loss 0 (the simulator dropped nothing).
"""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

from e2e import QUICK, Run, Sim, new_connections, run_ceiling, run_recorder, sim

SECONDS = 3.0 if QUICK else 8.0
RATE = 20_000
# Three rounds in quick mode too: with one, a single stall on the shared CI machine decided the gate (a quick run
# on 2026-11-25 measured a clean-loopback p99 ratio of 16.4x, 0.54 -> 8.8 ms, once; five runs around it 1.5-2.4x).
ROUNDS = 3
# Gates (documented): both keep up with the offered rate; the receipts' disk cost stays within its 1.1 target
# (receipt columns, record kind 6: 1.065-1.067 in full runs, 1.045-1.05 in quick ones; kind 5 with single far
# receipts was 1.13-1.14 and 1.09-1.11).
# On loopback both copies come from one simulator process, so the race cannot shorten the tail; the second copy
# is extra work for the receive thread (hash, dedupe, receipt: ~2x CPU per message), which lengthens it when
# messages queue: measured 1.4x, 1.8x and 2.5x in full runs, 1.4-3.2x in quick runs next to the rest of the suite
# (the target, <= 1x, is not met). With receipt columns (2026-11-25, load 2-3.5): 0.43x, 23x and 1.97x in full runs
# (the 23x run's two-copy rounds had a 52.7 ms p99). That was the garbage collector: a tuple per receipt, held
# until its batch was cut, reached the oldest generation and set off full collections of the ~27k objects of a
# worker, 10-15 ms each, in two-copy runs only; receipts are now columns of ints and the worker freezes its
# start-up objects (gc.freeze), and no collection over 0.5 ms beyond a single 2-3 ms one per run is left.
# Then, on a quiet machine: 2.8x and 3.0x (p99 0.37-0.49 ms -> 1.1-1.4 ms; p99.9 5.6 -> 2.4 ms). The late first
# arrivals are mostly the second copy's: both copies waited while the worker drained a burst at twice the work.
# The floor catches a collapse (a 20 ms stall per second made it 22x), in both modes.
# 2026-11-25 with path hiccups added (same file, 3 full and 6 quick runs, load 1.4-3): 1.53x, 1.48x, 1.16x full;
# 3.56x, 1.65x, 1.94x, 0.83x, 1.26x, 1.64x quick.
FLOORS = {
    "rate_ratio_min": 0.97,
    "disk_per_message_ratio_max": 1.1,
    "p99_ratio_max": 5.0,
}


# Path hiccups (the second measurement): on a real network each connection's path has its own short outages (a
# retransmitted segment, a congested hop): nothing arrives for tens of ms, then everything at once. ime-sim
# --delay-every holds each connection's messages for DELAY_FOR at its own random times (gaps uniform in
# [0.5, 1.5] x DELAY_EVERY, drawn per connection) and then sends them, none dropped. 20 ms is one fast
# retransmission on a path with a 20 ms round trip; one every ~0.5 s per connection is, at 20k msgs/s (~4 MB/s,
# ~2,800 full segments/s), a segment loss rate near 0.07%: a busy but healthy internet path. One copy then
# receives ~4% of the messages up to 20 ms late, so its p99 lies inside the hiccups; two copies are both held
# only when their hiccups overlap (~0.2% of the time), which the first arrival dodges.
# Measured (2026-11-25, load 1.4-3, the machine shared; medians of 3 rounds in full mode, 1 in quick):
#   full  p99 ratio 0.047 / 0.113 / 0.185 (one copy 15.9-17.0 ms, two 0.75-3.1 ms); p99.9 0.55 / 0.50 / 0.59
#   quick p99 ratio 0.051 / 0.243 / 0.090 / 0.029 / 0.121 / 0.213 (one copy 16.6-17.6 ms, two 0.49-4.2 ms);
#         p99.9 0.08 / 0.92 / 0.16 / 0.07 / 0.45 / 0.25
# The floor, p99 <= 0.5x, leaves 2x over the worst run and fails when the first arrival stops winning (a recorder
# that kept the later copy, or copies that share one path, would be near 1x). p99.9 is reported, not gated: it
# lies in the overlaps, whose count over a few seconds varies too much for a gate that holds on a loaded machine.
DELAY_EVERY = 0.5
DELAY_FOR = 0.02
HICCUP_FLOORS = {
    "rate_ratio_min": 0.97,
    "p99_ratio_max": 0.5,
}


def per_message(run: Run, key: str) -> float:
    received = run.extra["received"]
    return run.extra[key] / received if received else 0.0


def measure_copies(s: Sim, tmp_path: Path) -> dict[int, list[Run]]:
    """ROUNDS of (one copy, two copies) against the running simulator `s`, alternating."""
    runs: dict[int, list[Run]] = {1: [], 2: []}
    for _ in range(ROUNDS):
        for copies in (1, 2):
            before = s.connections()
            # One copy runs beside a bare counting client on the same contracts, so that the simulator
            # writes every message twice in both runs: the comparison is the recorder's, not the feed's.
            other = None
            if copies == 1:
                other = threading.Thread(target=run_ceiling, args=(s, SECONDS, tmp_path, False))
                other.start()
            run = run_recorder(s, SECONDS, tmp_path, latency=True, extra_args=("--redundancy", str(copies)))
            if other is not None:
                other.join()
            counters = new_connections(before, s.connections())
            # The live market drops for a client that cannot keep up (or a hiccup that overflows the write
            # buffer): none may be dropped, so every message the recorder had to record is in its latency.
            assert counters["dropped"] == 0, (copies, counters)
            runs[copies].append(run)
    return runs


def figures_of(runs: dict[int, list[Run]]) -> dict[str, float]:
    """Medians over rounds per number of copies, and the ratios of two copies to one."""
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
    figures.update({
        "rate_ratio": figures["rate_2"] / figures["rate_1"],
        "p99_ratio": figures["p99_us_2"] / figures["p99_us_1"],
        "p999_ratio": figures["p999_us_2"] / figures["p999_us_1"],
        "cpu_per_message_ratio": figures["cpu_us_per_message_2"] / figures["cpu_us_per_message_1"],
        "disk_per_message_ratio": figures["disk_bytes_per_message_2"] / figures["disk_bytes_per_message_1"],
    })
    # Every round's p99 per copies, so that the spread is in the results, not only the median.
    for copies in (1, 2):
        figures[f"p99_us_{copies}_rounds"] = [round(r.latency.percentile(99) / 1e3, 1) for r in runs[copies]]
    return figures


def test_redundancy_two_copies_vs_one_at_20k(benchmark: Any, tmp_path: Any) -> None:
    runs: dict[int, list[Run]] = {}
    with sim(tmp_path, RATE) as s:
        benchmark.pedantic(lambda: runs.update(measure_copies(s, tmp_path)), rounds=1, iterations=1)
    figures = figures_of(runs)
    benchmark.extra_info.update({k: v if isinstance(v, list) else round(v, 3) for k, v in figures.items()})
    benchmark.extra_info["floors"] = FLOORS
    benchmark.extra_info["key"] = "redundancy/2-vs-1@20k"
    assert figures["rate_ratio"] >= FLOORS["rate_ratio_min"], figures
    assert figures["disk_per_message_ratio"] <= FLOORS["disk_per_message_ratio_max"], figures
    assert figures["p99_ratio"] <= FLOORS["p99_ratio_max"], figures


def test_redundancy_two_copies_vs_one_at_20k_with_path_hiccups(benchmark: Any, tmp_path: Any) -> None:
    runs: dict[int, list[Run]] = {}
    hiccups = ("--delay-every", f"{DELAY_EVERY:g}", "--delay-for", f"{DELAY_FOR:g}")
    with sim(tmp_path, RATE, 50, *hiccups) as s:
        benchmark.pedantic(lambda: runs.update(measure_copies(s, tmp_path)), rounds=1, iterations=1)
    figures = figures_of(runs)
    benchmark.extra_info.update({k: v if isinstance(v, list) else round(v, 3) for k, v in figures.items()})
    benchmark.extra_info["floors"] = HICCUP_FLOORS
    benchmark.extra_info["key"] = f"redundancy/2-vs-1@20k/hiccups {DELAY_FOR * 1e3:g}ms every ~{DELAY_EVERY:g}s"
    # Loss 0: the assertion in measure_copies (nothing dropped by the simulator) and every message received.
    assert figures["rate_ratio"] >= HICCUP_FLOORS["rate_ratio_min"], figures
    assert figures["p99_ratio"] <= HICCUP_FLOORS["p99_ratio_max"], figures
