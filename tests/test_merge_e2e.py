"""Recorder processes on the same feed, each dropped independently by ime-sim, merged: the merge holds every
published message that either holds, once, and what it lacks was published while no input was connected."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from record_util import RecorderProcess

from recorder.model.record import RecordKind
from recorder.segment.merge import merge
from recorder.segment.reader import discover, merge_records, open_segment

pytestmark = pytest.mark.slow

IME_SEGMENTS = Path(sys.executable).parent / "ime-segments"
MESSAGE_KINDS = (int(RecordKind.TEXT), int(RecordKind.BINARY))
SLACK_NS = 250_000_000  # a drop is noticed by the client a little after the server cut it


def messages(directory: Path) -> list[tuple[int, bytes]]:
    segs = [open_segment(p) for p in discover([directory])]
    assert all(not s.damage for s in segs)
    return [(r.ts_ns, r.payload) for r in merge_records(segs) if r.kind in MESSAGE_KINDS]


def kinds(directory: Path) -> Counter[int]:
    return Counter(r.kind for p in discover([directory]) for r in open_segment(p).iter_records())


def run_merge(*args: Path | str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(IME_SEGMENTS), "merge", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def test_recordings_merged_hold_everything_any_holds_once(sim_process, tmp_path):
    published_dir = tmp_path / "published"
    sim = sim_process("--contracts", "6", "--rate", "2000", "--seed", "11", "--drop-every", "1.0",
                      "--published-log", str(published_dir), "-q")
    info = sim.info
    env = {"IME_USERNAME": info["username"], "IME_PASSWORD": info["password"]}
    # Hosts B and C record with one connection each; host A with two redundant ones (its recording has receipts).
    recorders = [
        RecorderProcess(tmp_path, "--ids", ",".join(info["ids"]), "--out", str(tmp_path / name), "--duration", "6",
                        "--redundancy", str(copies), "--base-url", info["base_url"], "--token-url",
                        info["token_url"], "-q", env=env).start()
        for name, copies in (("hostA", 2), ("hostB", 1), ("hostC", 1))
    ]
    try:
        for rec in recorders:
            assert rec.wait(60) == 0, rec.stderr
    finally:
        for rec in recorders:
            rec.kill_tree()
    assert sim.stop() == 0
    published = messages(published_dir)
    published_count = Counter(p for _, p in published)
    a, b, c = (messages(tmp_path / name) for name in ("hostA", "hostB", "hostC"))
    # Material for the claims below: each host recorded a good part of the ~12k published (on a loaded machine a
    # recorder may connect seconds late: 3,923 seen with both cores busy).
    assert len(b) > 2000 and len(c) > 2000

    # B and C: once each, everything either holds (a multiset union), nothing that was not published.
    out = run_merge(tmp_path / "hostB", tmp_path / "hostC", "--out", tmp_path / "bc")
    merged = messages(tmp_path / "bc")
    want = Counter(p for _, p in b) | Counter(p for _, p in c)
    assert Counter(p for _, p in merged) == want
    assert not (want - published_count)
    only_b = Counter(p for _, p in b) - Counter(p for _, p in c)
    only_c = Counter(p for _, p in c) - Counter(p for _, p in b)
    assert sum(only_b.values()) > 0 and sum(only_c.values()) > 0  # each lost something to its own drops
    assert out.stdout.splitlines()[1].endswith(f", {sum(only_b.values())} only here")
    assert out.stdout.splitlines()[2].endswith(f", {sum(only_c.values())} only here")

    # What the merge lacks was published while no input had a connection open (the report's intervals).
    inputs = [(str(d), [open_segment(p) for p in discover([d])]) for d in (tmp_path / "hostB", tmp_path / "hostC")]
    result = merge(inputs, lambda number, shard: Discard())
    start, end = result.first_ns, result.last_ns
    assert start is not None and end is not None
    interior = [(ts, p) for ts, p in published if start + SLACK_NS <= ts <= end - SLACK_NS]
    missing = [ts for ts, p in interior if p not in want]
    uncovered = [(iv.start_ns - SLACK_NS, iv.end_ns + SLACK_NS) for iv in result.uncovered]
    outside = [ts for ts in missing if not any(lo <= ts <= hi for lo, hi in uncovered)]
    # The events are the recorder's view: a connection counts as open until the client notices the drop, and
    # on a loaded machine that can take longer than the slack. So most, not all, must fall in the intervals.
    assert len(outside) <= 0.1 * len(missing), \
        f"{len(outside)} of {len(missing)} lost messages were published while an input was open"
    in_b, in_c = {q for _, q in b}, {q for _, q in c}
    lost_b = sum(1 for _, p in interior if p not in in_b)
    lost_c = sum(1 for _, p in interior if p not in in_c)
    print(f"published {len(interior)} in the interior: lost by B {lost_b}, by C {lost_c}, by the merge {len(missing)}")
    # Independent drops: far fewer messages lost by both than by either one alone.
    assert len(missing) <= 0.5 * min(lost_b, lost_c) and len(missing) < 0.05 * len(interior)

    # A (with receipts of its own), B and C: still each message once; A's receipts dropped by default.
    out = run_merge(tmp_path / "hostA", tmp_path / "hostB", tmp_path / "hostC", "--out", tmp_path / "abc")
    union = Counter(p for _, p in a) | want
    assert Counter(p for _, p in messages(tmp_path / "abc")) == union
    receipts = kinds(tmp_path / "hostA")[int(RecordKind.RECEIPT)]
    assert receipts > 1000 and f"{receipts} receipts of its own" in out.stdout.splitlines()[1]
    merged_kinds = kinds(tmp_path / "abc")
    assert merged_kinds[int(RecordKind.RECEIPT)] == 0 and merged_kinds[int(RecordKind.EVENT)] > 0


class Discard:
    """A merge output that keeps nothing: only the merge's report is wanted."""

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None:
        pass

    def extend(self, rows: list[tuple[int, int, int, bytes]]) -> None:
        pass
