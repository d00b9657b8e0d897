"""The segments an `ime-segments` command line names: opened (directories expanded), with their damage reported.

Shared by the segment commands (segment/cli.py) and `ime-segments export` (export/cli.py), which segment/cli.py
hands the export to: here, below both, so that neither CLI module imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from recorder.errors import UserError
from recorder.segment.reader import Damage, SegmentFile, discover, open_readable

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
