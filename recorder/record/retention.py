"""Retention: which sealed segments to remove so the recording keeps within --retain-days / --retain-gb.

Pure planning over a listing (`plan_removals`), and a thin shell that lists and removes (`scan`, `remove`).
Only sealed files are candidates, never an `.open` one, never one still `protected` (a hook or export has
not finished with it); the oldest go first, by the start time in their names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from recorder.segment.layout import is_day_directory, segment_files
from recorder.segment.naming import is_open, parse_segment_name


@dataclass(frozen=True, slots=True)
class SegmentFile:
    path: Path
    size: int
    mtime_ns: int  # when it was last written: sealing is the last write
    sort_key: tuple[str, str]  # (start stamp in the name, name): oldest first across shards
    sealed: bool


@dataclass(frozen=True, slots=True)
class Removal:
    file: SegmentFile
    reason: str


def plan_removals(files: Iterable[SegmentFile], now_ns: int, retain_days: float | None = None,
                  retain_bytes: int | None = None, protected: frozenset[Path] | set[Path] = frozenset()
                  ) -> list[Removal]:
    ordered = sorted(files, key=lambda f: f.sort_key)
    total = sum(f.size for f in ordered)
    out: list[Removal] = []
    cutoff = now_ns - int(retain_days * 86400e9) if retain_days is not None else None
    for f in ordered:
        if not f.sealed or f.path in protected:
            continue
        if cutoff is not None and f.mtime_ns <= cutoff:
            out.append(Removal(f, f"older than {retain_days:g} days"))
        elif retain_bytes is not None and total > retain_bytes:
            out.append(Removal(f, f"recording above {retain_bytes / (1 << 30):g} GB"))
        else:
            continue
        total -= f.size
    return out


def scan(out_dir: Path, prefix: str) -> list[SegmentFile]:
    found = []
    for p in segment_files(out_dir, prefix):
        parsed = parse_segment_name(p.name)
        if parsed is None:
            continue
        try:
            st = p.stat()
        except FileNotFoundError:
            continue  # sealed (renamed) or removed between listing and stat
        found.append(SegmentFile(p, st.st_size, st.st_mtime_ns, (parsed[2], p.name), not is_open(p)))
    return found


def remove(path: Path, out_dir: Path) -> None:
    os.unlink(path)
    # An emptied day directory goes too, so years of retention leave no trail of empty folders; never OUT itself.
    parent = path.parent
    if parent != out_dir and is_day_directory(parent.name):
        with contextlib.suppress(OSError):
            parent.rmdir()
