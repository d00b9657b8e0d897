"""`ime-segments stats`' per-group coverage on event sequences the recorder writes (real segment files, the real
command): the time with no copy of a group connected must be the time some contract had no connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_498_200 * S
EV = int(RecordKind.EVENT)
TEXT = int(RecordKind.TEXT)


def stats_json(directory: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "IME_TZ"}
    out = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "stats", "--json", str(directory)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def ev(ts: int, rec_conn: int, event: Event, **fields: object) -> tuple[int, int, int, bytes]:
    return (ts, rec_conn, EV, encode_event(event, **fields))


def test_a_refused_group_split_by_bisection_ends_when_its_contracts_move_on(tmp_path):
    """The sequence a worker writes when one of its contracts (8888) is refused (as recorded against ime-sim):
    group 1 is refused, split into 2 and 3; 3 is refused, split into 4 and 5; 5 (8888 alone) is rejected.
    Groups 1, 3 and 5 never come back: they must not count as uncovered until the recording ends."""
    c1 = ["1001", "1002", "1003", "1004", "1007", "1008", "8888"]
    recs = [
        ev(T0, 0, Event.WORKER_STARTED, incarnation=1, contracts=c1),
        ev(T0 + 3 * MS, 1, Event.CONNECTING, conn=1, contracts=c1, group=1, copy=0),
        ev(T0 + 13 * MS, 1, Event.OPENED, conn=1, contracts=c1, group=1, copy=0),
        ev(T0 + 14 * MS, 1, Event.CLOSED, conn=1, code=1008, reason="unknown contract: 8888", group=1, copy=0),
        ev(T0 + 47 * MS, 3, Event.CONNECTING, conn=3, contracts=c1[:4], group=2, copy=0),
        ev(T0 + 52 * MS, 4, Event.CONNECTING, conn=4, contracts=c1[4:], group=3, copy=0),
        ev(T0 + 53 * MS, 3, Event.OPENED, conn=3, contracts=c1[:4], group=2, copy=0),
        ev(T0 + 54 * MS, 4, Event.OPENED, conn=4, contracts=c1[4:], group=3, copy=0),
        ev(T0 + 55 * MS, 4, Event.CLOSED, conn=4, code=1008, reason="unknown contract: 8888", group=3, copy=0),
        ev(T0 + 57 * MS, 5, Event.CONNECTING, conn=5, contracts=["1007", "1008"], group=4, copy=0),
        ev(T0 + 59 * MS, 6, Event.CONNECTING, conn=6, contracts=["8888"], group=5, copy=0),
        ev(T0 + 63 * MS, 5, Event.OPENED, conn=5, contracts=["1007", "1008"], group=4, copy=0),
        ev(T0 + 64 * MS, 6, Event.OPENED, conn=6, contracts=["8888"], group=5, copy=0),
        ev(T0 + 65 * MS, 6, Event.CLOSED, conn=6, code=1008, reason="unknown contract: 8888", group=5, copy=0),
        ev(T0 + 66 * MS, 0, Event.REJECTED, contracts=["8888"], code=1008, reason="refused with a fresh token"),
    ]
    recs += [(T0 + 100 * MS + i * 9 * MS, 3 if i % 2 else 5, TEXT, ime_payload(i, "1001" if i % 2 else "1007"))
             for i in range(1000)]
    end = T0 + 10 * S
    recs.append(ev(end, 0, Event.WORKER_STOPPING, reason="recorder stopping"))
    write_records(tmp_path / "d", recs, shard=0)

    groups = {g["group"]: g for g in stats_json(tmp_path / "d")["connections"]["groups"]}
    assert sorted(groups) == [1, 2, 3, 4, 5]
    # Refused group 1: uncovered from its first connect to its open (10 ms), and from the refusal until the
    # groups that took its contracts over were connecting (14 → 52 ms): then it is gone.
    assert groups[1]["span_s"] == 0.049 and groups[1]["uncovered_s"] == 0.048, groups[1]
    assert groups[3]["span_s"] == 0.007 and groups[3]["uncovered_s"] == 0.006, groups[3]
    assert groups[5]["span_s"] == 0.007 and groups[5]["uncovered_s"] == 0.006, groups[5]  # ended by `rejected`
    # The groups that recorded: only the wait for their first connection.
    assert groups[2]["uncovered_s"] == 0.006 and groups[4]["uncovered_s"] == 0.006
    assert groups[2]["span_s"] == round((end - T0 - 47 * MS) / S, 6)


def test_a_window_sees_the_connections_opened_before_it(tmp_path):
    """`stats --from`: a group connected long before the window is there from the window's start, with the gap in
    it; the connection events before the window are read (only frames that hold events), nothing else counted."""
    ids = ["1001"]
    recs = [ev(T0, 0, Event.WORKER_STARTED, incarnation=1, contracts=ids),
            ev(T0 + MS, 1, Event.CONNECTING, conn=1, contracts=ids, group=1, copy=0),
            ev(T0 + 2 * MS, 1, Event.OPENED, conn=1, contracts=ids, group=1, copy=0),
            ev(T0 + 3 * MS, 2, Event.CONNECTING, conn=2, contracts=ids, group=1, copy=1),
            ev(T0 + 4 * MS, 2, Event.OPENED, conn=2, contracts=ids, group=1, copy=1),
            # Both copies down 09:03:00-09:03:05 (UTC 05:33), copy 1 back at once, copy 0 down until 09:08.
            ev(T0 + 180 * S, 1, Event.CLOSED, conn=1, code=1006, group=1, copy=0),
            ev(T0 + 180 * S + MS, 2, Event.CLOSED, conn=2, code=1006, group=1, copy=1),
            ev(T0 + 185 * S, 3, Event.CONNECTING, conn=3, contracts=ids, group=1, copy=1),
            ev(T0 + 185 * S + MS, 3, Event.OPENED, conn=3, contracts=ids, group=1, copy=1),
            ev(T0 + 480 * S, 4, Event.CONNECTING, conn=4, contracts=ids, group=1, copy=0),
            ev(T0 + 480 * S + MS, 4, Event.OPENED, conn=4, contracts=ids, group=1, copy=0)]
    for i in range(6000):
        ts = T0 + 10 * MS + i * 100 * MS
        if not T0 + 180 * S <= ts < T0 + 185 * S:
            recs.append((ts, 3 if ts > T0 + 185 * S else 1, TEXT, ime_payload(i, "1001")))
    recs.append(ev(T0 + 600 * S, 0, Event.WORKER_STOPPING, reason="recorder stopping"))
    recs.sort(key=lambda r: r[0])
    write_records(tmp_path / "d", recs, shard=0, frame_bytes=16384)

    env = {k: v for k, v in os.environ.items() if k != "IME_TZ"}
    out = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "stats", "--json", str(tmp_path / "d"),
                          "--tz", "Asia/Tehran", "--from", "09:02", "--to", "09:06"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert doc["events"] == {"closed": 2, "connecting": 1, "opened": 1}  # counted in the window only
    [group] = doc["connections"]["groups"]
    assert group["group"] == 1 and group["gaps"] == 1
    assert group["longest_gaps"] == [{"from_ns": T0 + 180 * S + MS, "to_ns": T0 + 185 * S + MS, "s": 5.0}]
    assert group["span_s"] == round((10 * MS + 3599 * 100 * MS - 120 * S) / S, 6)  # --from to its last record
    assert set(group["copies"]) == {"0", "1"}
    assert group["copies"]["0"]["first"] + group["copies"]["1"]["first"] == 2400 - 50
