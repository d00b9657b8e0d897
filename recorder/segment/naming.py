"""Segment file names: they sort by time within a shard and say which shard wrote them."""

from __future__ import annotations

import fcntl
import os
import re
from datetime import UTC, datetime
from pathlib import Path

SEALED_SUFFIX = ".zst"
OPEN_SUFFIX = ".zst.open"
TAIL_SUFFIX = ".zst.tail"
# Where `ime-segments merge` writes before its output is complete (OUT/.ime-merge-staging/): readers do not look
# inside, so an interrupted merge's half-written files are never read as part of OUT.
MERGE_STAGING = ".ime-merge-staging"

DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # OUT/YYYY-MM-DD/ (layout.py)
_NAME = re.compile(r"^(?P<prefix>.+)-s(?P<shard>\d{2,})-(?P<stamp>\d{8}T\d{6}\.\d{3})Z\.zst(?:\.open)?$")


def segment_name(prefix: str, shard: int, start_ns: int) -> str:
    """`ime-s02-20261123T120000.123Z.zst`: millisecond precision keeps quick rotations distinct."""
    stamp = datetime.fromtimestamp(start_ns / 1e9, tz=UTC)
    ms = (start_ns // 1_000_000) % 1000
    return f"{prefix}-s{shard:02d}-{stamp:%Y%m%dT%H%M%S}.{ms:03d}Z{SEALED_SUFFIX}"


def parse_segment_name(name: str) -> tuple[str, int, str] | None:
    """(prefix, shard, stamp) of a segment file name, or None when it is not one of ours."""
    m = _NAME.match(name)
    if m is None:
        return None
    return m["prefix"], int(m["shard"]), m["stamp"]


def is_open(path: Path) -> bool:
    return path.name.endswith(OPEN_SUFFIX)


def sealed_path(open_path: Path) -> Path:
    return open_path.with_name(open_path.name[: -len(".open")])


def open_path_for(sealed: Path) -> Path:
    return sealed.with_name(sealed.name + ".open")


def segment_dirs(directory: Path) -> list[Path]:
    """Where segments of a recording live: OUT itself (the flat layout) and its day directories
    `OUT/YYYY-MM-DD/` (layout.py), so that both layouts are found wherever files are looked up."""
    try:
        days = sorted(p for p in directory.iterdir() if DAY_DIR.match(p.name) and p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory, *days]


def open_segments(directory: Path, shard: int | None = None, prefix: str | None = None) -> list[Path]:
    """`.open` segment files in a directory and its day directories, optionally of one shard and prefix, in
    name (time) order."""
    found = []
    for d in segment_dirs(directory):
        for p in d.glob(f"*{OPEN_SUFFIX}"):
            parsed = parse_segment_name(p.name)
            if parsed is None:
                continue
            if (shard is None or parsed[1] == shard) and (prefix is None or parsed[0] == prefix):
                found.append(p)
    return sorted(found, key=lambda p: p.name)


def shard_lock_path(out_dir: Path, prefix: str, shard: int) -> Path:
    """The lock file a recorder holds (flock) while it writes a shard in `out_dir`."""
    return out_dir / f".{prefix}-s{shard:02d}.lock"


def held_by_recorder(open_file: Path) -> bool:
    """Is this `.open` segment's shard locked by a running recorder (in its directory or the parent of a day
    directory)? Recovering a file that is still being written would lose everything written after it."""
    parsed = parse_segment_name(open_file.name)
    if parsed is None:
        return False
    for directory in (open_file.parent, open_file.parent.parent):
        lock = shard_lock_path(directory, parsed[0], parsed[1])
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock if we took it
    return False
