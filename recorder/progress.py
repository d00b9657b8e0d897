"""Progress of long work (merge, verify, recover, export, stats, report, cat): a bar on stderr while stderr is a
terminal, nothing at all otherwise.

Scripts read stdout, and logs and pipes need no bar: the bar never goes to stdout, and a stderr that is not a
terminal gets not one byte of it. The work only counts (`advance`, or a `poll` of a counter the readers keep
anyway); a thread draws, a few times a second, so that a loop over records pays an integer addition, not a
terminal write. Lines the command prints while the bar is up go through `echo`, which takes the bar off the line
first: a terminal showing both stdout and stderr never shows a line glued to a bar.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

import click

DRAW_INTERVAL_S = 0.2
_ERASE = "\r\x1b[K"


class Progress:
    """`with Progress(total, "merging") as bar:` then `bar.advance(n)` (or `poll=`), `bar.echo(line)` to print."""

    def __init__(self, total: int, label: str, *, poll: Callable[[], int] | None = None, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.total = max(0, total)
        self.label = label
        self.done = 0
        self._poll = poll
        self._stream = stream or sys.stderr
        self.shown = enabled and self.total > 0 and _is_terminal(self._stream)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._drawn = False

    def advance(self, n: int) -> None:
        self.done += n

    def reach(self, done: int) -> None:
        """At least `done` of the total is done (a file finished: whatever its frames did not count)."""
        if done > self.done:
            self.done = done

    def up_to(self, end: int) -> Callable[[int], None]:
        """`advance`, never past `end`: for work that may read a file twice (a check, then a repair)."""

        def advance(n: int) -> None:
            self.done = min(self.done + n, max(end, self.done))

        return advance

    def echo(self, line: str, err: bool = False) -> None:
        """Print a line (to stdout unless `err`) with the bar taken off the terminal's line first."""
        with self._lock:
            self._erase()
            click.echo(line, err=err)
            self._draw()

    def __enter__(self) -> Progress:
        if self.shown:
            self._started = time.monotonic()
            with self._lock:
                self._draw()  # at once: work shorter than a redraw still says what it did
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._erase()

    def _run(self) -> None:
        while not self._stop.wait(DRAW_INTERVAL_S):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        if not self.shown or self._stop.is_set():
            return
        if self._poll is not None:
            self.reach(self._poll())
        self._write(_ERASE + self.line(self._width()))
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self._write(_ERASE)
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self.shown = False  # the terminal went away: the work goes on without a bar

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80
        return columns if columns > 0 else 80  # a terminal that was never given a size says 0

    def line(self, width: int = 80) -> str:
        """`merging [#######-------]  47% 0:12 left`, at most `width - 1` columns (a full last column wraps)."""
        done = min(self.done, self.total)
        fraction = done / self.total if self.total else 1.0
        elapsed = time.monotonic() - self._started
        left = ""
        if done and elapsed >= 1.0 and fraction < 1.0:
            remaining = int(elapsed * (self.total - done) / done)
            left = f" {remaining // 3600}:{remaining // 60 % 60:02d}:{remaining % 60:02d} left" if remaining >= 3600 \
                else f" {remaining // 60}:{remaining % 60:02d} left"
        tail = f" {100 * fraction:3.0f}%{left}"
        room = max(width - 1 - len(self.label) - len(tail) - 3, 0)
        bar_width = min(room, 40)
        filled = int(bar_width * fraction)
        bar = f" [{'#' * filled}{'-' * (bar_width - filled)}]" if bar_width >= 10 else ""
        return (self.label + bar + tail)[:max(width - 1, 1)]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
