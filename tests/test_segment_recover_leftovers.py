"""Recovery that never gives up on good data (issue 21): every leftover is attempted, a cut sealed file is re-sealed,
and the frame walk resynchronises on the next valid descriptor whatever came before it."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from segment_util import ime_payload, unsealed_copy, write_records

from recorder.segment.format import FrameInfo
from recorder.segment.reader import discover, open_segment
from recorder.segment.recover import recover

T0 = 1_764_000_000_000_000_000
Rec = tuple[int, int, int, bytes]


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "recorder.cli.segments", *args], capture_output=True, timeout=120)


def name(shard: int) -> str:
    return f"ime-s{shard:02d}-20261124T000000.000Z.zst"


def recording(tmp_path: Path, shard: int, n: int, frame_bytes: int = 3000, t0: int = T0) -> tuple[Path, list[Rec],
                                                                                                     list[FrameInfo]]:
    """A sealed file of `n` records of one shard; returns (path, records, frames)."""
    recs = [(t0 + 1000 * i, 1, 1, ime_payload(i, str(1000 + shard))) for i in range(n)]
    (sealed,) = write_records(tmp_path / f"src{shard}", recs, shard=shard, frame_bytes=frame_bytes)
    return sealed, recs, list(open_segment(sealed).frames)


def records_of(frames: list[FrameInfo], recs: list[Rec], skip: set[int]) -> list[Rec]:
    out: list[Rec] = []
    start = 0
    for i, f in enumerate(frames):
        if i not in skip:
            out.extend(recs[start:start + f.records])
        start += f.records
    return out


def sealed_records(path: Path) -> list[Rec]:
    seg = open_segment(path)
    assert seg.sealed and seg.verify() == [], seg.verify()
    return [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()]


def cut_sealed(tmp_path: Path, shard: int) -> tuple[Path, bytes, list[Rec], list[FrameInfo]]:
    """A sealed file cut inside its second-to-last frame, as a copy that stopped part-way leaves it."""
    sealed, recs, frames = recording(tmp_path, shard, 600)
    assert len(frames) >= 6
    victim = frames[-2]
    data = sealed.read_bytes()[:victim.data_offset + victim.compressed_size // 2]
    target = tmp_path / "rec" / name(shard)
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    return target, data, records_of(frames, recs, {len(frames) - 2, len(frames) - 1}), frames


def leftovers(tmp_path: Path) -> dict[str, object]:
    """A directory holding a zero-length `.open`, a header-only `.open`, an intact `.open` and a cut sealed file."""
    directory = tmp_path / "rec"
    directory.mkdir()
    empty = directory / (name(1) + ".open")
    empty.write_bytes(b"")
    header_src, _, header_frames = recording(tmp_path, 2, 50)
    header_only = directory / (name(2) + ".open")
    header_only.write_bytes(header_src.read_bytes()[:header_frames[0].offset])
    intact_src, intact_recs, _ = recording(tmp_path, 0, 400)
    intact = unsealed_copy(intact_src, directory / (name(0) + ".open"))
    cut, cut_bytes, cut_recs, cut_frames = cut_sealed(tmp_path, 3)
    return {"dir": directory, "empty": empty, "header_only": header_only, "header_bytes": header_only.read_bytes(),
            "intact": intact, "intact_recs": intact_recs, "cut": cut, "cut_bytes": cut_bytes, "cut_recs": cut_recs,
            "cut_frames": cut_frames}


def test_recover_attempts_every_leftover_and_keeps_every_intact_record(tmp_path):
    left = leftovers(tmp_path)
    directory = left["dir"]
    out = run("recover", str(directory))
    text = out.stdout.decode()
    # The cut sealed file is damage (a sealed file is never cut by a crash): exit 1, after every file was handled.
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr.decode()
    lines = text.splitlines()
    assert len(lines) == 4, text
    for key in ("empty", "header_only", "intact", "cut"):
        assert sum(str(left[key]) in line for line in lines) == 1, (key, text)
    # Nothing is left open; files with no record are moved aside with their bytes, the others are sealed.
    assert not list(directory.glob("*.open"))
    assert (directory / (name(1) + ".tail")).read_bytes() == b""
    assert (directory / (name(2) + ".tail")).read_bytes() == left["header_bytes"]
    assert not (directory / name(1)).exists() and not (directory / name(2)).exists()
    assert sealed_records(directory / name(0)) == left["intact_recs"]
    assert sealed_records(directory / name(3)) == left["cut_recs"]
    # The cut file's original bytes are all kept: its header and intact frames in the sealed file, the rest in .tail.
    frames = left["cut_frames"]
    kept_end = frames[-3].end_offset
    assert (directory / (name(3) + ".tail")).read_bytes() == left["cut_bytes"][kept_end:]
    assert (directory / name(3)).read_bytes()[:kept_end] == left["cut_bytes"][:kept_end]
    # Every intact record is readable afterwards, and the directory verifies.
    cat = run("cat", "--format", "raw", str(directory))
    assert cat.returncode == 0, cat.stderr
    expected = sorted(left["intact_recs"] + left["cut_recs"])
    assert cat.stdout.splitlines() == [r[3] for r in expected]
    assert run("verify", "-q", str(directory)).returncode == 0
    # Run again: every file is sealed and intact, which it says, one line each, exit 0.
    again = run("recover", str(directory))
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().count("intact") == 2 and len(again.stdout.splitlines()) == 2


def test_a_file_recovery_cannot_read_is_left_as_it_is_and_the_others_are_recovered(tmp_path):
    directory = tmp_path / "rec"
    directory.mkdir()
    src, recs, frames = recording(tmp_path, 0, 300)
    good = unsealed_copy(src, directory / (name(0) + ".open"))
    bad = directory / (name(1) + ".open")
    header = bytearray(src.read_bytes()[:frames[2].end_offset])
    header[20] ^= 0xFF  # inside the header: its CRC fails, so nothing in the file can be trusted to be ours
    bad.write_bytes(bytes(header))
    out = run("recover", str(directory))
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.count("\n") == 1 and str(bad) in err and "left as it is" in err and "Traceback" not in err
    assert bad.read_bytes() == bytes(header)
    assert not good.exists() and sealed_records(directory / name(0)) == recs


def test_recover_of_an_intact_sealed_file_is_a_no_op_that_says_so(tmp_path):
    sealed, _, _ = recording(tmp_path, 0, 300)
    before = sealed.read_bytes()
    stat = sealed.stat()
    out = run("recover", str(sealed))
    assert out.returncode == 0, out.stderr
    assert "intact" in out.stdout.decode() and "nothing to do" in out.stdout.decode()
    assert sealed.read_bytes() == before and sealed.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in sealed.parent.iterdir()) == [sealed.name]


def test_a_cut_sealed_file_is_resealed_keeping_its_bytes(tmp_path):
    cut, data, expected, frames = cut_sealed(tmp_path, 0)
    # Before recovery: readers read every intact frame, verify reports it, export says it is damaged.
    cat = run("cat", "--format", "raw", str(cut))
    assert cat.returncode == 1 and cat.stdout.splitlines() == [r[3] for r in expected]
    check = run("verify", str(cut))
    assert check.returncode == 1 and b"BAD" in check.stdout
    assert b"ime-segments recover" in check.stdout + check.stderr
    result = recover(cut)
    assert result.damaged and result.sealed == cut
    assert sealed_records(cut) == expected
    assert result.tail is not None and result.tail.read_bytes() == data[frames[-3].end_offset:]
    assert cut.read_bytes()[:frames[-3].end_offset] == data[:frames[-3].end_offset]
    assert open_segment(cut).seal["reason"] == "recovered"


def test_a_sealed_file_with_a_damaged_frame_is_resealed_and_its_old_seal_kept_in_tail(tmp_path):
    sealed, recs, frames = recording(tmp_path, 0, 500)
    victim = frames[4]
    data = bytearray(sealed.read_bytes())
    data[victim.data_offset + 9] ^= 0x5A
    sealed.write_bytes(bytes(data))
    out = run("recover", str(sealed))
    assert out.returncode == 1, out.stderr
    assert b"frame 4" in out.stdout and b"re-sealed" in out.stdout
    assert sealed_records(sealed) == records_of(frames, recs, {4})
    tail = (sealed.parent / (sealed.name + ".tail")).read_bytes()
    end = frames[-1].end_offset
    assert tail == bytes(data[victim.offset:victim.end_offset]) + bytes(data[end:])  # the frame, then the old seal
    assert run("recover", str(sealed)).returncode == 0


def test_export_of_a_cut_sealed_file_says_damaged_and_reads_its_intact_frames(tmp_path):
    pytest.importorskip("pyarrow")
    cut, _, expected, _ = cut_sealed(tmp_path, 0)
    out = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "export", str(cut), "--out",
                          str(tmp_path / "pq")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "still recording" not in out.stdout + out.stderr
    assert "damaged" in out.stdout + out.stderr and "ime-segments recover" in out.stdout + out.stderr
    import pyarrow.dataset as ds

    best_limit = ds.dataset(tmp_path / "pq" / "best_limit", format="parquet", partitioning="hive")
    assert best_limit.count_rows() == len(expected)  # one best-limit row per intact record


def test_replay_reads_every_intact_frame_of_a_cut_sealed_file(tmp_path):
    cut, _, expected, _ = cut_sealed(tmp_path, 0)
    replay = shutil.which("ime-replay", path=str(Path(sys.executable).parent))
    assert replay is not None
    out = subprocess.run([replay, str(cut), "--speed", "max", "--format", "raw", "-q"], capture_output=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [r[3] for r in expected]


# --- the walk: a frame shortened or lengthened costs that frame only -------------------------------------------


def mutate(data: bytes, frame: FrameInfo, rng: random.Random) -> tuple[bytes, str]:
    """Delete, insert or flip a few bytes inside one frame (descriptor or data)."""
    op = rng.choice(("delete", "insert", "flip"))
    count = rng.randint(1, 8)
    # An insertion at the descriptor's first byte would fall between two frames, leaving both intact.
    first = frame.offset + (op == "insert")
    pos = rng.randrange(first, frame.end_offset - (count if op == "delete" else 0))
    if op == "delete":
        return data[:pos] + data[pos + count:], f"delete {count} at {pos}"
    if op == "insert":
        return data[:pos] + rng.randbytes(count) + data[pos:], f"insert {count} at {pos}"
    buf = bytearray(data)
    for i in range(pos, min(pos + count, frame.end_offset)):
        buf[i] ^= rng.randint(1, 255)
    return bytes(buf), f"flip {count} at {pos}"


def test_fuzz_bytes_deleted_inserted_or_flipped_inside_a_frame_cost_that_frame_only(tmp_path):
    sealed, recs, frames = recording(tmp_path, 0, 700, frame_bytes=2500)
    assert len(frames) >= 12
    base = unsealed_copy(sealed, tmp_path / "base.open").read_bytes()
    rng = random.Random(20260521)
    failures = []
    for trial in range(300):
        k = rng.randrange(len(frames))
        damaged, how = mutate(base, frames[k], rng)
        work = tmp_path / f"t{trial}"
        work.mkdir()
        crashed = work / (name(0) + ".open")
        crashed.write_bytes(damaged)
        expected = records_of(frames, recs, {k})
        # Reading finds every other frame, before recovery ...
        read = [(r.ts_ns, r.conn, r.kind, r.payload) for r in open_segment(crashed).iter_records()]
        # ... and recovery keeps them, putting every other byte in .tail.
        result = recover(crashed)
        got = sealed_records(work / name(0)) if result.sealed else []
        tail = result.tail.stat().st_size if result.tail else 0
        if read != expected or got != expected or tail != len(damaged) - len(base) + frames[k].end_offset - \
                frames[k].offset:
            failures.append(f"trial {trial}, frame {k}: {how}: read {len(read)}, kept {len(got)} of "
                            f"{len(expected)} records, tail {tail}")
        shutil.rmtree(work)
    assert not failures, f"{len(failures)} of 300 trials lost intact frames:\n" + "\n".join(failures[:10])


def test_a_frame_cut_short_hides_no_intact_frame_when_it_is_the_last_but_one(tmp_path):
    sealed, recs, frames = recording(tmp_path, 0, 400, frame_bytes=2500)
    base = unsealed_copy(sealed, tmp_path / "base.open").read_bytes()
    victim = frames[-2]
    # Remove more bytes than the last frame is long from the middle of the one before it: its claimed end then
    # lies beyond the end of the file, which must not be taken for a crash's cut-off tail.
    cut = frames[-1].end_offset - frames[-1].offset + 10
    start = victim.data_offset + 5
    assert start + cut < victim.end_offset
    crashed = tmp_path / "w" / (name(0) + ".open")
    crashed.parent.mkdir()
    crashed.write_bytes(base[:start] + base[start + cut:])
    result = recover(crashed)
    assert sealed_records(tmp_path / "w" / name(0)) == records_of(frames, recs, {len(frames) - 2})
    assert result.damaged


@pytest.mark.slow
def test_the_recorder_moves_empty_leftovers_aside_once_without_an_error(recorder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src, _, frames = recording(tmp_path, 0, 50)
    header_only = out / "ime-s00-20261124T000000.000Z.zst.open"
    header_only.write_bytes(src.read_bytes()[:frames[0].offset])
    empty = out / "ime-s00-20261124T010000.000Z.zst.open"
    empty.write_bytes(b"")
    first = recorder("--demo", "--duration", "3", "--out", str(out))
    assert first.wait(60) == 0, first.stderr
    assert "ERROR" not in first.stderr, first.stderr
    assert not header_only.exists() and not empty.exists()
    assert (out / "ime-s00-20261124T010000.000Z.zst.tail").exists()
    assert (out / "ime-s00-20261124T000000.000Z.zst.tail").read_bytes() == src.read_bytes()[:frames[0].offset]
    assert "20261124T010000.000Z" in first.stderr  # reported
    second = recorder("--demo", "--duration", "3", "--out", str(out))
    assert second.wait(60) == 0, second.stderr
    assert "ERROR" not in second.stderr and "20261124T" not in second.stderr, second.stderr
    assert run("verify", "-q", str(out)).returncode == 0
    assert all(not p.name.endswith(".open") for p in discover([out]))
