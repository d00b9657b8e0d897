"""Unattended-operation modules on real sockets, files and processes: config file, sd_notify, retention,
disk guard, --on-sealed, token renewal timing, sessions and the stall alarm, day directories, metrics."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from recorder.errors import UserError
from recorder.record.configfile import parse_config, render_effective
from recorder.record.diskguard import DiskGuard, DiskLevel, free_bytes
from recorder.record.hooks import DONE_FILE, HookRunner, retry_delay
from recorder.record.messages import Status
from recorder.record.metrics import Figure, MetricsServer, render
from recorder.record.renewal import renew_at, renewal_margin_s
from recorder.record.retention import SegmentFile, plan_removals, scan
from recorder.record.sdnotify import Notifier, socket_address, watchdog_interval_s
from recorder.record.sessions import TEHRAN, StallAlarm, parse_sessions, session_start_ns
from recorder.record.status import ShardView, table
from recorder.segment.layout import day_directory, day_layout, segment_files
from recorder.segment.naming import open_segments
from recorder.segment.reader import discover, open_segment
from recorder.segment.recover import recover_directory
from recorder.segment.writer import SegmentWriter

OPTIONS = {"ids-file": "ids_file", "out": "out_dir", "shards": "shards", "password": "password",
           "token": "token", "token-file": "token_file", "demo": "demo", "config": "config"}

# --- config file --------------------------------------------------------------------------------------


def test_config_keys_in_either_spelling_map_to_parameters():
    got = parse_config('ids_file = "ids.txt"\nout = "/data"\nshards = 4\ntoken-file = "/run/t"\ndemo = true\n',
                       "c.toml", OPTIONS)
    assert got == {"ids_file": "ids.txt", "out_dir": "/data", "shards": 4, "token_file": "/run/t", "demo": True}
    assert parse_config('ids-file = "x"', "c.toml", OPTIONS) == {"ids_file": "x"}


@pytest.mark.parametrize(("text", "needle"), [
    ('password = "hunter2"', "refusing 'password' in clear"),
    ('TOKEN = "eyJ.x.y"', "refusing 'TOKEN' in clear"),
    ("shardz = 2", "unknown key 'shardz'"),
    ('config = "other.toml"', "unknown key 'config'"),
    ('ids_file = "a"\nids-file = "b"', "repeats"),
    ("[out]\nx = 1", "is a table"),
    ("shards = ", "not valid TOML"),
])
def test_config_refusals_are_one_line_and_never_echo_the_secret(text, needle):
    with pytest.raises(UserError) as err:
        parse_config(text, "c.toml", OPTIONS)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and "hunter2" not in msg and "eyJ" not in msg
    assert err.value.exit_code == 2


KINDS = {"shards": ("int", False), "demo": ("bool", False), "out_dir": ("text", False), "ids_file": ("text", False)}


@pytest.mark.parametrize(("text", "needle"), [
    ("shards = 2.7", "'shards' must be a whole number, not 2.7"),
    ("shards = true", "'shards' must be a whole number, not true"),
    ('shards = "4"', "'shards' must be a whole number, not a string"),
    ('demo = "no"', "'demo' must be true or false, not a string"),
    ("out = 5", "'out' must be a string, not 5"),
    ('ids-file = ["a", "b"]', "'ids-file' takes one value, not a list"),
])
def test_config_values_of_the_wrong_kind_are_refused_not_converted(text, needle):
    with pytest.raises(UserError) as err:
        parse_config(text, "c.toml", OPTIONS, KINDS)
    assert needle in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2
    assert parse_config("shards = 3\ndemo = false", "c.toml", OPTIONS, KINDS) == {"shards": 3, "demo": False}


def test_effective_settings_mask_secrets():
    lines = render_effective([("password", "hunter2", "environment"), ("out", Path("/d"), "config file"),
                              ("ids", None, "default"), ("demo", False, "default")])
    text = "\n".join(lines)
    assert "hunter2" not in text and '# password = "***"' in text
    assert 'out = "/d"  # config file' in text and "demo = false" in text and "# ids =" in text


# --- sd_notify -----------------------------------------------------------------------------------------


def test_notify_socket_addresses_and_watchdog_interval():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract") == b"\0abstract"
    assert socket_address("") is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}, 10) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "11"}, 10) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "10"}, 10) == 2.0
    assert watchdog_interval_s({}, 10) is None


def test_notifier_sends_datagrams_to_the_socket(tmp_path):
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        assert n.enabled and n.watchdog_s == 0.5
        assert n.ready("recording 3 contracts")
        assert n.watchdog()
        got = [server.recv(4096).decode() for _ in range(2)]
        assert got[0].splitlines()[0] == "READY=1" and f"MAINPID={os.getpid()}" in got[0]
        assert got[1] == "WATCHDOG=1"
        n.close()
    finally:
        server.close()
    # The socket gone (systemd stopped): a warning, never an exception into the supervisor.
    assert not Notifier({"NOTIFY_SOCKET": str(path)}).watchdog()
    assert not Notifier({}).ready("x")


# --- retention -----------------------------------------------------------------------------------------

DAY_NS = 86_400 * 10**9


def _seg(name: str, size: int, age_days: float, now: int, sealed: bool = True) -> SegmentFile:
    stamp = name.split("-")[2]
    return SegmentFile(Path(name), size, now - int(age_days * DAY_NS), (stamp, name), sealed)


def test_retention_by_age_and_size_removes_exactly_the_oldest_sealed():
    now = 100 * DAY_NS
    files = [
        _seg("ime-s00-20261101T000000.000Z.zst", 100, 10, now),
        _seg("ime-s01-20261101T000000.000Z.zst", 100, 10, now),
        _seg("ime-s00-20261102T000000.000Z.zst", 100, 9, now),
        _seg("ime-s00-20261110T000000.000Z.zst", 100, 1, now),
        _seg("ime-s00-20261111T000000.000Z.zst.open", 100, 0, now, sealed=False),
    ]
    by_age = plan_removals(files, now, retain_days=5)
    assert [r.file.path.name for r in by_age] == [f.path.name for f in files[:3]]
    # 500 bytes, keep at most 250: the three oldest go; the .open one counts but is never a candidate.
    by_size = plan_removals(files, now, retain_bytes=250)
    assert [r.file.path.name for r in by_size] == [f.path.name for f in files[:3]]
    by_size = plan_removals(files, now, retain_bytes=150)
    assert [r.file.path.name for r in by_size] == [f.path.name for f in files[:4]]
    protected = {files[0].path}
    assert files[0].path not in {r.file.path for r in plan_removals(files, now, 5, None, protected)}
    assert plan_removals(files, now, retain_days=30, retain_bytes=10_000) == []


# --- disk guard ----------------------------------------------------------------------------------------


def test_disk_guard_levels_change_once_per_crossing(tmp_path):
    g = DiskGuard.from_gb(warn_gb=2, min_gb=1)
    gb = 1 << 30
    assert g.check(5 * gb) is None
    assert g.check(int(1.5 * gb)) is DiskLevel.LOW and g.check(int(1.4 * gb)) is None
    assert g.check(int(0.5 * gb)) is DiskLevel.CRITICAL
    assert g.check(3 * gb) is DiskLevel.OK
    assert g.warnings_total == 1
    assert free_bytes(tmp_path) > 0


def test_disk_crossings_are_recorded_as_events(tmp_path):
    """A report of the recording can only show a low disk if the recording says so."""
    from recorder.record.auth import TokenProvider
    from recorder.record.operations import Operations, OpsSettings

    sent: list[dict] = []
    free = free_bytes(tmp_path)
    settings = OpsSettings(warn_free_bytes=free + (1 << 40))  # a TiB more than there is: low at once
    ops = Operations(settings, tmp_path, "ime", views=lambda: [], tokens=TokenProvider(token="x"),
                     fail=lambda _: None, broadcast_token=lambda *_: None, send_event=sent.append)
    ops.tick()
    ops.tick()  # still low: not said again
    assert [(e["event"], e["level"]) for e in sent] == [("disk", "low")]
    assert 0 < sent[0]["free_bytes"] <= free + (1 << 30)
    ops.guard.warn_bytes = 1
    ops.tick()
    assert [(e["event"], e["level"]) for e in sent] == [("disk", "low"), ("disk", "ok")]


# --- --on-sealed ---------------------------------------------------------------------------------------


def test_hook_retries_then_succeeds_and_remembers_across_restarts(tmp_path):
    # Fails the first two times for each file, then appends the file to a log: a real process each time.
    script = tmp_path / "hook.sh"
    script.write_text('#!/bin/sh\nc="$0.count.$(basename "$1")"\nn=$(cat "$c" 2>/dev/null || echo 0)\n'
                      'echo $((n+1)) > "$c"\n[ "$n" -ge 2 ] || { echo "upload failed $n" >&2; exit 3; }\n'
                      'echo "$1" >> "$0.log"\n')
    script.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    files = [out / f"ime-s00-2026112{i}T000000.000Z.zst" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")

    async def run() -> HookRunner:
        h = HookRunner(str(script), out, jobs=2, backoff_base_s=0.05)
        assert all(h.submit(f) for f in files)
        assert not h.submit(files[0])
        assert h.protected == set(files)
        await asyncio.wait_for(h.close(grace_s=30), 30)
        return h

    h = asyncio.run(run())
    assert h.succeeded_total == 3 and h.failures_total == 6 and not h.pending and not h.given_up
    assert sorted(Path(p) for p in (tmp_path / "hook.sh.log").read_text().split()) == files
    assert sorted((out / DONE_FILE).read_text().split()) == sorted(f.name for f in files)
    again = HookRunner(str(script), out)
    assert all(again.is_known(f) for f in files)
    again.forget({files[0]})
    assert not HookRunner(str(script), out).is_known(files[0])


def test_hook_gives_up_and_keeps_the_file_protected(tmp_path):
    f = tmp_path / "ime-s00-20261120T000000.000Z.zst"
    f.write_bytes(b"x")

    async def run() -> HookRunner:
        h = HookRunner("false", tmp_path, attempts=3, backoff_base_s=0.01)
        h.submit(f)
        await h.close(grace_s=30)
        return h

    h = asyncio.run(run())
    assert h.failures_total == 3 and h.given_up == {f} and f in h.protected
    assert retry_delay(1, 2, 300) == 2 and retry_delay(4, 2, 300) == 16 and retry_delay(20, 2, 300) == 300


# --- token renewal -------------------------------------------------------------------------------------


def test_renewal_margin_scales_with_lifetime():
    assert renewal_margin_s(3600) == 300
    assert renewal_margin_s(10) == 2
    assert renewal_margin_s(100) == 20
    assert renew_at(exp_s=1000, obtained_s=0) == 800
    assert renew_at(exp_s=1000, obtained_s=990) == 998


# --- sessions and stall --------------------------------------------------------------------------------


def _tehran_ns(y: int, mo: int, d: int, h: int, mi: int, s: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, s, tzinfo=TEHRAN).timestamp()) * 10**9


def test_sessions_parse_and_wrap_over_the_week():
    (s,) = parse_sessions("sat-wed 10:30-16:00")
    assert sorted(s.days) == [0, 1, 2, 5, 6]  # mon, tue, wed, sat, sun
    # 2026-11-28 is a Saturday, 2026-11-26 a Thursday.
    assert session_start_ns((s,), _tehran_ns(2026, 11, 28, 11, 0)) == _tehran_ns(2026, 11, 28, 10, 30)
    assert session_start_ns((s,), _tehran_ns(2026, 11, 26, 11, 0)) is None
    assert session_start_ns((s,), _tehran_ns(2026, 11, 28, 16, 0)) is None
    assert parse_sessions("none") == ()
    assert len(parse_sessions("sat-wed 10:30-12:30; sat-wed 13:30-16:00")) == 2
    for bad in ("sat-wed 16:00-10:30", "satur 10:00-11:00", "sat 25:00-26:00"):
        with pytest.raises(UserError):
            parse_sessions(bad)


def test_stall_alarm_only_in_sessions_and_not_at_the_opening_bell():
    alarm = StallAlarm(60, parse_sessions("sat-wed 10:30-16:00"))
    started = _tehran_ns(2026, 11, 28, 8, 0)
    last_night = _tehran_ns(2026, 11, 27, 22, 0)
    # Quiet before the session, and for the first minute of it although nothing came since last night.
    assert alarm.check(_tehran_ns(2026, 11, 28, 9, 0), last_night, started) is None
    assert alarm.check(_tehran_ns(2026, 11, 28, 10, 30, 59), last_night, started) is None
    assert alarm.check(_tehran_ns(2026, 11, 28, 10, 31, 30), last_night, started) == "raised"
    assert alarm.check(_tehran_ns(2026, 11, 28, 10, 32), last_night, started) is None
    msg = _tehran_ns(2026, 11, 28, 10, 33)
    assert alarm.check(msg + 10**9, msg, started) == "cleared"
    assert alarm.check(_tehran_ns(2026, 11, 28, 17, 0), msg, started) is None  # after the session
    assert alarm.raised_total == 1


# --- day directories -----------------------------------------------------------------------------------


def test_day_directories_in_tehran_time_and_both_layouts_found(tmp_path):
    # 21:00 UTC on 2026-11-24 is 00:30 on 2026-11-25 in Tehran.
    late = int(datetime.fromisoformat("2026-11-24T21:00:00+00:00").timestamp()) * 10**9
    assert day_directory(late, TEHRAN) == "2026-11-25"
    w = SegmentWriter(tmp_path, shard=0, days=day_layout(TEHRAN))
    w.append(time.time_ns(), 1, 1, b'{"a":1}')
    w.flush(10)
    today = datetime.now(TEHRAN).strftime("%Y-%m-%d")
    opened = open_segments(tmp_path, 0, "ime")
    assert len(opened) == 1 and opened[0].parent.name == today
    sealed = w.close()
    assert sealed[0].path.parent == tmp_path / today
    # An older flat file next to the day directory, and an .open one left by a crash in the flat layout.
    w2 = SegmentWriter(tmp_path, shard=1)
    w2.append(time.time_ns(), 1, 1, b'{"b":2}')
    w2.flush(10)
    crashed = open_segments(tmp_path, 1, "ime")
    assert len(crashed) == 1 and crashed[0].parent == tmp_path
    assert open_segments(tmp_path, 0, "ime") == []
    found = segment_files(tmp_path, "ime")
    assert {p.parent for p in found} == {tmp_path, tmp_path / today}
    assert {p for p in discover([tmp_path])} >= set(found)
    w2.close()
    assert all(open_segment(p).sealed for p in discover([tmp_path], include_open=False))
    assert recover_directory(tmp_path) == []
    assert len(scan(tmp_path, "ime")) == 2


# --- metrics and status --------------------------------------------------------------------------------


def test_prometheus_collector_and_healthz_over_http():
    v = ShardView(3, 2, state="running")
    v.update(status(shard=3, messages=42, bytes=1000, connections_open=2, connections=2), now=time.monotonic())
    text = render([v], [Figure("ime_recorder_retention_removed_files", "counter", "removed", 3)])
    assert 'ime_recorder_messages_total{shard="3"} 42.0' in text
    assert "# TYPE ime_recorder_messages_total counter" in text
    assert "ime_recorder_retention_removed_files_total 3.0" in text
    health = {"ok": (True, "ok")}

    async def run() -> list[tuple[int, str]]:
        server = MetricsServer(lambda: [v], port=0, health=lambda: health["ok"])
        port = await server.start()
        got = []
        for path in ("/metrics", "/healthz", "/nope", "/healthz"):
            if path == "/healthz" and got and got[-1][0] == 404:
                health["ok"] = (False, "shard 3 restarting")
            got.append(await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}"))
        await server.close()
        return got

    got = asyncio.run(run())
    assert got[0][0] == 200 and 'ime_recorder_up{shard="3"} 1.0' in got[0][1]
    assert got[1] == (200, "ok\n") and got[2][0] == 404 and got[3] == (503, "shard 3 restarting\n")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status(**fields: object) -> Status:
    base: dict[str, object] = dict(shard=0, pid=1, sent_ns=0, connections_open=0, connections=0, messages=0,
                                   copies=0, bytes=0, reconnects=0, last_message_ns=0, records_written=0,
                                   bytes_on_disk=0, files_sealed=0, backlog_bytes=0, paused=False)
    return Status(**{**base, **fields})  # type: ignore[arg-type]


def test_status_table_fits_80_columns():
    views = [ShardView(i, 5000, state="restarting", restarts=123) for i in range(12)]
    for v in views:
        v.update(status(messages=123_456_789_012, bytes=10**13, reconnects=99999, bytes_on_disk=10**15,
                        connections_open=128, connections=128, last_message_ns=1, sent_ns=1, paused=True), now=1.0)
        v.msg_rate, v.byte_rate = 1_234_567.0, 987_654_321.0
        v.rejected = [f"CONTRACT-NAME-{v.shard}-{j}" for j in range(12)]
    lines = table(views, now_ns=10**18, elapsed_s=10**7, now=1.5)
    assert "paused" in lines[2]
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)



def test_retention_remove_takes_empty_day_directories_but_never_out(tmp_path):
    from recorder.record.retention import remove

    out = tmp_path / "2026-11-24"  # an output directory that happens to look like a day directory
    day = out / "2026-11-20"
    day.mkdir(parents=True)
    a, b = day / "ime-s00-20261120T000000.000Z.zst", out / "ime-s00-20261119T000000.000Z.zst"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    remove(a, out)
    assert not day.exists()
    remove(b, out)
    assert out.is_dir() and not b.exists()


def test_ready_needs_every_shard_connected_or_retrying():
    from recorder.record.operations import settled

    a, b, empty = ShardView(0, 3, state="running"), ShardView(1, 3, state="running"), ShardView(2, 0, state="empty")
    assert not settled([a, b, empty])  # no report yet
    a.update(status(connections=2, connections_open=2), now=time.monotonic())
    assert not settled([a, b, empty])
    b.update(status(shard=1, connections=1, connections_open=0), now=time.monotonic())  # retrying counts
    assert settled([a, b, empty])


def test_watchdog_pings_only_while_the_status_loop_ticks(tmp_path):
    from recorder.record.auth import TokenProvider
    from recorder.record.operations import Operations, OpsSettings

    path = tmp_path / "n.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)

    async def run() -> tuple[int, int]:
        ops = Operations(OpsSettings(), tmp_path, "ime", views=lambda: [], tokens=TokenProvider(token="x"),
                         fail=lambda _: None, broadcast_token=lambda *_: None, send_event=None,
                         notifier=Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}))
        await ops.start()
        ticking, deadline = 0, time.monotonic() + 10  # a ping each 0.1 s: three, however late a loaded machine is
        while ticking < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            ticking += _drain(server)
        ops.last_tick -= 60  # the status loop died a minute ago
        await asyncio.sleep(0.3)
        _drain(server)
        await asyncio.sleep(0.5)
        silent = _drain(server)
        await ops.close("test")
        return ticking, silent

    try:
        ticking, silent = asyncio.run(run())
    finally:
        server.close()
    assert ticking >= 3 and silent == 0


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return n
        n += 1


def test_hook_does_not_see_the_recorders_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("IME_PASSWORD", "hunter2")
    monkeypatch.setenv("IME_TOKEN", "eyJsecret")
    monkeypatch.setenv("RCLONE_CONFIG", "/etc/rclone.conf")
    script = tmp_path / "env.sh"
    script.write_text(f'#!/bin/sh\nenv > "{tmp_path}/env.txt"\n')
    script.chmod(0o755)
    f = tmp_path / "ime-s00-20261120T000000.000Z.zst"
    f.write_bytes(b"x")

    async def run() -> None:
        h = HookRunner(str(script), tmp_path)
        h.submit(f)
        await h.close(grace_s=30)

    asyncio.run(run())
    env = (tmp_path / "env.txt").read_text()
    assert "RCLONE_CONFIG=/etc/rclone.conf" in env
    assert "hunter2" not in env and "eyJsecret" not in env


def test_no_file_and_no_frame_holds_records_of_two_tehran_days(tmp_path):
    """Files rotated on UTC hours put Tehran 00:00-00:30 in the previous day's folder (issue 21: 1,170 records in
    one trial). The writer cuts its batch at the day's end and starts that day's file for what follows."""
    midnight = int(datetime.fromisoformat("2026-11-25T00:00:00+03:30").timestamp()) * 10**9
    w = SegmentWriter(tmp_path, shard=0, days=day_layout(TEHRAN), frame_bytes=1 << 30, flush_ms=1e9,
                      rotate_seconds=3600, rotate_bytes=1 << 40)
    stamps = [midnight + k * 7_000_000 for k in range(-200, 200)]  # 1.4 s before to 1.4 s after, one batch
    for k, ts in enumerate(stamps):
        w.append(ts, 1, 1, b'{"k":%d}' % k)
        if k % 50 == 0:
            w.append_receipt(ts + 1000, 2, ts, 1, (0, 0))  # receipts are records of their own time too
    sealed = w.close()
    by_day: dict[str, list[int]] = {}
    for s in sealed:
        seg = open_segment(s.path)
        times = [r.ts_ns for r in seg.iter_records()]
        if times:
            by_day.setdefault(s.path.parent.name, []).extend(times)
            assert all(day_directory(t, TEHRAN) == s.path.parent.name for t in times), s.path
            # The file name's time is of the same day as its folder.
            assert s.path.name.startswith("ime-s00-2026112")
    assert sorted(by_day) == ["2026-11-24", "2026-11-25"]
    assert sum(len(v) for v in by_day.values()) == len(stamps) + 8


def test_the_live_table_leaves_no_stale_line_on_a_narrow_terminal():
    """A table line wider than the terminal wrapped onto two rows; redrawing moved the cursor up one row per line,
    so the old table's first lines stayed on screen (issue 21). Checked on a VT100 emulator's screen (pyte), fed
    exactly the bytes the console wrote, with the tty's newline translation."""
    import io

    import pyte

    from recorder.record.status import Console

    out = io.StringIO()
    console = Console(out, live=True)  # not a terminal: 80 columns assumed
    rows = [ShardView(k, 12, state="running", connections=2, connections_open=2, messages=10**9) for k in range(3)]
    long_line = ("live hub running; relay 3 clients, 123456 sent, 0 slow cut; NATS up, 999999 stored, backlog 0, "
                 "12 dropped")
    for k in range(5):
        console.draw([*table(rows, time.time_ns(), 12.0 + k), long_line])
        console.log(f"a log line {k}")
    console.draw([*table(rows, time.time_ns(), 99.0), long_line])
    screen = pyte.Screen(80, 40)
    pyte.Stream(screen).feed(out.getvalue().replace("\n", "\r\n"))
    shown = [line.rstrip() for line in screen.display if line.strip()]
    assert [line for line in shown if line.startswith("a log line")] == [f"a log line {k}" for k in range(5)]
    assert sum(line.startswith("ime-record: 3 shards") for line in shown) == 1, "\n".join(shown)
    assert shown[-1].startswith("live hub running") and shown[-1].endswith("…")
