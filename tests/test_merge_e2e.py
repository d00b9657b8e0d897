"""Two recorder processes on the same feed, each dropped independently by ime-sim, merged: the merge holds every
published message that either holds, once, and what it lacks was published while no input was connected."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from record_util import RecorderProcess

from recorder.segment.format import RecordKind
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


def test_two_recordings_merged_hold_everything_either_holds_once(sim_process, tmp_path):
    published_dir = tmp_path / "published"
    sim = sim_process("--contracts", "6", "--rate", "2000", "--seed", "11", "--drop-every", "1.0",
                      "--published-log", str(published_dir), "-q")
    info = sim.info
    env = {"IME_USERNAME": info["username"], "IME_PASSWORD": info["password"]}
    recorders = [
        RecorderProcess(tmp_path, "--ids", ",".join(info["ids"]), "--out", str(tmp_path / name), "--duration", "6",
                        "--base-url", info["base_url"], "--token-url", info["token_url"], "-q", env=env).start()
        for name in ("hostA", "hostB")
    ]
    try:
        for rec in recorders:
            assert rec.wait(60) == 0, rec.stderr
    finally:
        for rec in recorders:
            rec.kill_tree()
    assert sim.stop() == 0
    published = messages(published_dir)
    a, b = messages(tmp_path / "hostA"), messages(tmp_path / "hostB")
    assert len(a) > 5000 and len(b) > 5000

    out = subprocess.run([str(IME_SEGMENTS), "merge", str(tmp_path / "hostA"), str(tmp_path / "hostB"), "--out",
                          str(tmp_path / "merged")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    merged = messages(tmp_path / "merged")

    # Once each, and everything either input holds (a multiset union: the larger count of each payload).
    want = Counter(p for _, p in a) | Counter(p for _, p in b)
    assert Counter(p for _, p in merged) == want
    # Nothing that was not published, byte for byte; the drops really cost each input something.
    published_set = Counter(p for _, p in published)
    assert not (Counter(p for _, p in merged) - published_set)
    only_a = Counter(p for _, p in a) - Counter(p for _, p in b)
    only_b = Counter(p for _, p in b) - Counter(p for _, p in a)
    assert sum(only_a.values()) > 0 and sum(only_b.values()) > 0
    assert f"{sum(only_a.values())} only here" in out.stdout.splitlines()[1]
    assert f"{sum(only_b.values())} only here" in out.stdout.splitlines()[2]

    # What the merge lacks was published while no input had a connection open (the report's intervals).
    inputs = [(str(d), [open_segment(p) for p in discover([d])]) for d in (tmp_path / "hostA", tmp_path / "hostB")]
    result = merge(inputs, lambda number, shard: lambda *record: None)
    start, end = result.first_ns, result.last_ns
    assert start is not None and end is not None
    missing = [ts for ts, p in published if start + SLACK_NS <= ts <= end - SLACK_NS and p not in want]
    uncovered = [(iv.start_ns - SLACK_NS, iv.end_ns + SLACK_NS) for iv in result.uncovered]
    outside = [ts for ts in missing if not any(lo <= ts <= hi for lo, hi in uncovered)]
    # The events are the recorder's view: a connection counts as open until the client notices the drop, and
    # on a loaded machine that can take longer than the slack. So most, not all, must fall in the intervals.
    assert len(outside) <= 0.1 * len(missing), \
        f"{len(outside)} of {len(missing)} lost messages were published while an input was open"
    interior = [ts for ts, _ in published if start + SLACK_NS <= ts <= end - SLACK_NS]
    # Independent drops: far fewer messages lost by both than by either one alone.
    in_a = {p for _, p in a}
    lost_a = sum(1 for ts, p in published if start + SLACK_NS <= ts <= end - SLACK_NS and p not in in_a)
    print(f"published {len(interior)} in the interior: lost by A {lost_a}, by the merge {len(missing)}")
    assert len(missing) < 0.5 * lost_a and len(missing) < 0.05 * len(interior)
