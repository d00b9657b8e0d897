"""`ime-segments` end to end: real files, the real console script for exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from segment_util import ime_payload, unsealed_copy, write_records

from recorder.events import Event, encode_event
from recorder.segment.format import FORMAT_MAJOR, HEADER_FIXED, TAG_HEADER, U32, crc32, skippable
from recorder.segment.reader import open_segment

T0 = 1_764_000_000_000_000_000


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recorder.cli.segments", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


@pytest.fixture
def recording(tmp_path):
    """Two shards, two contracts each, plus connection events."""
    d = tmp_path / "data"
    for shard, contracts in ((0, ("1001", "1002")), (1, ("1003", "1004"))):
        recs = [(T0 + shard, 1, 3, encode_event(Event.OPENED, conn=1, url="ws://x", contracts=list(contracts)))]
        for i in range(400):
            c = contracts[i % 2]
            recs.append((T0 + 1_000_000 * i + 10 * shard + 1, 1, 1, ime_payload(i, c)))
        recs.append((T0 + 1_000_000 * 400, 1, 3, encode_event(Event.CLOSED, conn=1, code=1006, reason="")))
        write_records(d, recs, shard=shard, frame_bytes=8192, meta={"contracts": list(contracts), "endpoint": "id"})
    return d


def test_ls_prints_one_line_per_file_from_the_index(recording):
    out = run("ls", str(recording))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["FILE", "SHARD", "FROM"]
    assert len(lines) == 3
    for line, shard in zip(lines[1:], (0, 1), strict=True):
        cols = line.split()
        assert cols[0].startswith(f"ime-s{shard:02d}-") and cols[1] == str(shard)
        assert cols[4] == "402" and cols[-1] == "sealed"
        assert cols[-2].endswith("x") and float(cols[-2][:-1]) > 3


def test_cat_jsonl_merges_shards_by_time_and_keeps_frames_byte_for_byte(recording):
    out = run("cat", str(recording))
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 804
    assert [r["recv_ns"] for r in rows] == sorted(r["recv_ns"] for r in rows)
    frames = [r for r in rows if r["kind"] == "text"]
    assert {r["contract"] for r in frames} == {"1001", "1002", "1003", "1004"}
    first = next(r for r in frames if r["shard"] == 1)
    assert orjson.dumps(first["frame"]) == orjson.dumps(orjson.loads(ime_payload(0, "1003")))
    raw_line = next(line for line in out.stdout.splitlines() if '"contract":"1003"' in line)
    assert ime_payload(0, "1003").decode() in raw_line  # embedded unchanged, not re-serialised
    events = [r for r in rows if r["kind"] == "event"]
    assert [e["event"]["event"] for e in events] == ["opened", "opened", "closed", "closed"]


def test_cat_filters_by_contract_and_time(recording):
    start = T0 + 100_000_000
    end = T0 + 200_000_000
    out = run("cat", str(recording), "--contract", "1002", "--from", str(start), "--to", str(end))
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(r["contract"] == "1002" and start <= r["recv_ns"] < end for r in rows)
    assert len(rows) == 50


def test_cat_raw_prints_payloads_exactly(recording):
    out = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "cat", "--format", "raw", "--contract", "1001",
                          str(recording)], capture_output=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout == b"".join(ime_payload(i, "1001") + b"\n" for i in range(0, 400, 2))


def test_verify_ok_then_reports_file_frame_and_offset(recording):
    out = run("verify", str(recording))
    assert out.returncode == 0 and out.stdout.count("OK ") == 2
    victim = sorted(recording.iterdir())[1]
    seg = open_segment(victim)
    frame = seg.frames[1]
    data = bytearray(victim.read_bytes())
    data[frame.data_offset + 20] ^= 0x40
    victim.write_bytes(data)
    out = run("verify", str(recording))
    assert out.returncode == 1
    assert f"BAD  {victim}: frame 1 at offset {frame.offset}" in out.stdout
    assert "1 of 2 files damaged" in out.stderr


def test_stats_per_contract(recording):
    out = run("stats", "--json", str(recording))
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert doc["records"] == 804
    c = doc["contracts"]["1001"]
    assert c["records"] == 200
    assert c["largest_gap_s"] == pytest.approx(0.002)
    assert c["max_rate_per_s"] == 200
    assert doc["events"] == {"opened": 2, "closed": 2}
    assert doc["close_codes"] == {"1006": 2}
    text = run("stats", str(recording))
    assert "1001" in text.stdout and "connection events: closed=2, opened=2" in text.stdout


def test_recover_seals_open_files(tmp_path):
    recs = [(T0 + i, 1, 1, ime_payload(i)) for i in range(500)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=4096)
    crashed = tmp_path / "crash" / (sealed.name + ".open")
    crashed.parent.mkdir()
    data = unsealed_copy(sealed, crashed).read_bytes()
    crashed.write_bytes(data[:-10])
    out = run("recover", str(crashed.parent))
    assert out.returncode == 0, out.stderr
    assert "records kept" in out.stdout and "unverifiable bytes skipped" in out.stdout
    assert run("verify", str(crashed.parent)).returncode == 0
    again = run("recover", str(crashed.parent))  # now sealed: checked, left alone, and said so
    assert again.returncode == 0 and "intact" in again.stdout and "nothing to do" in again.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run("recover", str(empty))
    assert nothing.returncode == 2 and "nothing to recover" in nothing.stderr


@pytest.mark.parametrize("command", ["ls", "cat", "verify", "stats"])
def test_bad_input_is_one_line_exit_2(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run(command, str(empty))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no segment files" in out.stderr
    missing = run(command, str(tmp_path / "nope.zst"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    junk = tmp_path / "junk.zst"
    junk.write_bytes(os.urandom(100))
    out = run(command, str(junk))
    assert out.returncode in (1, 2) if command == "verify" else out.returncode == 2
    assert "not an ime-recorder segment" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_newer_major_version_is_refused(tmp_path):
    body = HEADER_FIXED.pack(TAG_HEADER, FORMAT_MAJOR + 1, 0, 2) + b"{}"
    (tmp_path / "future.zst").write_bytes(skippable(0x184D2A50, body + U32.pack(crc32(body))))
    out = run("ls", str(tmp_path / "future.zst"))
    assert out.returncode == 2
    assert "format version 2.0" in out.stderr and "upgrade ime-recorder" in out.stderr
    assert out.stderr.count("\n") == 1
