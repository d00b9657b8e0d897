"""`ime-segments export`: the thin shell around run.export_segments (options, progress bar, summary)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import click

from recorder.errors import EXIT_RUNTIME, RuntimeFailure, UserError
from recorder.export.run import ExportOptions, ExportSummary, export_segments
from recorder.export.schema import TABLES
from recorder.humanize import human_bytes
from recorder.native import why_python
from recorder.progress import Progress
from recorder.segment.cli_inputs import open_all, report_damage
from recorder.segment.naming import is_open
from recorder.segment.selection import Selection, recording_range
from recorder.timeparse import TimeLocale, parse_window


def parse_tables(values: tuple[str, ...]) -> tuple[str, ...]:
    """`--tables best_limit,aggregate` (repeatable too); `messages` is always written: it is where frames
    that do not parse go, so that nothing recorded is left out of an export."""
    if not values:
        return TABLES
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise UserError(f"unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    return tuple(t for t in TABLES if t in names or t == "messages")


def run_export(paths: tuple[str, ...], out: str, contracts: tuple[str, ...], start: str | None, end: str | None,
               tz: TimeLocale | str | None, tables: tuple[str, ...], quiet: bool) -> None:
    segments, skipped = open_all(paths)
    span = recording_range(segments)
    start_ns, end_ns = parse_window(start, end, tz, span[0] if span is not None else None)
    out_dir = _out_dir(out, paths)
    options = ExportOptions(out_dir, frozenset(contracts), start_ns, end_ns, parse_tables(tables))
    total = sum(s.records for s in segments if s.sealed or not is_open(s.path))
    with Progress(total, "exporting", enabled=not quiet) as bar:
        summary = export_segments(segments, options, bar.advance)
    damaged = report_damage(d for s in segments for d in s.damage) + report_damage(summary.damage)
    if not quiet:
        print_summary(summary)
    selection = Selection(frozenset(contracts), start_ns, end_ns)
    if selection.filtered and summary.exported and not sum(summary.rows.values()):
        # As `ime-segments cat` does: a filter that selects nothing is said, with what the recording holds.
        raise RuntimeFailure(selection.nothing_selected(segments, tz))
    if damaged or skipped:
        sys.exit(EXIT_RUNTIME)


def _out_dir(out: str, paths: tuple[str, ...]) -> Path:
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    resolved = out_dir.resolve()
    for p in paths:
        inp = Path(p).resolve()
        if inp.is_dir() and (resolved == inp or inp in resolved.parents):
            # The next run would read the Parquet directory as part of the recording, and a later
            # retention of the recording would delete the export.
            raise UserError(f"--out {out} is inside the recording {p}; export to a directory of its own")
    return out_dir


_NOT_NOTABLE = frozenset(("parsed", "parsed_fast", "parsed_c", "events"))


def print_summary(s: ExportSummary) -> None:
    rate = s.records / s.seconds if s.seconds > 0 else 0.0
    ratio = s.output_bytes / s.input_bytes if s.input_bytes else 0.0
    click.echo(f"exported {len(s.exported)} segments, {s.records} records in {s.seconds:.1f} s "
               f"({rate:,.0f} records/s): {human_bytes(s.input_bytes)} of segments -> "
               f"{human_bytes(s.output_bytes)} of Parquet ({ratio:.2f}x) in {s.files} files")
    if s.rows:
        click.echo("rows: " + ", ".join(f"{t}={s.rows[t]}" for t in TABLES if s.rows.get(t)))
    for line in _skipped_lines(s):
        click.echo(line)
    click.echo(parser_line(s.native, s.counts))
    notable = [f"{k}={v}" for k, v in sorted(s.counts.items()) if v and k not in _NOT_NOTABLE]
    if notable:
        click.echo("counted: " + ", ".join(notable))
    if s.leftovers_removed:
        click.echo(f"removed {s.leftovers_removed} unfinished part files of an interrupted export")


def _skipped_lines(s: ExportSummary) -> list[str]:
    skipped = [f"{s.already} already exported"] if s.already else []
    if s.open_skipped:
        skipped.append(f"{len(s.open_skipped)} open (still recording; run export again once they are sealed)")
    lines = ["skipped: " + ", ".join(skipped)] if skipped else []
    if s.unsealed:
        lines.append(f"damaged: {len(s.unsealed)} files not sealed properly (cut or damaged: {', '.join(s.unsealed)}); "
                     "their intact frames were exported — run `ime-segments recover` on them, then export again")
    return lines


def parser_line(native: bool, counts: Mapping[str, int]) -> str:
    """Which parser read the frames: the C scanner (and Python for what it refused), or Python, and why."""
    parsed = counts.get("parsed", 0)
    if native:
        return f"parser: C scanner for {counts.get('parsed_c', 0)} of {parsed} parsed frames, Python for the rest"
    return f"parser: Python for all {parsed} parsed frames ({why_python('scan')})"


__all__ = ["run_export"]
