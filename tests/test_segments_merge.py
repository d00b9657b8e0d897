"""`ime-segments merge`: exact dedupe across recordings, per-input counts, coverage, and refusing to overwrite."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from segment_util import ime_payload, write_records

from recorder.events import Event, decode_event, encode_event
from recorder.model.record import RecordKind, decode_receipt, encode_receipt
from recorder.segment.merge import ContractCoverage, Interval, check_paths, merge
from recorder.segment.naming import segment_name
from recorder.segment.reader import SegmentFile, discover, merge_records, open_segment
from recorder.segment.writer import SegmentWriter

IME_SEGMENTS = Path(sys.executable).parent / "ime-segments"
S = 1_000_000_000
MS = 1_000_000
T0 = 1_764_000_000 * S
CONTRACTS = ["1001", "1002"]
TEXT, EVENT, RECEIPT = int(RecordKind.TEXT), int(RecordKind.EVENT), int(RecordKind.RECEIPT)


def opened(conn: int, contracts: list[str] = CONTRACTS) -> bytes:
    return encode_event(Event.OPENED, conn=conn, contracts=contracts)


def closed(conn: int) -> bytes:
    return encode_event(Event.CLOSED, conn=conn, code=1006)


def segments(directory: Path) -> list[SegmentFile]:
    return [open_segment(p) for p in discover([directory])]


def records(directory: Path) -> list[tuple[int, int, int, bytes]]:
    segs = segments(directory)
    assert all(not s.damage for s in segs)
    return [(r.ts_ns, r.conn, r.kind, r.payload) for r in merge_records(segs)]


def run_merge(tmp_path: Path, inputs: dict[str, list[tuple[int, int, int, bytes]]], keep_receipts: bool = False):
    opened_inputs = []
    for name, recs in inputs.items():
        write_records(tmp_path / name, recs, meta={"endpoint": "id", "contracts": CONTRACTS})
        opened_inputs.append((name, segments(tmp_path / name)))
    writer = SegmentWriter(tmp_path / "out", rotate_seconds=0)
    result = merge(opened_inputs, lambda number, shard: writer, keep_receipts=keep_receipts)
    writer.close()
    return result, records(tmp_path / "out")


# --- coverage (pure) ---------------------------------------------------------------------------------


def test_coverage_is_the_union_of_open_connections_per_contract():
    cov = ContractCoverage()
    a, b, c = frozenset({"1001", "1002"}), frozenset({"1001"}), frozenset({"1002"})
    cov.opened(1, 0, a)
    cov.close(1, 100)
    cov.opened(2, 80, b)  # input 2 covers 1001 from 80 to 300
    cov.close(2, 300)
    cov.opened(3, 150, c)  # 1002 again from 150: uncovered 100..150
    cov.close(3, 400)
    assert cov.uncovered(0, 500) == [
        Interval(100, 150, frozenset({"1002"})),
        Interval(300, 400, frozenset({"1001"})),
        Interval(400, 500, frozenset({"1001", "1002"})),
    ]
    assert cov.uncovered(0, 100) == []


def test_a_connection_that_never_closed_covers_until_its_process_last_record():
    cov = ContractCoverage()
    cov.opened(1, 0, frozenset({"1001"}))
    cov.seen("worker-1", 50)
    cov.seen("worker-1", 70)  # then the worker was killed: no `closed` for connection 1
    cov.opened(2, 120, frozenset({"1001"}))  # the restarted worker's connection
    cov.seen("worker-2", 200)
    cov.close(2, 200)
    cov.finish({1: "worker-1", 2: "worker-2"}.__getitem__)
    assert cov.uncovered(0, 200) == [Interval(70, 120, frozenset({"1001"}))]


# --- merge (in process) --------------------------------------------------------------------------------


def feed(n: int) -> list[tuple[int, bytes]]:
    return [(T0 + i * MS, ime_payload(i, CONTRACTS[i % 2])) for i in range(n)]


def recording(messages: list[tuple[int, bytes]], lost: range, lag_ns: int, conn0: int = 1) -> list[tuple]:
    """A recorder's view of `messages`: received `lag_ns` later, with a reconnect that lost `lost`."""
    out = [(messages[0][0] + lag_ns - 1, conn0, EVENT, opened(conn0))]
    conn = conn0
    for i, (ts, payload) in enumerate(messages):
        if lost and i == lost.start:
            out.append((ts + lag_ns, conn, EVENT, closed(conn)))
        if lost and i == lost.stop:
            conn += 1
            out.append((ts + lag_ns - 1, conn, EVENT, opened(conn)))
        if i not in lost:
            out.append((ts + lag_ns, conn, TEXT, payload))
    out.append((messages[-1][0] + lag_ns + 1, conn, EVENT, closed(conn)))
    return out


def test_merge_holds_every_message_either_input_holds_once(tmp_path):
    msgs = feed(3000)
    a = recording(msgs, range(500, 700), lag_ns=20_000)
    b = recording(msgs, range(1500, 1550), lag_ns=35_000)  # b is slower: a's copy wins where both have it
    b[1000:1000] = [(T0 + 999 * MS + 35_001, 1, 9, b"a record kind from the future")]
    result, out = run_merge(tmp_path, {"a": a, "b": b})
    texts = [r for r in out if r[2] == TEXT]
    assert [p for *_, p in texts] == [p for _, p in msgs]  # every message, once, in order
    # Each came from the input where it arrived first: a, except where a was reconnecting.
    from_b = {i for i, (ts, *_) in enumerate(texts) if ts - msgs[i][0] == 35_000}
    assert from_b == set(range(500, 700))
    ra, rb = result.inputs
    assert (ra.messages, ra.originals, ra.copies, ra.only_here) == (2800, 2800, 0, 50)
    assert (rb.messages, rb.originals, rb.copies, rb.only_here) == (2950, 200, 2750, 200)
    assert rb.unknown == 1 and result.receipts == 0 and not any(r[2] == RECEIPT for r in out)
    # Connection events are kept, on output connections of their own, and say which input they came from.
    events = [(conn, decode_event(p)) for _, conn, kind, p in out if kind == EVENT]
    assert len(events) == result.events == 8 == ra.events + rb.events
    assert {e["input"] for _, e in events} == {0, 1} and all(e["conn"] == conn for conn, e in events)
    assert len({conn for conn, _ in events}) == 4  # a's 1, 2 and b's 1, 2 are four connections
    # Nobody was reconnecting at the same time: everything covered.
    assert result.uncovered == [] and result.contracts == {"1001", "1002"}


def test_three_inputs_count_each_shared_original_once(tmp_path):
    msgs = feed(600)
    a = recording(msgs, range(100, 200), lag_ns=10_000)
    b = recording(msgs, range(150, 250), lag_ns=20_000)
    c = recording(msgs, range(0), lag_ns=30_000)
    result, out = run_merge(tmp_path, {"a": a, "b": b, "c": c})
    assert [p for *_, kind, p in out if kind == TEXT] == [p for _, p in msgs]
    ra, rb, rc = result.inputs
    assert (ra.originals, rb.originals, rc.originals) == (500, 50, 50)
    assert (ra.copies, rb.copies, rc.copies) == (0, 450, 550)
    # a's originals were all repeated by b or c (or both: still counted once); only c had 150..199.
    assert (ra.only_here, rb.only_here, rc.only_here) == (0, 0, 50)


def test_uncovered_intervals_come_from_the_connection_events(tmp_path):
    msgs = feed(2000)
    a = recording(msgs, range(500, 800), lag_ns=20_000)
    b = recording(msgs, range(600, 900), lag_ns=35_000)
    result, out = run_merge(tmp_path, {"a": a, "b": b})
    # Both were away from message 600 to 800: lost, and reported.
    assert len([r for r in out if r[2] == TEXT]) == 2000 - 200
    (gap,) = result.uncovered
    assert gap.contracts == {"1001", "1002"}
    assert gap.start_ns == msgs[600][0] + 35_000 and gap.end_ns == msgs[800][0] + 20_000 - 1


def test_equal_times_keep_input_order_across_a_frame_boundary(tmp_path):
    """Input a's copy of m1 has the same receive time as b's, but starts a's next frame: a is the first input, so
    its copy is the original (docs/FORMAT.md "Reading" step 7), wherever the frames happen to be cut."""
    m0, m1, m2 = ime_payload(0), ime_payload(1), ime_payload(2)
    a = SegmentWriter(tmp_path / "a", rotate_seconds=0)
    a.append(T0, 1, TEXT, m0)
    a.cut()  # a frame ends at T0, and the next starts at T0 again
    a.append(T0, 1, TEXT, m1)
    a.close()
    write_records(tmp_path / "b", [(T0, 1, TEXT, m1), (T0 + MS, 1, TEXT, m2)])
    writer = SegmentWriter(tmp_path / "out", rotate_seconds=0)
    result = merge([("a", segments(tmp_path / "a")), ("b", segments(tmp_path / "b"))], lambda number, shard: writer)
    writer.close()
    assert [(st.originals, st.copies) for st in result.inputs] == [(2, 0), (1, 1)]


def test_an_input_whose_clock_stepped_back_keeps_its_order(tmp_path):
    """The merge writes each input's messages in the order that input received them (merged with the other
    input's by time): a wall clock that stepped back (NTP) does not reorder them."""
    m = [ime_payload(i) for i in range(6)]
    a = [(T0 + 10, 1, TEXT, m[0]), (T0 + 30, 1, TEXT, m[1]), (T0 + 15, 1, TEXT, m[2]), (T0 + 40, 1, TEXT, m[3])]
    b = [(T0 + 12, 1, TEXT, m[4]), (T0 + 35, 1, TEXT, m[5])]
    _, out = run_merge(tmp_path, {"a": a, "b": b})
    by_conn: dict[int, list[bytes]] = {}
    for _, conn, _, payload in out:
        by_conn.setdefault(conn, []).append(payload)
    assert list(by_conn.values()) == [m[:4], m[4:]]


def test_multiset_semantics_a_message_an_input_holds_twice_stays_twice(tmp_path):
    msgs = feed(10)
    twice = [*msgs[:5], msgs[4], *msgs[5:]]  # the server really sent message 4 twice on this connection
    a = recording([(ts + i, p) for i, (ts, p) in enumerate(twice)], range(0), lag_ns=10)
    b = recording(msgs, range(0), lag_ns=20)
    result, out = run_merge(tmp_path, {"a": a, "b": b})
    assert Counter(p for *_, kind, p in out if kind == TEXT) == Counter(p for _, p in twice)
    assert result.inputs[0].only_here == 1 and result.inputs[1].only_here == 0


def test_receipts_are_dropped_by_default_and_kept_pointing_at_the_winner(tmp_path):
    msgs = feed(400)
    a = recording(msgs, range(100, 150), lag_ns=20_000)
    b = recording(msgs, range(0), lag_ns=35_000)
    # b was itself a redundant recording: its connection 7 saw every message later than connection 1.
    b_receipts = [(ts + 35_000 + 5_000, 7, RECEIPT, encode_receipt(1, 5_000)) for ts, _ in msgs[:200]]
    b = sorted(b + b_receipts, key=lambda r: r[0])
    result, out = run_merge(tmp_path / "drop", {"a": a, "b": b})
    assert not any(r[2] == RECEIPT for r in out) and result.inputs[1].receipts == 200 and result.receipts == 0

    result, out = run_merge(tmp_path / "keep", {"a": a, "b": b}, keep_receipts=True)
    index = {(ts, conn): p for ts, conn, kind, p in out if kind == TEXT}
    receipts = [r for r in out if r[2] == RECEIPT]
    assert len(receipts) == result.receipts == 350 + 200  # b's later copies, and b's own receipts
    copied = Counter()
    for ts, _, _, body in receipts:
        orig_conn, lag = decode_receipt(body)
        original = index.get((ts - lag, orig_conn))
        assert original is not None, "a receipt must point at a record of the merged output"
        copied[original] += 1
    # Messages 100..149 came from b only: b's own receipts of those point at b's record; a's originals got
    # two receipts (b's copy, and b's own second connection), b's originals one.
    assert sum(copied.values()) == 550
    assert all(copied[p] == (1 if 100 <= i < 150 or i >= 200 else 2) for i, (_, p) in enumerate(msgs))


# --- the command -----------------------------------------------------------------------------------------


def segments_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IME_SEGMENTS), *args], capture_output=True, text=True, timeout=60)


def test_the_command_writes_sealed_verified_segments_and_reports(tmp_path):
    msgs = feed(2000)
    write_records(tmp_path / "hostA", recording(msgs, range(100, 300), lag_ns=20_000))
    write_records(tmp_path / "hostB", recording(msgs, range(250, 400), lag_ns=35_000))
    out = segments_cli("merge", str(tmp_path / "hostA"), str(tmp_path / "hostB"), "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "wrote 1950 messages, 0 receipts and 8 connection events from 2 inputs"
    assert lines[1].startswith(f"input 1 {tmp_path / 'hostA'}: 1800 messages in 1 files, 1800 first here, 0 already")
    assert lines[1].endswith(", 100 only here")
    assert lines[2].startswith(f"input 2 {tmp_path / 'hostB'}: 1850 messages in 1 files, 150 first here")
    assert lines[2].endswith(", 150 only here")
    assert lines[3].startswith("not covered by any input: 1 intervals, 50ms in all")
    assert lines[4].endswith("(50ms): all contracts")
    # One output shard per input shard: each keeps its input's connection history as it was.
    assert lines[-1] == f"2 sealed files in {tmp_path / 'm'}, verified"
    merged = sorted(segments(tmp_path / "m"), key=lambda seg: seg.shard)
    assert [(seg.shard, seg.header.meta["input"]) for seg in merged] == [(0, str(tmp_path / "hostA")),
                                                                          (1, str(tmp_path / "hostB"))]
    assert [seg.records for seg in merged] == [1800 + 4, 150 + 4]
    # Named by the data they hold (its earliest record), not by when the merge ran.
    for seg in merged:
        first_ms = min(rec.ts_ns for rec in seg.iter_records()) // 1_000_000
        assert seg.path.name == segment_name("ime", seg.shard, first_ms * 1_000_000), seg.path.name
    assert not list((tmp_path / "m").glob("*.open"))
    assert segments_cli("verify", str(tmp_path / "m")).returncode == 0
    # Merging again into the same directory would mix two merges: refused.
    again = segments_cli("merge", str(tmp_path / "hostA"), "--out", str(tmp_path / "m"))
    assert again.returncode == 2 and again.stderr.strip().endswith("already holds segment files; give a new or "
                                                                   "empty directory")


@pytest.mark.parametrize(("inputs", "out", "message"), [
    (["a"], "a", "--out {out} is inside the input {a}"),
    (["a", "b"], "a/merged", "--out {out} is inside the input {a}"),
    (["a", "b"], "b/../b", "--out {out} is inside the input {b}"),
    (["a", "out/b"], "out", "the input {nested} is inside --out {out}"),
    (["a", "a"], "m", "the input {a} is the same as the input {a}"),
    (["a", "a/x"], "m", "the input {ax} is inside the input {a}"),
])
def test_refuses_to_write_into_its_inputs(tmp_path, inputs, out, message):
    for name in ("a", "b", "out/b", "a/x"):
        write_records(tmp_path / name, [(T0, 1, TEXT, ime_payload(1))])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.zst")}
    args = [str(tmp_path / i) for i in inputs]
    proc = segments_cli("merge", *args, "--out", str(tmp_path / out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    expected = message.format(out=tmp_path / out, a=tmp_path / "a", b=tmp_path / "b", nested=tmp_path / "out/b",
                              ax=tmp_path / "a/x")
    assert len(lines) == 1 and lines[0].startswith(f"ime-segments: error: {expected}"), lines
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.zst")} == before  # nothing written anywhere


def test_check_paths_accepts_separate_directories(tmp_path):
    assert check_paths([tmp_path / "a", tmp_path / "b"], tmp_path / "merged") is None
    assert check_paths([tmp_path / "a"], tmp_path / "ab") is None  # a name prefix is not containment


def test_kept_receipts_resolve_in_the_readers(tmp_path):
    import orjson

    msgs = feed(300)
    write_records(tmp_path / "hostA", recording(msgs, range(100, 150), lag_ns=20_000))
    write_records(tmp_path / "hostB", recording(msgs, range(0), lag_ns=35_000))
    out = segments_cli("merge", str(tmp_path / "hostA"), str(tmp_path / "hostB"), "--out", str(tmp_path / "m"),
                       "--keep-receipts")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("wrote 300 messages, 250 receipts and 6 connection events from 2 inputs")
    # The default view shows each message once; --all-copies shows the 250 copies b also had, each resolved.
    once = segments_cli("cat", str(tmp_path / "m"), "--format", "raw")
    assert once.stdout.splitlines() == [p.decode() for _, p in msgs]
    every = segments_cli("cat", str(tmp_path / "m"), "--all-copies", "--no-events")
    lines = [orjson.loads(line) for line in every.stdout.splitlines()]
    copies = [line for line in lines if "copy_of" in line]
    assert len(lines) == 550 and len(copies) == 250
    assert all(c["copy_of"]["lag_ns"] == 15_000 for c in copies)
    assert all(c.get("frame") for c in copies), "every receipt resolves to its original's payload"
    # --from between message 200 and its later copy: that copy's original is not read. Raw output used to print
    # it as an empty line (an empty frame to a consumer); it is left out and counted.
    cut = str(T0 + 200 * MS + 30_000)
    raw = segments_cli("cat", str(tmp_path / "m"), "--all-copies", "--format", "raw", "--from", cut)
    assert raw.returncode == 0, raw.stderr
    assert b"" not in raw.stdout.encode().split(b"\n")[:-1]
    assert "1 later copies left out: their originals are not among the records read" in raw.stderr
    jsonl = [orjson.loads(line) for line in segments_cli("cat", str(tmp_path / "m"), "--all-copies", "--no-events",
                                                           "--from", cut).stdout.splitlines()]
    assert [c for c in jsonl if "copy_of" in c and "frame" not in c] == [jsonl[0]]


def test_coverage_matches_a_per_contract_brute_force_with_different_sharding():
    import random

    rng = random.Random(5)
    contracts = [str(1001 + i) for i in range(12)]
    layouts = ([frozenset(contracts[g::3]) for g in range(3)], [frozenset(contracts[g * 4:(g + 1) * 4]) for g in
                                                               range(3)])
    cov = ContractCoverage()
    spans: list[tuple[int, int, frozenset[str]]] = []
    conn = 0
    for groups in layouts:
        for group in groups:
            t = rng.randint(0, 50)
            while t < 1000:
                conn += 1
                lived = rng.randint(20, 200)
                cov.opened(conn, t, group)
                cov.close(conn, t + lived)
                spans.append((t, t + lived, group))
                t += lived + rng.randint(1, 40)
    got = cov.uncovered(0, 1000)
    # Brute force: per time unit, the contracts no span covers; then the same maximal runs.
    expected: list[Interval] = []
    for t in range(1000):
        missing = frozenset(c for c in contracts if not any(lo <= t < hi and c in g for lo, hi, g in spans))
        if not missing:
            continue
        if expected and expected[-1].end_ns == t and expected[-1].contracts == missing:
            expected[-1] = Interval(expected[-1].start_ns, t + 1, missing)
        else:
            expected.append(Interval(t, t + 1, missing))
    assert got == expected and len(got) > 10


def test_an_unsealed_input_merges_and_a_damaged_frame_is_skipped_with_exit_1(tmp_path):
    from segment_util import unsealed_copy

    msgs = feed(3000)
    (sealed,) = write_records(tmp_path / "a-sealed", recording(msgs, range(0), lag_ns=10), frame_bytes=16 << 10)
    (tmp_path / "crashed").mkdir()
    unsealed_copy(sealed, tmp_path / "crashed" / (sealed.name + ".open"))  # a recorder killed before sealing
    write_records(tmp_path / "b", recording(msgs, range(0), lag_ns=20), frame_bytes=16 << 10)
    out = segments_cli("merge", str(tmp_path / "crashed"), str(tmp_path / "b"), "--out", str(tmp_path / "m1"))
    assert out.returncode == 0, out.stderr
    assert [p for *_, kind, p in records(tmp_path / "m1") if kind == TEXT] == [p for _, p in msgs]

    # One flipped byte inside a data frame of b: that frame is skipped (a warning, exit 1); a has its messages.
    (b_file,) = discover([tmp_path / "b"])
    seg = open_segment(b_file)
    frame = seg.frames[3]
    data = bytearray(b_file.read_bytes())
    data[frame.data_offset + frame.compressed_size // 2] ^= 0xFF
    b_file.write_bytes(bytes(data))
    out = segments_cli("merge", str(tmp_path / "a-sealed"), str(tmp_path / "b"), "--out", str(tmp_path / "m2"))
    assert out.returncode == 1
    assert "warning" in out.stderr and str(b_file) in out.stderr
    assert "1 damaged frames skipped" in out.stdout
    assert [p for *_, kind, p in records(tmp_path / "m2") if kind == TEXT] == [p for _, p in msgs]


def test_a_wider_dedupe_window_matches_copies_from_a_host_whose_clock_is_off(tmp_path):
    msgs = feed(500)
    write_records(tmp_path / "a", recording(msgs, range(0), lag_ns=10_000))
    write_records(tmp_path / "b", recording(msgs, range(0), lag_ns=3 * S))  # b's clock is 3 s ahead
    default = segments_cli("merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m1"))
    assert default.returncode == 0 and default.stdout.startswith("wrote 1000 messages")  # beyond 2 s: not copies
    wide = segments_cli("merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m2"),
                        "--dedupe-window", "10")
    assert wide.returncode == 0 and wide.stdout.startswith("wrote 500 messages")
    assert [p for *_, kind, p in records(tmp_path / "m2") if kind == TEXT] == [p for _, p in msgs]


def test_repeats_a_window_apart_are_merged_once_per_publication(tmp_path):
    """The feed published some messages again 10 µs short of one dedupe window (2 s) later. Input a (20 µs behind
    the market) holds each repeat just inside the window of its first copy, input b (35 µs behind) just outside:
    b's repeat is a copy of a's repeat, not a message of its own (the first original's window has nothing to
    do with it)."""
    msgs = feed(3000)
    window = 2 * S
    published = sorted([*msgs, *((ts + window - 10_000, p) for ts, p in msgs[:900:9])])
    write_records(tmp_path / "a", recording(published, range(0), lag_ns=20_000),
                  meta={"endpoint": "id", "contracts": CONTRACTS})
    write_records(tmp_path / "b", recording(published, range(0), lag_ns=35_000),
                  meta={"endpoint": "id", "contracts": CONTRACTS})
    merged = subprocess.run([str(IME_SEGMENTS), "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                             str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    lines = merged.stdout.splitlines()
    assert lines[0].startswith(f"wrote {len(published)} messages"), merged.stdout
    assert lines[1].endswith(", 0 only here") and lines[2].endswith(", 0 only here"), merged.stdout  # all shared
    raw = subprocess.run([str(IME_SEGMENTS), "cat", str(tmp_path / "m"), "--format", "raw"], capture_output=True,
                         timeout=60, check=True).stdout
    assert Counter(raw.split(b"\n")[:-1]) == Counter(p for _, p in published)
