"""The deduper alone, on its fast path: one original, its copy from the other source (two copies of one feed).

Run: .venv/bin/pytest benchmarks/test_dedupe.py --benchmark-only -s

Two shapes, 200k distinct ~750-byte messages (digests computed before timing), 20k messages/s of feed time, the
second copy 40 µs behind the first (so ~1 message in flight between them), a 2 s window (~40k live originals):
- `observe_digest`, one arrival at a time: the recorder's receive thread (recorder/record/listener.py);
- `observe_batch`, 64 arrivals at a time: `ime-segments merge`.
Reported in ns per arrival (min of the rounds). Before and after a change: run this module in both checkouts
(`PYTHONPATH=<checkout> pytest benchmarks/test_dedupe.py`).
"""

from __future__ import annotations

from typing import Any

import pytest

from recorder.segment import dedupe

N = 200_000
STEP_NS = 50_000  # 20k messages/s
LAG_NS = 40_000
WINDOW_NS = 2_000_000_000
BATCH = 64
ROUNDS = 5


def _arrivals() -> tuple[list[int], list[int], list[bytes], list[int]]:
    """Arrival order: copy 0 receives message i at i·STEP, copy 1 at i·STEP + LAG."""
    rows = []
    for i in range(N):
        key = dedupe.digest(b"%d" % i + b"x" * 740)
        rows.append((i * STEP_NS, 0, key, 2 * i))
        rows.append((i * STEP_NS + LAG_NS, 1, key, 2 * i + 1))
    rows.sort()
    stamps, sources, keys, refs = (list(col) for col in zip(*rows, strict=True))
    return stamps, sources, keys, refs


@pytest.fixture(scope="module")
def arrivals() -> tuple[list[int], list[int], list[bytes], list[int]]:
    return _arrivals()


def _one_by_one(d: Any, stamps: list[int], sources: list[int], keys: list[bytes], refs: list[int]) -> int:
    observe = d.observe_digest
    copies = 0
    for arrival in zip(stamps, sources, keys, refs, strict=True):
        copies += observe(*arrival) is not None
    return copies


def _batched(d: Any, stamps: list[int], sources: list[int], keys: list[bytes], refs: list[int]) -> int:
    copies = 0
    for lo in range(0, len(stamps), BATCH):
        hi = lo + BATCH
        copies += len(d.observe_batch(stamps[lo:hi], sources[lo:hi], keys[lo:hi], refs[lo:hi])[0])
    return copies


@pytest.mark.parametrize("shape", ["observe_digest", "observe_batch"])
def test_dedupe_fast_path(benchmark: Any, arrivals: tuple[list[int], ...], shape: str) -> None:
    run = _one_by_one if shape == "observe_digest" else _batched
    copies = benchmark.pedantic(lambda d: run(d, *arrivals), setup=lambda: ((dedupe.Deduper(WINDOW_NS),), {}),
                                rounds=ROUNDS, iterations=1)
    assert copies == N
    per_arrival = benchmark.stats.stats.min / (2 * N) * 1e9
    benchmark.extra_info["ns_per_arrival"] = round(per_arrival, 1)
    print(f"\n{shape}: {per_arrival:.0f} ns per arrival (min of {ROUNDS})")
