"""What the benchmark peers hand the harness: binary int64 pairs in files (never a giant JSON on a pipe).

OUT.timeline  (receive ns, messages received so far): the first message, one mark every MARK_EVERY, the last.
              Every peer's throughput is measured over the same window of its own timeline (e2e.window_rate).
OUT.samples   (receive ns, send ns) per message, for latency: the send time is the frame's own `timestamp`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from pathlib import Path

MARK_EVERY = 256


def write_timeline(out: Path, first: int, marks: Sequence[int], last: int, total: int) -> None:
    pairs = array("q")
    if total:
        pairs.extend((first, 1))
        for i, t in enumerate(marks, 1):
            pairs.extend((t, i * MARK_EVERY))
        pairs.extend((last, total))
    with open(f"{out}.timeline", "wb") as f:
        pairs.tofile(f)


def timeline_of(times: Sequence[int], every: int = MARK_EVERY) -> list[tuple[int, int]]:
    """A timeline from every receive time (sorted): what the recorder's segments and the seed peer give."""
    if not times:
        return []
    out = [(times[i], i + 1) for i in range(0, len(times), every)]
    if out[-1][1] != len(times):
        out.append((times[-1], len(times)))
    return out


def write_samples(out: Path, received: Sequence[int], stamps: Iterable[bytes | str]) -> None:
    from recorder.feed.message import parse_timestamp_ns  # after the measurement: not on the hot path

    pairs = array("q")
    for t, stamp in zip(received, stamps, strict=True):
        pairs.extend((t, parse_timestamp_ns(stamp.decode() if isinstance(stamp, bytes) else stamp)))
    with open(f"{out}.samples", "wb") as f:
        pairs.tofile(f)


def read_pairs(path: Path | str) -> list[tuple[int, int]]:
    data = array("q")
    with open(path, "rb") as f:
        data.frombytes(f.read())
    return list(zip(data[0::2], data[1::2], strict=True))


def count_at(timeline: list[tuple[int, int]], t: int) -> float:
    """Messages received by time t, interpolated between marks."""
    i = bisect_right(timeline, (t, float("inf")))
    if i == 0:
        return 0.0
    if i == len(timeline):
        return float(timeline[-1][1])
    (t0, c0), (t1, c1) = timeline[i - 1], timeline[i]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else float(c1)
