"""Where segment files live: `OUT/YYYY-MM-DD/` per trading day, or directly in OUT (the older flat layout).

Both layouts are searched everywhere files are looked up, so a directory recorded before day directories
existed stays readable, recoverable and subject to retention. The day is a calendar date in a time zone the
caller gives (the recorder uses the exchange's, Asia/Tehran), so a trading day never spans two folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from recorder.segment.naming import DAY_DIR, OPEN_SUFFIX, SEALED_SUFFIX, parse_segment_name, segment_dirs


def day_directory(start_ns: int, tz: tzinfo) -> str:
    """`2026-11-24`: the calendar date in `tz` of a segment's start."""
    return datetime.fromtimestamp(start_ns / 1e9, tz).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class DayLayout:
    """Day folders for SegmentWriter: which folder a time belongs in, and when that folder's day ends.

    The writer cuts its frames and files at the end of each day, so that no file holds records of two days.
    """

    tz: tzinfo

    def directory(self, ns: int) -> str:
        return day_directory(ns, self.tz)

    def day_bounds(self, ns: int) -> tuple[int, int]:
        """[first ns, first ns of the next day) of the calendar day in `tz` that holds `ns`."""
        moment = datetime.fromtimestamp(ns // 1_000_000_000, self.tz)
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=1, hours=3)).replace(hour=0)  # +3 h: a day of 23 or 25 hours lands on it
        return int(start.timestamp()) * 1_000_000_000, int(end.timestamp()) * 1_000_000_000


def day_layout(tz: tzinfo) -> DayLayout:
    return DayLayout(tz)


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
