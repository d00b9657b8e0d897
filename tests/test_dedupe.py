"""The dedupe core: first arrival wins, copies across sources collapse, repeats within a source are kept.

Every test that takes `impl` runs against both implementations, the pure-Python reference and the C one
(tests/test_dedupe_native.py compares the two directly)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.model.record import decode_receipt, encode_receipt
from recorder.segment.dedupe import NativeDeduper, PyDeduper, ReceiptResolver, digest

MS = 1_000_000
NOT_BUILT = "recorder.segment._dedupe is not built (no C compiler at install)"
IMPLEMENTATIONS = [
    pytest.param(PyDeduper, id="python"),
    pytest.param(NativeDeduper, id="C", marks=pytest.mark.skipif(NativeDeduper is None, reason=NOT_BUILT)),
]


def test_digest_is_16_bytes_of_the_payload_only():
    assert len(digest(b"x")) == 16
    assert digest(b"abc") == digest(b"abc")
    assert digest(b"abc") != digest(b"abd")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_first_arrival_wins_and_the_copy_names_it(impl):
    d = impl()
    assert d.observe(100, source=0, payload=b"m1", ref=7) is None
    assert d.observe(130, source=1, payload=b"m1", ref=9) == (100, 7)
    assert d.counts.originals == 1
    assert d.counts.copies == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_repeat_on_one_source_is_kept_and_its_copy_pairs_with_the_second_original(impl):
    d = impl()
    assert d.observe(1, 0, b"same", 10) is None
    assert d.observe(2, 0, b"same", 10) is None  # the server really sent it twice
    assert d.observe(3, 1, b"same", 11) == (1, 10)
    assert d.observe(4, 1, b"same", 11) == (2, 10)
    assert d.observe(5, 1, b"same", 11) is None  # a third from source 1: more than source 0 had
    assert d.observe(6, 0, b"same", 10) == (5, 11)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_copies_outside_the_window_are_kept_as_originals_not_dropped(impl):
    d = impl(window_ns=10 * MS)
    assert d.observe(0, 0, b"a") is None
    assert d.observe(11 * MS, 1, b"a") is None
    assert d.observe(12 * MS, 0, b"a") == (11 * MS, 1)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_entry_cap_bounds_memory(impl):
    d = impl(window_ns=10**18, max_entries=100)
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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=0, max_size=4).map(lambda b: b"m" + b), min_size=0, max_size=40),
    copies=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
    loss=st.floats(min_value=0, max_value=0.6),
)
def test_the_union_of_lossy_copies_is_the_published_multiset(impl, messages, copies, seed, loss):
    """Each copy sees the published sequence with gaps; the originals are exactly what any copy saw.

    Repeated bytes in the published sequence (the server sending the same message twice) must survive.
    """
    rng = random.Random(seed)
    streams = [list(messages) for _ in range(copies)]
    losses = [{i for i in range(len(messages)) if rng.random() < loss} for _ in range(copies)]
    d = impl(window_ns=10**15)
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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None)
@given(arrivals=_arrivals, cuts=st.lists(st.integers(0, 120), max_size=8),
       window=st.integers(1, 200), max_entries=st.integers(1, 30))
def test_observe_batch_decides_exactly_as_observe_digest_one_by_one(impl, arrivals, cuts, window, max_entries):
    """The merge's batch path is the reference, arrival by arrival: same copies, same originals, same state."""
    one, batched = impl(window, max_entries), impl(window, max_entries)
    stamps, ts = [], 1000
    for step, *_ in arrivals:
        ts += step
        stamps.append(ts)
    rows = [(t, s, digest(b"k%d" % k), r) for t, (_, s, k, r) in zip(stamps, arrivals, strict=True)]
    expected = [(i, *won) for i, row in enumerate(rows) if (won := one.observe_digest(*row)) is not None]
    got = []
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    for lo, hi in pairwise(bounds):
        part = rows[lo:hi]
        at, orig_ts, orig_refs = batched.observe_batch(*(list(col) for col in zip(*part, strict=True)))
        got.extend((lo + i, t, r) for i, t, r in zip(at, orig_ts, orig_refs, strict=True))
        assert _state(batched) == _state(one if hi == len(rows) else _replayed(impl, rows[:hi], window, max_entries))
    assert got == expected
    assert _state(batched) == _state(one)


def _replayed(impl, rows, window, max_entries):
    d = impl(window, max_entries)
    for row in rows:
        d.observe_digest(*row)
    return d


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_observe_batch_expires_a_full_window_and_compacts(impl):
    """Tens of thousands of entries through a small window: the lists are compacted, positions stay right."""
    one, batched = impl(window_ns=1000, max_entries=50_000), impl(window_ns=1000, max_entries=50_000)
    rows = [(i * 10, i % 2, digest(b"%d" % (i // 2)), i) for i in range(30_000)]
    expected = [(i, *won) for i, row in enumerate(rows) if (won := one.observe_digest(*row)) is not None]
    got = []
    for lo in range(0, len(rows), 777):
        at, orig_ts, orig_refs = batched.observe_batch(*(list(c) for c in zip(*rows[lo:lo + 777], strict=True)))
        got.extend((lo + i, t, r) for i, t, r in zip(at, orig_ts, orig_refs, strict=True))
    assert got == expected and len(got) == 15_000
    assert batched._state()[0] > 10_000  # the oldest entries left the window
    if impl is PyDeduper:
        assert batched._base > 0  # compacted at least once
    assert _state(batched) == _state(one)


# --- the window per original: an entry's later originals outlive its first ------------------------------------
# A server may send the same bytes twice on a connection about a window apart. When the first original leaves
# the window, only it leaves: a copy of the second original that arrives afterwards is still a copy.

W = 10 * MS


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_copy_of_the_second_original_after_the_first_expired_is_a_copy(impl):
    d = impl(window_ns=W)
    assert d.observe(0, 0, b"x", 10) is None
    assert d.observe(1 * MS, 1, b"x", 11) == (0, 10)
    assert d.observe(W - 1, 0, b"x", 12) is None  # the server sent it again, a window later: a second original
    # The first original is older than the window now; the second, 1 ms old, is not.
    assert d.observe(W + 1 * MS, 1, b"x", 13) == (W - 1, 12)
    assert (d.counts.originals, d.counts.copies) == (2, 2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_an_unrelated_arrival_expires_only_the_first_original(impl):
    d = impl(window_ns=W)
    assert d.observe(0, 0, b"x", 10) is None
    assert d.observe(100, 1, b"x", 11) == (0, 10)
    assert d.observe(W - 5, 1, b"x", 12) is None  # source 1 is first with the repeat this time
    assert d.observe(W + 1, 2, b"other", 13) is None  # expires the first original of b"x", nothing else
    state = d._state()
    assert [row[:2] for row in state[1]] == [(W - 5, 12), (W + 1, 13)]
    assert state[2][digest(b"x")] == ([(W - 5, 12)], {1: 1})  # source 1 delivered the live original; 0 owes it
    assert d.observe(W + 2, 0, b"x", 14) == (W - 5, 12)
    assert len(d) == 2


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_source_that_missed_the_expired_original_pairs_with_the_next(impl):
    d = impl(window_ns=W)
    assert d.observe(0, 0, b"x", 1) is None
    assert d.observe(5 * MS, 0, b"x", 2) is None
    assert d.observe(6 * MS, 1, b"x", 3) == (0, 1)  # source 1's first is the copy of the first original
    # Source 2 lost the first; by the time it delivers, the first original is gone: its arrival is the second's copy.
    assert d.observe(W + 1 * MS, 2, b"x", 4) == (5 * MS, 2)
    assert d.observe(W + 2 * MS, 1, b"x", 5) == (5 * MS, 2)  # source 1's second arrival: the second original
    assert d.observe(W + 3 * MS, 0, b"x", 6) is None  # a third from source 0: more than the window holds
    assert d.observe(W + 4 * MS, 2, b"x", 7) == (W + 3 * MS, 6)
    assert d._state()[2][digest(b"x")] == ([(5 * MS, 2), (W + 3 * MS, 6)], {0: 2, 1: 1, 2: 2})


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_each_original_leaves_at_its_own_time_then_the_entry_goes(impl):
    d = impl(window_ns=W)
    for i, ts in enumerate((0, 3 * MS, 6 * MS)):
        assert d.observe(ts, 0, b"x", i) is None
    assert len(d) == 3
    d.observe(W + 4 * MS, 1, b"y", 9)  # the first two are older than the window, the third is not
    assert d._state()[2][digest(b"x")] == ([(6 * MS, 2)], {0: 1})
    assert d.observe(W + 5 * MS, 1, b"x", 10) == (6 * MS, 2)
    d.observe(2 * W, 1, b"y", 11)
    assert digest(b"x") not in d._state()[2]
    assert d.observe(2 * W + 1, 1, b"x", 12) is None  # every original gone: a new one


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_entry_cap_counts_originals_and_drops_the_oldest_alone(impl):
    d = impl(window_ns=10**15, max_entries=4)
    assert d.observe(1, 0, b"x", 1) is None
    assert d.observe(2, 0, b"x", 2) is None
    assert d.observe(3, 1, b"y", 3) is None
    assert d.observe(4, 2, b"z", 4) is None
    # Four originals: full. The next arrival first makes room, and only the oldest original (b"x" at 1) leaves.
    assert d.observe(5, 1, b"x", 5) == (2, 2)
    assert len(d) == 3


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_observe_batch_holds_the_second_original_across_the_edge(impl):
    d = impl(window_ns=W)
    rows = [(0, 0, b"x", 1), (10, 1, b"x", 2), (W - 10, 0, b"x", 3), (W + 5, 1, b"x", 4), (W + 20, 0, b"y", 5)]
    at, orig_ts, orig_refs = d.observe_batch(*([r[i] for r in rows] for i in (0, 1)),
                                             [digest(r[2]) for r in rows], [r[3] for r in rows])
    assert (at, orig_ts, orig_refs) == ([1, 3], [0, W - 10], [1, 3])


def _published_with_repeats(rng: random.Random, n: int, window: int) -> list[tuple[int, bytes]]:
    """A feed that now and then publishes again bytes it published about a window earlier (just before, just
    after, or a little further), besides repeats a moment apart."""
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
            out.append((ts + rng.randrange(0, window // 50), out[-1][1]))
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


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(2, 4), lag_share=st.floats(0.0001, 0.3),
       batch=st.integers(1, 50))
def test_repeats_about_a_window_apart_are_each_recorded_once(impl, seed, sources, lag_share, batch):
    """Lossless copies whose arrivals trail the publication by less than the window: the originals are exactly
    the published multiset, wherever the repeats fall around the window's edge."""
    rng = random.Random(seed)
    window = 1_000_000
    published = _published_with_repeats(rng, 60, window)
    rows = _deliveries(rng, published, sources, int(window * lag_share), 0.0)
    d = impl(window_ns=window)
    keys = [digest(p) for _, _, p in rows]
    originals: list[bytes] = []
    for lo in range(0, len(rows), batch):
        part = rows[lo:lo + batch]
        at, _, _ = d.observe_batch([r[0] for r in part], [r[1] for r in part], keys[lo:lo + batch],
                                   list(range(lo, lo + len(part))))
        copies = set(at)
        originals.extend(p for i, (_, _, p) in enumerate(part) if i not in copies)
    from collections import Counter
    assert Counter(originals) == Counter(p for _, p in published)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(1, 4), lag_share=st.floats(0.0001, 0.5),
       loss=st.floats(0, 0.5))
def test_lossy_copies_near_the_edge_never_show_a_message_more_often_than_published(impl, seed, sources, lag_share,
                                                                                   loss):
    """With losses: each payload's originals are at least what any one source delivered (nothing dropped) and at
    most what was published (no copy kept as a new message while its original was in the window)."""
    from collections import Counter
    rng = random.Random(seed)
    window = 1_000_000
    published = _published_with_repeats(rng, 60, window)
    rows = _deliveries(rng, published, sources, int(window * lag_share), loss)
    d = impl(window_ns=window)
    originals = Counter(p for ts, s, p in rows if d.observe(ts, s, p) is None)
    delivered = [Counter(p for _, s, p in rows if s == source) for source in range(sources)]
    for payload, n in Counter(p for _, p in published).items():
        assert max(c[payload] for c in delivered) <= originals[payload] <= n, payload
