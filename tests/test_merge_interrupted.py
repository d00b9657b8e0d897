"""`ime-segments merge` interrupted (Ctrl-C, SIGTERM, SIGKILL) at random points, then run again (issue 21): the
interruption is said in one line, and the rerun, with no manual step, writes what an uninterrupted merge writes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind
from recorder.segment.merge_staging import RECORD
from recorder.segment.reader import discover, merge_records, open_segment

pytestmark = pytest.mark.slow

IME_SEGMENTS = Path(sys.executable).parent / "ime-segments"
MS = 1_000_000
T0 = 1_764_000_000 * 1_000_000_000
TEXT, EVENT = int(RecordKind.TEXT), int(RecordKind.EVENT)
MESSAGES = 200_000


def host(n: int, lost: range, lag_ns: int) -> list[tuple[int, int, int, bytes]]:
    out = [(T0 + lag_ns - 1, 1, EVENT, encode_event(Event.OPENED, conn=1, contracts=["1001", "1002"]))]
    out += [(T0 + i * MS // 10 + lag_ns, 1, TEXT, ime_payload(i, ("1001", "1002")[i % 2])) for i in range(n)
            if i not in lost]
    out.append((T0 + n * MS // 10 + lag_ns, 1, EVENT, encode_event(Event.CLOSED, conn=1, code=1000)))
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("merge-inputs")
    # Two hosts of one feed, each missing what the other has in one stretch; rotated, so that each input holds
    # several files and the merge seals several output files.
    write_records(base / "hostA", host(MESSAGES, range(30_000, 40_000), 20_000), rotate_bytes=12 << 20,
                  rotate_seconds=0)
    write_records(base / "hostB", host(MESSAGES, range(70_000, 75_000), 35_000), rotate_bytes=12 << 20,
                  rotate_seconds=0)
    return base / "hostA", base / "hostB"


def start(inputs: tuple[Path, Path], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(IME_SEGMENTS), "merge", *map(str, inputs), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def content(out: Path) -> tuple[list[str], list[tuple[int, int, int, bytes]]]:
    files = discover([out])
    segs = [open_segment(p) for p in files]
    assert all(s.sealed and not s.damage for s in segs)
    return sorted(p.name for p in files), [(r.ts_ns, r.conn, r.kind, r.payload) for r in merge_records(segs)]


def wait_until_writing(proc: subprocess.Popen[str], out: Path) -> None:
    """Until the merge has taken OUT (after Python's start-up and the inputs' discovery), or has ended."""
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[float, float, tuple]:
    """An uninterrupted merge: (its whole run time, the time from taking OUT to the end, its output, its report)."""
    out = tmp_path_factory.mktemp("reference") / "merged"
    began = time.monotonic()
    proc = start(inputs, out)
    wait_until_writing(proc, out)
    writing = time.monotonic()
    stdout, stderr = proc.communicate(timeout=300)
    ended = time.monotonic()
    assert proc.returncode == 0, stderr
    names, records = content(out)
    assert len(names) >= 2 and len(records) > MESSAGES
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, RECORD])  # the merged files and their record
    return ended - began, ended - writing, (names, records), stdout.replace(str(out), "OUT")


def interrupted(inputs: tuple[Path, Path], out: Path, sig: int, delay: float) -> subprocess.CompletedProcess[str]:
    proc = start(inputs, out)
    if sig != signal.SIGKILL:
        # Ctrl-C and SIGTERM at a point of the merge itself (not while Python is still importing its modules,
        # where a signal is Python's to handle).
        wait_until_writing(proc, out)
    time.sleep(delay)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_merge_says_so_and_a_rerun_writes_the_uninterrupted_output(inputs, reference, tmp_path, sig):
    whole, writing, expected, _ = reference
    rng = random.Random(2100 + int(sig))
    for trial in range(4):
        out = tmp_path / f"m{trial}"
        # SIGKILL anywhere in the run; the others anywhere from when the merge took OUT (the first trial at once,
        # so that at least one signal surely lands while the merge is writing).
        delay = rng.uniform(0, whole if sig == signal.SIGKILL else writing) if trial else 0.0
        done = interrupted(inputs, out, sig, delay)
        where = f"trial {trial}, {signal.Signals(sig).name} after {delay:.2f}s"
        assert trial or done.returncode != 0, f"{where}: the merge finished before the signal came"
        if done.returncode == 0:
            # The merge had finished (or was moving its finished files into place, when a signal only waits).
            assert content(out) == expected, where
            continue
        if sig == signal.SIGKILL:
            assert done.returncode == -signal.SIGKILL, where
        else:
            assert done.returncode == 128 + sig, (where, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "interrupted" in lines[0] and "again" in lines[0], (where, done.stderr)
            # Nothing half-written is left where readers look, nor anywhere else.
            assert not discover([out]) and not list(out.rglob("*")), (where, list(out.rglob("*")))
        rerun = start(inputs, out)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, (where, stderr)
        assert content(out) == expected, where
        assert sorted(p.name for p in out.iterdir()) == sorted([*expected[0], RECORD]), where


class Killed(BaseException):
    """Stands for SIGKILL at one exact point: nothing after it runs."""


def test_a_rerun_finishes_moving_the_files_of_a_merge_killed_after_it_finished(inputs, reference, tmp_path,
                                                                                monkeypatch):
    from click.testing import CliRunner

    from recorder.cli.segments import cli
    from recorder.segment import merge_staging

    *_, expected, report = reference
    out = tmp_path / "m"
    real_rename = merge_staging.os.rename

    def rename(source: object, target: object) -> None:
        if Path(str(target)).parent == out and any(out.glob("*.zst")):
            raise Killed  # after the first file was moved into place, before the second
        real_rename(source, target)

    monkeypatch.setattr(merge_staging.os, "rename", rename)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Killed):
            CliRunner().invoke(cli, ["merge", *map(str, inputs), "--out", str(out)])
    finally:
        for sig, handler in handlers.items():  # the merge leaves its own for the rest of its process
            signal.signal(sig, handler)
    monkeypatch.undo()
    assert len(discover([out])) == 1  # what the kill left: one file in place, the others staged, and the marker
    rerun = start(inputs, out)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "interrupted while moving" in stderr and stderr.count("\n") == 1
    assert stdout.replace(str(out), "OUT") == report  # the report of the run that did the merge
    assert content(out) == expected
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected[0], RECORD])
    # Once more, the merge is complete: said and reported again, nothing written; other options are refused.
    again = start(inputs, out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0 and "already holds the complete output of this merge" in stderr
    assert stdout.replace(str(out), "OUT") == report and content(out) == expected
    other = subprocess.run([str(IME_SEGMENTS), "merge", *map(str, inputs), "--out", str(out), "--keep-receipts"],
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "already holds segment files" in other.stderr


def test_a_second_merge_into_the_same_out_is_refused_while_the_first_runs(inputs, tmp_path):
    import fcntl
    import os

    out = tmp_path / "m"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running merge holds it
        proc = start(inputs, out)
        _, stderr = proc.communicate(timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "another ime-segments merge is writing into" in stderr
    assert stderr.count("\n") == 1 and not list(out.iterdir())
