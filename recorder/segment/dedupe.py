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


class Deduper:
    """First arrival wins; later copies are reported with the original they repeat.

    The common case — one original, copies from other sources — is a 4-item list per hash
    [ts, ref, first source, bitmask of sources that already delivered their copy]; only bytes that one source
    delivers twice (a real repeat) promote to the general `_Entry`. This keeps `observe` near 1 µs.
    """

    __slots__ = ("_entries", "_order", "counts", "max_entries", "window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if window_ns <= 0 or max_entries <= 0:
            raise ValueError("the dedupe window must be positive")
        self.window_ns = window_ns
        self.max_entries = max_entries
        self._entries: dict[bytes, list[int] | _Entry] = {}
        self._order: deque[tuple[int, bytes]] = deque()
        self.counts = DedupeCounts()

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, ts_ns: int, source: int, payload: bytes, ref: int | None = None) -> tuple[int, int] | None:
        """None: the first copy (record it). Otherwise (original ts_ns, original ref) of the message it repeats.

        `ref` is what a later copy is told about its original (the recorder passes the connection id);
        it defaults to the source. Sources are small non-negative integers (copy or input numbers).
        """
        return self.observe_digest(ts_ns, source, _xxh3_128(payload), source if ref is None else ref)

    def observe_digest(self, ts_ns: int, source: int, key: bytes, ref: int) -> tuple[int, int] | None:
        order = self._order
        if order and (order[0][0] < ts_ns - self.window_ns or len(order) >= self.max_entries):
            self._expire(ts_ns)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entries[key] = [ts_ns, ref, source, 0]
            order.append((ts_ns, key))
            self.counts.originals += 1
            return None
        if type(entry) is list:
            bit = 1 << source
            if source != entry[2] and not entry[3] & bit:
                entry[3] |= bit
                self.counts.copies += 1
                return entry[0], entry[1]
            # The same source again: a real repeat of these bytes. Rare; count per source from now on.
            entry = entries[key] = _Entry(entry[0], entry[1], entry[2], entry[3])
        original = entry.arrival(ts_ns, source, ref)  # type: ignore[union-attr]
        if original is None:
            self.counts.originals += 1
        else:
            self.counts.copies += 1
        return original

    def _expire(self, now_ns: int) -> None:
        order, entries = self._order, self._entries
        horizon = now_ns - self.window_ns
        while order and (order[0][0] < horizon or len(order) >= self.max_entries):
            entries.pop(order.popleft()[1], None)


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
