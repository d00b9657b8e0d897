"""Where segment files live: `OUT/YYYY-MM-DD/` per trading day, or directly in OUT (the older flat layout).

Both layouts are searched everywhere files are looked up, so a directory recorded before day directories
existed stays readable, recoverable and subject to retention. The day is a calendar date in a time zone the
caller gives (the recorder uses the exchange's, Asia/Tehran), so a trading day never spans two folders.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path

from recorder.segment.naming import DAY_DIR, OPEN_SUFFIX, SEALED_SUFFIX, parse_segment_name, segment_dirs


def day_directory(start_ns: int, tz: tzinfo) -> str:
    """`2026-11-24`: the calendar date in `tz` of a segment's start."""
    return datetime.fromtimestamp(start_ns / 1e9, tz).strftime("%Y-%m-%d")


def day_layout(tz: tzinfo) -> Callable[[int], str]:
    """A `subdir` function for SegmentWriter: start time (epoch ns) → relative directory."""
    return lambda start_ns: day_directory(start_ns, tz)


def is_day_directory(name: str) -> bool:
    return DAY_DIR.match(name) is not None


def segment_files(out_dir: Path, prefix: str | None = None) -> list[Path]:
    """Every segment file (sealed or `.open`) in OUT and its day directories, sorted by path."""
    found = []
    for d in segment_dirs(out_dir):
        for p in d.iterdir():
            if not (p.name.endswith(SEALED_SUFFIX) or p.name.endswith(OPEN_SUFFIX)):
                continue
            parsed = parse_segment_name(p.name)
            if parsed is not None and (prefix is None or parsed[0] == prefix) and p.is_file():
                found.append(p)
    return sorted(found)
