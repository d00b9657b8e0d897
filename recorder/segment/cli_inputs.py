"""The segments an `ime-segments` command line names, opened with a warning for each file that does not open, and
the damage found reported: for the segment commands (cli/segments.py), `ime-segments export` and `report`. What is
opened, and why a file is skipped, is reader.open_inputs' (which `recorder.open_recording` and `ime-replay` use).
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from recorder.progress import Progress
from recorder.segment.reader import Damage, SegmentFile, open_inputs
from recorder.segment.selection import Selection

PROG = "ime-segments"


def open_all(paths: Iterable[str]) -> tuple[list[SegmentFile], int]:
    """Open every segment named (directories expanded); returns (segments, how many were skipped).

    A file that does not open is skipped with a warning (the caller exits 1); only when none opens is
    it a usage error.
    """
    segments, unreadable = open_inputs(paths)
    report_damage(f"skipped {problem}" for problem in unreadable)
    return segments, len(unreadable)


def report_damage(damage: Iterable[Damage | str]) -> int:
    """One warning line each (the damage found, a file skipped); returns how many."""
    count = 0
    for d in damage:
        click.echo(f"{PROG}: warning: {d}", err=True)
        count += 1
    return count


def reading_progress(segments: list[SegmentFile], selection: Selection, label: str, enabled: bool = True) -> Progress:
    """A bar over the records of the frames the window selects, counted as the readers read them (each file counts
    the records it has read): nothing is added to the readers' loops."""
    lo = selection.start_ns if selection.start_ns is not None else -(1 << 63)
    hi = selection.end_ns if selection.end_ns is not None else 1 << 63
    total = sum(f.records for s in segments for f in s.frames if f.records and f.max_ts >= lo and f.min_ts < hi)
    before = sum(s.records_salvaged for s in segments)
    return Progress(total, label, poll=lambda: sum(s.records_salvaged for s in segments) - before, enabled=enabled)
