"""The one merge of time-ordered streams: every reader of several files, and `ime-segments merge`, use it.

A stream is an iterator of batches (lists) of rows whose first item is the receive time (`Row`s, `Record`s): one
shard's files in file order (reader.sequences). `merged` gives every row of every stream by receive time, rows of
equal time in stream order (docs/FORMAT.md "Reading", step 7: shard order, then file order), and each stream's
rows in the order the stream holds them, even where its wall clock stepped back: exactly heapq.merge's order
(tests/test_segment_store.py compares them), without heapq.merge's heap operation per row.

It works a batch at a time: each round takes from every stream its pending rows up to the smallest "last pending
time" among the streams (the bound), and sorts those runs together (Timsort merges pre-sorted runs in C). A batch
whose times step back is taken as its sorted runs, one after the other, so that the sort never moves a row
before one its stream holds ahead of it. The first stream whose pending rows end at the bound gives them all;
the streams after it keep their rows of exactly that time for a later round, since its next batch may start
with more rows of that time, which come first.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, count, islice, pairwise
from operator import gt, itemgetter
from typing import Any, TypeVar

T = TypeVar("T", bound=Sequence[Any])
_TS = itemgetter(0)


def _first_descent(rows: Sequence[Any], start: int) -> int:
    """The first index after `start` whose time is below the one before it; len(rows) when none is."""
    stamps = list(map(_TS, islice(rows, start, None)))
    return next(compress(count(start + 1), map(gt, stamps, islice(stamps, 1, None))), len(rows))


try:
    from recorder.segment._block import first_descent  # the same answer in C (a few ns a row)
except ImportError:
    first_descent = _first_descent


class _Pending:
    """One stream's rows not merged yet: the current sorted run and where in it the merge is."""

    __slots__ = ("batches", "buf", "pos", "runs")

    def __init__(self, batches: Iterator[list[T]]) -> None:
        self.batches = batches
        self.runs: list[list[T]] = []  # the rest of a batch that stepped back, as sorted runs
        self.buf: list[T] = []
        self.pos = 0

    def fill(self) -> bool:
        """Make sure rows are pending; False when the stream is exhausted."""
        while self.pos >= len(self.buf):
            if self.runs:
                self.buf, self.pos = self.runs.pop(), 0
                continue
            batch = next(self.batches, None)
            if batch is None:
                return False
            end = first_descent(batch, 0)
            if end < len(batch):
                batch = self._split(batch, end)
            self.buf, self.pos = batch, 0
        return True

    def _split(self, batch: list[T], end: int) -> list[T]:
        """The first sorted run of `batch`; the others wait in `runs` (last first)."""
        cuts = [0, end]
        while end < len(batch):
            end = first_descent(batch, end)
            cuts.append(end)
        self.runs = [batch[lo:hi] for lo, hi in pairwise(cuts[1:])]
        self.runs.reverse()
        return batch[:cuts[1]]

    def rest(self) -> list[T]:
        buf, pos = self.buf, self.pos
        self.pos = len(buf)
        return buf[pos:] if pos else buf


def merged(streams: Iterable[Iterator[list[T]]]) -> Iterator[list[T]]:
    """The rows of all streams, in the order the module docstring gives, a batch at a time."""
    active = [p for p in map(_Pending, streams) if p.fill()]
    while active:
        yield active[0].rest() if len(active) == 1 else _round(active)
        active = [p for p in active if p.fill()]


def _round(active: list[_Pending]) -> list[T]:
    bound = min(p.buf[-1][0] for p in active)
    parts: list[T] = []
    tied = False  # an earlier stream's pending rows end at the bound: rows of that time wait behind its next batch
    for p in active:
        buf, pos = p.buf, p.pos
        if not tied and buf[-1][0] == bound:
            end, tied = len(buf), True
        else:
            end = (bisect_left if tied else bisect_right)(buf, bound, pos, len(buf), key=_TS)
        if end > pos:
            parts.extend(buf[pos:end] if pos or end < len(buf) else buf)
            p.pos = end
    parts.sort(key=_TS)
    return parts
