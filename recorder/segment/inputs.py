"""The segment files a list of paths names, opened: what every command and `recorder.open_recording` read.

Files are taken as given, directories searched recursively (`reader.discover`), and, where a command takes them,
quoted globs expanded. A path that does not exist, or names no segment file at all, is a usage error (one line).
A file that does not open (cut inside its header, not a segment) is skipped, with one line saying why, and never
hides the others: the callers warn about each and exit 1 (the API warns and lists them). Only when no file opens
is it a usage error.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from recorder.errors import UserError
from recorder.segment.format import SegmentFormatError
from recorder.segment.reader import SegmentFile, discover, open_segment


def input_files(paths: Iterable[str | Path], *, globs: bool = False, nothing: str = "") -> list[Path]:
    """The segment files `paths` name (`globs`: a path with *, ? or [ is a pattern); `nothing` is added to the error
    that says they name none."""
    given = [str(p) for p in paths]
    found: list[str] = []
    for p in given:
        if globs and any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise UserError(f"{p}: no file matches")
            found.extend(matches)
        elif not Path(p).exists():
            raise UserError(f"{p}: no such file or directory")
        else:
            found.append(p)
    files = discover(found)
    if not files:
        then = f"; {nothing}" if nothing else ""
        raise UserError(f"no segment files (*.zst, *.zst.open) in {', '.join(given)}{then}")
    return files


def open_files(files: Iterable[Path]) -> tuple[list[SegmentFile], list[str]]:
    """The segments that open, and one line ("PATH: why") for each file that does not."""
    segments: list[SegmentFile] = []
    unreadable: list[str] = []
    for f in files:
        try:
            segments.append(open_segment(f))
        except SegmentFormatError as exc:
            unreadable.append(f"{f}: {exc}")
    return segments, unreadable


def open_inputs(paths: Iterable[str | Path], *, globs: bool = False) -> tuple[list[SegmentFile], list[str]]:
    """`open_files` of `input_files(paths)`; a usage error, saying why the first one failed, when none opens."""
    segments, unreadable = open_files(input_files(paths, globs=globs))
    if not segments:
        raise UserError(unreadable[0])
    return segments, unreadable
