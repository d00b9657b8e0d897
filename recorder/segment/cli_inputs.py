"""The segments an `ime-segments` command line names, opened with a warning for each file that does not open, and
the damage found reported: for the segment commands (segment/cli.py), `ime-segments export` and `report`. What is
opened, and why a file is skipped, is reader.open_inputs' (which `recorder.open_recording` and `ime-replay` use).
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from recorder.segment.reader import Damage, SegmentFile, open_inputs

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
