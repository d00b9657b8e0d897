"""Where `ime-segments merge` writes until its output is complete, and what a rerun does after an interruption.

The merge writes its segments into `OUT/.ime-merge-staging/` (naming.MERGE_STAGING), where no reader looks
(reader.discover skips it). When every file is sealed and verified, a completion marker holding the list of files,
the run's arguments and its report is written there atomically; then the files are renamed into OUT and the
staging directory is removed. So an interruption at any point leaves a state the next run recognises:

- no staging directory: nothing was left (the merge had not started writing, or had finished).
- a staging directory without the marker: the merge was interrupted while writing. Its files are partial; they are
  removed and the merge starts over (its inputs were never touched, so nothing is lost).
- a staging directory with the marker: the merge had finished and was interrupted while renaming its files into
  OUT. The renames are finished; the output is then exactly what the interrupted run would have left.

Why a staging directory and a marker, not temporary names renamed at the end: a set of files renamed one by one is
never complete at a single instant, so a rerun needs a marker either way to tell "finished, moving" from
"unfinished"; and one directory that readers skip keeps half-written files out of `cat`, `verify` and `recover`
of OUT without teaching them a second kind of temporary name. It lives inside OUT (not beside it) so that a merge
writes nowhere but the directory it was given. A lock (flock on OUT itself, released by the kernel whatever
kills the process) keeps two merges from taking the same OUT, so a rerun never removes a running merge's files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from recorder.segment.naming import MERGE_STAGING
from recorder.segment.writer import fsync_directory

MARKER = "COMPLETE.json"


class MergeOutputError(Exception):
    """OUT cannot be used now (another merge holds it, or a leftover is in the way); the message says why."""


@dataclass(frozen=True, slots=True)
class Leftover:
    """What an interrupted merge had left in OUT, and what was done with it."""

    complete: bool  # True: a finished merge's files were moved into place; False: partial output was removed
    files: int
    record: dict[str, Any] | None  # the completion marker (arguments, report) when complete


def staging_dir(out: Path) -> Path:
    return out / MERGE_STAGING


def lock_output(out: Path) -> int:
    """Create OUT if needed and take its lock; returns the fd that holds it (closing it, or the process ending
    in any way, releases it)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MergeOutputError(f"another ime-segments merge is writing into {out}; wait for it to finish, or give "
                               "another --out") from None
    return fd


def take_over(out: Path) -> Leftover | None:
    """Deal with what an interrupted merge left in OUT (see the module's doc); None when it left nothing."""
    staging = staging_dir(out)
    if not staging.is_dir():
        return None
    record = read_marker(staging)
    if record is None:
        files = sum(1 for p in staging.rglob("*") if p.is_file())
        shutil.rmtree(staging)
        fsync_directory(out)
        return Leftover(False, files, None)
    names = record.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) and "/" not in n for n in names):
        raise MergeOutputError(f"{staging / MARKER} is unreadable; move {staging} away and merge again")
    move_into_place(staging, out, names)
    return Leftover(True, len(names), record)


def finish(out: Path, files: list[str], record: dict[str, Any]) -> None:
    """Mark the staged merge complete, then rename its files into OUT and remove the staging directory."""
    staging = staging_dir(out)
    # The files are on disk already: the writer fsyncs each file it seals, and their directory with it.
    temp = staging / (MARKER + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        data = orjson.dumps({**record, "files": files})
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, staging / MARKER)
    fsync_directory(staging)
    move_into_place(staging, out, files)


def move_into_place(staging: Path, out: Path, files: list[str]) -> None:
    """Rename each file not moved yet into OUT; then remove the staging directory. Safe to repeat."""
    for name in files:
        source, target = staging / name, out / name
        if not source.exists():
            continue  # moved by the run that was interrupted
        if target.exists():
            raise MergeOutputError(f"{target} exists and {source} would replace it; move one of them away and "
                                   "merge again")
        os.rename(source, target)
    fsync_directory(out)
    shutil.rmtree(staging)
    fsync_directory(out)


def discard(out: Path) -> None:
    """Remove an unfinished merge's staging directory (nothing may write into it any more)."""
    shutil.rmtree(staging_dir(out), ignore_errors=True)


def read_marker(staging: Path) -> dict[str, Any] | None:
    try:
        record = orjson.loads((staging / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        return {}  # written atomically, so this is damage, not an interruption: take_over refuses it
    return record if isinstance(record, dict) else {}
