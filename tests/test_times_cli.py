"""Times a person reads (issue 23): every time shown carries its zone, --tz/IME_TZ sets the zone shown, --calendar
persian shows and reads Solar Hijri dates, and long work shows a progress bar on a terminal (and nothing elsewhere).

Real segment files, the real console scripts; the expected times are worked out here from the records written,
with zoneinfo and jdatetime directly, not with the code under test.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jdatetime
import orjson
import pytest
from segment_util import ime_payload, unsealed_copy, write_records

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind
from recorder.segment.reader import discover, open_segment

S = 1_000_000_000
MS = 1_000_000
TEHRAN = ZoneInfo("Asia/Tehran")
# 2026-11-24T20:00:00.123456789Z is 23:30 in Tehran: the recording crosses midnight there (into 4 Azar 1405), not
# in UTC, so a date taken in the wrong zone shows.
T0 = 1_795_550_400 * S + 123_456_789
STEP = 10 * S
PER_SHARD = 400
EV, TEXT = int(RecordKind.EVENT), int(RecordKind.TEXT)
PERSIAN_TEHRAN = ("--tz", "Asia/Tehran", "--calendar", "persian")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IME_TZ", "IME_CALENDAR")}
    env.update(extra)
    return env


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180,
                          env=env or clean_env())


def segments(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("recorder.cli.segments", *args, env=env)


def shown(ts_ns: int, digits: int, zone: ZoneInfo | None = None, persian: bool = False) -> str:
    """A time as a person should read it: in `zone` (UTC: Z), the date Solar Hijri when `persian`."""
    moment = datetime.fromtimestamp(ts_ns // S, zone or UTC)
    day = moment.date()
    if persian:
        j = jdatetime.date.fromgregorian(date=day)
        date = f"{j.year:04d}-{j.month:02d}-{j.day:02d}"
    else:
        date = day.isoformat()
    fraction = f".{ts_ns % S:09d}"[:digits + 1] if digits else ""
    offset = moment.strftime("%z")
    suffix = "Z" if zone is None else f"{offset[:3]}:{offset[3:]}"
    return f"{date}T{moment:%H:%M:%S}{fraction}{suffix}"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards, two contracts each, a record every 10 s from 23:30 to 00:36 in Tehran, with their events."""
    d = tmp_path_factory.mktemp("times") / "data"
    for shard, contracts in ((0, ("1001", "1002")), (1, ("1003", "1004"))):
        recs = [(T0 + shard, 1, EV, encode_event(Event.OPENED, conn=1, url="ws://x", contracts=list(contracts)))]
        for i in range(PER_SHARD):
            recs.append((T0 + STEP * i + 10 * shard + 1, 1, TEXT, ime_payload(i, contracts[i % 2])))
        recs.append((T0 + STEP * PER_SHARD, 1, EV, encode_event(Event.CLOSED, conn=1, code=1006, reason="")))
        write_records(d, recs, shard=shard, frame_bytes=2048, meta={"contracts": list(contracts), "endpoint": "id"})
    return d


def recorded(recording: Path) -> list[tuple[int, int, int]]:
    """(receive time, shard, kind) of every record, in receive-time order."""
    rows = [(r.ts_ns, r.shard, r.kind) for p in discover([recording]) for r in open_segment(p).iter_records()]
    return sorted(rows)


# --- ls, stats, cat: the zone and the calendar shown ---------------------------------------------------------


def test_ls_shows_every_files_range_with_its_zone_in_the_zone_and_calendar_asked(recording):
    files = sorted((open_segment(p) for p in discover([recording])), key=lambda s: s.shard)
    out = segments("ls", str(recording))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    # UTC by default, as before, but now saying so: the old output cut the time before its zone.
    assert [(r[2], r[3]) for r in rows] == [(shown(s.min_ts, 3), shown(s.max_ts, 3)) for s in files]
    for args, env in ((PERSIAN_TEHRAN, None), ((), clean_env(IME_TZ="Asia/Tehran", IME_CALENDAR="persian"))):
        out = segments("ls", str(recording), *args, env=env)
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        assert [(r[2], r[3]) for r in rows] == [(shown(s.min_ts, 3, TEHRAN, True), shown(s.max_ts, 3, TEHRAN, True))
                                                for s in files]
        assert rows[0][2].startswith("1405-09-03T23:30:00.123") and rows[0][3].startswith("1405-09-04T00:36:")


def test_stats_text_is_in_the_zone_and_calendar_and_its_json_stays_utc(recording):
    rows = recorded(recording)
    out = segments("stats", str(recording), *PERSIAN_TEHRAN)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (f"{len(rows)} records from {shown(rows[0][0], 9, TEHRAN, True)} to "
                        f"{shown(rows[-1][0], 9, TEHRAN, True)}")
    firsts = {"1001": T0 + 1, "1002": T0 + STEP + 1, "1003": T0 + 11, "1004": T0 + STEP + 11}
    for contract, first in firsts.items():
        cols = next(line.split() for line in lines if line.startswith(contract + " "))
        last = first + STEP * (PER_SHARD - 2)
        assert cols[2:4] == [shown(first, 3, TEHRAN, True), shown(last, 3, TEHRAN, True)]
    # Machine output is the same whatever the zone and calendar: epoch ns, and ISO-8601 UTC strings.
    machine = segments("stats", "--json", str(recording), *PERSIAN_TEHRAN)
    assert machine.returncode == 0, machine.stderr
    assert machine.stdout == segments("stats", "--json", str(recording)).stdout
    doc = orjson.loads(machine.stdout)
    assert doc["first"] == shown(rows[0][0], 9) and doc["contracts"]["1001"]["first"] == shown(T0 + 1, 9)


def test_cat_jsonl_recv_is_in_the_zone_gregorian_and_to_the_nanosecond(recording):
    out = segments("cat", str(recording), *PERSIAN_TEHRAN)
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(recorded(recording))
    # ISO-8601 that every parser reads: the zone is --tz's, the calendar stays Gregorian (scripts parse it).
    assert all(r["recv"] == shown(r["recv_ns"], 9, TEHRAN) for r in rows)
    assert rows[0]["recv"] == "2026-11-24T23:30:00.123456789+03:30"
    default = [orjson.loads(line) for line in segments("cat", str(recording)).stdout.splitlines()]
    assert [r["recv"] for r in default] == [shown(r["recv_ns"], 9) for r in default]
    assert [{**r, "recv": None} for r in default] == [{**r, "recv": None} for r in rows]


def test_a_solar_hijri_from_selects_exactly_what_the_gregorian_from_selects(recording):
    persian = ("--from", "1405-09-04T00:10", "--to", "1405/09/04 00:20:05", *PERSIAN_TEHRAN)
    gregorian = ("--from", "2026-11-25T00:10", "--to", "2026-11-25T00:20:05", "--tz", "Asia/Tehran")
    lo, hi = T0 - 123_456_789 + 40 * 60 * S, T0 - 123_456_789 + 50 * 60 * S + 5 * S  # 00:10 and 00:20:05 Tehran
    expected = [r for r in recorded(recording) if lo <= r[0] < hi and r[2] == TEXT]
    assert len(expected) == 2 * 61
    for command in ("cat", "stats"):
        a = segments(command, str(recording), "--contract" if command == "cat" else "--json",
                     *(("1001", "--contract", "1002", "--contract", "1003", "--contract", "1004")
                       if command == "cat" else ()), *persian)
        b = segments(command, str(recording), "--contract" if command == "cat" else "--json",
                     *(("1001", "--contract", "1002", "--contract", "1003", "--contract", "1004")
                       if command == "cat" else ()), *gregorian)
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        if command == "cat":
            got = [orjson.loads(line)["recv_ns"] for line in a.stdout.splitlines()]
            assert got == [r[0] for r in expected]
            # The same records; only the calendar option differs, and jsonl is Gregorian in both.
            assert a.stdout == b.stdout
        else:
            assert orjson.loads(a.stdout) == orjson.loads(b.stdout)
            assert orjson.loads(a.stdout)["records"] == len(expected)
    empty = segments("cat", str(recording), "--from", "1405-09-05T00:00", *PERSIAN_TEHRAN)
    assert empty.returncode == 1
    assert empty.stderr.strip().endswith(f"the recording spans {shown(T0, 9, TEHRAN, True)} to "
                                         f"{shown(T0 + STEP * PER_SHARD, 9, TEHRAN, True)}")


def test_tz_alone_shows_gregorian_dates_at_plus_0330_and_a_solar_hijri_day_selects_its_gregorian_day(recording):
    files = sorted((open_segment(p) for p in discover([recording])), key=lambda s: s.shard)
    for args, env in ((("--tz", "Asia/Tehran"), None), ((), clean_env(IME_TZ="Asia/Tehran"))):
        rows = [line.split() for line in segments("ls", str(recording), *args, env=env).stdout.splitlines()[1:]]
        assert [(r[2], r[3]) for r in rows] == [(shown(s.min_ts, 3, TEHRAN), shown(s.max_ts, 3, TEHRAN))
                                                for s in files]
        assert rows[0][2].startswith("2026-11-24T23:30:00.123+03:30")
    # A day alone, written as in Iran: 4 Azar 1405 from midnight in Tehran is 25 November 2026 from midnight there.
    midnight = T0 - 123_456_789 + 30 * 60 * S
    texts = [r[0] for r in recorded(recording) if r[0] >= midnight and r[2] == TEXT]
    for command in ("cat", "stats", "ime-replay"):
        def one(*window: str, command: str = command) -> subprocess.CompletedProcess[str]:
            if command == "ime-replay":
                return run("recorder.cli.replay", str(recording), "--speed", "max", "-q", *window)
            return segments(command, str(recording), *(("--json",) if command == "stats" else ()), *window)

        a = one("--from", "1405/09/04", *PERSIAN_TEHRAN)
        b = one("--from", "2026-11-25", "--tz", "Asia/Tehran")
        assert a.returncode == b.returncode == 0, a.stderr + b.stderr
        if command == "stats":
            assert orjson.loads(a.stdout) == orjson.loads(b.stdout)
            assert orjson.loads(a.stdout)["first"] == shown(texts[0], 9)
        else:
            rows = [orjson.loads(line) for line in a.stdout.splitlines()]
            assert [r["recv_ns"] for r in rows] == [orjson.loads(line)["recv_ns"] for line in b.stdout.splitlines()]
            assert [r["recv_ns"] for r in rows if r["kind"] != "event"] == texts


def test_a_date_of_the_other_calendar_is_one_line_and_exit_2(recording):
    for args, said in ((("--from", "2026-11-25T00:10", *PERSIAN_TEHRAN), "2026 is a Gregorian year"),
                       (("--from", "1405-09-04T00:10", "--tz", "Asia/Tehran"), "--calendar persian"),
                       (("--from", "1404-12-30", "--calendar", "persian"), "not a date of the Solar Hijri calendar")):
        for command in ("cat", "stats"):
            out = segments(command, str(recording), *args)
            assert out.returncode == 2, out.stderr
            assert out.stderr.count("\n") == 1 and said in out.stderr and "Traceback" not in out.stderr
    bad = segments("ls", str(recording), "--calendar", "julian")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "julian" in bad.stderr


def test_replay_jsonl_and_its_listing_are_in_the_zone(recording):
    out = run("recorder.cli.replay", str(recording), "--speed", "max", "--tz", "Asia/Tehran", "-q")
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(r["recv"] == shown(r["recv_ns"], 9, TEHRAN) for r in rows)
    listing = run("recorder.cli.replay", str(recording), "--list", *PERSIAN_TEHRAN)
    assert listing.returncode == 0, listing.stderr
    records = recorded(recording)
    assert f"from {shown(records[0][0], 9, TEHRAN, True)} to {shown(records[-1][0], 9, TEHRAN, True)}" in \
        listing.stdout
    cols = next(line.split() for line in listing.stdout.splitlines() if line.startswith("1001 "))
    assert cols[2:4] == [shown(T0 + 1, 3, TEHRAN, True), shown(T0 + 1 + STEP * (PER_SHARD - 2), 3, TEHRAN, True)]


def test_the_report_shows_solar_hijri_dates_when_asked(recording, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.html"
    made = segments("report", str(recording), "--out", str(out), *PERSIAN_TEHRAN)
    assert made.returncode == 0, made.stderr
    html = out.read_text()
    m = re.search(r'<script type="application/json" id="ime-report-data">(.*?)</script>', html, re.S)
    assert m is not None
    data = orjson.loads(m.group(1).replace("<\\/", "</"))
    assert data["calendar"] == "persian"
    assert data["span"]["from"] == shown(data["span"]["from_ns"], 3, TEHRAN, True)
    times = re.findall(r"<time>([^<]+)</time>", html)
    # Dates Solar Hijri (this recording's, and the day the page was made); the end of a gap on its first day is
    # its time of day.
    assert times and all(re.fullmatch(r"(14\d\d-\d\d-\d\dT)?\d\d:\d\d:\d\d\.\d{3}\+03:30", t) for t in times), times
    assert shown(T0, 3, TEHRAN, True) in times
    # The figures' time axes too (matplotlib knows only the Gregorian calendar: the report writes their dates).
    assert "Solar Hijri dates, from 1405-09-03" in html
    # Gregorian dates only in the embedded `stats --json` document, which is machine output (UTC).
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert "2026-11-2" not in text and "Nov" not in re.sub(r"<style>.*?</style>", "", text, flags=re.S)
    # A Solar Hijri --from reports what its Gregorian date does.
    blocks = []
    for window in (("--from", "1405/09/04 00:10", *PERSIAN_TEHRAN),
                   ("--from", "2026-11-25T00:10", "--tz", "Asia/Tehran")):
        made = segments("report", str(recording), "--out", str(out), *window)
        assert made.returncode == 0, made.stderr
        m = re.search(r'<script type="application/json" id="ime-report-data">(.*?)</script>', out.read_text(), re.S)
        assert m is not None
        blocks.append(orjson.loads(m.group(1).replace("<\\/", "</")))
    assert blocks[0]["stats"] == blocks[1]["stats"] and blocks[0]["span"]["from_ns"] == blocks[1]["span"]["from_ns"]
    assert blocks[0]["span"]["from_ns"] == T0 - 123_456_789 + 40 * 60 * S


# --- progress on a terminal, nothing in a pipe -----------------------------------------------------------------


def on_terminal(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal showed) of a command whose stderr is a real pseudo-terminal and whose
    stdout is a pipe. The terminal is read all along (a full one would block the command)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed it
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, stderr=follower,
                              stdin=subprocess.DEVNULL, timeout=180, env=env or clean_env())
    finally:
        os.close(follower)
    reader.join(30)
    os.close(leader)
    return proc.returncode, proc.stdout.decode(), seen.decode(errors="replace")


def bar_of(label: str) -> re.Pattern[str]:
    return re.compile(re.escape(label) + r" \[[#-]+\] +\d+%")


@pytest.fixture
def crashed(recording, tmp_path) -> Path:
    """A copy of the recording, one file as a crash leaves it (.open, cut inside its last frame)."""
    d = tmp_path / "crashed"
    shutil.copytree(recording, d)
    victim = sorted(d.iterdir())[0]
    target = victim.with_name(victim.name + ".open")
    data = unsealed_copy(victim, target).read_bytes()
    target.write_bytes(data[:-10])
    victim.unlink()
    return d


@pytest.mark.parametrize(("command", "label"), [
    (["verify"], "verifying"),
    (["recover"], "recovering"),
    (["stats"], "reading"),
    (["merge", "{other}", "--out", "{out}"], "merging"),
])
def test_long_work_shows_a_bar_on_a_terminal_and_nothing_in_a_pipe(recording, crashed, tmp_path, command, label):
    other = tmp_path / "other"
    shutil.copytree(recording, other)

    def args(directory: Path, out: str) -> list[str]:
        return [a.format(other=other, out=tmp_path / out) for a in command[:1]] + [str(directory)] + \
            [a.format(other=other, out=tmp_path / out) for a in command[1:]]

    # recover gets a crash to repair; the others an intact recording (damage would make them exit 1).
    source = crashed if command[0] == "recover" else recording
    tty_copy, piped_copy = tmp_path / "tty", tmp_path / "piped"
    shutil.copytree(source, tty_copy)
    shutil.copytree(source, piped_copy)
    code, stdout, terminal = on_terminal(["-m", "recorder.cli.segments", *args(tty_copy, "out-tty")])
    piped = segments(*args(piped_copy, "out-pipe"))
    assert code == piped.returncode == 0, terminal + piped.stderr
    assert bar_of(label).search(terminal), terminal  # the bar, on the terminal
    assert terminal.rstrip("\r\n").endswith("\x1b[K") or "\r\x1b[K" in terminal  # and taken off it when done
    # Never a byte of it in stdout, nor in a stderr that is not a terminal.
    assert label + " [" not in stdout and "\r" not in stdout and "\x1b" not in stdout
    assert label + " [" not in piped.stderr and "\r" not in piped.stderr and "\x1b" not in piped.stderr
    # What scripts read is the same either way (paths aside).
    assert stdout.replace(str(tty_copy), "D").replace("out-tty", "OUT") == \
        piped.stdout.replace(str(piped_copy), "D").replace("out-pipe", "OUT")
    if command[0] in ("verify", "stats"):
        assert piped.stderr == ""


def test_cat_shows_a_bar_only_when_its_records_go_elsewhere_than_the_terminal(recording):
    code, stdout, terminal = on_terminal(["-m", "recorder.cli.segments", "cat", str(recording)])
    assert code == 0 and bar_of("reading").search(terminal), terminal
    assert len(stdout.splitlines()) == len(recorded(recording)) and "\x1b" not in stdout
    # stdout on the terminal too: the records alone, no bar drawn between them.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "cat", "--contract", "1001",
                               str(recording)],
                              stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, timeout=180, env=clean_env())
    finally:
        os.close(follower)
    reader.join(30)
    os.close(leader)
    assert proc.returncode == 0
    assert "reading [" not in seen.decode(errors="replace") and seen.count(b'"contract":"1001"') == PER_SHARD // 2


# --- ime-record: the live table, the exit summary and every log line in --tz ------------------------------------


def test_the_status_table_and_the_exit_summary_show_the_time_in_the_zone_and_calendar(monkeypatch):
    from recorder.record.status import ShardView, exit_summary, table
    from recorder.timeparse import TimeLocale

    views = [ShardView(k, 5000, state="running") for k in range(12)]
    where = TimeLocale.parse("Asia/Tehran", "persian")
    lines = table(views, T0, 90.0, now=1.0, shown=where)
    assert lines[0] == f"ime-record: 12 shards, running 90.0s (now {shown(T0, 0, TEHRAN, True)})"
    assert max(len(line) for line in lines) <= 80
    summary = exit_summary(views, 90.0, now_ns=T0, shown=where)
    assert summary[0] == f"recorded for 90.0s, from {shown(T0 - 90 * S, 0, TEHRAN, True)} to " \
                         f"{shown(T0, 0, TEHRAN, True)}:"
    # Without an explicit locale: what ime-record's options put in the environment (UTC when nothing did).
    monkeypatch.delenv("IME_TZ", raising=False)
    monkeypatch.delenv("IME_CALENDAR", raising=False)
    assert table(views, T0, 90.0, now=1.0)[0].endswith(f"(now {shown(T0, 0)})")
    monkeypatch.setenv("IME_TZ", "Asia/Tehran")
    monkeypatch.setenv("IME_CALENDAR", "persian")
    assert table(views, T0, 90.0, now=1.0)[0].endswith(f"(now {shown(T0, 0, TEHRAN, True)})")


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\S*) (?:INFO|WARNING|ERROR|DEBUG) (\S+)")


def record_args(out: Path, *extra: str) -> list[str]:
    # A feed that sends almost nothing, with an idle timeout: the worker logs its reconnects (a line from the
    # worker process, stamped there), whatever the machine's load (5 s: the first connection may take seconds).
    return ["-m", "recorder.cli.record", "--demo", "--demo-rate", "0.01", "--idle-timeout", "1", "--duration", "5",
            "--out", str(out), *extra]


def persian_time(text: str) -> datetime:
    """A Solar Hijri time with its offset, read back (jdatetime) as an aware datetime."""
    date, rest = text.split("T")
    y, m, d = map(int, date.split("-"))
    return datetime.fromisoformat(f"{jdatetime.date(y, m, d).togregorian().isoformat()}T{rest}")


def test_ime_record_stamps_every_line_in_its_tz_and_draws_the_table_in_its_calendar(tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    code, _, terminal = on_terminal(record_args(tmp_path / "a", *PERSIAN_TEHRAN))
    after = datetime.now(UTC)
    assert code in (0, 1), terminal  # 1: no message arrived to accept a connection (the feed is that quiet)
    screen = terminal.replace("\r", "\n")
    # The live table, its clock in Tehran and the Solar Hijri calendar.
    heads = re.findall(r"ime-record: 1 shards, running \S+ \(now (14\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\+03:30)\)", screen)
    assert heads, screen
    persian = [persian_time(h) for h in heads]
    assert all(before <= t <= after for t in persian), (heads, before, after)
    # Log lines, the supervisor's and the worker's: Gregorian (log tools read them), in Tehran, with the zone.
    stamps = [LOG_LINE.match(line) for line in screen.splitlines()]
    stamps = [m for m in stamps if m is not None]
    assert {m.group(2) for m in stamps} == {"+03:30"}, screen
    assert any(m.group(3) == "s00:" for m in stamps), screen
    assert all(before <= datetime.fromisoformat(m.group(1) + m.group(2)) <= after for m in stamps)
    summary = re.search(r"recorded for \S+, from (\S+) to (\S+):", screen)
    assert summary is not None and summary.group(2).endswith("+03:30") and summary.group(2).startswith("14")
    # Without --tz: UTC, and said (the lines were local time without a zone).
    plain = subprocess.run([sys.executable, *record_args(tmp_path / "b")], capture_output=True, text=True,
                           timeout=120, env=clean_env())
    stamps = [m for m in map(LOG_LINE.match, plain.stderr.splitlines()) if m is not None]
    assert stamps and {m.group(2) for m in stamps} == {"Z"} and any(m.group(3) == "s00:" for m in stamps), plain.stderr
    assert re.search(r"recorded for \S+, from \S+Z to \S+Z:", plain.stderr), plain.stderr

