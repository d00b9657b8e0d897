"""Exact first-arrival dedupe of redundant copies of one feed: a pure component, no I/O.

The IME service has no resend, so the only complete record is several independent copies of the feed
merged exactly. Copies are told apart by *source* (a redundant connection's copy index in the recorder,
an input recording in `ime-segments merge`); messages are compared by a 128-bit hash of their payload bytes.

Multiset semantics: within a window, a message whose bytes arrived k times from one source and j times
from another stands for max(k, j) distinct messages. So a server that really sends the same bytes twice on
one connection keeps both, and only copies *across* sources collapse. The n-th arrival of some bytes from a
source is a copy of the n-th original of those bytes, whichever source that original came from.

The window holds each original for `window_ns` from its own arrival, and at most `max_entries` originals
(the oldest leave first), so memory stays flat at any message rate; a copy that arrives after its original
left the window is kept as a new original (shown twice), never dropped.

The window is per original, not per entry. A server may send the same bytes again about a window after the
first time: the entry then holds two originals, the first about to leave, the second just in. When an original
leaves, it leaves alone, and the pairing shifts with it:

- the entry's later originals move up one place (the second is now the first), and
- each source's count of arrivals goes down by one, to no less than zero.

A source that had delivered the departed original (as the original itself or as a copy) owes it nothing more:
its next arrival still pairs with the first live original it has not delivered. A source that had not
delivered it never will within the window, so it owes it nothing either: its next arrival pairs with the first
live original. (Had that arrival been the departed original's late copy after all, that source is one off for
these bytes while the entry lives, and one more message is stored: the late copy that the window already
promises to keep; nothing is lost.)
So the n-th arrival from a source is a copy of the n-th *live* original; the largest count is always the number
of live originals, and an entry goes when its last original does. The common case — one original, copies from
other sources — never reaches this: it is one atom, and leaves whole.

Joins. A connection receives only what is published after the server subscribed it, so an arrival on a copy's
new connection is never a copy of an original that arrived (on another copy) before that. Without being told,
the count would say otherwise: a copy that was down when x was published, and is the only one up when the
market publishes x again a little less than a window later, delivers its first x, which would pair with the
live original of the first x: a new message recorded as a receipt. So the recorder calls `join(source)` as
each connection of a copy starts (before its upgrade is sent, so before the server subscribes it), and from then
on that source's arrivals count from zero and pair only with the live originals that arrived after the join:

- "after" is a place in the arrival order (an original's position), not a time, so a clock that steps back
  changes nothing, and a join costs O(1): the entries learn of it when the source next delivers their bytes;
- what arrives during the upgrade was published before the server subscribed the connection, but it arrives
  after the join. The source's first arrival settles it: that message is the first published after the
  subscription, so every original that arrived before *its* original (or before it, when it is new) was
  published before (each connection delivers in publication order), and the join moves there. That holds only
  among connections that carry the same contracts: a reload's new connection joins without settling (its join
  stays at the upgrade), since the old connection's arrivals of a tick may come before the new one's first
  message and still have been published after it. A join at the connection's `opened` instead would be too
  late: another copy's arrivals of what was published between the subscription and our seeing the upgrade answer
  would no longer be this one's to pair with (stored twice);
- when an original leaves the window, the counts of the sources that joined after it do not move (they never
  counted it).

What is left: the first message itself pairs with the first live original of its bytes since the join; had the
same bytes also been published during the upgrade, it pairs with that one (and the source is one off for those
bytes while the entry lives: a later publication only it receives may then be taken for a copy). And a copy that
subscribes within the paths' jitter after another's first message, and delivers what follows faster than that
message's first arrival, can make that other copy's next few copies messages of their own. Both need two
connections' edges to meet within milliseconds; sources that never join (`ime-segments merge`) are unchanged.
A reload's new connection, which joins without settling, takes for a copy a message that the old one received
during its upgrade and the market publishes again, byte for byte, within the window, for it alone.

`ime-segments merge` and the recorder's copies both use `Deduper`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import starmap

import xxhash

from recorder.model.settings import DEFAULTS

DEFAULT_WINDOW_NS = round(DEFAULTS.connection.dedupe_window_s * 1e9)  # ime-record's --dedupe-window
DEFAULT_MAX_ENTRIES = 200_000

# digest(payload): the 16-byte xxh3-128 of a payload, the message's identity for dedupe and for NATS
# `Nats-Msg-Id`. The C function itself rather than a wrapper: the recorder and the merge call it for every
# message, and a Python frame around it added ~15 ns to the ~105 ns of hashing a 750-byte message.
digest: Callable[[bytes], bytes] = xxhash.xxh3_128_digest
_xxh3_128 = digest


class _Entry:
    """The general case: the live originals of the same bytes, oldest first, with their positions in the window's
    arrival order, and for each source the index of the next original its next arrival pairs with (see the module
    docstring: the n-th arrival from a source since it joined pairs with the n-th live original it can have seen).

    `originals[start:]` are the live ones: the departed are skipped, and cut off now and then, so that bytes a
    source sends many times within the window cost O(1) an arrival and a departure. A departure moves only
    `start`: a source's index below it means "the first live one", which is what shifting every source's count
    down by one meant."""

    __slots__ = ("next", "originals", "positions", "start")

    def __init__(self, ts_ns: int, ref: int, position: int, first_source: int, matched: int) -> None:
        self.originals: list[tuple[int, int]] = [(ts_ns, ref)]
        self.positions: list[int] = [position]
        self.start = 0
        self.next: dict[int, int] = {first_source: 1}
        source = 0
        while matched:
            if matched & 1:
                self.next[source] = 1
            matched >>= 1
            source += 1

    def arrival(self, ts_ns: int, source: int, ref: int, position: int, joined: int) -> tuple[int, int] | None:
        """`position`: the arrival's own, should it be a further original; `joined`: the source's join position
        (originals before it are not the source's to pair with)."""
        positions = self.positions
        at = max(self.next.get(source, 0), self.start)
        if at < len(positions) and positions[at] < joined:
            at = bisect_left(positions, joined, at)
        self.next[source] = at + 1
        if at == len(positions):
            self.originals.append((ts_ns, ref))
            positions.append(position)
            return None
        return self.originals[at]

    def depart(self) -> bool:
        """The oldest live original left the window. False: it was the last one (the entry goes)."""
        start = self.start + 1
        if start == len(self.originals):
            return False
        if start >= 16 and 2 * start >= len(self.originals):
            del self.originals[:start], self.positions[:start]
            self.next = {source: max(at - start, 0) for source, at in self.next.items()}
            start = 0
        self.start = start
        return True

    def live(self) -> list[tuple[int, int]]:
        return self.originals[self.start:]

    def counts(self, joined: Callable[[int], int]) -> dict[int, int]:
        """How many of the live originals each source has delivered (or been paired with) since it joined."""
        out = {}
        for source, at in self.next.items():
            first = bisect_left(self.positions, joined(source), self.start)
            if at > first:
                out[source] = at - first
        return out


@dataclass(slots=True)
class DedupeCounts:
    originals: int = 0
    copies: int = 0


_SOURCE_BITS = 3  # the fast path holds sources 0-7 (copies of a recorder, inputs of a merge); others go general
_FAST_SOURCES = 1 << _SOURCE_BITS
_MASK_SHIFT = _SOURCE_BITS
_POS_SHIFT = _MASK_SHIFT + _FAST_SOURCES
_MASK_MASK = (1 << _FAST_SOURCES) - 1
_NEVER = 1 << 127  # later than any ts_ns: no expiry is due while the window is empty

# observe_batch's answer: the copies of a batch as columns (index in the batch, original ts_ns, original ref);
# every other arrival of the batch is an original.
BatchCopies = tuple[list[int], list[int], list[int]]
# For tests, both implementations' state as plain values (see `_state`).
DedupeState = tuple[int, list[tuple[int, int, bytes]], dict[bytes, tuple[list[tuple[int, int]], dict[int, int]]],
                    dict[int, tuple[int, bool, int | None]]]


class _Observe:
    """`observe` is `observe_digest` of the payload's digest, and `observe_batch`'s slow path."""

    __slots__ = ()
    observe_digest: Callable[[int, int, bytes, int], tuple[int, int] | None]

    def observe(self, ts_ns: int, source: int, payload: bytes, ref: int | None = None) -> tuple[int, int] | None:
        """None: the first copy (record it). Otherwise (original ts_ns, original ref) of the message it repeats.

        `ref` is what a later copy is told about its original (the recorder packs the connection and where
        the record went into it); it defaults to the source. Sources are small non-negative integers.
        """
        return self.observe_digest(ts_ns, source, _xxh3_128(payload), source if ref is None else ref)

    def _observe_each(self, stamps: Sequence[int], sources: Sequence[int], keys: Sequence[bytes],
                      refs: Sequence[int]) -> BatchCopies:
        """`observe_batch` one arrival at a time: what the batch's fast loop leaves to the general code."""
        won = [(i, original) for i, original in enumerate(starmap(self.observe_digest, zip(stamps, sources, keys, refs,
                                                                                      strict=True)))
               if original is not None]
        return [i for i, _ in won], [ts for _, (ts, _) in won], [ref for _, (_, ref) in won]


class _Joins:
    """The Deduper's joins (see the module docstring): each source's join position, the sources still settling, and
    those whose first message since joining was new and awaits another source's copy of it."""

    __slots__ = ()
    _joined: list[int]
    _joined_other: dict[int, int]
    _settling: set[int]
    _awaiting: list[tuple[int, int]]
    _base: int
    _head: int
    _times: list[int]
    _entries: dict[bytes, int | _Entry]
    observe_digest: Callable[[int, int, bytes, int], tuple[int, int] | None]

    def join(self, source: int, settle: bool = True) -> None:
        """`source` starts a new stream (a copy's new connection, before it can deliver anything): its arrivals
        pair only with originals that arrive from now on, and once it delivered its first message, only with those
        from that message's original on (see the module docstring). O(1): the entries find out when the source
        next delivers their bytes.

        `settle=False` for a stream whose contracts are not the other sources' (a reload's new connection beside
        the old ones): the arrival order of connections that carry different contracts says nothing of the order
        in which their messages were published, so the join stays here."""
        self._join_at(source, self._base + len(self._times))
        self._settling.discard(source)
        if settle:
            self._settling.add(source)
        if self._awaiting:
            self._awaiting = [waiting for waiting in self._awaiting if waiting[0] != source]

    def _join_at(self, source: int, position: int) -> None:
        if 0 <= source < _FAST_SOURCES:
            self._joined[source] = position
        else:
            self._joined_other[source] = position

    def _joined_at(self, source: int) -> int:
        return self._joined[source] if 0 <= source < _FAST_SOURCES else self._joined_other.get(source, 0)

    def _observe_joined(self, ts_ns: int, source: int, key: bytes, ref: int) -> tuple[int, int] | None:
        """`observe_digest` while a join is settling (see the module docstring).

        The source's first arrival since it joined is the first message published after its connection subscribed:
        its join moves to that message's original, since whatever arrived before was published before. When that
        original is the arrival itself (this connection was first with it), the other copies may still be
        delivering what was published before: the join moves on again, to here, when another source's arrival
        is a copy of it."""
        settling = source in self._settling
        self._settling.discard(source)
        awaiting, self._awaiting = self._awaiting, []
        won = self.observe_digest(ts_ns, source, key, ref)  # nothing settles or awaits in there now
        entry = self._entries[key]
        position = entry >> _POS_SHIFT if type(entry) is int else entry.positions[entry.next[source] - 1]
        head, tail = self._base + self._head, self._base + len(self._times)
        for waiting, first in awaiting:
            if won is not None and first == position and waiting != source:
                self._join_at(waiting, tail)
            elif first >= head:  # that first message's original is still in the window: its copy may come yet
                self._awaiting.append((waiting, first))
        if settling:
            self._join_at(source, position)
            if won is None:
                self._awaiting.append((source, position))
        return won


class Deduper(_Joins, _Observe):
    """First arrival wins; later copies are reported with the original they repeat.

    Originals live in arrival order in three parallel lists of atoms — receive times, refs, keys — from
    `_head` on (compacted now and then; `_base` is the absolute position of the lists' first slot), one slot
    per original, so each leaves the window at its own time. The common case, one original with copies from
    other sources, is then one small Python int per hash: the original's absolute position, its source and a
    bitmask of the sources that already delivered their copy (a source whose join is later than the position
    delivered it on an earlier connection: it counts no more). Neither an int nor a list of ints is something
    the garbage collector must walk entry by entry: with a list per entry, tens of thousands of live entries
    made each full collection stall the receive thread for ~20 ms. Bytes that one source delivers twice (a real
    repeat), or sources beyond 7, use the general `_Entry`, whose later originals take slots of their own.
    """

    __slots__ = ("_awaiting", "_base", "_entries", "_head", "_joined", "_joined_other", "_keys", "_refs", "_settling",
                 "_times", "counts", "max_entries", "window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if window_ns <= 0 or max_entries <= 0:
            raise ValueError("the dedupe window must be positive")
        self.window_ns = window_ns
        self.max_entries = max_entries
        self._entries: dict[bytes, int | _Entry] = {}
        self._times: list[int] = []
        self._refs: list[int] = []
        self._keys: list[bytes] = []
        self._head = 0
        self._base = 0
        # Each source's join position (see `join`): sources 0-7 in a list the fast paths index, others by name.
        self._joined = [0] * _FAST_SOURCES
        self._joined_other: dict[int, int] = {}
        self._settling: set[int] = set()  # sources that joined and have not delivered anything since
        # Sources whose first message since they joined was new: (the source, that original's position) until
        # another source's arrival is a copy of it (see `_observe_joined`).
        self._awaiting: list[tuple[int, int]] = []
        self.counts = DedupeCounts()

    def __len__(self) -> int:
        """The live originals (what `max_entries` bounds)."""
        return len(self._times) - self._head

    def observe_digest(self, ts_ns: int, source: int, key: bytes, ref: int) -> tuple[int, int] | None:
        if self._awaiting or (self._settling and source in self._settling):
            return self._observe_joined(ts_ns, source, key, ref)
        times = self._times
        if len(times) > self._head and (times[self._head] < ts_ns - self.window_ns
                                        or len(times) - self._head >= self.max_entries):
            self._expire(ts_ns)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            if 0 <= source < _FAST_SOURCES:
                entries[key] = ((self._base + len(times)) << _POS_SHIFT) | source
            else:
                entries[key] = _Entry(ts_ns, ref, self._base + len(times), source, 0)
            times.append(ts_ns)
            self._refs.append(ref)
            self._keys.append(key)
            self.counts.originals += 1
            return None
        if type(entry) is int:
            first = entry & (_FAST_SOURCES - 1)
            position = entry >> _POS_SHIFT
            at = position - self._base
            if 0 <= source < _FAST_SOURCES and source != first:
                bit = 1 << (source + _MASK_SHIFT)
                if not entry & bit and position >= self._joined[source]:
                    entries[key] = entry | bit
                    self.counts.copies += 1
                    return times[at], self._refs[at]
            # The same source again (a real repeat of these bytes), or one that joined after this original arrived:
            # rare; count per source from now on.
            entry = entries[key] = _Entry(times[at], self._refs[at], position, first,
                                          (entry >> _MASK_SHIFT) & _MASK_MASK)
        original = entry.arrival(ts_ns, source, ref, self._base + len(times), self._joined_at(source))
        if original is None:
            # A further original of these bytes: a slot of its own, so that it leaves the window at its own time.
            times.append(ts_ns)
            self._refs.append(ref)
            self._keys.append(key)
            self.counts.originals += 1
        else:
            self.counts.copies += 1
        return original

    def observe_batch(self, stamps: Sequence[int], sources: Sequence[int], keys: Sequence[bytes],
                      refs: Sequence[int]) -> BatchCopies:
        """`observe_digest` for each arrival in turn, with exactly the same decisions and state afterwards
        (tests compare them); returns only the copies, as columns (see BatchCopies).

        `ime-segments merge` decides this for every message it reads: the common cases (a new key; the first
        copy from another source of a one-original entry) are inlined here, with the state in locals; expiry
        is `_expire`'s, and everything else goes through `observe_digest`.
        """
        if not self._batch_is_fast(sources):
            return self._observe_each(stamps, sources, keys, refs)
        times, held_refs, order, entries = self._times, self._refs, self._keys, self._entries
        get, window, max_entries, joined = entries.get, self.window_ns, self.max_entries, self._joined
        put_time, put_ref, put_key = times.append, held_refs.append, order.append
        head, base, due, size = self._window()  # due: when the oldest entry leaves; size: the live entries
        copy_at: list[int] = []
        orig_ts: list[int] = []
        orig_refs: list[int] = []
        copy_index, copy_ts, copy_ref = copy_at.append, orig_ts.append, orig_refs.append
        originals = fast_copies = 0
        # Every source is 0-7 here (checked above): the fast paths need not check.
        for index, (ts, source, key, ref) in enumerate(zip(stamps, sources, keys, refs, strict=True)):
            if ts > due or size >= max_entries:
                self._head = head
                self._expire(ts)
                # Inline, not _window(): in a steady stream an original leaves at nearly every arrival.
                head, base = self._head, self._base
                due = times[head] + window if len(times) > head else _NEVER
                size = len(times) - head
            entry = get(key)
            if entry is None:
                entries[key] = ((base + len(times)) << _POS_SHIFT) | source
                if not size:
                    due = ts + window
                put_time(ts)
                put_ref(ref)
                put_key(key)
                size += 1
                originals += 1
                continue
            bit = 1 << (source + _MASK_SHIFT)
            if (type(entry) is int and source != entry & (_FAST_SOURCES - 1) and not entry & bit
                    and entry >> _POS_SHIFT >= joined[source]):
                entries[key] = entry | bit
                at = (entry >> _POS_SHIFT) - base
                copy_index(index)
                copy_ts(times[at])
                copy_ref(held_refs[at])
                fast_copies += 1
                continue
            # The general cases, in the general code (the expiry it checks first is already done); rare.
            self._head = head
            won = self.observe_digest(ts, source, key, ref)
            head, base, due, size = self._window()
            if won is not None:
                copy_index(index)
                copy_ts(won[0])
                copy_ref(won[1])
        self._advance(head)
        counts = self.counts  # observe_digest counted its own decisions
        counts.originals += originals
        counts.copies += fast_copies
        return copy_at, orig_ts, orig_refs

    def _batch_is_fast(self, sources: Sequence[int]) -> bool:
        """Every source 0-7 (the fast paths index by it) and no join settling (those go one at a time)."""
        return bool(sources) and min(sources) >= 0 and max(sources) < _FAST_SOURCES and not (self._settling
                                                                                          or self._awaiting)

    def _window(self) -> tuple[int, int, int, int]:
        """observe_batch's state: (head, base, when the oldest live original leaves, how many are live)."""
        times, head = self._times, self._head
        return head, self._base, times[head] + self.window_ns if len(times) > head else _NEVER, len(times) - head

    def _expire(self, now_ns: int) -> None:
        times, keys, entries = self._times, self._keys, self._entries
        horizon = now_ns - self.window_ns
        head, end = self._head, len(times)
        refs = self._refs
        while head < end and (times[head] < horizon or end - head >= self.max_entries):
            # The oldest slot is its key's first live original: it leaves; the entry stays while it has later ones.
            key = keys[head]
            entry = entries.pop(key, None)
            if type(entry) is _Entry and entry.depart():
                entries[key] = entry
            # Freed now, a few at a time: dropping tens of thousands at the next compaction would stall the
            # recorder's receive thread for milliseconds.
            keys[head] = b""
            refs[head] = times[head] = 0
            head += 1
        self._advance(head)

    def _advance(self, head: int) -> None:
        """The live entries now start at `head`; the lists drop what is behind it once that is half of them."""
        if head >= 4096 and 2 * head >= len(self._times):
            del self._times[:head], self._refs[:head], self._keys[:head]
            self._base += head
            head = 0
        self._head = head

    def _state(self) -> DedupeState:
        """The state as plain values, for tests: (absolute position of the oldest original, [(ts, ref, key)] of
        every live original, oldest first, {key: ([(ts, ref)] live originals, {source: arrivals since it joined
        paired with them, when not 0})}, {source: (join position, its first arrival since still to come, the
        position of that first arrival when it was new and no other source delivered its bytes yet, else None),
        when not (0, False, None)})."""
        live = range(self._head, len(self._times))
        joined = self._joined_at
        entries: dict[bytes, tuple[list[tuple[int, int]], dict[int, int]]] = {}
        for key, entry in self._entries.items():
            if type(entry) is int:
                position = entry >> _POS_SHIFT
                at = position - self._base
                first = entry & (_FAST_SOURCES - 1)
                entries[key] = ([(self._times[at], self._refs[at])],
                                {s: 1 for s in range(_FAST_SOURCES)
                                 if (s == first or entry >> (s + _MASK_SHIFT) & 1) and position >= joined(s)})
            else:
                entries[key] = (entry.live(), entry.counts(joined))
        awaited = dict(self._awaiting)
        joins = {s: (at, s in self._settling, awaited.get(s)) for s, at in [*enumerate(self._joined),
                                                                             *self._joined_other.items()]
                 if at or s in self._settling or s in awaited}
        return (self._base + self._head, [(self._times[i], self._refs[i], self._keys[i]) for i in live], entries, joins)


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
