"""Where `ime-segments merge` writes until its output is complete, and what a rerun does after an interruption.

The merge writes its segments into `OUT/.ime-merge-staging/` (naming.MERGE_STAGING), where no reader looks
(reader.discover skips it). When every file is sealed and verified, the record of the merge (`OUT/.ime-merge.json`:
its files and their sizes, its arguments and its report) is written atomically; then the files are renamed into
OUT and the staging directory is removed. So an interruption at any point leaves a state a rerun recognises:

- a staging directory and no record: the merge was interrupted while writing. Its files are partial; they are
  removed and the merge starts over (its inputs were never touched, so nothing is lost).
- a staging directory and the record: the merge had finished and was interrupted while renaming its files into
  OUT. The renames are finished.
- the record and no staging directory: the merge is complete (perhaps killed after its last step, before it could
  report): a rerun with the same inputs and options finds every file of the record in place and reports it again.

Why a staging directory and a record, not temporary names renamed at the end: a set of files renamed one by one is
never complete at a single instant, and a process can be killed after its last rename, so a rerun needs a record
either way to tell "complete" from "unfinished"; and one directory that readers skip keeps half-written files out
of `cat`, `verify` and `recover` of OUT without teaching them a second kind of temporary name. Both live inside OUT
(not beside it) so that a merge writes nowhere but the directory it was given. A lock (flock on OUT itself, which
the kernel releases whatever ends the process) keeps two merges from taking the same OUT, so a rerun never
removes a running merge's files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from recorder.segment.files import FdOutput, fsync_directory
from recorder.segment.naming import MERGE_STAGING

RECORD = ".ime-merge.json"


class MergeOutputError(Exception):
    """OUT cannot be used now (another merge holds it, or a leftover is in the way); the message says why."""


@dataclass(frozen=True, slots=True)
class Leftover:
    """What an interrupted merge had left in OUT, and what was done with it."""

    complete: bool  # True: a finished merge's files were moved into place; False: partial output was removed
    files: int


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
    """Deal with what an interrupted merge left in its staging directory (see the module's doc); None when there
    is none."""
    staging = staging_dir(out)
    if not staging.is_dir():
        return None
    record = read_record(out)
    if record is None:
        files = sum(1 for p in staging.rglob("*") if p.is_file())
        shutil.rmtree(staging)
        fsync_directory(out)
        return Leftover(False, files)
    sizes = _sizes(out, record)
    move_into_place(out, list(sizes))
    return Leftover(True, len(sizes))


def complete_record(out: Path) -> dict[str, Any] | None:
    """The record of the merge OUT holds, when every file it lists is in OUT with the size it had; else None."""
    record = read_record(out)
    if record is None:
        return None
    sizes = _sizes(out, record)
    for name, size in sizes.items():
        try:
            if (out / name).stat().st_size != size:
                return None
        except FileNotFoundError:
            return None
    return record


def start(out: Path) -> None:
    """Before a new merge into OUT (which holds no segment file): a record left there describes nothing any more."""
    (out / RECORD).unlink(missing_ok=True)
    (out / (RECORD + ".tmp")).unlink(missing_ok=True)  # a run killed while writing the record left it
    staging_dir(out).mkdir()


def finish(out: Path, files: list[Path], record: dict[str, Any]) -> None:
    """Record the staged merge as complete, then rename its files into OUT and remove the staging directory."""
    # The files are on disk already: the writer fsyncs each file it seals, and its directory with it.
    temp = out / (RECORD + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        FdOutput(fd).write(orjson.dumps({**record, "files": {f.name: f.stat().st_size for f in files}}))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, out / RECORD)
    fsync_directory(out)
    move_into_place(out, [f.name for f in files])


def move_into_place(out: Path, files: list[str]) -> None:
    """Rename each staged file not moved yet into OUT; then remove the staging directory. Safe to repeat."""
    staging = staging_dir(out)
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


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = orjson.loads((out / RECORD).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        record = None  # written atomically, so this is damage, not an interruption
    if not isinstance(record, dict):
        raise MergeOutputError(f"{out / RECORD} is unreadable; move it away and merge again")
    return record


def _sizes(out: Path, record: dict[str, Any]) -> dict[str, int]:
    files = record.get("files")
    if not isinstance(files, dict) or not all(isinstance(n, str) and "/" not in n and isinstance(s, int)
                                              for n, s in files.items()):
        raise MergeOutputError(f"{out / RECORD} is unreadable; move it away and merge again")
    return files
