"""What the operator sees: per-shard figures, the live table, the periodic log line, the exit summary.

Everything here is pure formatting of `ShardView`s, except `Console`, which owns the terminal (or whatever
stderr is), and `ConsoleHandler`, which routes the supervisor's log lines through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from recorder import clock
from recorder.humanize import human_bytes, human_count, human_duration
from recorder.record.messages import Status
from recorder.timeparse import TimeLocale

STALE_AFTER_S = 3.0  # a running worker reports every second; silence this long means it is frozen


@dataclass(slots=True)
class ShardView:
    shard: int
    contracts: int
    state: str = "starting"
    pid: int = 0
    restarts: int = 0
    connections_open: int = 0
    connections: int = 0
    messages: int = 0
    bytes: int = 0
    reconnects: int = 0
    last_message_ns: int = 0
    records_written: int = 0
    bytes_on_disk: int = 0
    files_sealed: int = 0
    backlog_bytes: int = 0
    paused: bool = False
    rejected: list[str] = field(default_factory=list)
    copies: int = 0
    downtime_ns: int = 0
    group_ns: int = 0
    groups: int = 0
    groups_disconnected: int = 0
    live_handed: int = 0
    sent_ns: int = 0  # when the worker sent its last status
    updated_at: float = 0.0  # monotonic time the last status arrived
    msg_rate: float = 0.0
    byte_rate: float = 0.0
    # Totals of earlier incarnations (a restarted worker counts from zero again).
    base_messages: int = 0
    base_bytes: int = 0
    base_reconnects: int = 0
    base_records: int = 0
    base_disk: int = 0
    base_files: int = 0
    base_copies: int = 0
    base_downtime_ns: int = 0
    base_group_ns: int = 0
    base_live_handed: int = 0
    _last_sample: tuple[float, int, int] | None = None

    def update(self, status: Status, now: float) -> None:
        self.pid = status.pid
        self.connections_open, self.connections = status.connections_open, status.connections
        self.reconnects, self.last_message_ns = status.reconnects, status.last_message_ns
        self.records_written, self.bytes_on_disk = status.records_written, status.bytes_on_disk
        self.files_sealed, self.backlog_bytes, self.paused = status.files_sealed, status.backlog_bytes, status.paused
        self.messages, self.bytes, self.copies = status.messages, status.bytes, status.copies
        self.downtime_ns, self.group_ns = status.downtime_ns, status.group_ns
        self.groups, self.groups_disconnected = status.groups, status.groups_disconnected
        self.live_handed = status.live_handed
        self.rejected = list(status.rejected)
        self.sent_ns, self.updated_at = status.sent_ns, now
        total_m, total_b = self.total_messages, self.total_bytes
        if self._last_sample is not None:
            t0, m0, b0 = self._last_sample
            dt = now - t0
            if dt > 0:
                self.msg_rate = max(0.0, (total_m - m0) / dt)
                self.byte_rate = max(0.0, (total_b - b0) / dt)
        self._last_sample = (now, total_m, total_b)

    def incarnation_ended(self) -> None:
        self.base_messages += self.messages
        self.base_bytes += self.bytes
        self.base_reconnects += self.reconnects
        self.base_records += self.records_written
        self.base_disk += self.bytes_on_disk
        self.base_files += self.files_sealed
        self.base_copies += self.copies
        self.base_downtime_ns += self.downtime_ns
        self.base_group_ns += self.group_ns
        self.base_live_handed += self.live_handed
        self.live_handed = 0
        self.messages = self.bytes = self.reconnects = self.records_written = self.copies = 0
        self.downtime_ns = self.group_ns = 0
        self.bytes_on_disk = self.files_sealed = self.connections_open = self.connections = 0
        # No process, no connection: every group is uncovered until the next worker connects it.
        self.groups_disconnected = self.groups
        self.paused = False
        self._last_sample = None
        self.msg_rate = self.byte_rate = 0.0

    @property
    def total_messages(self) -> int:
        return self.base_messages + self.messages

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + self.bytes

    @property
    def total_reconnects(self) -> int:
        return self.base_reconnects + self.reconnects

    @property
    def total_records(self) -> int:
        return self.base_records + self.records_written

    @property
    def total_disk(self) -> int:
        return self.base_disk + self.bytes_on_disk

    @property
    def total_files(self) -> int:
        return self.base_files + self.files_sealed

    @property
    def total_live_handed(self) -> int:
        return self.base_live_handed + self.live_handed

    @property
    def total_copies(self) -> int:
        return self.base_copies + self.copies

    @property
    def total_downtime_ns(self) -> int:
        return self.base_downtime_ns + self.downtime_ns

    def stale(self, now: float) -> bool:
        """Running, but no status for a while: the worker is frozen (SIGSTOP, a hung loop) or dying."""
        return self.state == "running" and self.updated_at > 0 and now - self.updated_at > STALE_AFTER_S

    def shown_state(self, now: float) -> str:
        return "stale" if self.stale(now) else self.state + (" (paused)" if self.paused else "")

    def last_age_s(self, now_ns: int) -> float | None:
        """Age of the last message when the worker last reported (its own clock, at send time).

        The supervisor cannot know more recent arrivals; adding the report's own age (up to a status
        interval) showed ~0.5 s at any message rate. A report that stops coming is shown as stale instead.
        """
        if not self.last_message_ns or not self.sent_ns:
            return None
        return max(0, self.sent_ns - self.last_message_ns) / 1e9

    def current_rate(self, now: float) -> float:
        return 0.0 if self.stale(now) else self.msg_rate

    def connected_fraction(self) -> float | None:
        """Share of group-time with at least one copy connected (1.0: nothing can have been missed)."""
        total = self.base_group_ns + self.group_ns
        if total <= 0:
            return None
        return max(0.0, 1.0 - self.total_downtime_ns / total)


def table(views: list[ShardView], now_ns: int, elapsed_s: float, now: float | None = None,
          shown: TimeLocale | None = None) -> list[str]:
    """The live table; its clock in `shown` (--tz and --calendar; by default as IME_TZ and IME_CALENDAR say, which
    ime-record sets from its options)."""
    # Every column has a bounded width (human_count/human_bytes), so the table fits an 80-column terminal.
    now = time.monotonic() if now is None else now
    shown = shown or TimeLocale.from_env()
    head = (f"{'SHARD':>5} {'STATE':<10} {'CONN':>7} {'MSG/S':>6} {'MB/S':>6} {'MSGS':>6} {'RECONN':>6} "
            f"{'LAST':>7} {'DISK':>9} {'RESTART':>7}")
    lines = [f"ime-record: {len(views)} shards, running {human_duration(elapsed_s)} (now {shown.format(now_ns, 0)})",
             head]
    for v in views:
        state = v.shown_state(now)
        lines.append(
            f"{v.shard:>5} {'paused' if state.endswith('(paused)') else state:<10.10} "
            f"{f'{v.connections_open}/{v.connections}':>7.7} {human_count(v.current_rate(now)):>6} "
            f"{_mb_rate(v.byte_rate):>6} {human_count(v.total_messages):>6} "
            f"{human_count(v.total_reconnects):>6} {human_duration(v.last_age_s(now_ns)):>7.7} "
            f"{human_bytes(v.total_disk):>9} {human_count(v.restarts):>7}"
        )
    rejected = [c for v in views for c in v.rejected]
    if rejected:
        line = f"rejected by the server ({len(rejected)}): {', '.join(rejected[:10])}"
        lines.append(line if len(line) <= 80 else line[:78] + " …")  # the table fits 80 columns
    return lines


def _mb_rate(byte_rate: float) -> str:
    mb = byte_rate / 1e6
    return f"{mb:.2f}" if mb < 100 else human_count(mb)


def _total(views: list[ShardView], name: str) -> float:
    return sum(getattr(v, name) for v in views)


def summary_line(views: list[ShardView], now_ns: int, now: float | None = None) -> str:
    now = time.monotonic() if now is None else now
    # A stale shard's age would be a figure from its last report: leave it out, the STALE note says why.
    ages = [a for v in views if not v.stale(now) and (a := v.last_age_s(now_ns)) is not None]
    stale = [str(v.shard) for v in views if v.stale(now)]
    return (
        f"status: {len(views)} shards"
        + (f" ({len(stale)} STALE, no report for >{STALE_AFTER_S:.0f}s: shard {', '.join(stale)})" if stale else "")
        + f", {_total(views, 'connections_open')}/{_total(views, 'connections')} connections, "
        f"{sum(v.current_rate(now) for v in views):.0f} msgs/s, {_total(views, 'byte_rate') / 1e6:.2f} MB/s, "
        f"{_total(views, 'total_messages')} messages, {_total(views, 'total_reconnects')} reconnects, "
        f"{_total(views, 'restarts')} restarts, last frame {human_duration(min(ages) if ages else None)} ago, "
        f"{human_bytes(_total(views, 'total_disk'))} on disk"
    )


@dataclass(frozen=True, slots=True)
class DiskFigures:
    """What the recording directory holds when the run ends, and what retention took from it meanwhile."""

    files: int
    bytes: int
    removed_files: int = 0
    removed_bytes: int = 0


def exit_summary(views: list[ShardView], elapsed_s: float, disk: DiskFigures | None = None, now_ns: int | None = None,
                 shown: TimeLocale | None = None) -> list[str]:
    end_ns = clock.time_ns() if now_ns is None else now_ns
    shown = shown or TimeLocale.from_env()
    lines = [f"recorded for {human_duration(elapsed_s)}, from {shown.format(end_ns - int(elapsed_s * 1e9), 0)} to "
             f"{shown.format(end_ns, 0)}:"]
    for v in views:
        lines.append(
            f"  shard {v.shard}: {v.total_messages} messages ({human_bytes(v.total_bytes)} received"
            + (" over all copies" if v.total_copies else "") + ") from "
            f"{v.contracts - len(v.rejected)} contracts, {v.total_records} records in {v.total_files} sealed files "
            f"({human_bytes(v.total_disk)} written), "
            f"{v.total_reconnects} reconnects, {v.restarts} restarts, state {v.state}"
            + (f", {v.total_copies} redundant copies as receipts" if v.total_copies else "")
            + (f", connected {100 * f:.2f}% of the time" if (f := v.connected_fraction()) is not None
               else "")
            + (f", rejected: {', '.join(v.rejected)}" if v.rejected else "")
        )
    total = sum(v.total_messages for v in views)
    rate = total / elapsed_s if elapsed_s > 0 else 0.0
    # Written is this run's; retention may have removed some of it (or older runs' files) since: what the
    # directory holds now is counted apart, never written minus removed.
    line = (f"  total: {total} messages, {rate:.0f} msgs/s on average, "
            f"{human_bytes(sum(v.total_disk for v in views))} written")
    if disk is not None:
        if disk.removed_files:
            line += (f"; retention removed {disk.removed_files} files ({human_bytes(disk.removed_bytes)}) of this "
                     "and earlier runs")
        line += f"; the recording directory holds {disk.files} segment files ({human_bytes(disk.bytes)})"
    lines.append(line)
    return lines


class Console:
    """Log lines scroll above a live table on a terminal; elsewhere only log lines are written.

    The console can go away while the recorder runs (`ime-record … 2>&1 | head -1`, a terminal closed or an SSH
    session dropped): a write then fails (EPIPE, EIO). Recording matters more than its log, so from then on the
    stream's file descriptor (and stdout's, if it is the same pipe or terminal) writes to /dev/null: every later
    write anywhere in the process (log lines, the exit summary, a library's warning) succeeds and goes nowhere.

    The table is redrawn by moving the cursor up over it, so each of its lines must take exactly one row: a line
    wider than the terminal wrapped onto two, the cursor went up too few rows, and old lines stayed on screen.
    Lines are cut to the terminal's width (asked again at every draw: it may have been resized).
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, width: int | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._width = width
        self.lost = False  # the console went away
        self._drawn = 0

    def width(self) -> int:
        if self._width is not None:
            return self._width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def _write(self, text: str) -> None:
        if self.lost:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        self.live = False
        self._drawn = 0
        with contextlib.suppress(OSError, ValueError):
            fd = self.stream.fileno()
            gone = os.fstat(fd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            for other in (1, 2):
                with contextlib.suppress(OSError):
                    st = os.fstat(other)
                    if other != fd and (st.st_dev, st.st_ino) != (gone.st_dev, gone.st_ino):
                        continue
                    os.dup2(devnull, other)
            os.dup2(devnull, fd)
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()  # what failed to go out, to /dev/null now

    def _erase(self) -> None:
        if self._drawn:
            drawn, self._drawn = self._drawn, 0
            self._write(f"\x1b[{drawn}F\x1b[J")

    def log(self, line: str) -> None:
        self._erase()
        self._write(line.rstrip("\n") + "\n")

    def draw(self, lines: list[str]) -> None:
        if not self.live:
            return
        self._erase()
        # One column spare: a line that fills the last column leaves some terminals' cursor on the next row.
        room = max(self.width() - 1, 2)
        lines = [line if len(line) <= room else line[:room - 1] + "…" for line in lines]
        self._write("\n".join(lines) + "\n")
        if not self.lost:
            self._drawn = len(lines)

    def close(self) -> None:
        self._erase()
        self._write("")


class ConsoleHandler(logging.Handler):
    """The supervisor's log lines through its Console: above the live table, and never failing with it."""

    def __init__(self, console: Console, formatter: logging.Formatter | None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.console.log(line)


@contextlib.contextmanager
def logging_through(console: Console) -> Iterator[None]:
    """The root logger's handler on the console's stream is replaced by a ConsoleHandler while this lasts."""
    root = logging.getLogger()
    replaced = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) is console.stream]
    if not replaced:
        yield
        return
    handler = ConsoleHandler(console, replaced[0].formatter, replaced[0].level)
    for h in replaced:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in replaced:
            root.addHandler(h)


def now_ns() -> int:
    return clock.time_ns()
