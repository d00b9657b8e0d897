"""What a recording connection's listener appends to, for every message: the segment writer, behind first-arrival
dedupe when copies are redundant, with a tee of first arrivals to the live output; and the shard's Dedupers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from recorder.model.record import RecordKind
from recorder.segment.dedupe import Deduper, digest

Append = Callable[[int, int, int, bytes], None]



class Destination(Protocol):
    """Where a connection's records go: the segment writer (or anything with its recording methods)."""

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None: ...

    def original_ref(self, conn: int) -> int: ...

    def append_copy(self, ts_ns: int, conn: int, orig_ts_ns: int, orig_ref: int) -> None: ...


def first_arrival_sink(dest: Destination, deduper: Deduper | None, source: int,
                       live: Append | None = None) -> Append:
    """The sink of one connection, `source` in `deduper` (shared by a group's copies): a closure, decided once.

    The first copy of a message is recorded (and handed to the live output); a later copy on another redundant
    connection becomes a receipt naming the original by the int the writer gave for it (`original_ref`), which the
    Deduper keeps. Events pass straight through. One copy and no live output: the writer's own append.
    """
    append = dest.append
    if deduper is None:
        if live is None:
            return append

        def record_and_publish(ts: int, conn: int, kind: int, payload: bytes) -> None:
            append(ts, conn, kind, payload)
            if kind != RecordKind.EVENT:
                live(ts, conn, kind, payload)

        return record_and_publish

    observe = deduper.observe_digest
    original_ref = dest.original_ref
    append_copy = dest.append_copy

    def first_arrival(ts: int, conn: int, kind: int, payload: bytes) -> None:
        if kind == RecordKind.EVENT:
            append(ts, conn, kind, payload)
            return
        original = observe(ts, source, digest(payload), original_ref(conn))
        if original is None:
            append(ts, conn, kind, payload)
            if live is not None:
                live(ts, conn, kind, payload)
        else:
            append_copy(ts, conn, original[0], original[1])

    return first_arrival


class Dedupers:
    """The Dedupers a shard's groups and handovers use, and the copies (receipts) of those no longer used:
    messages = arrivals − copies, over the whole run."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self._used: dict[int, Deduper] = {}  # by id: a Deduper is not hashable by value
        self._retired_copies = 0

    def new(self) -> Deduper:
        deduper = Deduper(self.window_ns)
        self._used[id(deduper)] = deduper
        return deduper

    def retire(self, deduper: Deduper) -> None:
        """Nothing uses it any more: its figures stay, its memory goes."""
        if self._used.pop(id(deduper), None) is not None:
            self._retired_copies += deduper.counts.copies

    @property
    def copies(self) -> int:
        return self._retired_copies + sum(d.counts.copies for d in self._used.values())
