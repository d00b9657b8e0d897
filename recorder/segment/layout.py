"""Where segment files live: `OUT/YYYY-MM-DD/` per trading day, or directly in OUT (the older flat layout).

Both layouts are searched everywhere files are looked up, so a directory recorded before day directories
existed stays readable, recoverable and subject to retention. The day is a calendar date in a time zone the
caller gives (the recorder uses the exchange's, Asia/Tehran), so a trading day never spans two folders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path

from recorder.segment.naming import OPEN_SUFFIX, SEALED_SUFFIX, parse_segment_name

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def day_directory(start_ns: int, tz: tzinfo) -> str:
    """`2026-11-24`: the calendar date in `tz` of a segment's start."""
    return datetime.fromtimestamp(start_ns / 1e9, tz).strftime("%Y-%m-%d")


def day_layout(tz: tzinfo) -> Callable[[int], str]:
    """A `subdir` function for SegmentWriter: start time (epoch ns) → relative directory."""
    return lambda start_ns: day_directory(start_ns, tz)


def is_day_directory(name: str) -> bool:
    return _DAY.match(name) is not None


def _candidate_dirs(out_dir: Path) -> list[Path]:
    dirs = [out_dir]
    try:
        dirs.extend(sorted(p for p in out_dir.iterdir() if p.is_dir() and _DAY.match(p.name)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return dirs


def segment_files(out_dir: Path, prefix: str | None = None) -> list[Path]:
    """Every segment file (sealed or `.open`) in OUT and its day directories, sorted by path."""
    found = []
    for d in _candidate_dirs(out_dir):
        for p in d.iterdir():
            if not (p.name.endswith(SEALED_SUFFIX) or p.name.endswith(OPEN_SUFFIX)):
                continue
            parsed = parse_segment_name(p.name)
            if parsed is not None and (prefix is None or parsed[0] == prefix) and p.is_file():
                found.append(p)
    return sorted(found)


def open_segments(out_dir: Path, prefix: str | None = None, shard: int | None = None) -> list[Path]:
    """The `.open` files (of one shard, if given) in both layouts: what a restarted worker must seal."""
    out = []
    for p in segment_files(out_dir, prefix):
        parsed = parse_segment_name(p.name)
        if p.name.endswith(OPEN_SUFFIX) and parsed is not None and (shard is None or parsed[1] == shard):
            out.append(p)
    return out
