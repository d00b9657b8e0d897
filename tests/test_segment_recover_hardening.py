"""Recovery and reading of damaged files (issue 13, items 2–4): resynchronisation, frame order, full disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_util import RecorderProcess
from segment_util import ime_payload, unsealed_copy, write_records

from recorder.segment.format import (
    XXH64_EMPTY_LOW32,
    SeekEntry,
    encode_index,
    encode_seek_table,
)
from recorder.segment.reader import open_segment, walk_frames
from recorder.segment.recover import recover

T0 = 1_764_000_000_000_000_000
NAME = "ime-s00-20261124T000000.000Z.zst"


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "recorder.cli.segments", *args], capture_output=True, timeout=60)


def make_open(tmp_path: Path, n: int = 900, frame_bytes: int = 4096) -> tuple[Path, list[tuple], list]:
    """A multi-frame `.open` file as a crash leaves it; returns (path, records, frame infos)."""
    recs = [(T0 + 1000 * i, 1, 1, ime_payload(i)) for i in range(n)]
    (sealed,) = write_records(tmp_path / "src", recs, frame_bytes=frame_bytes)
    crashed = tmp_path / "crash" / (NAME + ".open")
    crashed.parent.mkdir(exist_ok=True)
    unsealed_copy(sealed, crashed)
    frames = open_segment(sealed).frames
    assert len(frames) >= 8
    return crashed, recs, list(frames)


def records_of(frames: list, recs: list[tuple], skip: set[int]) -> list[tuple]:
    """The records of every frame except those in `skip` (frames hold consecutive records)."""
    out = []
    start = 0
    for i, f in enumerate(frames):
        if i not in skip:
            out.extend(recs[start:start + f.records])
        start += f.records
    return out


def sealed_records(path: Path) -> list[tuple]:
    seg = open_segment(path)
    assert seg.sealed and seg.verify() == [], seg.verify()
    return [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()]


def flip(path: Path, pos: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= mask
    path.write_bytes(data)


# --- item 2: recovery skips a damaged frame and keeps every intact one ---------------------------

def test_recover_keeps_every_frame_after_a_corrupt_data_frame(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    victim = frames[3]
    flip(crashed, victim.data_offset + victim.compressed_size // 2)
    result = recover(crashed)
    assert result.sealed is not None
    assert sealed_records(result.sealed) == records_of(frames, recs, {3})
    assert result.records == len(recs) - victim.records and result.frames == len(frames) - 1
    # It says what it skipped, and the .tail holds exactly the damaged frame: no good data in it.
    text = str(result)
    assert "frame 3" in text and f"{victim.records} records" in text and "skipped" in text
    assert result.tail is not None
    assert result.tail.stat().st_size == victim.end_offset - victim.offset
    assert not crashed.exists()
    seal = open_segment(result.sealed).seal
    assert seal["reason"] == "recovered" and seal["skipped"][0]["offset"] == victim.offset


def test_recover_resynchronises_after_a_corrupt_descriptor(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    victim = frames[5]
    flip(crashed, victim.offset + 20)  # inside the descriptor: its CRC fails, so its size cannot be trusted
    seg = open_segment(crashed)
    # The reader resynchronises too: every other frame is read.
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == records_of(frames, recs, {5})
    assert len(seg.damage) == 1 and "next frame descriptor" in seg.damage[0].reason
    result = recover(crashed)
    assert sealed_records(result.sealed) == records_of(frames, recs, {5})
    assert result.tail is not None and result.tail.stat().st_size == victim.end_offset - victim.offset
    assert f"offset {victim.offset}" in str(result)


def test_recover_of_a_truncated_tail_keeps_the_partial_frame_in_tail_and_says_so(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    data = crashed.read_bytes()
    crashed.write_bytes(data[:-50])
    result = recover(crashed)
    assert sealed_records(result.sealed) == records_of(frames, recs, {len(frames) - 1})
    assert result.tail is not None and result.tail.read_bytes() == data[frames[-1].offset:-50]
    assert "truncated" in str(result) and not result.damaged


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_damaged_byte_in_frame_k_loses_frame_k_only(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    crashed, recs, frames = make_open(tmp_path, n=500, frame_bytes=3000)
    k = data.draw(st.integers(0, len(frames) - 1), label="frame")
    victim = frames[k]
    pos = data.draw(st.integers(victim.offset, victim.end_offset - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="mask")
    flip(crashed, pos, mask)
    result = recover(crashed)
    assert sealed_records(result.sealed) == records_of(frames, recs, {k})
    assert result.tail is not None and result.tail.stat().st_size == victim.end_offset - victim.offset


def test_recover_cli_says_what_it_skipped_and_verify_notes_it(tmp_path):
    crashed, _recs, frames = make_open(tmp_path)
    flip(crashed, frames[2].data_offset + 7)
    out = run("recover", str(crashed))
    assert out.returncode == 1, out.stderr  # damage beyond a crash's cut-off tail: reported, all else kept
    assert b"frame 2" in out.stdout and b"skipped" in out.stdout and b"1 of 1 files" in out.stderr
    check = run("verify", str(crashed.parent))
    assert check.returncode == 0
    assert b"recovered" in check.stdout and b"skipped" in check.stdout


@pytest.mark.slow
def test_the_recorder_recovers_a_damaged_open_file_at_start_keeping_intact_frames(sim_process, tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    left = out / crashed.name  # shard 0, the default prefix: this recorder's own crashed file
    shutil.move(crashed, left)
    flip(left, frames[3].data_offset + 9)
    sim = sim_process("--contracts", "2", "--rate", "50")
    info = sim.info
    rec = RecorderProcess(tmp_path, "--ids", ",".join(info["ids"]), "--shards", "1", "--out", str(out),
                          "--base-url", info["base_url"], "--token-url", info["token_url"],
                          env={"IME_USERNAME": info["username"], "IME_PASSWORD": info["password"]}).start()
    try:
        rec.wait_for("recovered", timeout=20)
        rec.signal(signal.SIGINT)
        assert rec.wait(30) == 0, rec.stderr
    finally:
        rec.kill_tree()
    assert sealed_records(out / NAME) == records_of(frames, recs, {3})
    assert (out / (NAME + ".tail")).stat().st_size == frames[3].end_offset - frames[3].offset
    assert "frame 3" in rec.stderr and "skipped" in rec.stderr


# --- item 3: frame sequence numbers -------------------------------------------------------------

def duplicate_frame(path: Path, frame) -> None:
    data = path.read_bytes()
    chunk = data[frame.offset:frame.end_offset]
    path.write_bytes(data[:frame.end_offset] + chunk + data[frame.end_offset:])


def swap_frames(path: Path, a, b) -> None:
    data = path.read_bytes()
    assert a.end_offset == b.offset
    path.write_bytes(data[:a.offset] + data[b.offset:b.end_offset] + data[a.offset:a.end_offset]
                     + data[b.end_offset:])


def test_a_duplicated_frame_in_an_open_file_is_damage_and_read_once(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    duplicate_frame(crashed, frames[4])
    seg = open_segment(crashed)
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == recs
    problems = seg.verify()
    assert len(problems) == 1 and "repeats" in problems[0].reason and problems[0].frame == 4
    out = run("verify", str(crashed))
    assert out.returncode == 1 and b"repeats" in out.stdout
    cat = run("cat", "--format", "raw", str(crashed))
    assert cat.returncode == 1 and b"repeats" in cat.stderr
    assert cat.stdout.splitlines() == [r[3] for r in recs]
    result = recover(crashed)
    assert sealed_records(result.sealed) == recs
    assert "repeats" in str(result)


def test_swapped_frames_are_damage_and_read_once_in_order(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    swap_frames(crashed, frames[2], frames[3])
    seg = open_segment(crashed)
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == recs
    problems = seg.verify()
    assert len(problems) == 1 and "out of order" in problems[0].reason
    listing = run("ls", str(crashed))
    assert b"open,damaged" in listing.stdout and b"out of order" in listing.stderr
    result = recover(crashed)
    assert sealed_records(result.sealed) == recs  # put back in order: both frames are intact
    assert "out of order" in str(result)


def test_a_sealed_file_listing_a_frame_twice_is_damage_and_cat_prints_it_once(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    duplicate_frame(crashed, frames[1])
    # Seal it the way an old recover did, duplicate and all.
    with open(crashed, "rb") as fh:
        walked, _, _ = walk_frames(fh, crashed, crashed.stat().st_size)
    index = encode_index(walked, {"reason": "recovered"})
    seek = [SeekEntry(walked[0].offset, 0, XXH64_EMPTY_LOW32)]
    for f in walked:
        seek += [SeekEntry(60, 0, XXH64_EMPTY_LOW32), SeekEntry(f.compressed_size, f.raw_size, f.checksum)]
    seek.append(SeekEntry(len(index), 0, XXH64_EMPTY_LOW32))
    sealed = crashed.with_name(NAME)
    sealed.write_bytes(crashed.read_bytes() + index + encode_seek_table(seek))
    crashed.unlink()
    seg = open_segment(sealed)
    assert seg.sealed
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == recs
    assert any("repeats" in d.reason for d in seg.verify())
    cat = run("cat", str(sealed))
    assert cat.returncode == 1
    assert [orjson.loads(line)["recv_ns"] for line in cat.stdout.splitlines()] == [r[0] for r in recs]


def test_replay_plays_a_duplicated_frame_once(tmp_path):
    crashed, recs, frames = make_open(tmp_path)
    duplicate_frame(crashed, frames[6])
    replay = shutil.which("ime-replay", path=str(Path(sys.executable).parent))
    assert replay is not None
    out = subprocess.run([replay, str(crashed), "--speed", "max", "--format", "raw", "-q"], capture_output=True,
                         timeout=60)
    assert out.returncode == 1 and b"repeats" in out.stderr
    assert out.stdout.splitlines() == [r[3] for r in recs]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_with_repeats_reads_each_record_once_and_recovers_all(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("order")
    crashed, recs, frames = make_open(tmp_path, n=300, frame_bytes=3000)
    n = len(frames)
    order = data.draw(st.permutations(range(n)), label="order")
    extra = data.draw(st.lists(st.integers(0, n - 1), max_size=4), label="repeats")
    layout = list(order)
    for i, k in enumerate(extra):
        layout.insert(data.draw(st.integers(0, len(layout)), label=f"at{i}"), k)
    raw = crashed.read_bytes()
    body = b"".join(raw[frames[k].offset:frames[k].end_offset] for k in layout)
    crashed.write_bytes(raw[:frames[0].offset] + body)
    seg = open_segment(crashed)
    assert [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()] == recs
    in_order = layout == list(range(n))
    assert (seg.verify() == []) == in_order
    result = recover(crashed)
    assert sealed_records(result.sealed) == recs
    assert (result.tail is None) == (not extra)


# --- item 4: a full disk leaves the .open file exactly as it was --------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # down to single bytes, so that even a page's slack is used
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["none", "truncated", "corrupt-frame"])
def test_recover_on_a_full_disk_fails_in_one_line_and_leaves_the_open_file_untouched(tmp_path, tiny_tmpfs,
                                                                                   damage):
    crashed, recs, frames = make_open(tmp_path, n=2000, frame_bytes=8192)
    target = tiny_tmpfs / crashed.name
    data = crashed.read_bytes()
    if damage == "truncated":
        data = data[:-123]
    elif damage == "corrupt-frame":
        buf = bytearray(data)
        buf[frames[2].data_offset + 5] ^= 0xFF
        data = bytes(buf)
    target.write_bytes(data)
    fill(tiny_tmpfs)
    out = run("recover", str(target))
    assert out.returncode == 1, out
    err = out.stderr.decode()
    assert err.count("\n") == 1 and str(target) in err and "No space left" in err and "Traceback" not in err
    assert target.read_bytes() == data
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == sorted(["filler", target.name])
    # With space again it recovers.
    (tiny_tmpfs / "filler").unlink()
    again = run("recover", str(target))
    assert again.returncode == (1 if damage == "corrupt-frame" else 0), again.stderr
    assert sealed_records(tiny_tmpfs / NAME)[: frames[0].records] == recs[: frames[0].records]
