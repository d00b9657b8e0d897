"""The replay loop: take records in receive-time order, wait until each is due, hand it to a sink.

Sinks get records in batches (everything due at the same moment); `flush` is called before every wait,
so the bytes reach the pipe or socket on time, and lateness is measured at that moment.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from recorder.events import decode_event
from recorder.histogram import Histogram
from recorder.model.record import Record, RecordKind
from recorder.replay.pacing import Pacer

SPIN_S = 0.0012  # below this, busy-wait instead of sleeping (sleep overshoots by up to ~0.1 ms)
MAX_BATCH = 4096

Row = tuple[Record, str | None]


@dataclass(slots=True)
class ReplayReport:
    records: int = 0
    events: int = 0
    event_kinds: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    span_s: float = 0.0
    compressed_s: float = 0.0
    lateness: Histogram = field(default_factory=Histogram)
    stopped_early: bool = False
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that stopped it, if one did
    clients_cut: int = 0  # --serve: clients closed because they could not keep up within --send-timeout
    cut_reason: str = ""

    @property
    def effective_speed(self) -> float:
        return self.span_s / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        late = self.lateness
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.event_kinds.items()))
        out = [
            f"replayed {self.records} records ({self.events} connection events) in {self.wall_s:.3f}s wall; "
            f"recording span {self.span_s:.3f}s, effective speed {self.effective_speed:.2f}x"
            + (f", {self.compressed_s:.1f}s of idle time skipped by --max-gap" if self.compressed_s else ""),
            f"lateness: p50 {late.percentile(50) / 1e3:.1f}µs, p99 {late.percentile(99) / 1e3:.1f}µs, "
            f"p99.9 {late.percentile(99.9) / 1e3:.1f}µs, max {late.max / 1e3:.1f}µs"
            if late.count else "lateness: not measured (--speed max does not pace)",
        ]
        if kinds:
            out.append(f"connection events: {kinds}")
        if self.clients_cut:
            out.append(f"cut {self.clients_cut} client(s) that could not keep up ({self.cut_reason}); "
                       "the replay went on for the others")
        if self.signal is not None:
            out.append(f"interrupted by {signal.Signals(self.signal).name} before the end of the recording")
        elif self.stopped_early:
            out.append("stopped before the end of the recording")
        return out


def play(rows: Iterator[Row], pacer: Pacer, emit: Callable[[list[Row]], None], flush: Callable[[], None],
         clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
         should_stop: Callable[[], bool] | None = None, start: float | None = None) -> ReplayReport:
    """Pace `rows` onto `emit`; returns the timing report. `start` is the clock value of t0 (default: now)."""
    report = ReplayReport()
    begin = start if start is not None else clock()
    batch: list[Row] = []
    pending_due: list[float] = []
    played_span = 0.0
    paced = pacer.speed is not None

    def deliver() -> None:
        if batch:
            emit(batch.copy())
            batch.clear()
        flush()
        if pending_due:
            now = clock()
            for due in pending_due:
                report.lateness.record(int(max(0.0, now - due) * 1e9))
            pending_due.clear()

    for row in rows:
        rec = row[0]
        due = begin + pacer.offset_s(rec.ts_ns)
        if paced:
            now = clock()
            if due > now:
                deliver()
                if should_stop is not None and should_stop():
                    report.stopped_early = True
                    break
                remaining = due - clock()
                if remaining > SPIN_S:
                    sleep(remaining - SPIN_S)
                while clock() < due:
                    pass
            pending_due.append(due)
        report.records += 1
        if rec.kind == RecordKind.EVENT:
            report.events += 1
            name = str(decode_event(rec.payload).get("event"))
            report.event_kinds[name] = report.event_kinds.get(name, 0) + 1
        batch.append(row)
        played_span = pacer.span_s
        if len(batch) >= MAX_BATCH:
            emit(batch.copy())
            batch.clear()
            if not paced and should_stop is not None and should_stop():
                report.stopped_early = True
                break
    deliver()
    report.wall_s = clock() - begin
    report.span_s = played_span
    report.compressed_s = pacer.compressed_ns / 1e9
    return report
