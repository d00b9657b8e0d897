"""`ime-segments report`: open the segments, make the one pass, draw, write the page (atomically)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import click

from recorder.errors import EXIT_RUNTIME, RuntimeFailure, UserError
from recorder.humanize import human_bytes
from recorder.report.collect import collect
from recorder.report.figures import draw_all
from recorder.report.page import render
from recorder.segment.cli_inputs import open_all, reading_progress, report_damage
from recorder.segment.selection import Selection, recording_range
from recorder.timeparse import TimeLocale


def check_out(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the HTML file to write, e.g. {out / 'report.html'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")


def run_report(paths: tuple[str, ...], out: str, start: str | None, end: str | None, zone: TimeLocale) -> None:
    started = time.monotonic()
    out_path = Path(out)
    check_out(out_path)
    segments, skipped = open_all(paths)
    selection = Selection.parse(segments, (), start, end, zone)
    span = recording_range(segments)
    if span is None:
        raise RuntimeFailure(f"no records in {', '.join(paths)}: nothing to report")
    lo = span[0] if selection.start_ns is None else max(span[0], selection.start_ns)
    hi = span[1] + 1 if selection.end_ns is None else min(span[1] + 1, selection.end_ns)
    # At least a second drawn: a recording of one record still has a time axis.
    with reading_progress(segments, selection, "reading"):
        data = collect(segments, lo, max(hi, lo + 1_000_000_000), selection)
    damaged = report_damage(d for s in segments for d in s.damage)
    if data.stats.records == 0 and selection.filtered:
        raise RuntimeFailure(selection.nothing_selected(segments, zone))
    page = render(data, draw_all(data, zone.tz, zone.calendar), zone, zone.zone_name(), paths, len(segments), damaged,
                  skipped, (selection.start_ns, selection.end_ns), time.time_ns())
    size = write_atomically(out_path, page.encode())
    click.echo(f"wrote {out_path} ({human_bytes(size)}) in {time.monotonic() - started:.1f} s: "
               f"{data.stats.records:,} records, {len(data.groups)} connection groups, "
               f"{sum(g.uncovered_ns for g in data.groups) / 1e9:.3f} s with no copy of a group connected")
    if damaged or skipped:
        sys.exit(EXIT_RUNTIME)


def write_atomically(path: Path, content: bytes) -> int:
    """Write beside the target and rename: a reader (a browser refreshing) never sees half a report."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as `open` would have made it (mkstemp makes it private)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeFailure(f"cannot write {path}: {exc.strerror}") from None
    return len(content)


__all__ = ["run_report"]
