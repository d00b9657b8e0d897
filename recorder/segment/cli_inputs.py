"""The segments an `ime-segments` command line names: opened (directories expanded), with their damage reported.

Shared by the segment commands (segment/cli.py) and `ime-segments export` (export/cli.py), which segment/cli.py
hands the export to: here, below both, so that neither CLI module imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from recorder.errors import UserError
from recorder.progress import Progress
from recorder.segment.reader import Damage, SegmentFile, discover, open_readable
from recorder.segment.selection import Selection

PROG = "ime-segments"


def open_all(paths: Iterable[str]) -> tuple[list[SegmentFile], int]:
    """Open every segment named (directories expanded); returns (segments, how many were skipped).

    A file that does not open is skipped with a warning (the caller exits 1); only when none opens is
    it a usage error.
    """
    given = list(paths)
    for p in given:
        if not Path(p).exists():
            raise UserError(f"{p}: no such file or directory")
    files = discover(given)
    if not files:
        raise UserError(f"no segment files (*.zst, *.zst.open) in {', '.join(given)}")
    segments, unreadable = open_readable(files)
    if not segments:
        raise UserError(unreadable[0] if unreadable else f"no segment files in {', '.join(given)}")
    for problem in unreadable:
        click.echo(f"{PROG}: warning: skipped {problem}", err=True)
    return segments, len(unreadable)


def report_damage(damage: Iterable[Damage]) -> int:
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
