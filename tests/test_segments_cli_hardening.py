"""`ime-segments` and `ime-replay` on awkward input (issue 13, items 10 and 11): real files, real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event

S = 1_000_000_000
# 2026-11-24T05:30:00Z = 09:00 in Tehran (UTC+03:30, no daylight saving since 2022).
T0 = 1_795_498_200 * S


def run(*args: str, module: str = "recorder.cli.segments", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "IME_TZ"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """One shard, 1001/1002, one record every 100 ms for 10 minutes from T0 (09:00–09:10 Tehran)."""
    d = tmp_path / "data"
    recs = [(T0, 1, 3, encode_event(Event.OPENED, conn=1, url="ws://x", contracts=["1001", "1002"]))]
    for i in range(6000):
        recs.append((T0 + i * 100_000_000 + 1, 1, 1, ime_payload(i, "1001" if i % 2 == 0 else "1002")))
    write_records(d, recs, shard=0, frame_bytes=16384, meta={"contracts": ["1001", "1002"], "endpoint": "id"})
    return d


def cut_inside_header(directory: Path) -> Path:
    bad = directory / "ime-s01-20261124T053000.000Z.zst"
    bad.write_bytes(b"\x50\x2a\x4d\x18\x40\x00\x00\x00IMEH")
    return bad


# --- item 11: one unreadable file does not hide the others ------------------------------------

@pytest.mark.parametrize("command", ["ls", "cat", "stats"])
def test_a_file_cut_inside_its_header_is_skipped_with_a_warning(recording, command):
    bad = cut_inside_header(recording)
    out = run(command, str(recording))
    assert out.returncode == 1, out.stderr
    assert f"warning: skipped {bad}: truncated inside the header" in out.stderr
    assert "Traceback" not in out.stderr
    if command == "ls":
        assert "6001" in out.stdout
    elif command == "cat":
        assert len(out.stdout.splitlines()) == 6001
    else:
        assert out.stdout.startswith("6001 records")


def test_only_unreadable_files_is_still_a_usage_error(tmp_path):
    bad = cut_inside_header(tmp_path)
    out = run("ls", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "truncated inside the header" in out.stderr


# --- item 10: time input ------------------------------------------------------------------------

def rows(out: subprocess.CompletedProcess[str]) -> list[dict]:
    return [orjson.loads(line) for line in out.stdout.splitlines()]


def test_cat_with_tehran_times_of_day(recording):
    out = run("cat", str(recording), "--contract", "1001", "--tz", "Asia/Tehran", "--from", "09:00", "--to", "09:01")
    assert out.returncode == 0, out.stderr
    got = rows(out)
    assert len(got) == 300 and all(T0 <= r["recv_ns"] < T0 + 60 * S for r in got)


def test_ime_tz_environment_variable_sets_the_zone(recording):
    out = run("cat", str(recording), "--from", "2026-11-24T09:00:00", "--to", "2026-11-24T09:00:10",
              env={"IME_TZ": "Asia/Tehran"})
    assert out.returncode == 0, out.stderr
    assert len(rows(out)) == 101  # the opened event and 100 records


def test_a_window_that_selects_nothing_says_so_with_the_recordings_range(recording):
    out = run("cat", str(recording), "--from", "09:00", "--to", "09:01")  # UTC by default: hours too late
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no records" in out.stderr
    assert "the recording spans 2026-11-24T05:30:00Z to 2026-11-24T05:39:59.900000001Z" in out.stderr
    tehran = run("stats", str(recording), "--tz", "Asia/Tehran", "--from", "10:00")
    assert tehran.returncode == 1 and "2026-11-24T09:00:00+03:30 to 2026-11-24T09:09:59.900000001+03:30" in \
        tehran.stderr


def test_from_after_to_is_refused(recording):
    out = run("cat", str(recording), "--tz", "Asia/Tehran", "--from", "09:05", "--to", "09:00")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not before --to" in out.stderr


def test_unknown_zone_is_one_line_exit_2(recording):
    out = run("cat", str(recording), "--tz", "Tehran", "--from", "09:00")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown time zone 'Tehran'" in out.stderr


def test_nanosecond_digits_of_from_are_kept(recording):
    out = run("cat", str(recording), "--from", "2026-11-24T05:30:00.000000002Z", "--to", "2026-11-24T05:30:01Z")
    assert out.returncode == 0, out.stderr
    assert [r["recv_ns"] for r in rows(out)] == [T0 + i * 100_000_000 + 1 for i in range(1, 10)]


def test_stats_takes_a_window(recording):
    out = run("stats", "--json", str(recording), "--tz", "Asia/Tehran", "--from", "09:00", "--to", "09:01")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["records"] == 601


def test_replay_takes_the_same_time_input(recording):
    out = run(str(recording), "--tz", "Asia/Tehran", "--from", "09:00", "--to", "09:01", "--speed", "max",
              "--format", "raw", "-q", module="recorder.replay")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 600
    empty = run(str(recording), "--from", "09:00", "--speed", "max", "-q", module="recorder.replay")
    assert empty.returncode == 1 and "no records" in empty.stderr and "the recording spans" in empty.stderr
    backwards = run(str(recording), "--from", "09:05", "--to", "09:00", "--tz", "Asia/Tehran",
                    module="recorder.replay")
    assert backwards.returncode == 2 and "is not before --to" in backwards.stderr


# --- interface 1: record kinds this reader does not know (receipts are kind 4) are not messages ---

def test_unknown_record_kinds_are_skipped_by_cat_and_stats(tmp_path):
    d = tmp_path / "k"
    recs = [(T0 + i, 1, 1 if i % 2 == 0 else 4, ime_payload(i)) for i in range(10)]
    write_records(d, recs)
    cat = run("cat", "--format", "raw", str(d))
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout.encode().splitlines() == [ime_payload(i) for i in range(0, 10, 2)]
    stats = run("stats", "--json", str(d))
    doc = orjson.loads(stats.stdout)
    assert doc["records"] == 5 and doc["contracts"]["1001"]["records"] == 5
    assert doc["other_kinds"] == {"4": 5}


@pytest.mark.parametrize(("module", "args", "needle"), [
    ("recorder.cli.record", ["--shards", "0"], "ime-record: error: Invalid value for '--shards'"),
    ("recorder.cli.record", ["--no-such-option"], "ime-record: error: No such option"),
    ("recorder.cli.segments", ["bogus"], "ime-segments: error: No such command 'bogus'"),
    ("recorder.cli.segments", ["cat", "--nope"], "(see ime-segments cat --help)"),
    ("recorder.replay", ["x.zst", "--speed"], "ime-replay: error: Option '--speed' requires an argument"),
    ("recorder.cli.sim", ["--port", "x"], "ime-sim: error: Invalid value for '--port'"),
])
def test_usage_errors_are_one_line_naming_the_command(module, args, needle):
    out = run(*args, module=module)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr
