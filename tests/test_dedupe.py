"""The dedupe core: first arrival wins, copies across sources collapse, repeats within a source are kept."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind, decode_receipt, encode_receipt
from recorder.segment import merge as merge_module
from recorder.segment.dedupe import Deduper, ReceiptResolver, digest
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.segment.writer import SegmentWriter

MS = 1_000_000


def test_digest_is_16_bytes_of_the_payload_only():
    assert len(digest(b"x")) == 16
    assert digest(b"abc") == digest(b"abc")
    assert digest(b"abc") != digest(b"abd")


def test_first_arrival_wins_and_the_copy_names_it():
    d = Deduper()
    assert d.observe(100, source=0, payload=b"m1", ref=7) is None
    assert d.observe(130, source=1, payload=b"m1", ref=9) == (100, 7)
    assert d.counts.originals == 1
    assert d.counts.copies == 1


def test_a_repeat_on_one_source_is_kept_and_its_copy_pairs_with_the_second_original():
    d = Deduper()
    assert d.observe(1, 0, b"same", 10) is None
    assert d.observe(2, 0, b"same", 10) is None  # the server really sent it twice
    assert d.observe(3, 1, b"same", 11) == (1, 10)
    assert d.observe(4, 1, b"same", 11) == (2, 10)
    assert d.observe(5, 1, b"same", 11) is None  # a third from source 1: more than source 0 had
    assert d.observe(6, 0, b"same", 10) == (5, 11)


def test_copies_outside_the_window_are_kept_as_originals_not_dropped():
    d = Deduper(window_ns=10 * MS)
    assert d.observe(0, 0, b"a") is None
    assert d.observe(11 * MS, 1, b"a") is None
    assert d.observe(12 * MS, 0, b"a") == (11 * MS, 1)


def test_the_entry_cap_bounds_memory():
    d = Deduper(window_ns=10**18, max_entries=100)
    for i in range(1000):
        d.observe(i, 0, str(i).encode())
    assert len(d) <= 100


def _interleave(rng: random.Random, streams: list[list[bytes]], losses: list[set[int]]):
    """Arrivals of each source's stream (minus its lost positions), merged in a random but per-source order."""
    cursors = [0] * len(streams)
    out = []
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        src = rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)])
        pos = cursors[src]
        cursors[src] += 1
        if pos not in losses[src]:
            out.append((src, pos, streams[src][pos]))
    return out


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=0, max_size=4).map(lambda b: b"m" + b), min_size=0, max_size=40),
    copies=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
    loss=st.floats(min_value=0, max_value=0.6),
)
def test_the_union_of_lossy_copies_is_the_published_multiset(messages, copies, seed, loss):
    """Each copy sees the published sequence with gaps; the originals are exactly what any copy saw.

    Repeated bytes in the published sequence (the server sending the same message twice) must survive.
    """
    rng = random.Random(seed)
    streams = [list(messages) for _ in range(copies)]
    losses = [{i for i in range(len(messages)) if rng.random() < loss} for _ in range(copies)]
    d = Deduper(window_ns=10**15)
    originals: list[bytes] = []
    for ts, (src, _pos, payload) in enumerate(_interleave(rng, streams, losses)):
        if d.observe(ts, src, payload) is None:
            originals.append(payload)
    # Expected: for each distinct payload, the most occurrences any single copy delivered.
    expected: dict[bytes, int] = {}
    for src in range(copies):
        seen: dict[bytes, int] = {}
        for i, m in enumerate(messages):
            if i not in losses[src]:
                seen[m] = seen.get(m, 0) + 1
        for m, n in seen.items():
            expected[m] = max(expected.get(m, 0), n)
    got: dict[bytes, int] = {}
    for m in originals:
        got[m] = got.get(m, 0) + 1
    assert got == expected


def test_receipt_payload_round_trip_and_lag_never_negative():
    assert decode_receipt(encode_receipt(7, 1234)) == (7, 1234)
    assert decode_receipt(encode_receipt(7, -5)) == (7, 0)


def test_resolver_finds_recent_originals_only():
    r = ReceiptResolver(window_ns=100)
    r.original(10, 0, 1, b"a")
    r.original(50, 0, 2, b"b")
    assert r.resolve(10, 0, 1) == b"a"
    assert r.resolve(10, 0, 2) is None
    r.original(200, 0, 1, b"c")
    assert r.resolve(10, 0, 1) is None
    assert r.resolve(200, 0, 1) == b"c"


def _state(d) -> tuple:
    return d._state(), d.counts


_arrivals = st.lists(st.tuples(st.integers(-3, 40),  # ts step (a wall clock may step back)
                               st.integers(0, 9),  # source: 8 and 9 take the general path
                               st.integers(0, 12),  # key: few, so that copies and repeats are common
                               st.integers(0, 2**70)),  # ref
                     max_size=120)


@settings(max_examples=300, deadline=None)
@given(arrivals=_arrivals, cuts=st.lists(st.integers(0, 120), max_size=8),
       joins=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 9)), max_size=4),
       window=st.integers(1, 200), max_entries=st.integers(1, 30))
def test_observe_batch_decides_exactly_as_observe_digest_one_by_one(arrivals, cuts, joins, window,
                                                                    max_entries):
    """The merge's batch path is the reference, arrival by arrival: same copies, same originals, same state; with
    sources joining between batches (`joins`: before which arrival)."""
    one, batched = Deduper(window, max_entries), Deduper(window, max_entries)
    stamps, ts = [], 1000
    for step, *_ in arrivals:
        ts += step
        stamps.append(ts)
    rows = [(t, s, digest(b"k%d" % k), r) for t, (_, s, k, r) in zip(stamps, arrivals, strict=True)]
    joining = {}
    for at, source in joins:
        joining.setdefault(min(at, len(rows)), []).append(source)
    expected = []
    for i, row in enumerate(rows):
        for source in joining.get(i, ()):
            one.join(source)
        if (won := one.observe_digest(*row)) is not None:
            expected.append((i, *won))
    got = []
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows)), *(at for at in joining if at < len(rows))})
    for lo, hi in pairwise(bounds):
        for source in joining.get(lo, ()):
            batched.join(source)
        part = rows[lo:hi]
        at, orig_ts, orig_refs = batched.observe_batch(*(list(col) for col in zip(*part, strict=True)))
        got.extend((lo + i, t, r) for i, t, r in zip(at, orig_ts, orig_refs, strict=True))
        if hi < len(rows):
            assert _state(batched) == _state(_replayed(rows[:hi], joining, window, max_entries))
    for source in joining.get(len(rows), ()):
        one.join(source)
        batched.join(source)
    assert got == expected
    assert _state(batched) == _state(one)


def _replayed(rows, joining, window, max_entries):
    d = Deduper(window, max_entries)
    for i, row in enumerate(rows):
        for source in joining.get(i, ()):
            d.join(source)
        d.observe_digest(*row)
    return d


def test_observe_batch_expires_a_full_window_and_compacts():
    """Tens of thousands of entries through a small window: the lists are compacted, positions stay right."""
    one, batched = Deduper(window_ns=1000, max_entries=50_000), Deduper(window_ns=1000, max_entries=50_000)
    rows = [(i * 10, i % 2, digest(b"%d" % (i // 2)), i) for i in range(30_000)]
    expected = [(i, *won) for i, row in enumerate(rows) if (won := one.observe_digest(*row)) is not None]
    got = []
    for lo in range(0, len(rows), 777):
        at, orig_ts, orig_refs = batched.observe_batch(*(list(c) for c in zip(*rows[lo:lo + 777], strict=True)))
        got.extend((lo + i, t, r) for i, t, r in zip(at, orig_ts, orig_refs, strict=True))
    assert got == expected and len(got) == 15_000
    assert batched._state()[0] > 10_000  # the oldest entries left the window
    assert batched._base > 0  # compacted at least once
    assert _state(batched) == _state(one)


# --- the window per original: an entry's later originals outlive its first ------------------------------------
# A server may send the same bytes twice on a connection about a window apart. When the first original leaves
# the window, only it leaves: a copy of the second original that arrives afterwards is still a copy.

W = 10 * MS


def test_a_copy_of_the_second_original_after_the_first_expired_is_a_copy():
    d = Deduper(window_ns=W)
    assert d.observe(0, 0, b"x", 10) is None
    assert d.observe(1 * MS, 1, b"x", 11) == (0, 10)
    assert d.observe(W - 1, 0, b"x", 12) is None  # the server sent it again, a window later: a second original
    # The first original is older than the window now; the second, 1 ms old, is not.
    assert d.observe(W + 1 * MS, 1, b"x", 13) == (W - 1, 12)
    assert (d.counts.originals, d.counts.copies) == (2, 2)


def test_an_unrelated_arrival_expires_only_the_first_original():
    d = Deduper(window_ns=W)
    assert d.observe(0, 0, b"x", 10) is None
    assert d.observe(100, 1, b"x", 11) == (0, 10)
    assert d.observe(W - 5, 1, b"x", 12) is None  # source 1 is first with the repeat this time
    assert d.observe(W + 1, 2, b"other", 13) is None  # expires the first original of b"x", nothing else
    state = d._state()
    assert [row[:2] for row in state[1]] == [(W - 5, 12), (W + 1, 13)]
    assert state[2][digest(b"x")] == ([(W - 5, 12)], {1: 1})  # source 1 delivered the live original; 0 owes it
    assert d.observe(W + 2, 0, b"x", 14) == (W - 5, 12)
    assert len(d) == 2


def test_a_source_that_missed_the_expired_original_pairs_with_the_next():
    d = Deduper(window_ns=W)
    assert d.observe(0, 0, b"x", 1) is None
    assert d.observe(5 * MS, 0, b"x", 2) is None
    assert d.observe(6 * MS, 1, b"x", 3) == (0, 1)  # source 1's first is the copy of the first original
    # Source 2 lost the first; by the time it delivers, the first original is gone: its arrival is the second's copy.
    assert d.observe(W + 1 * MS, 2, b"x", 4) == (5 * MS, 2)
    assert d.observe(W + 2 * MS, 1, b"x", 5) == (5 * MS, 2)  # source 1's second arrival: the second original
    assert d.observe(W + 3 * MS, 0, b"x", 6) is None  # a third from source 0: more than the window holds
    assert d.observe(W + 4 * MS, 2, b"x", 7) == (W + 3 * MS, 6)
    assert d._state()[2][digest(b"x")] == ([(5 * MS, 2), (W + 3 * MS, 6)], {0: 2, 1: 1, 2: 2})


def test_each_original_leaves_at_its_own_time_then_the_entry_goes():
    d = Deduper(window_ns=W)
    for i, ts in enumerate((0, 3 * MS, 6 * MS)):
        assert d.observe(ts, 0, b"x", i) is None
    assert len(d) == 3
    d.observe(W + 4 * MS, 1, b"y", 9)  # the first two are older than the window, the third is not
    assert d._state()[2][digest(b"x")] == ([(6 * MS, 2)], {0: 1})
    assert d.observe(W + 5 * MS, 1, b"x", 10) == (6 * MS, 2)
    d.observe(2 * W, 1, b"y", 11)
    assert digest(b"x") not in d._state()[2]
    assert d.observe(2 * W + 1, 1, b"x", 12) is None  # every original gone: a new one


def test_the_entry_cap_counts_originals_and_drops_the_oldest_alone():
    d = Deduper(window_ns=10**15, max_entries=4)
    assert d.observe(1, 0, b"x", 1) is None
    assert d.observe(2, 0, b"x", 2) is None
    assert d.observe(3, 1, b"y", 3) is None
    assert d.observe(4, 2, b"z", 4) is None
    # Four originals: full. The next arrival first makes room, and only the oldest original (b"x" at 1) leaves.
    assert d.observe(5, 1, b"x", 5) == (2, 2)
    assert len(d) == 3


def test_observe_batch_holds_the_second_original_across_the_edge():
    d = Deduper(window_ns=W)
    rows = [(0, 0, b"x", 1), (10, 1, b"x", 2), (W - 10, 0, b"x", 3), (W + 5, 1, b"x", 4), (W + 20, 0, b"y", 5)]
    at, orig_ts, orig_refs = d.observe_batch(*([r[i] for r in rows] for i in (0, 1)),
                                             [digest(r[2]) for r in rows], [r[3] for r in rows])
    assert (at, orig_ts, orig_refs) == ([1, 3], [0, W - 10], [1, 3])


def _published_with_repeats(rng: random.Random, n: int, window: int, moment: int = 0) -> list[tuple[int, bytes]]:
    """A feed that now and then publishes again bytes it published about a window earlier (just before, just
    after, or a little further), besides repeats a moment apart (up to `moment`; by default window/50)."""
    out: list[tuple[int, bytes]] = []
    ts = 0
    for i in range(n):
        ts += rng.randrange(1, window // 20)
        out.append((ts, b"m%d" % i))
        roll = rng.random()
        if roll < 0.4:
            ts_old, payload = out[rng.randrange(len(out))]
            out.append((ts_old + window + rng.randrange(-window // 10, window // 10), payload))
        elif roll < 0.5:
            out.append((ts + rng.randrange(0, moment or window // 50), out[-1][1]))
    out.sort()
    return out


def _deliveries(rng: random.Random, published: list[tuple[int, bytes]], sources: int, lag: int,
                loss: float) -> list[tuple[int, int, bytes]]:
    """Each source's arrivals in publish order, each at most `lag` after its publication, in receive order."""
    rows = []
    for source in range(sources):
        last = 0
        for ts, payload in published:
            if rng.random() < loss:
                continue
            last = max(last, ts + rng.randrange(lag + 1))  # one stream: arrivals keep the publish order
            rows.append((last, source, payload))
    rows.sort(key=lambda r: r[0])
    return rows


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(2, 4), lag_share=st.floats(0.0001, 0.3),
       batch=st.integers(1, 50))
def test_repeats_about_a_window_apart_are_each_recorded_once(seed, sources, lag_share, batch):
    """Lossless copies whose arrivals trail the publication by less than the window: the originals are exactly
    the published multiset, wherever the repeats fall around the window's edge."""
    rng = random.Random(seed)
    window = 1_000_000
    published = _published_with_repeats(rng, 60, window)
    rows = _deliveries(rng, published, sources, int(window * lag_share), 0.0)
    d = Deduper(window_ns=window)
    keys = [digest(p) for _, _, p in rows]
    originals: list[bytes] = []
    for lo in range(0, len(rows), batch):
        part = rows[lo:lo + batch]
        at, _, _ = d.observe_batch([r[0] for r in part], [r[1] for r in part], keys[lo:lo + batch],
                                   list(range(lo, lo + len(part))))
        copies = set(at)
        originals.extend(p for i, (_, _, p) in enumerate(part) if i not in copies)
    assert Counter(originals) == Counter(p for _, p in published)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(1, 4), lag_share=st.floats(0.0001, 0.5),
       loss=st.floats(0, 0.5))
def test_lossy_copies_near_the_edge_never_show_a_message_more_often_than_published(seed, sources, lag_share,
                                                                                   loss):
    """With losses: each payload's originals are at least what any one source delivered (nothing dropped) and at
    most what was published (no copy kept as a new message while its original was in the window)."""
    rng = random.Random(seed)
    window = 1_000_000
    published = _published_with_repeats(rng, 60, window)
    rows = _deliveries(rng, published, sources, int(window * lag_share), loss)
    d = Deduper(window_ns=window)
    originals = Counter(p for ts, s, p in rows if d.observe(ts, s, p) is None)
    delivered = [Counter(p for _, s, p in rows if s == source) for source in range(sources)]
    for payload, n in Counter(p for _, p in published).items():
        assert max(c[payload] for c in delivered) <= originals[payload] <= n, payload


# --- joins: a copy's new connection receives only what is published after it subscribed ---------------------
# So an arrival on it is never a copy of an original that arrived (on another copy) before it joined, however
# many of those bytes the source had delivered, or not, on its earlier connection.

A, B = 0, 1


def test_a_publication_only_a_rejoined_copy_receives_is_a_new_original_not_a_copy_of_an_older_one():
    """Copy B was down when x was published (A recorded it). B reconnects; about a window later the market publishes
    x again while A is down: only B receives it. It is B's first x, but not a copy of A's: a new message."""
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x", 1) is None
    d.join(B)
    assert d.observe(5 * MS, A, b"y", 2) is None  # published after B subscribed: B's copy of it is a copy
    assert d.observe(5 * MS + 10, B, b"y", 3) == (5 * MS, 2)
    assert d.observe(W - 1 * MS, B, b"x", 4) is None  # the repeat, A's original still in the window
    assert (d.counts.originals, d.counts.copies) == (3, 1)
    # A reconnects and receives what is published after that: a further x, on both, pairs as usual.
    d.join(A)
    assert d.observe(W + 2 * MS, A, b"x", 5) is None
    assert d.observe(W + 3 * MS, B, b"x", 6) == (W + 2 * MS, 5)


def test_a_source_that_rejoins_owes_nothing_its_earlier_connection_still_owed():
    """A delivered x twice (the server sent it twice); B's first connection delivered the copy of the first and
    dropped before the second. By the count, B still owes the second; its new connection never delivers it, so
    B's next x (the market sending x a third time, A down) is a new original, not that pending copy."""
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x", 1) is None
    assert d.observe(1 * MS, A, b"x", 2) is None
    assert d.observe(2 * MS, B, b"x", 3) == (0, 1)
    assert d._state()[2][digest(b"x")][1] == {A: 2, B: 1}
    d.join(B)
    assert d._state()[2][digest(b"x")][1] == {A: 2}  # what B delivered before it rejoined counts no more
    assert d.observe(3 * MS, B, b"x", 4) is None
    assert d._state()[2][digest(b"x")] == ([(0, 1), (1 * MS, 2), (3 * MS, 4)], {A: 2, B: 1})
    assert d.observe(4 * MS, A, b"x", 5) == (3 * MS, 4)  # A's third x is the copy of B's
    # ... and tells where A's stream passed B's subscription: B's join moves here (B's own x included: it is
    # delivered, and any later x of B's is a later publication).
    assert d._state()[2][digest(b"x")] == ([(0, 1), (1 * MS, 2), (3 * MS, 4)], {A: 3})


def test_after_a_join_the_source_pairs_with_the_later_originals_in_order_and_the_count_shifts_with_them():
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x", 1) is None  # before B joined: not B's to pair with
    d.join(B)
    assert d.observe(2 * MS, A, b"x", 2) is None  # published twice after B joined, received by both
    assert d.observe(3 * MS, A, b"x", 3) is None
    assert d.observe(4 * MS, B, b"x", 4) == (2 * MS, 2)
    assert d._state()[2][digest(b"x")][1] == {A: 3, B: 1}
    d.observe(W + 1 * MS, A, b"z", 5)  # the first x leaves the window: B never saw it, its count stays
    assert d._state()[2][digest(b"x")] == ([(2 * MS, 2), (3 * MS, 3)], {A: 2, B: 1})
    d.observe(W + 2 * MS + 1, A, b"z2", 6)  # the second leaves: B had delivered it
    assert d._state()[2][digest(b"x")] == ([(3 * MS, 3)], {A: 1})
    assert d.observe(W + 2 * MS + 2, B, b"x", 7) == (3 * MS, 3)
    assert d.observe(W + 2 * MS + 3, B, b"x", 8) is None  # more than the window holds: a new original


def test_a_join_follows_arrival_order_not_the_clock():
    """The join is a place in the window's arrival order: a clock stepping back after it changes nothing."""
    d = Deduper(window_ns=W)
    assert d.observe(10 * MS, A, b"x", 1) is None
    d.join(B)
    assert d.observe(4 * MS, A, b"y", 2) is None  # the clock stepped back 6 ms: y still arrived after the join
    assert d.observe(4 * MS + 5, B, b"y", 3) == (4 * MS, 2)
    assert d.observe(5 * MS, B, b"x", 4) is None


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), lag_share=st.floats(0.0001, 0.03), jitter_share=st.floats(0.0001, 0.03),
       handshake_share=st.floats(0, 0.03), batch=st.integers(1, 40))
def test_two_copies_whose_paths_jitter_record_each_publication_some_connection_received_once(
        seed, lag_share, jitter_share, handshake_share, batch):
    """Two copies, both dropping and reconnecting, one path slower than the other at times: a copy that lags
    delivers, after the other's new connection received its first message, what was published before that one
    subscribed. Once its copy of that first message came, none of that is the new connection's to pair with: a
    repeat a window later that only the new connection receives is a message of its own. (The two copies' servers
    never subscribe them within a tenth of a window of each other, and the same bytes are published again at the
    same instant or half a window later or more: see the module docstring for those edges.)"""
    rng = random.Random(seed)
    window = 1_000_000
    published = _spread(_published_with_repeats(rng, 80, window, moment=1), window)
    rows, received = _reconnecting_copies(rng, published, 2, int(window * lag_share), int(window * jitter_share),
                                          window, int(window * handshake_share), apart=window // 10)
    assert Counter(_originals_with_joins(Deduper(window_ns=window), rows, batch)) == Counter(received)


def test_what_arrived_during_the_upgrade_is_not_the_new_connections_once_its_first_message_came():
    """B joins when it starts connecting, but the server subscribes it only when the upgrade reaches it: what A
    received meanwhile was published before. B's first message tells where B's stream starts: at that message's
    original (here A's, A being faster); what arrived before it is not B's to pair with."""
    d = Deduper(window_ns=W)
    d.join(B)
    assert d.observe(1 * MS, A, b"x", 1) is None  # during B's upgrade: published before the server subscribed B
    assert d.observe(2 * MS, A, b"y", 2) is None  # published after: B's first message
    assert d.observe(2 * MS + 50, A, b"z", 3) is None
    assert d._state()[3] == {B: (0, True, None)}
    assert d.observe(2 * MS + 100, B, b"y", 4) == (2 * MS, 2)
    assert d._state()[3] == {B: (1, False, None)}
    # A's z arrived before B's first message, and is still B's to pair with: a join at B's `opened` would have
    # made B's copy of it a message of its own.
    assert d.observe(2 * MS + 150, B, b"z", 5) == (2 * MS + 50, 3)
    # A drops; the market publishes x again, a window after the first, and only B receives it: a new message.
    assert d.observe(W - 1 * MS, B, b"x", 6) is None
    assert (d.counts.originals, d.counts.copies) == (4, 2)


def test_a_new_connection_first_with_its_first_message_starts_its_stream_where_the_others_copy_it():
    """B's first message is new (B is faster than A): what A delivers until its copy of that message was published
    before B subscribed, even when it arrives after B's first message."""
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x", 1) is None
    d.join(B)
    assert d.observe(2 * MS, B, b"y", 3) is None  # B's first message, before A's copy of it
    assert d._state()[3] == {B: (1, False, 1)}
    assert d.observe(2 * MS + 50, A, b"w", 2) is None  # A, slower, still delivers what came before y
    assert d.observe(2 * MS + 100, A, b"y", 4) == (2 * MS, 3)
    assert d._state()[3] == {B: (3, False, None)}
    assert d.observe(2 * MS + 150, A, b"z", 5) is None  # after y: B's copy of it is a copy
    assert d.observe(2 * MS + 200, B, b"z", 6) == (2 * MS + 150, 5)
    # A drops; the market publishes w and x again, and only B receives them: new messages.
    assert d.observe(W - 2 * MS, B, b"w", 7) is None
    assert d.observe(W - 1 * MS, B, b"x", 8) is None
    assert (d.counts.originals, d.counts.copies) == (6, 2)
    # A source that delivered nothing since it joined joins again at a later place, still unsettled.
    d.join(A)
    d.join(A)
    assert d._state()[3] == {A: (6, True, None), B: (3, False, None)}


def test_a_first_message_waits_for_its_own_copy_not_for_a_later_publication_of_its_bytes():
    d = Deduper(window_ns=W)
    d.join(B)
    assert d.observe(1 * MS, B, b"y", 1) is None  # B's first message: A lags
    d.join(A)  # A reconnects meanwhile: it never receives that y
    assert d.observe(3 * MS, A, b"y", 2) is None  # the market's next y, not a copy of B's: B's join stays
    assert d._state()[3] == {A: (1, False, 1), B: (0, False, 0)}
    assert d.observe(3 * MS + 10, B, b"y", 3) == (3 * MS, 2)  # B's copy of it is A's confirmation
    assert d._state()[3] == {A: (2, False, None), B: (0, False, 0)}
    d.observe(W + 1 * MS + 1, A, b"z", 4)  # B's first message left the window: nothing awaits its copy any more
    assert d._state()[3] == {A: (2, False, None)}


@pytest.mark.parametrize("source", [9, -1])
def test_a_source_beyond_the_fast_path_joins_too(source):
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x", 1) is None
    assert d.observe(1, source, b"x", 2) == (0, 1)
    d.join(source)
    assert d.observe(2, A, b"y", 3) is None
    assert d.observe(3, source, b"y", 4) == (2, 3)
    assert d.observe(4, source, b"x", 5) is None
    assert d._state()[3] == {source: (1, False, None)}


def test_a_join_costs_no_entry_and_a_source_that_never_joins_is_unchanged():
    """A join is one number per source: nothing in the window changes until the source delivers those bytes."""
    d = Deduper(window_ns=W)
    for i in range(1000):
        d.observe(i, A, b"%d" % i, i)
    before = d._state()
    d.join(B)
    after = d._state()
    assert after[:3] == before[:3] and after[3] == {B: (1000, True, None)}
    assert d.observe(2000, 2, b"5", 7) == (5, 5)  # source 2 never joined: every live original is its to pair with


def _reconnecting_copies(rng: random.Random, published: list[tuple[int, bytes]], sources: int, lag: int,
                         jitter: int, window: int, handshake: int, steady: bool = False,
                         apart: int = 0) -> tuple[list[tuple[int, int, bytes | None]], list[bytes]]:
    """Copies that drop now and then (for up to a window) and reconnect: each connection receives exactly what is
    published while it is open, `lag` plus up to `jitter` later, in publish order. Rows in receive order:
    (ts, source, payload), or (ts, source, None) for the source's join as each connection starts: up to `handshake`
    before its upgrade answer arrives (`lag` after the server subscribed it), after what its previous connection
    delivered. `steady`: source 0 stays connected, and the others first connect a quarter window after it (ime-record
    staggers its copies' first connections). `apart`: no two copies' servers subscribe them closer than this.
    Also what some connection received."""
    end = published[-1][0] + 1 if published else 0
    rows: list[tuple[int, int, bytes | None]] = []
    got_by_some: dict[int, bytes] = {}
    subscribed: list[int] = []
    for source in range(sources):
        at, last = rng.randrange(window // 4), 0
        if steady:
            at = window // 4 + at if source else 0
        mine = len(subscribed)
        while clash := next((s for s in subscribed[:mine] if abs(s - at) < apart), None):
            at = clash + apart
        while at < end:
            subscribed.append(at)
            off = end if steady and not source else at + rng.randrange(window // 10, 2 * window)
            # The first connection too (the others may be up already).
            rows.append((max(at + lag - rng.randrange(handshake + 1), last + 1 if last else 0), source, None))
            last = at + lag
            for n, (ts, payload) in enumerate(published):
                if at <= ts < off:
                    last = max(last, ts + lag + rng.randrange(jitter + 1))
                    rows.append((last, source, payload))
                    got_by_some[n] = payload
            # It reconnects once it saw the drop, after what was on its way.
            at = max(off, last) + rng.randrange(1, window)
            while clash := next((s for s in subscribed[:mine] if abs(s - at) < apart), None):
                at = clash + apart
    rows.sort(key=lambda r: (r[0], r[2] is not None))  # a join before what arrives at the same instant
    return rows, list(got_by_some.values())


def _spread(published: list[tuple[int, bytes]], window: int) -> list[tuple[int, bytes]]:
    """`published` where the same bytes come again at the same instant or half a window later or more, up to the
    market's last new message (no quiet tail of repeats: a connection's first message comes soon after it opens)."""
    end = max(min(ts for ts, q in published if q == p) for _, p in published) if published else 0
    last: dict[bytes, int] = {}
    out = []
    for ts, payload in published:
        if ts <= end and not 0 < ts - last.get(payload, -window) < window // 2:
            out.append((ts, payload))
            last[payload] = ts
    return out


def _originals_with_joins(d, rows: list[tuple[int, int, bytes | None]], batch: int) -> list[bytes]:
    originals: list[bytes] = []
    pending: list[tuple[int, int, bytes]] = []

    def flush() -> None:
        if pending:
            at, _, _ = d.observe_batch([r[0] for r in pending], [r[1] for r in pending],
                                       [digest(r[2]) for r in pending], list(range(len(pending))))
            copies = set(at)
            originals.extend(r[2] for i, r in enumerate(pending) if i not in copies)
            pending.clear()

    for ts, source, payload in rows:
        if payload is None:
            flush()
            d.join(source)
        else:
            pending.append((ts, source, payload))
            if len(pending) >= batch:
                flush()
    flush()
    return originals


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(2, 4), lag_share=st.floats(0.0001, 0.05),
       handshake_share=st.floats(0, 0.05), batch=st.integers(1, 40))
def test_copies_that_reconnect_record_each_publication_some_connection_received_once(seed, sources, lag_share,
                                                                                     handshake_share, batch):
    """Copies drop and reconnect (joining as each connection starts) while the market repeats bytes about a window
    apart: the originals are exactly the publications that some connection received — none kept twice, none taken
    for a copy of an older publication that the reconnected copy never received, whether that one arrived before the
    join or during the upgrade. (Every path as slow as the others; the same bytes are published again at the same
    instant or half a window later or more: see the module docstring for the upgrade's edge.)"""
    rng = random.Random(seed)
    window = 1_000_000
    published = _spread(_published_with_repeats(rng, 80, window, moment=1), window)
    rows, received = _reconnecting_copies(rng, published, sources, int(window * lag_share), 0, window,
                                          int(window * handshake_share))
    assert Counter(_originals_with_joins(Deduper(window_ns=window), rows, batch)) == Counter(received)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), lag_share=st.floats(0.0001, 0.05), jitter_share=st.floats(0.0001, 0.05),
       handshake_share=st.floats(0, 0.05), batch=st.integers(1, 40))
def test_paths_that_jitter_record_each_publication_once_while_one_copy_stays(seed, lag_share, jitter_share,
                                                                            handshake_share, batch):
    """Paths whose delays differ, one copy always connected, the other reconnecting (connections drop one at a
    time): each publication is recorded once. What arrived on the steady copy before the reconnected one's first
    message (or before its original) was published before that one subscribed, whatever the delays."""
    rng = random.Random(seed)
    window = 1_000_000
    published = _published_with_repeats(rng, 80, window)
    rows, received = _reconnecting_copies(rng, published, 2, int(window * lag_share), int(window * jitter_share),
                                          window, int(window * handshake_share), steady=True)
    assert Counter(_originals_with_joins(Deduper(window_ns=window), rows, batch)) == Counter(received)


# --- long runs: an entry sent again and again, a window full by count, a merge of nine inputs -----------------


def test_a_key_sent_again_and_again_through_a_rolling_window_stays_linear():
    """One source sends the same bytes thousands of times within the window, another copies them: each original
    leaves at its own time, the entry holds only the live ones (the departed are cut off now and then), and the
    batched path decides and holds exactly what one arrival at a time does."""
    keys = [digest(b"payload %d" % i) for i in range(3)]
    rows = []
    for i in range(60_000):
        rows.append((i * 10, 0, keys[i % 3], i))
        rows.append((i * 10 + 7, 1, keys[i % 3], i + 10**6))
    one, batched = Deduper(window_ns=5_000), Deduper(window_ns=5_000)
    expected = [(i, *won) for i, row in enumerate(rows) if (won := one.observe_digest(*row)) is not None]
    got = []
    for lo in range(0, len(rows), 999):
        at, orig_ts, orig_refs = batched.observe_batch(*(list(c) for c in zip(*rows[lo:lo + 999], strict=True)))
        got.extend((lo + i, t, r) for i, t, r in zip(at, orig_ts, orig_refs, strict=True))
    assert got == expected and batched._state() == one._state()
    originals, counts = batched._state()[2][keys[0]]
    assert 150 <= len(originals) <= 170 and counts == {0: len(originals), 1: len(originals)}
    assert batched.counts.copies == 60_000


def test_a_full_window_expires_by_entry_count():
    d = Deduper(10**18, 1000)
    rows = [(i, i % 3, digest(b"%d" % (i // 2)), i) for i in range(10_000)]
    d.observe_batch(*(list(c) for c in zip(*rows, strict=True)))
    assert 990 <= len(d) <= 1000 and d._state()[0] >= 4000  # 5000 keys, the newest ~1000 held


def test_a_merge_of_nine_inputs_counts_every_copy_once(tmp_path):
    """More inputs than the fast path's eight sources, bytes the market repeats, and inputs with receipts of their
    own redundant connection: the merge writes each message once and counts the rest as copies."""
    t0 = 1_764_000_000 * 10**9
    rng = random.Random(3)
    published = [(t0 + i * MS, ime_payload(i % 700, "1001")) for i in range(2000)]  # bytes repeat
    inputs = []
    for number in range(9):
        lag = 10_000 * (number + 1)
        recs = [(t0 - 1, 1, RecordKind.EVENT, encode_event(Event.OPENED, conn=1, contracts=["1001"]))]
        for ts, payload in published:
            if rng.random() < 0.2:
                continue
            recs.append((ts + lag + rng.randrange(30_000), 1, RecordKind.TEXT, payload))
            if rng.random() < 0.05:  # this input's own redundant connection, and a server repeat
                recs.append((ts + lag + 40_000, 2, RecordKind.RECEIPT, encode_receipt(1, 40_000)))
                recs.append((ts + lag + 41_000, 1, RecordKind.TEXT, payload))
        recs.sort(key=lambda r: r[0])
        write_records(tmp_path / f"in{number}", recs, meta={"endpoint": "id", "contracts": ["1001"]})
        inputs.append(tmp_path / f"in{number}")
    writer = SegmentWriter(tmp_path / "out", rotate_seconds=0)
    opened = [(str(p), [open_segment(f) for f in discover([p])]) for p in inputs]
    result = merge_module.merge(opened, lambda number, shard: writer, keep_receipts=True)
    writer.close()
    kinds = Counter(r.kind for r in merge_records([open_segment(f) for f in discover([tmp_path / "out"])]))
    assert kinds[RecordKind.TEXT] == result.messages and kinds[RecordKind.RECEIPT] == result.receipts > result.messages
    assert sum(s.copies for s in result.inputs) > 8 * 1000  # most of what was read was a copy


def test_a_reload_s_new_connection_joins_without_settling_and_pairs_with_what_the_old_one_got_after_it_joined():
    """A reload's handover: the old connection (A) carries contracts x and y, the new one (B) x and z. Both get one
    tick of the market, published z, y, x1, x2 in that order, each its own contracts in that order; A's read comes
    first. B's first message (z) is new, but A's x1 and x2 that arrived before it were published after it: B's
    x1 and x2 are copies of them. Settling (the join moving to B's first arrival, as for a copy of the same
    contracts) stored them twice."""
    A, B = 0, 1
    d = Deduper(window_ns=W)
    assert d.observe(0, A, b"x0", 1) is None  # before the reload
    d.join(B, settle=False)
    assert [d.observe(MS + i, A, p, 10 + i) for i, p in enumerate((b"y", b"x1", b"x2"))] == [None, None, None]
    assert d.observe(MS + 10, B, b"z", 20) is None
    assert d.observe(MS + 11, B, b"x1", 21) == (MS + 1, 11)
    assert d.observe(MS + 12, B, b"x2", 22) == (MS + 2, 12)
    # What A delivered before B joined is still not B's to pair with: a later publication of x0 that only B
    # receives is a message of its own.
    assert d.observe(MS + 13, B, b"x0", 23) is None
    # The same arrivals with a settling join: B's x1 is taken for a message of its own.
    settled = Deduper(window_ns=W)
    settled.join(B)
    for i, p in enumerate((b"y", b"x1", b"x2")):
        settled.observe(MS + i, A, p, 10 + i)
    settled.observe(MS + 10, B, b"z", 20)
    assert settled.observe(MS + 11, B, b"x1", 21) is None
