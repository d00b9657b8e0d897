"""Exact first-arrival dedupe of redundant copies of one feed: a pure component, no I/O.

The IME service has no resend, so the only complete record is several independent copies of the feed
merged exactly. Copies are told apart by *source* (a redundant connection's copy index in the recorder,
an input recording in `ime-segments merge`); messages are compared by a 128-bit hash of their payload bytes.

Multiset semantics: within a window, a message whose bytes arrived k times from one source and j times
from another stands for max(k, j) distinct messages. So a server that really sends the same bytes twice on
one connection keeps both, and only copies *across* sources collapse. The n-th arrival of some bytes from a
source is a copy of the n-th original of those bytes, whichever source that original came from.

The window is bounded in time and in entries so memory stays flat at any message rate; a copy that
arrives after its original left the window is kept as a new original (shown twice), never dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import xxhash

DEFAULT_WINDOW_NS = 2_000_000_000
DEFAULT_MAX_ENTRIES = 200_000

_xxh3_128 = xxhash.xxh3_128_digest


def digest(payload: bytes) -> bytes:
    """The 16-byte xxh3-128 of a payload: the message's identity for dedupe and for NATS `Nats-Msg-Id`."""
    return _xxh3_128(payload)


class _Entry:
    """The general case: several originals of the same bytes, and how many arrivals each source has had."""

    __slots__ = ("counts", "originals")

    def __init__(self, ts_ns: int, ref: int, first_source: int, matched: int) -> None:
        self.originals: list[tuple[int, int]] = [(ts_ns, ref)]
        self.counts: dict[int, int] = {first_source: 1}
        source = 0
        while matched:
            if matched & 1:
                self.counts[source] = 1
            matched >>= 1
            source += 1

    def arrival(self, ts_ns: int, source: int, ref: int) -> tuple[int, int] | None:
        n = self.counts.get(source, 0) + 1
        self.counts[source] = n
        if n > len(self.originals):
            self.originals.append((ts_ns, ref))
            return None
        return self.originals[n - 1]


@dataclass(slots=True)
class DedupeCounts:
    originals: int = 0
    copies: int = 0


_SOURCE_BITS = 3  # the fast path holds sources 0-7 (copies of a recorder, inputs of a merge); others go general
_FAST_SOURCES = 1 << _SOURCE_BITS
_MASK_SHIFT = _SOURCE_BITS
_TS_SHIFT = _MASK_SHIFT + _FAST_SOURCES
_REF_SHIFT = _TS_SHIFT + 64
_TS_MASK = (1 << 64) - 1
_MASK_MASK = (1 << _FAST_SOURCES) - 1


class Deduper:
    """First arrival wins; later copies are reported with the original they repeat.

    The common case — one original, copies from other sources — is one Python int per hash packing the
    original's ts and ref, its source and a bitmask of the sources that already delivered their copy. An int
    is not a container the garbage collector traverses: with a list per entry, tens of thousands of live
    entries made each full collection stall the receive thread for ~20 ms. Bytes that one source delivers
    twice (a real repeat), negative times or sources beyond 7 use the general `_Entry`.
    Refs are non-negative ints.
    """

    __slots__ = ("_entries", "_keys", "_times", "counts", "max_entries", "window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if window_ns <= 0 or max_entries <= 0:
            raise ValueError("the dedupe window must be positive")
        self.window_ns = window_ns
        self.max_entries = max_entries
        self._entries: dict[bytes, int | _Entry] = {}
        # Insertion order as two deques of atoms (no tuple per entry, for the same reason as above).
        self._times: deque[int] = deque()
        self._keys: deque[bytes] = deque()
        self.counts = DedupeCounts()

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, ts_ns: int, source: int, payload: bytes, ref: int | None = None) -> tuple[int, int] | None:
        """None: the first copy (record it). Otherwise (original ts_ns, original ref) of the message it repeats.

        `ref` is what a later copy is told about its original (the recorder packs the connection and where
        the record went into it); it defaults to the source. Sources are small non-negative integers.
        """
        return self.observe_digest(ts_ns, source, _xxh3_128(payload), source if ref is None else ref)

    def observe_digest(self, ts_ns: int, source: int, key: bytes, ref: int) -> tuple[int, int] | None:
        times = self._times
        if times and (times[0] < ts_ns - self.window_ns or len(times) >= self.max_entries):
            self._expire(ts_ns)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            if 0 <= source < _FAST_SOURCES and ts_ns >= 0 and ref >= 0:
                entries[key] = (ref << _REF_SHIFT) | (ts_ns << _TS_SHIFT) | source
            else:
                entries[key] = _Entry(ts_ns, ref, source, 0)
            times.append(ts_ns)
            self._keys.append(key)
            self.counts.originals += 1
            return None
        if type(entry) is int:
            first = entry & (_FAST_SOURCES - 1)
            if 0 <= source < _FAST_SOURCES and source != first:
                bit = 1 << (source + _MASK_SHIFT)
                if not entry & bit:
                    entries[key] = entry | bit
                    self.counts.copies += 1
                    return (entry >> _TS_SHIFT) & _TS_MASK, entry >> _REF_SHIFT
            # The same source again: a real repeat of these bytes. Rare; count per source from now on.
            entry = entries[key] = _Entry((entry >> _TS_SHIFT) & _TS_MASK, entry >> _REF_SHIFT, first,
                                          (entry >> _MASK_SHIFT) & _MASK_MASK)
        original = entry.arrival(ts_ns, source, ref)
        if original is None:
            self.counts.originals += 1
        else:
            self.counts.copies += 1
        return original

    def _expire(self, now_ns: int) -> None:
        times, keys, entries = self._times, self._keys, self._entries
        horizon = now_ns - self.window_ns
        while times and (times[0] < horizon or len(times) >= self.max_entries):
            times.popleft()
            entries.pop(keys.popleft(), None)


class ReceiptResolver:
    """Finds the payload a receipt refers to, for readers that show every copy (`--all-copies`).

    Originals are remembered by (receive ns, connection) for a bounded time after they were read; a receipt
    whose original is older than that (or in a file not being read) resolves to None.
    """

    __slots__ = ("_order", "_payloads", "window_ns")

    def __init__(self, window_ns: int = 4 * DEFAULT_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self._payloads: dict[tuple[int, int, int], bytes] = {}
        self._order: deque[tuple[int, int, int]] = deque()

    def original(self, ts_ns: int, shard: int, conn: int, payload: bytes) -> None:
        key = (ts_ns, shard, conn)
        self._payloads[key] = payload
        order = self._order
        order.append(key)
        horizon = ts_ns - self.window_ns
        while order and order[0][0] < horizon:
            self._payloads.pop(order.popleft(), None)

    def resolve(self, orig_ts_ns: int, shard: int, orig_conn: int) -> bytes | None:
        return self._payloads.get((orig_ts_ns, shard, orig_conn))
