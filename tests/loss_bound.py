"""How much a SIGKILLed worker may lose: what `--flush-ms` implies, measured against the sim's sent log.

A worker hands its current batch to the writer thread once the batch's oldest record is `--flush-ms` old (on the
next frame, or on the 50 ms ticker when the feed is quiet); the writer thread then compresses and writes it.
SIGKILL loses the batch being filled, any batch still queued for the writer, and what sat in the socket buffers.
On an idle machine that is about one flush interval of messages. On a loaded 2-core machine the worker and its
writer thread can wait for a core, so the bound adds a scheduling allowance — a time, turned into a message
count with the connection's own measured rate, never a fixed count that means nothing at another rate.
"""

from __future__ import annotations

import math
from pathlib import Path

from recorder.model.record import RecordKind
from recorder.segment.reader import discover, open_segment

TICK_S = 0.05  # the worker's ticker period (record/worker.py `_ticker`)
# Time a loaded 2-core machine may keep the worker or its writer thread off a core (generous: measured lateness
# of the whole tail was ≤ 0.04 s, idle or with the other core busy, at --flush-ms 50).
SCHEDULING_ALLOWANCE_S = 0.2


def sent_times(sent_log: Path, conn: int) -> list[int]:
    """Send times (ns) of the messages the sim sent on one of its connections, in order."""
    times: list[int] = []
    for path in sorted(discover([sent_log])):
        for rec in open_segment(path).iter_records():
            if rec.conn == conn and rec.kind in (RecordKind.TEXT, RecordKind.BINARY):
                times.append(rec.ts_ns)
    return times


def check_killed_tail(times: list[int], recorded: int, killed_ns: int, flush_ms: float) -> dict[str, float]:
    """Assert the killed connection lost only its last flush interval (plus the allowance); return the figures.

    `times` are the sim's send times of the connection's messages, `recorded` how many of them (a prefix) the
    recording holds, `killed_ns` the wall-clock time the SIGKILL was sent.
    """
    before = [t for t in times if t < killed_ns]
    assert len(before) >= 2, "the connection carried messages before the kill"
    rate = (len(before) - 1) / ((before[-1] - before[0]) / 1e9)
    window_s = flush_ms / 1e3 + TICK_S + SCHEDULING_ALLOWANCE_S
    lost_before_kill = before[recorded:]
    allowed = math.ceil(rate * window_s) + 1
    figures = {"rate": rate, "lost": len(lost_before_kill), "allowed": allowed,
               "oldest_lost_age_s": (killed_ns - lost_before_kill[0]) / 1e9 if lost_before_kill else 0.0}
    # Everything sent more than one flush window (plus allowance) before the kill was on disk ...
    assert figures["oldest_lost_age_s"] <= window_s, figures
    # ... so the count lost is at most what the measured rate delivers in that window.
    assert len(lost_before_kill) <= allowed, figures
    return figures
