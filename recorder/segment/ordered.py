"""The one merge of time-ordered streams, for every reader of several files and for `ime-segments merge`.

A stream is an iterator of batches (lists) of rows whose first item is the receive time (`Row`s, `Record`s): one
shard's files in file order. `merged` gives every row by time, rows of equal time in stream order (docs/FORMAT.md
"Reading" step 7), each stream's rows in its own order even where its clock stepped back: heapq.merge's order
(tests/test_segment_store.py compares them), a batch at a time instead of a heap operation per row. Each round
takes from every stream its pending rows up to the smallest "last pending time" (the bound) and sorts them
together (Timsort merges the pre-sorted runs in C). A batch whose times step back is taken as its sorted runs, so
that the sort never moves a row before one its stream holds ahead of it; and behind the first stream whose
pending rows end at the bound, the others keep their rows of that time: its next batch may start with more.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, count, islice
from operator import gt, itemgetter
from typing import Any, TypeVar

from recorder import native

T = TypeVar("T", bound=Sequence[Any])
_TS = itemgetter(0)


def _first_descent(rows: Sequence[Any], start: int) -> int:
    """The first index after `start` whose time is below the one before it; len(rows) when none is."""
    stamps = list(map(_TS, islice(rows, start, None)))
    return next(compress(count(start + 1), map(gt, stamps, islice(stamps, 1, None))), len(rows))


# The same, in C (a few ns a row) when recorder/segment/_block.c is built and used (recorder/native.py).
first_descent = getattr(native.module("block") if native.on("block") else None, "first_descent", _first_descent)


def _runs(batches: Iterator[list[T]]) -> Iterator[list[T]]:
    """Each batch, or its sorted runs one after the other where its times step back."""
    for batch in batches:
        start = 0
        while start < len(batch):
            end = first_descent(batch, start)
            yield batch if not start and end == len(batch) else batch[start:end]
            start = end


class _Pending:
    """A stream's rows not merged yet: its current sorted run, and where in it the merge is."""

    __slots__ = ("buf", "pos", "runs")

    def __init__(self, batches: Iterator[list[T]]) -> None:
        self.runs = _runs(batches)
        self.buf: list[T] = []
        self.pos = 0

    def fill(self) -> bool:
        """Make sure rows are pending; False when the stream is exhausted."""
        while self.pos >= len(self.buf):
            run = next(self.runs, None)
            if run is None:
                return False
            self.buf, self.pos = run, 0
        return True

    def take(self, end: int) -> list[T]:
        buf, pos = self.buf, self.pos
        self.pos = end
        return buf if not pos and end == len(buf) else buf[pos:end]


def merged(streams: Iterable[Iterator[list[T]]]) -> Iterator[list[T]]:
    """The rows of all streams, in the order the module docstring gives, a batch at a time."""
    active = [p for p in map(_Pending, streams) if p.fill()]
    while active:
        yield active[0].take(len(active[0].buf)) if len(active) == 1 else _round(active)
        active = [p for p in active if p.fill()]


def _round(active: list[_Pending]) -> list[T]:
    bound = min(p.buf[-1][0] for p in active)
    rows: list[T] = []
    tied = False  # an earlier stream's pending rows end at the bound
    for p in active:
        buf = p.buf
        if not tied and buf[-1][0] == bound:
            end, tied = len(buf), True
        else:
            end = (bisect_left if tied else bisect_right)(buf, bound, p.pos, len(buf), key=_TS)
        rows += p.take(end)
    rows.sort(key=_TS)
    return rows
