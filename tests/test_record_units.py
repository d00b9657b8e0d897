"""Sans-I/O parts of the recorder: contract lists, sharding, backoff, the 1008 planner, status, redaction."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.errors import UserError
from recorder.events import Event, decode_event, encode_event
from recorder.model.record import RecordKind
from recorder.record.contracts import parse_inline, parse_lines, read_contract_file
from recorder.record.messages import Status
from recorder.record.metrics import render
from recorder.record.planner import Action, Planner
from recorder.record.shard import partition, shard_of
from recorder.record.status import ShardView, exit_summary, summary_line, table
from recorder.record.timeslice import (
    clamp_slice_us,
    lower_priority,
    request_slice,
    yield_cpu,
)
from recorder.redact import redact_text, redact_url
from recorder.timeparse import format_ns, parse_time

# --- contract lists ---------------------------------------------------------------------------------


def test_contract_file_skips_blanks_comments_and_duplicates(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("\ufeff# IME contracts\n1001\n\n  1002  \n# 9999\n1001\n1003\n", encoding="utf-8")
    result = read_contract_file(f, "id")
    assert result.contracts == ("1001", "1002", "1003")
    assert result.duplicates == ("1001",)


def test_ids_take_inline_comments():
    lines = ["1001  # gold", "1002\t#saffron # more", "  # only a comment", "1003#", "1001 # again"]
    result = parse_lines(lines, "id", "ids.txt")
    assert result.contracts == ("1001", "1002", "1003") and result.duplicates == ("1001",)


def test_names_keep_inner_spaces_and_symbols():
    names = ["سکه-آزادی 1404/08", "CEMENT & STEEL+", "A#B"]
    assert parse_lines(names, "name", "names.txt").contracts == tuple(names)


@pytest.mark.parametrize(("text", "message"), [
    ("1001\n10 02\n", "line 2: an id cannot contain spaces"),
    ("1001,1002\n", "line 1: an id cannot contain spaces or commas"),
    ("1001\n\x00bad\n", "line 2: contains the control or invalid character U+0000"),
    ("1001\nabc\n", "line 2: an id is digits only, e.g. 1001 ('#' starts a comment): 'abc'"),
    ("1001\n\n1002;\n", "line 3: an id is digits only, e.g. 1001 ('#' starts a comment): '1002;'"),
    ("1001\n-5\n", "line 2: an id is digits only"),
    ("\u06f1\u06f0\u06f0\u06f1\n", "line 1: an id is digits only"),
    ("# nothing\n\n", "lists no contracts"),
    ("", "lists no contracts"),
])
def test_malformed_contract_files_name_the_line(tmp_path, text, message):
    f = tmp_path / "ids.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(message)) as info:
        read_contract_file(f, "id")
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_unreadable_contract_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_contract_file(tmp_path / "missing.txt", "id")
    with pytest.raises(UserError, match="is a directory"):
        read_contract_file(tmp_path, "id")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"1001\n\xe9t\xe9\n")
    with pytest.raises(UserError, match="line 2: not valid UTF-8"):
        read_contract_file(bad, "name")


def test_inline_lists():
    assert parse_inline("1001, 1002,1001", "id").contracts == ("1001", "1002")
    with pytest.raises(UserError):
        parse_inline(" , ", "id")


# --- sharding ---------------------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=60, unique=True), st.integers(1, 8),
       st.text(min_size=1, max_size=20))
def test_adding_a_contract_never_moves_another(contracts, shards, extra):
    before = {c: shard_of(c, shards) for c in contracts}
    after = partition([*contracts, extra], shards)
    for i, group in enumerate(after):
        for c in group:
            if c in before:
                assert before[c] == i


def test_partition_keeps_order_and_covers_everything():
    contracts = [str(1000 + i) for i in range(200)]
    groups = partition(contracts, 4)
    assert sorted(c for g in groups for c in g) == sorted(contracts)
    for g in groups:
        assert list(g) == sorted(g, key=contracts.index)
    assert all(30 <= len(g) <= 70 for g in groups)  # rendezvous hashing spreads evenly enough


def test_changing_the_shard_count_moves_few_contracts():
    contracts = [str(i) for i in range(1000)]
    moved = sum(shard_of(c, 4) != shard_of(c, 5) for c in contracts)
    assert moved < 300  # ~1/5 expected; modulo hashing would move ~4/5


# --- the 1008 planner -------------------------------------------------------------------------------


def drive(planner, groups, bad, token_gen=1):
    """Play the server: refuse any group holding a bad contract, accept the others."""
    live = list(groups)
    accepted = []
    steps = 0
    while live:
        steps += 1
        assert steps < 1000
        g = live.pop(0)
        if not set(g.contracts) & bad:
            planner.accepted(g.gid)
            accepted.append(g)
            continue
        d = planner.refused(g.gid, token_gen, token_gen, was_accepted=False)
        if d.action is Action.REFRESH:
            live.append(g)
        elif d.action is Action.SPLIT:
            live.extend(d.groups)
        elif d.action is Action.REJECT:
            pass
        else:
            live.append(g)
    return accepted


def test_planner_finds_the_bad_contract_and_keeps_the_rest():
    p = Planner()
    groups = p.start([[str(i) for i in range(16)]])
    accepted = drive(p, groups, bad={"5"})
    assert p.rejected == ["5"]
    assert sorted(c for g in accepted for c in g.contracts) == sorted(str(i) for i in range(16) if i != 5)
    assert not p.give_up


def test_planner_first_refreshes_the_token_once():
    p = Planner()
    (g,) = p.start([["1", "2"]])
    assert p.refused(g.gid, 1, 1, False).action is Action.REFRESH
    assert p.refused(g.gid, 1, 2, False).action is Action.RETRY  # a newer token exists already
    d = p.refused(g.gid, 2, 2, False)
    assert d.action is Action.SPLIT and [x.contracts for x in d.groups] == [("1",), ("2",)]


def test_planner_refusal_after_streaming_means_token_not_contract():
    p = Planner()
    (g,) = p.start([["1"]])
    assert p.refused(g.gid, 1, 1, False).action is Action.REFRESH
    p.accepted(g.gid)
    # Later the token is revoked mid-stream: refresh again rather than rejecting the contract.
    assert p.refused(g.gid, 2, 2, was_accepted=True).action is Action.REFRESH


def test_planner_gives_up_when_nothing_is_ever_accepted():
    p = Planner(give_up_after=8)
    groups = p.start([[str(i) for i in range(100)]])
    drive(p, groups, bad={str(i) for i in range(100)})
    assert p.give_up
    assert not p.accepted_any


def test_planner_does_not_give_up_once_something_was_accepted():
    p = Planner(give_up_after=2)
    groups = p.start([["1", "2", "3", "4"]])
    drive(p, groups, bad={"1", "2", "3"})
    assert p.rejected == ["1", "2", "3"] and p.accepted_any and not p.give_up


# --- status and metrics -----------------------------------------------------------------------------


def status(**fields):
    base = dict(shard=0, pid=1, sent_ns=0, connections_open=0, connections=0, messages=0, copies=0, bytes=0,
                reconnects=0, last_message_ns=0, records_written=0, bytes_on_disk=0, files_sealed=0,
                backlog_bytes=0, paused=False)
    return Status(**{**base, **fields})


def test_status_rates_and_restarts_accumulate_across_incarnations():
    v = ShardView(0, 5, state="running")
    v.update(status(messages=100, bytes=75_000, connections_open=1, connections=1, sent_ns=4_000_000_000), now=10.0)
    v.update(status(messages=1100, bytes=825_000, last_message_ns=5_000_000_000, sent_ns=5_000_000_000), now=11.0)
    assert v.msg_rate == pytest.approx(1000)
    assert v.byte_rate == pytest.approx(750_000)
    v.incarnation_ended()
    v.restarts += 1
    v.update(status(messages=10, bytes=7500, last_message_ns=5_000_000_000, sent_ns=5_000_000_000), now=12.0)
    assert v.total_messages == 1110
    lines = table([v], now_ns=6_000_000_000, elapsed_s=12, now=12.5)
    assert "1.11k" in lines[2] and "0ms" in lines[2]  # the last message was 0 ms old when reported
    assert lines[2].split()[-1] == "1"  # the restart count column
    assert "1110 messages" in summary_line([v], 6_000_000_000, now=12.5)
    assert "1 restarts" in summary_line([v], 6_000_000_000, now=12.5)
    assert "shard 0: 1110 messages" in exit_summary([v], 12)[1]
    assert "1 restarts" in exit_summary([v], 12)[1]


def test_last_frame_age_is_the_age_at_the_report_not_the_status_interval():
    v = ShardView(0, 1, state="running")
    # At 1,000 msgs/s the last message is ~1 ms old when the worker reports; the report is 0.6 s old.
    v.update(status(last_message_ns=9_999_000_000, sent_ns=10_000_000_000), now=100.0)
    assert v.last_age_s(10_600_000_000) == pytest.approx(0.001)  # the age, not the age of the report
    assert v.last_age_s(10_000_000_000) == pytest.approx(0.001)


def test_a_shard_that_stops_reporting_is_stale_with_no_rate_and_down_in_metrics():
    v = ShardView(1, 1, state="running")
    v.update(status(shard=1, messages=0, sent_ns=1), now=100.0)
    v.update(status(shard=1, messages=400, sent_ns=2, connections_open=2, connections=2), now=101.0)
    assert not v.stale(102.0)
    assert v.current_rate(102.0) == pytest.approx(400)
    assert v.stale(104.5)
    assert v.current_rate(104.5) == 0
    assert "stale" in table([v], 0, 10, now=104.5)[2]
    assert "STALE" in summary_line([v], 0, now=104.5)
    import time as _time
    v.updated_at = _time.monotonic() - 10
    assert 'ime_recorder_up{shard="1"} 0' in render([v], now_ns=0)
    v.updated_at = _time.monotonic()
    assert 'ime_recorder_up{shard="1"} 1' in render([v], now_ns=0)


def test_prometheus_text_format():
    import time as _time
    v = ShardView(3, 2, state="running")
    v.update(status(shard=3, messages=42, bytes=1000, connections_open=2, connections=2, bytes_on_disk=777),
             now=_time.monotonic())
    v.restarts = 2
    text = render([v], now_ns=0)
    assert 'ime_recorder_messages_total{shard="3"} 42' in text
    assert 'ime_recorder_up{shard="3"} 1' in text
    assert 'ime_recorder_restarts_total{shard="3"} 2' in text
    assert 'ime_recorder_disk_bytes_total{shard="3"} 777' in text
    assert "# TYPE ime_recorder_messages_total counter" in text
    assert text.endswith("\n")


# --- secrets, events, time --------------------------------------------------------------------------


def test_redaction():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJl"
    assert redact_url("wss://user:pw@host/x?contract_id=1&token=abc") == "wss://host/x?contract_id=1&token=***"
    assert jwt not in redact_text(f"refused {jwt} now")
    assert redact_text("login with hunter2 and tok.en.x", ["hunter2", "tok.en.x", None, ""]) == \
        "login with *** and ***"
    assert redact_text("abcdef", ["abc", "abcdef"]) == "***"
    assert redact_url("wss://h/p?contract_id=%D8%B3%20a") == "wss://h/p?contract_id=%D8%B3%20a"


def test_events_round_trip():
    payload = encode_event(Event.CLOSED, conn=3, code=1008, reason="unknown contract")
    assert decode_event(payload) == {"event": "closed", "conn": 3, "code": 1008, "reason": "unknown contract"}
    assert decode_event(b"\xff")["event"] == "unparseable"


@pytest.mark.parametrize(("text", "expected"), [
    ("1732449000", 1_732_449_000_000_000_000),
    ("1732449000.25", 1_732_449_000_250_000_000),
    ("1732449000123", 1_732_449_000_123_000_000),
    ("1732449000123456", 1_732_449_000_123_456_000),
    ("1732449000123456789", 1_732_449_000_123_456_789),
    ("2024-11-24T11:50:00Z", 1_732_449_000_000_000_000),
    ("2024-11-24T15:20:00+03:30", 1_732_449_000_000_000_000),
    ("2024-11-24T11:50:00.000001", 1_732_449_000_000_001_000),
])
def test_parse_time(text, expected):
    assert parse_time(text) == expected


def test_parse_time_errors_and_format():
    with pytest.raises(UserError, match="cannot read time"):
        parse_time("yesterday")
    assert format_ns(1_732_449_000_000_000_123) == "2024-11-24T11:50:00.000000123Z"


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_lower_priority_changes_only_the_named_thread_and_never_raises_it():
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def bulk() -> None:  # stands for the writer thread
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=bulk)
    t.start()
    try:
        assert ready.wait(10)
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert lower_priority(tid[0], 4) is None
        assert os.getpriority(os.PRIO_PROCESS, tid[0]) == min(19, base + 4)
        # Asking for less than the thread already has leaves it as it is (an operator's own nice is kept).
        assert lower_priority(tid[0], 2) is None and lower_priority(tid[0], 0) is None
        assert os.getpriority(os.PRIO_PROCESS, tid[0]) == min(19, base + 4)
        assert os.getpriority(os.PRIO_PROCESS, 0) == base, "the calling thread keeps its priority"
    finally:
        done.set()
        t.join()
    assert lower_priority(2**22 + 12345, 1) is not None, "a thread that does not exist is reported, not raised"


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
def test_yield_cpu_puts_another_process_under_sched_idle_and_its_new_threads_inherit_it():
    # What the supervisor does to the live hub right after starting it (record/livehub.py).
    child = subprocess.Popen([sys.executable, "-c", "import sys, threading; sys.stdin.readline(); "
                              "t = threading.Thread(target=sys.stdin.readline); t.start(); "
                              "print(threading.get_native_id(), t.native_id, flush=True); t.join()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert yield_cpu(child.pid) is None
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        tids = [int(t) for t in child.stdout.readline().split()]
        assert [os.sched_getscheduler(t) for t in tids] == [os.SCHED_IDLE, os.SCHED_IDLE]
        assert os.sched_getscheduler(0) != os.SCHED_IDLE, "the caller keeps its own policy"
    finally:
        child.kill()
        child.wait(10)


def test_receive_thread_slice_request_applies_and_resets_on_linux():
    assert clamp_slice_us(1) == 100 and clamp_slice_us(10**9) == 100_000
    if sys.platform != "linux":
        assert request_slice(100) is not None
        return

    def slice_ns() -> int:
        sched = Path(f"/proc/self/task/{threading.get_native_id()}/sched").read_text()
        return int(next(line for line in sched.splitlines() if line.startswith("se.slice")).split(":")[1])

    seen: list[tuple[str | None, int, str | None, int]] = []

    def probe() -> None:  # in a thread of its own so the test runner's thread keeps its slice
        applied = request_slice(250)
        short = slice_ns()
        reset = request_slice(0)
        seen.append((applied, short, reset, slice_ns()))

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    applied, short, reset, default = seen[0]
    if applied is not None:
        pytest.skip(f"this kernel refused the request: {applied}")
    assert reset is None
    if short == default:
        pytest.skip("this kernel has no custom slices (Linux < 6.12)")
    assert short == 250_000
    assert default > short


# --- issue 21: reloads, the console going away ------------------------------------------------------------------


def test_planner_groups_follow_a_reload():
    planner = Planner()
    g1, g2 = planner.start([("1001", "1002"), ("1003",)])
    assert planner.total == 3
    # A refusal of the resubscribed group is judged afresh: a fresh token is tried first again.
    planner.refused(g1.gid, 1, 1, False)
    planner.update(g1.gid, ("1001", "1004", "1005"))
    assert planner.total == 4 and planner.refused(g1.gid, 1, 1, False).action is Action.REFRESH
    g3 = planner.add(("1006",))
    assert g3.gid not in (g1.gid, g2.gid) and planner.total == 5
    planner.remove(g2.gid)
    assert planner.total == 4 and {g.gid for g in planner.groups} == {g1.gid, g3.gid}


def test_reload_lines_say_what_changed_per_shard_and_mask_secrets():
    from recorder.record.configfile import shown_value
    from recorder.record.reload import Reread, SettingChange, describe, shard_changes

    old = [("1001", "1002"), (), ("1003",)]
    new = [("1001", "1005"), ("1006",), ()]
    changes = shard_changes(old, new)
    assert [(c.shard, c.added, c.removed) for c in changes] == [(0, ("1005",), ("1002",)), (1, ("1006",), ()),
                                                                  (2, (), ("1003",))]
    lines = describe(changes, Reread(("1001", "1005", "1006"), "ids.txt"), 3)
    assert lines == ["2 contracts added, 2 removed (3 from ids.txt): shard 0 +1005 -1002; shard 1 +1006 (a worker "
                     "starts); shard 2 -1003 (its worker stops)"]
    assert shard_changes(old, [("1002", "1001"), (), ("1003",)]) == []  # the order in the file is not a change
    assert describe([], Reread(("1001",), "ids.txt"), 1) == ["nothing changed (1 contracts from ids.txt)"]
    many = describe(shard_changes([()], [tuple(str(i) for i in range(20))]), Reread(None, "x"), 20)[0]
    assert "+7 +8 +12 more" not in many and "+12 more" in many
    changed = Reread(("1001",), "ids.txt, config rec.toml", (SettingChange("shards", "1", "3", False),
                                                            SettingChange("status-interval", "30.0", "5.0", True)))
    assert describe([], changed, 1) == ["contracts unchanged (1 from ids.txt, config rec.toml)",
                                        "--shards 1 → 3 takes effect at the next start",
                                        "--status-interval 30.0 → 5.0 applied"]
    assert shown_value("publish", "nats://user:pw@h:4222") == '"nats://h:4222"'
    assert "s3cret" not in shown_value("relay-token", "s3cret") and shown_value("shards", 4) == "4"


def test_coverage_ends_an_unsubscribed_group_without_a_gap_and_follows_a_resubscription():
    from recorder.segment.coverage import Coverage

    def ev(name, **fields):
        return encode_event(name, **fields)

    cov = Coverage()
    s = 10**9
    cov.add(0, 0, 0, int(RecordKind.EVENT), ev("worker_started"))
    for gid, conn in ((1, 1), (2, 2)):
        cov.add(s, 0, conn, int(RecordKind.EVENT), ev("connecting", conn=conn, group=gid, copy=0, contracts=["a"]))
        cov.add(2 * s, 0, conn, int(RecordKind.EVENT), ev("opened", conn=conn, group=gid, copy=0))
    # Group 1 resubscribed: the new connection opens before the old one closes.
    cov.add(3 * s, 0, 3, int(RecordKind.EVENT), ev("connecting", conn=3, group=1, copy=0, contracts=["a", "b"]))
    cov.add(4 * s, 0, 3, int(RecordKind.EVENT), ev("opened", conn=3, group=1, copy=0))
    cov.add(5 * s, 0, 1, int(RecordKind.EVENT), ev("closed", conn=1, group=1, copy=0))
    # Group 2 unsubscribed: it ends, its closing is not a gap.
    cov.add(6 * s, 0, 0, int(RecordKind.EVENT), ev("unsubscribed", group=2, contracts=["c"]))
    cov.add(7 * s, 0, 2, int(RecordKind.EVENT), ev("closed", conn=2, group=2, copy=0))
    cov.add(10 * s, 0, 0, int(RecordKind.EVENT), ev("worker_stopping"))
    g1, g2 = cov.finish()
    assert g1.contracts == ("a", "b") and g1.gap_count == 1 and g1.uncovered_ns == s and g1.end_ns == 10 * s
    assert g2.gap_count == 1 and g2.uncovered_ns == s and g2.end_ns == 6 * s


def test_a_console_that_goes_away_is_survived_and_later_writes_go_nowhere():
    import logging
    import subprocess

    from recorder.record.status import Console, ConsoleHandler

    # A child whose stderr is a pipe nobody reads any more (`ime-record 2>&1 | head -1`): the console notices,
    # points fd 2 (and fd 1, the same pipe) at /dev/null, and the process ends normally.
    code = """if True:
        import logging, sys, time
        from recorder.record.status import Console, ConsoleHandler
        console = Console(live=False)
        root = logging.getLogger(); root.handlers[:] = [ConsoleHandler(console, logging.Formatter("%(message)s"))]
        root.setLevel(logging.INFO)
        print("first", file=sys.stderr, flush=True)
        time.sleep(0.5)
        for i in range(100):
            logging.getLogger("x").info("line %d", i)
            console.draw(["table"])
        print("on stdout", flush=True)
        assert console.lost
        sys.exit(7)
    """
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"first\n"
    proc.stdout.close()
    assert proc.wait(30) == 7

    read, write = os.pipe()
    stream = os.fdopen(os.dup(write), "w")
    console = Console(stream, live=False)
    handler = ConsoleHandler(console, logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "kept", None, None))
    assert os.read(read, 100) == b"kept\n" and not console.lost
    stream.close()  # a closed stream (ValueError), like a console gone
    console.log("lost")
    assert console.lost
    os.close(read)
    os.close(write)


def test_one_table_says_what_follows_a_childs_exit_and_how_long_its_restart_waits():
    """record/children.py: the workers' and the hub's restart rules side by side (a hub failure never stops a run)."""
    from recorder.child import Exit
    from recorder.record.children import HUB_POLICY, WORKER_POLICY, Then

    def waits(policy: object, n: int, lived_s: float = 1.0) -> list[float]:
        out: list[float] = []
        last = None
        for _ in range(n):
            last = policy.wait(last, lived_s)  # type: ignore[attr-defined]
            out.append(last)
        return out

    # README: a dead worker records again 0.1-2 s after its death; the hub backs off further, to 30 s.
    assert waits(WORKER_POLICY, 6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert waits(HUB_POLICY, 6) == pytest.approx([0.2, 0.8, 3.2, 12.8, 30.0, 30.0])
    assert WORKER_POLICY.wait(1.0, lived_s=10.0) == 0.1 and HUB_POLICY.wait(30.0, lived_s=60.0) == 0.2
    for code in (Exit.OK, 1, -9, None):
        for policy in (WORKER_POLICY, HUB_POLICY):
            assert policy.after_exit(code, asked_to_stop=True) is Then.STOPPED
    assert WORKER_POLICY.after_exit(-9, asked_to_stop=False) is Then.RESTART
    assert WORKER_POLICY.after_exit(Exit.OK, asked_to_stop=False) is Then.RESTART
    for asked in (False, True):
        assert WORKER_POLICY.after_exit(Exit.FATAL, asked) is Then.FAILED
        assert WORKER_POLICY.after_exit(Exit.REFUSED, asked) is Then.REFUSED
    assert {HUB_POLICY.after_exit(code, asked_to_stop=False) for code in (Exit.OK, Exit.FATAL, Exit.REFUSED, 1, -9)} \
        == {Then.RESTART}
