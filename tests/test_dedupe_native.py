"""The C Deduper (recorder/segment/_dedupe.c) against the pure-Python reference (PyDeduper): the same answer to
every arrival and the same state after every call, over random interleavings of several sources (more than 8,
which take the general path), repeats within one source, clocks that step back, and windows that expire by time
and by entry count; then a merge of nine inputs, and what the C side must refuse or release."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind, encode_receipt
from recorder.native import ENV as NATIVE_ENV
from recorder.segment import dedupe
from recorder.segment import merge as merge_module
from recorder.segment.dedupe import NativeDeduper, PyDeduper, digest
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.segment.writer import SegmentWriter

pytestmark = pytest.mark.skipif(NativeDeduper is None, reason="recorder.segment._dedupe is not built (no C compiler)")

KEYS = [digest(b"payload %d" % i) for i in range(64)]


class Pair:
    """A C and a Python Deduper fed the same calls; every answer and the state after each call must agree."""

    def __init__(self, window_ns: int, max_entries: int) -> None:
        self.c = NativeDeduper(window_ns, max_entries)
        self.py = PyDeduper(window_ns, max_entries)

    def check(self) -> None:
        assert self.c._state() == self.py._state()
        assert self.c.counts == self.py.counts
        assert len(self.c) == len(self.py)

    def one(self, ts: int, source: int, key: bytes, ref: int) -> None:
        assert self.c.observe_digest(ts, source, key, ref) == self.py.observe_digest(ts, source, key, ref)

    def join(self, source: int) -> None:
        self.c.join(source)
        self.py.join(source)

    def batch(self, rows: list[tuple[int, int, bytes, int]]) -> list[tuple[int, int, int]]:
        cols = [list(col) for col in zip(*rows, strict=True)] if rows else [[], [], [], []]
        got, expected = self.c.observe_batch(*cols), self.py.observe_batch(*cols)
        assert got == expected
        return list(zip(*got, strict=True))


_arrival = st.tuples(st.integers(-5, 60),  # ts step: a wall clock may step back; big steps expire the window
                     st.integers(-1, 11),  # source: 8 and beyond, and negative, take the general path
                     st.integers(0, 15),  # key: few, so that copies and repeats within a source are common
                     st.integers(0, 2**70))  # ref: a recorder's ref does not fit 64 bits
_call = st.tuples(st.booleans(), st.lists(_arrival, min_size=1, max_size=40),  # one by one, or as a batch
                  st.lists(st.integers(-1, 11), max_size=2))  # and then these sources join (a copy reconnects)


@settings(max_examples=400, deadline=None)
@given(calls=st.lists(_call, max_size=12), window=st.integers(1, 300), max_entries=st.integers(1, 40))
def test_every_answer_and_state_agree_with_the_reference(calls, window, max_entries):
    pair = Pair(window, max_entries)
    ts = 10_000
    for batched, arrivals, joins in calls:
        rows = []
        for step, source, key, ref in arrivals:
            ts += step
            rows.append((ts, source, KEYS[key], ref))
        if batched:
            pair.batch(rows)
        else:
            for row in rows:
                pair.one(*row)
        pair.check()
        for source in joins:
            pair.join(source)
        pair.check()


def interleaved(rng: random.Random, published: list[bytes], sources: int, loss: float, repeat: float,
                lag_ns: int) -> list[tuple[int, int, bytes, int]]:
    """What `sources` lossy copies of a feed deliver, in receive order: each source misses some messages, now and
    then gets one twice (the server sent it twice), and lags the market by its own jitter."""
    arrivals = []
    for source in range(sources):
        for i, payload in enumerate(published):
            if rng.random() < loss:
                continue
            for _ in range(2 if rng.random() < repeat else 1):
                ts = 1_000_000 + i * 1000 + rng.randrange(lag_ns)
                arrivals.append((ts, source, digest(payload), source * 10**6 + i))
    arrivals.sort(key=lambda a: a[0])  # stable: ties keep source order
    return arrivals


@settings(max_examples=60, deadline=None)
@given(sources=st.integers(1, 12), seed=st.integers(0, 2**32), loss=st.floats(0, 0.5), repeat=st.floats(0, 0.2),
       lag_ns=st.integers(1, 20_000), window=st.sampled_from([500, 5_000, 10**12]),
       max_entries=st.sampled_from([7, 100, 200_000]), batch=st.integers(1, 300))
def test_lossy_copies_of_a_feed_agree_with_the_reference(sources, seed, loss, repeat, lag_ns, window, max_entries,
                                                         batch):
    rng = random.Random(seed)
    published = [b"m%d" % rng.randrange(60) for _ in range(150)]  # the market itself repeats some bytes
    arrivals = interleaved(rng, published, sources, loss, repeat, lag_ns)
    pair = Pair(window, max_entries)
    for lo in range(0, len(arrivals), batch):
        pair.batch(arrivals[lo:lo + batch])
        pair.check()


def _departures_with_heirs(before: tuple, after: tuple) -> int:
    """Keys whose first original left between two states while a later one stayed (the edge this guards)."""
    old, new = before[2], after[2]
    return sum(1 for key, (originals, _) in old.items()
               if len(originals) > 1 and key in new and originals[0] not in new[key][0] and originals[1] in new[key][0])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(1, 10), loss=st.floats(0, 0.4),
       lag_ns=st.integers(1, 400), edge_ns=st.integers(0, 300), batch=st.integers(1, 60),
       max_entries=st.sampled_from([5, 40, 200_000]))
def test_repeats_a_window_apart_agree_with_the_reference(seed, sources, loss, lag_ns, edge_ns, batch, max_entries):
    """A feed that publishes bytes again about one window later (within +/- edge_ns of it): the first original
    of such an entry leaves while the second is young, arrival by arrival the same in C and in Python."""
    rng = random.Random(seed)
    window = 10_000
    published: list[tuple[int, bytes]] = []
    for i in range(200):
        ts = 1_000_000 + i * 97
        published.append((ts, b"m%d" % i))
        if rng.random() < 0.3:
            published.append((ts + window + rng.randint(-edge_ns, edge_ns), b"m%d" % i))
        if rng.random() < 0.1:
            published.append((ts + rng.randrange(lag_ns), b"m%d" % i))  # and once in a while a moment later
    published.sort()
    arrivals = []
    for source in range(sources):
        last = 0
        for n, (ts, payload) in enumerate(published):
            if rng.random() >= loss:
                last = max(last, ts + rng.randrange(lag_ns))
                arrivals.append((last, source, digest(payload), source * 10**6 + n))
    arrivals.sort(key=lambda a: a[0])
    pair = Pair(window, max_entries)
    for lo in range(0, len(arrivals), batch):
        if rng.random() < 0.5:
            pair.batch(arrivals[lo:lo + batch])
        else:
            for row in arrivals[lo:lo + batch]:
                pair.one(*row)
        pair.check()
    if max_entries > 40 and loss < 0.3:  # the case was there to compare: an original left, a later one stayed
        reference, heirs = PyDeduper(window, max_entries), 0
        before = reference._state()
        for row in arrivals:
            reference.observe_digest(*row)
            after = reference._state()
            heirs += _departures_with_heirs(before, after)
            before = after
        assert heirs > 0


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(2, 11), lag_ns=st.integers(1, 2_000),
       handshake_ns=st.integers(0, 3_000), batch=st.integers(1, 60), max_entries=st.sampled_from([5, 40, 200_000]))
def test_copies_that_reconnect_agree_with_the_reference(seed, sources, lag_ns, handshake_ns, batch, max_entries):
    """Copies that drop and reconnect, each connection joining as it starts (before its first message, while
    others' originals keep arriving), over a feed that repeats bytes about a window later: the same answer to every
    arrival and join, and the same state after each call, in C and in Python (sources beyond 7 included)."""
    rng = random.Random(seed)
    window = 10_000
    published: list[tuple[int, bytes]] = []
    for i in range(300):
        ts = 1_000_000 + i * 97
        published.append((ts, b"m%d" % i))
        if rng.random() < 0.3:
            published.append((ts + window - rng.randrange(window // 10), b"m%d" % i))
    published.sort()
    end = published[-1][0]
    events: list[tuple[int, int, int, bytes | None]] = []  # (ts, order, source, payload or None for a join)
    for source in range(sources):
        at = 1_000_000 + rng.randrange(window // 2)
        while at < end:
            off = at + rng.randrange(window // 5, 3 * window)
            events.append((at + lag_ns - rng.randrange(handshake_ns + 1), 0, source, None))
            last = at + lag_ns
            for ts, payload in published:
                if at <= ts < off:
                    last = max(last, ts + rng.randrange(lag_ns))
                    events.append((last, 1, source, payload))
            at = max(off, last) + rng.randrange(1, window // 2)
    events.sort(key=lambda e: e[:2])
    pair = Pair(window, max_entries)
    rows: list[tuple[int, int, bytes, int]] = []
    for n, (ts, _, source, payload) in enumerate(events):
        if payload is not None:
            rows.append((ts, source, digest(payload), n))
        if payload is None or len(rows) >= batch or n == len(events) - 1:
            if rng.random() < 0.5:
                pair.batch(rows)
            else:
                for row in rows:
                    pair.one(*row)
            rows = []
            pair.check()
        if payload is None:
            pair.join(source)
            pair.check()
    assert pair.c.counts.copies > 0


def test_a_key_sent_again_and_again_through_a_rolling_window_stays_linear():
    """One source sends the same bytes thousands of times within the window, another copies them: each original
    leaves at its own time, the entry holds only the live ones (both sides cut the departed off now and then)."""
    pair = Pair(window_ns=5_000, max_entries=200_000)
    rows = []
    for i in range(60_000):
        ts = i * 10
        rows.append((ts, 0, KEYS[i % 3], i))
        rows.append((ts + 7, 1, KEYS[i % 3], i + 10**6))
    for lo in range(0, len(rows), 999):
        pair.batch(rows[lo:lo + 999])
    pair.check()
    originals, counts = pair.py._state()[2][KEYS[0]]
    assert 150 <= len(originals) <= 170 and counts == {0: len(originals), 1: len(originals)}
    assert pair.c.counts.copies == 60_000


def test_a_long_run_grows_wraps_and_expires_exactly_like_the_reference():
    """Half a million arrivals of three copies through a 2 s window: the C ring and table grow, wrap around and
    shrink back to the window many times over; every copy is decided the same."""
    rng = random.Random(5)
    pair = Pair(2_000_000_000, 200_000)
    n, step = 170_000, 50_000  # 20k messages/s: ~40k live entries, the window turns over four times
    rows = []
    for i in range(n):
        key = digest(b"%d" % rng.randrange(n))  # about a third repeat an earlier message somewhere
        for source in range(3):
            if rng.random() < 0.97:
                rows.append((i * step + rng.randrange(100_000), source, key, i))
    rows.sort(key=lambda r: r[0])
    copies = 0
    for lo in range(0, len(rows), 1400):
        copies += len(pair.batch(rows[lo:lo + 1400]))
    pair.check()
    assert copies > len(rows) // 2 and pair.c._state()[0] > 100_000  # many copies; most entries expired


def test_a_full_window_expires_by_entry_count():
    pair = Pair(10**18, 1000)
    pair.batch([(i, i % 3, digest(b"%d" % (i // 2)), i) for i in range(10_000)])
    pair.check()
    assert 990 <= len(pair.c) <= 1000 and pair.c._state()[0] >= 4000  # 5000 keys, the newest ~1000 held


def test_the_c_side_refuses_what_it_cannot_hold_and_changes_nothing():
    d = NativeDeduper()
    assert d.observe_digest(1, 0, KEYS[0], 5) is None
    before = d._state()
    with pytest.raises(TypeError, match="16 bytes"):
        d.observe_digest(2, 1, b"short", 5)
    with pytest.raises(TypeError, match="ts_ns must be an int"):
        d.observe_digest(2.5, 1, KEYS[0], 5)
    with pytest.raises(TypeError, match="ref must be an int"):
        d.observe_digest(2, 1, KEYS[0], "ref")
    with pytest.raises(OverflowError):
        d.observe_digest(2**63, 1, KEYS[0], 5)
    with pytest.raises(ValueError, match="differ in length"):
        d.observe_batch([2, 3], [1, 1], [KEYS[0]], [5, 5])
    with pytest.raises(ValueError, match="positive"):
        NativeDeduper(0)
    assert d._state() == before
    assert d.observe_digest(3, 1, KEYS[0], 6) == (1, 5)


def test_refs_are_released_when_they_leave_the_window_and_with_the_deduper():
    ref = 2**80 + 12345  # one object, so that its reference count tells whether the C side let go
    baseline = sys.getrefcount(ref)
    d = NativeDeduper(window_ns=100)
    for i in range(500):  # the same source again: general entries holding the ref several times
        d.observe_digest(i, i % 2, KEYS[i % 3], ref)
    assert sys.getrefcount(ref) > baseline
    d.observe_digest(10_000, 0, KEYS[5], 1)  # everything before 9900 leaves the window
    assert sys.getrefcount(ref) == baseline
    for i in range(50):
        d.observe_digest(20_000 + i, 9, KEYS[i % 4], ref)
    del d
    assert sys.getrefcount(ref) == baseline


def test_the_default_is_the_c_deduper_unless_the_environment_says_python():
    probe = "from recorder.segment import dedupe; print(dedupe.__file__, dedupe.Deduper.__name__, dedupe.NATIVE)"
    here = str(Path(dedupe.__file__).parents[2])  # this checkout's recorder package, not another one
    env = {k: v for k, v in os.environ.items() if k != NATIVE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    for extra, expected in (({}, ["NativeDeduper", "True"]), ({NATIVE_ENV: "dedupe"}, ["PyDeduper", "False"]),
                            ({NATIVE_ENV: "0"}, ["PyDeduper", "False"]),
                            ({NATIVE_ENV: "fanout"}, ["NativeDeduper", "True"])):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                             check=True)
        path, *chosen = out.stdout.split()
        assert path == dedupe.__file__ and chosen == expected


# --- a merge of nine inputs (more sources than the fast path holds), with both Dedupers -----------------------

S = 1_000_000_000
T0 = 1_764_000_000 * S
TEXT, EVENT, RECEIPT = int(RecordKind.TEXT), int(RecordKind.EVENT), int(RecordKind.RECEIPT)


def _nine_inputs(tmp_path):
    rng = random.Random(3)
    published = [(T0 + i * 1_000_000, ime_payload(i % 700, "1001")) for i in range(2000)]  # bytes repeat
    inputs = []
    for number in range(9):
        lag = 10_000 * (number + 1)
        recs = [(T0 - 1, 1, EVENT, encode_event(Event.OPENED, conn=1, contracts=["1001"]))]
        for ts, payload in published:
            if rng.random() < 0.2:
                continue
            recs.append((ts + lag + rng.randrange(30_000), 1, TEXT, payload))
            if rng.random() < 0.05:  # this input's own redundant connection, and a server repeat
                recs.append((ts + lag + 40_000, 2, RECEIPT, encode_receipt(1, 40_000)))
                recs.append((ts + lag + 41_000, 1, TEXT, payload))
        recs.sort(key=lambda r: r[0])
        write_records(tmp_path / f"in{number}", recs, meta={"endpoint": "id", "contracts": ["1001"]})
        inputs.append(tmp_path / f"in{number}")
    return inputs


def _merged(inputs, out, monkeypatch, impl):
    monkeypatch.setattr(merge_module, "Deduper", impl)
    writer = SegmentWriter(out, rotate_seconds=0)
    opened = [(str(p), [open_segment(f) for f in discover([p])]) for p in inputs]
    result = merge_module.merge(opened, lambda number, shard: writer, keep_receipts=True)
    writer.close()
    rows = [(r.ts_ns, r.conn, r.kind, r.payload) for r in merge_records([open_segment(f) for f in discover([out])])]
    return result, rows


def test_a_merge_of_nine_inputs_writes_the_same_records_with_either_deduper(tmp_path, monkeypatch):
    inputs = _nine_inputs(tmp_path)
    c_result, c_rows = _merged(inputs, tmp_path / "c", monkeypatch, NativeDeduper)
    py_result, py_rows = _merged(inputs, tmp_path / "py", monkeypatch, PyDeduper)
    assert c_rows == py_rows and c_result == py_result
    kinds = Counter(kind for _, _, kind, _ in c_rows)
    assert kinds[TEXT] == c_result.messages and kinds[RECEIPT] == c_result.receipts > kinds[TEXT]
    assert sum(st.copies for st in c_result.inputs) > 8 * 1000  # most of what was read was a copy


def _home(key: bytes, buckets: int = 2048) -> int:
    """_dedupe.c's key_hash and first bucket, for a table of `buckets` (a new Deduper's)."""
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    mix = (k0 ^ (k1 * 0xC2B2AE3D27D4EB4F)) % 2**64 * 0x9E3779B97F4A7C15 % 2**64
    return mix >> (64 - buckets.bit_length() + 1)


def test_a_deletion_at_the_end_of_the_table_keeps_the_run_that_wrapped_around():
    """Keys homed in the last two buckets and the first: their probe run wraps. Deleting the first must leave the
    key homed at bucket 0 findable (the backward shift must not move it before its home)."""
    homes: dict[int, list[bytes]] = {}
    for i in range(200_000):
        key = digest(b"wrap %d" % i)
        homes.setdefault(_home(key), []).append(key)
    a, b, c = homes[2046][0], homes[2047][0], homes[0][0]
    pair = Pair(window_ns=10, max_entries=1000)
    for ts, key in enumerate((a, b, c)):
        pair.one(ts, 0, key, ts)
    pair.one(10, 0, digest(b"later"), 99)  # a (ts 0) leaves the window: its bucket is emptied
    for key in (b, c):  # both still in the window, so their copies find them
        pair.one(11, 1, key, 100)
    pair.check()
    assert pair.c.counts.copies == 2
