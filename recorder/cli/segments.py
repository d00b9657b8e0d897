"""`ime-segments`: ls, cat, verify, stats, recover, merge, and export and report (their code is in recorder/export
and recorder/report, imported lazily)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import orjson

from recorder.cli_support import OneLineGroup, one_line_errors, time_options
from recorder.errors import EXIT_RUNTIME, RuntimeFailure, UserError
from recorder.feed.message import identifier_of
from recorder.humanize import human_bytes, human_duration
from recorder.model.record import Record, RecordKind
from recorder.progress import Progress
from recorder.segment.cli_inputs import PROG, open_all, reading_progress, report_damage
from recorder.segment.coverage import summarise
from recorder.segment.dedupe import DEFAULT_WINDOW_NS
from recorder.segment.naming import OPEN_SUFFIX, held_by_recorder
from recorder.segment.output import jsonl_line, raw_payload
from recorder.segment.reader import SegmentFile, input_files, merge_records, open_files
from recorder.segment.recover import RecoveryFailure, recover_each
from recorder.segment.selection import Selection
from recorder.segment.stats import RecordingStats, accumulate, stats_document
from recorder.timeparse import TIME_HELP, TimeLocale


def state_of(seg: SegmentFile) -> str:
    if seg.damage:
        if seg.sealed or not seg.path.name.endswith(OPEN_SUFFIX):
            return "damaged"
        # A crash leaves only a cut-off last frame; anything else in an open file is damage.
        return "open,truncated" if all(d.reason.startswith("truncated") for d in seg.damage) else "open,damaged"
    return "sealed" if seg.sealed else "open"


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ime-recorder", prog_name=PROG)
def cli() -> None:
    """Inspect, read, check and repair ime-recorder segment files (*.zst)."""


@cli.command("ls")
@click.argument("paths", nargs=-1, required=True)
@time_options
@one_line_errors(PROG)
def ls_cmd(paths: tuple[str, ...], shown: TimeLocale) -> None:
    """One line per file from its index (no decompression): shard, time range, records, sizes, state."""
    w = shown.width(3)
    opened, skipped = open_all(paths)
    segments = sorted(opened, key=lambda s: (s.shard, s.start_ns, str(s.path)))
    click.echo(f"{'FILE':<44} {'SHARD':>5} {'FROM':<{w}} {'TO':<{w}} {'RECORDS':>10} {'COPIES':>8} "
               f"{'RAW':>10} {'ZST':>10} {'RATIO':>6} STATE")
    for seg in segments:
        lo, hi = seg.min_ts, seg.max_ts
        ratio = seg.raw_bytes / seg.compressed_bytes if seg.compressed_bytes else 0.0
        click.echo(
            f"{seg.path.name:<44} {seg.shard:>5} {shown.format(lo, 3) if lo else '-':<{w}} "
            f"{shown.format(hi, 3) if hi else '-':<{w}} {seg.records:>10} {receipts_of(seg):>8} "
            f"{human_bytes(seg.raw_bytes):>10} "
            f"{human_bytes(seg.size):>10} {ratio:>5.1f}x {state_of(seg)}"
        )
    report_damage(d for s in segments for d in s.damage)
    if skipped:
        sys.exit(EXIT_RUNTIME)


def receipts_of(seg: SegmentFile) -> str:
    """Later copies (receipts) among the records, from the seal (open files do not know it without reading)."""
    value = seg.seal.get("receipts") if seg.sealed else None
    return str(value) if isinstance(value, int) else "-"


def write_records(stream: IO[bytes], rows: Iterator[tuple[Record, str | None]], fmt: str,
                  shown: TimeLocale | None = None) -> tuple[int, int]:
    """Raw: payloads of frames only, newline-terminated (events are not frames); jsonl: everything.
    Returns (records written, copies left out of raw output because their original was not read)."""
    count = unknown = 0
    buf: list[bytes] = []
    for rec, contract in rows:
        if fmt == "raw":
            payload = raw_payload(rec)
            if payload is None:
                unknown += rec.kind == RecordKind.RECEIPT
                continue
            buf.append(payload)
            buf.append(b"\n")
        else:
            buf.append(jsonl_line(rec, contract, shown) if shown is not None else jsonl_line(rec, contract))
        count += 1
        if len(buf) >= 2048:
            stream.write(b"".join(buf))
            buf.clear()
    stream.write(b"".join(buf))
    stream.flush()
    return count, unknown


@cli.command("cat")
@click.argument("paths", nargs=-1, required=True)
@click.option("--contract", "contracts", multiple=True, help="Only this contract id or name (repeatable).")
@click.option("--from", "start", help=f"Start time: {TIME_HELP}")
@click.option("--to", "end", help="End time (exclusive), same forms as --from.")
@time_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "raw"]), default="jsonl", show_default=True,
              help="jsonl: one JSON object per record (its `recv` in --tz, ISO-8601); raw: the payloads exactly as "
                   "received, one per line.")
@click.option("--events/--no-events", default=True, show_default=True,
              help="Include connection events (jsonl only, and only without --contract).")
@click.option("--all-copies", is_flag=True,
              help="With --redundancy recordings: also every later copy of a message (a receipt), not only "
                   "the first arrival; jsonl marks them with copy_of.")
@one_line_errors(PROG)
def cat_cmd(paths: tuple[str, ...], contracts: tuple[str, ...], start: str | None, end: str | None,
            shown: TimeLocale, fmt: str, events: bool, all_copies: bool) -> None:
    """Records of one or many files, merged by receive time across shards; each message once."""
    segments, skipped = open_all(paths)
    selection = Selection.parse(segments, contracts, start, end, shown, events, all_copies)
    # A bar only while the records go elsewhere than the terminal (it would be drawn between them).
    with reading_progress(segments, selection, "reading", enabled=not sys.stdout.isatty()):
        count, unknown = write_records(sys.stdout.buffer, selection.rows(segments, identify=fmt == "jsonl"), fmt,
                                       shown.gregorian)
    if unknown:
        click.echo(f"{PROG}: note: {unknown} later copies left out: their originals are not among the records "
                   "read (another file, or before --from); --format jsonl shows them with copy_of", err=True)
    damaged = report_damage(d for s in segments for d in s.damage)
    if count == 0 and selection.filtered:
        raise RuntimeFailure(selection.nothing_selected(segments, shown))
    if damaged or skipped:
        sys.exit(EXIT_RUNTIME)


@cli.command("verify")
@click.argument("paths", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="Print only problems.")
@one_line_errors(PROG)
def verify_cmd(paths: tuple[str, ...], quiet: bool) -> None:
    """Check every frame and checksum; exit 0 only when every file is intact."""
    files = input_files(paths)
    segments, unreadable = open_files(files)
    for problem in unreadable:  # not a segment at all, or cut inside its header
        click.echo(f"BAD  {problem}")
    bad = len(unreadable)
    with Progress(sum(seg.size for seg in segments), "verifying") as bar:
        for seg, end in zip(segments, itertools.accumulate(seg.size for seg in segments), strict=True):
            bad += verify_one(seg, quiet, bar)
            bar.reach(end)
    if bad:
        click.echo(f"{PROG}: {bad} of {len(files)} files damaged; `ime-segments recover` seals them again keeping "
                   "every intact frame (the rest of their bytes in NAME.zst.tail)", err=True)
        sys.exit(EXIT_RUNTIME)


def verify_one(seg: SegmentFile, quiet: bool, bar: Progress) -> int:
    """Verify one file, print what was found (above the bar); 1 when it is damaged."""
    f = seg.path
    problems = seg.verify(progress=bar.advance)
    for d in problems:
        bar.echo(f"BAD  {d}")
    if not problems and not quiet:
        state = "sealed" if seg.sealed else "open (not sealed; run `ime-segments recover` after a crash)"
        bar.echo(f"OK   {f}: {len(seg.frames)} frames, {seg.records} records, {state}")
    if not problems and (note := recovery_note(seg)):
        bar.echo(f"NOTE {f}: {note}")
    return 1 if problems else 0


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # gone since it was listed: recovering it says so


def recovery_note(seg: SegmentFile) -> str | None:
    """What recovery skipped when it sealed this file: the file is intact, but it is not all that was written."""
    skipped = seg.seal.get("skipped") if seg.seal.get("reason") == "recovered" else None
    if not isinstance(skipped, list) or not skipped:
        return None
    total = sum(s.get("bytes", 0) for s in skipped if isinstance(s, dict))
    tail = seg.seal.get("tail") or seg.path.name + ".tail"
    return (f"recovered after a crash; {len(skipped)} byte range(s), {total} bytes in all, were skipped and kept "
            f"in {tail}: " + "; ".join(f"offset {s.get('offset')}: {s.get('reason')}" for s in skipped
                                    if isinstance(s, dict)))


@cli.command("stats")
@click.argument("paths", nargs=-1, required=True)
@click.option("--from", "start", help=f"Only records from this time: {TIME_HELP}")
@click.option("--to", "end", help="Only records before this time, same forms as --from.")
@time_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (its times epoch ns and UTC).")
@one_line_errors(PROG)
def stats_cmd(paths: tuple[str, ...], start: str | None, end: str | None, shown: TimeLocale,
              as_json: bool) -> None:
    """Per contract: records, first/last time, mean and max rate, largest gap; connection events."""
    segments, skipped = open_all(paths)
    selection = Selection.parse(segments, (), start, end, shown)
    with reading_progress(segments, selection, "reading"):
        stats, groups = accumulate(merge_records(segments, selection.start_ns, selection.end_ns), identifier_of,
                                   before=selection.before(segments))
    damaged = report_damage(d for s in segments for d in s.damage)
    if stats.records == 0 and selection.filtered:
        raise RuntimeFailure(selection.nothing_selected(segments, shown))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(stats_document(stats, groups), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_stats(stats, shown)
        print_coverage(summarise(groups))
    if damaged or skipped:
        sys.exit(EXIT_RUNTIME)


def print_stats(stats: RecordingStats, shown: TimeLocale) -> None:
    first = shown.format(stats.first_ns) if stats.first_ns is not None else "-"
    last = shown.format(stats.last_ns) if stats.last_ns is not None else "-"
    w = shown.width(3)
    click.echo(f"{stats.records} records from {first} to {last}")
    click.echo(f"{'CONTRACT':<28} {'RECORDS':>9} {'FIRST':<{w}} {'LAST':<{w}} {'MEAN/s':>9} {'MAX/s':>7} LARGEST GAP")
    for name, c in sorted(stats.contracts.items()):
        click.echo(f"{name:<28} {c.records:>9} {shown.format(c.first_ns, 3):<{w}} {shown.format(c.last_ns, 3):<{w}} "
                   f"{c.mean_rate:>9.1f} {c.max_per_second:>7} {human_duration(c.largest_gap_ns / 1e9)}")
    if stats.events:
        summary = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items()))
        click.echo(f"connection events: {summary}")
    if stats.other_kinds:
        click.echo("not counted above (not messages, e.g. receipts), by record kind: "
                   + ", ".join(f"{k}×{v}" for k, v in stats.other_kinds.items()))
    if stats.close_codes:
        click.echo("close codes: " + ", ".join(f"{k}×{v}" for k, v in sorted(stats.close_codes.items())))


def print_coverage(connections: dict[str, Any]) -> None:
    """Per connection group: time with no copy connected (the only time data can be missing), copies' shares."""
    groups = connections["groups"]
    if not groups:
        return
    fraction = connections["connected_fraction"]
    click.echo(f"connected {100 * fraction:.3f}% of the time; {connections['uncovered_s']:.3f}s with no copy of "
               "a group connected (the only time a message can be missing)" if fraction is not None else
               "connections: no time span")
    click.echo(f"{'SHARD':>5} {'GROUP':>5} {'CONTRACTS':>9} {'SPAN':>9} {'NO COPY':>9} {'GAPS':>4}  COPIES "
               "(share delivered first; lag when later p50/p99)")
    for g in groups:
        copies = "; ".join(
            f"#{k} {100 * c['share_first']:.1f}%"
            + (f" {c['lag_when_later_us']['p50']:.0f}/{c['lag_when_later_us']['p99']:.0f}µs"
               if c["lag_when_later_us"] else "")
            for k, c in g["copies"].items())
        click.echo(f"{g['shard']:>5} {g['group']:>5} {g['contracts']:>9} {human_duration(g['span_s']):>9} "
                   f"{human_duration(g['uncovered_s']):>9} {g['gaps']:>4}  {copies}")


@cli.command("recover")
@click.argument("paths", nargs=-1, required=True)
@one_line_errors(PROG)
def recover_cmd(paths: tuple[str, ...]) -> None:
    """Seal what a crash or a cut copy left, keeping every intact frame (directories: every segment file).

    \b
    .open files are sealed; a sealed file that does not check out (cut, damaged) is re-sealed; an intact one is
    left alone; a file with no record to keep (empty, header only) is renamed NAME.zst.tail. Bytes not kept in a
    sealed file are always kept in NAME.zst.tail. One line per file; every file is attempted.
    Exit 1 when a file held damage beyond the cut-off last frame a crash leaves, or could not be recovered.
    """
    targets = input_files(paths, nothing="nothing to recover")
    live = [f for f in targets if f.name.endswith(OPEN_SUFFIX) and held_by_recorder(f)]
    if live:
        raise UserError(f"{live[0]} is being written by a running ime-record (its shard is locked); it seals its "
                        "own files when it stops — stop it first, or leave this file alone")
    damaged = failed = 0
    sizes = [file_size(f) for f in targets]
    with Progress(sum(sizes), "recovering") as bar:
        for f, end in zip(targets, itertools.accumulate(sizes), strict=True):
            (result,) = recover_each([f], progress=bar.up_to(end))
            bar.reach(end)
            if isinstance(result, RecoveryFailure):
                bar.echo(f"{PROG}: error: {result}", err=True)
                failed += 1
                continue
            bar.echo(str(result))
            damaged += result.damaged
    if damaged:
        click.echo(f"{PROG}: {damaged} of {len(targets)} files held damaged, cut, repeated or out-of-order frames "
                   "(details above); every intact frame was kept", err=True)
    if damaged or failed:
        sys.exit(EXIT_RUNTIME)


# --- ime-segments merge (redundant capture across hosts/runs; recorder/segment/merge_cli.py) ----------------


@cli.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New or empty directory for the merged segments (never inside an input).")
@click.option("--keep-receipts", is_flag=True,
              help="Keep each later copy as a receipt record (which input and connection, when), and the "
                   "inputs' own receipts. Default: drop them; the merge then holds each message once.")
@click.option("--dedupe-window", type=click.FloatRange(0.01, 600), default=DEFAULT_WINDOW_NS / 1e9, metavar="S",
              show_default=True, help="Seconds within which copies of one message are matched; raise it when the "
              "inputs' clocks differ by more than a fraction of it (recordings from hosts without NTP).")
@click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many uncovered intervals to list.")
@one_line_errors(PROG)
def merge_cmd(inputs: tuple[Path, ...], out: Path, keep_receipts: bool, dedupe_window: float, show: int) -> None:
    """Merge recordings of overlapping contracts (other hosts, other runs) into sealed, verified segments.

    \b
    Each message is written once, from the input where it arrived first (exact dedupe on the payload bytes
    within --dedupe-window; a message an input itself holds twice stays twice). Reports, per input, how many
    messages only it had, and the intervals when no input had a connection open for some contract.
    Example: ime-segments merge hostA/ime-data hostB/ime-data --out merged/
    """
    # Imported here: the merge's dedupe, writers and staging would cost every other command's start ~20 ms.
    from recorder.segment.merge_cli import run_merge

    run_merge(inputs, out, keep_receipts, dedupe_window, show)


# --- end of ime-segments merge -------------------------------------------------------------------------


@cli.command("export")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True, help="Output directory (created); re-running converts only new sealed segments.")
@click.option("--contract", "contracts", multiple=True, help="Only this contract id or name (repeatable).")
@click.option("--from", "start", help=f"Start time: {TIME_HELP}")
@click.option("--to", "end", help="End time (exclusive), same forms as --from.")
@time_options
@click.option("--tables", multiple=True,
              help="Comma-separated tables to write (default all): best_limit, aggregate, allowed_price_range, "
                   "contract_info, events, messages, extras.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@one_line_errors(PROG)
def export_cmd(paths: tuple[str, ...], out: str, contracts: tuple[str, ...], start: str | None, end: str | None,
               shown: TimeLocale, tables: tuple[str, ...], quiet: bool) -> None:
    """Typed Parquet datasets (hive-partitioned by Tehran trading date) for DuckDB, polars, pandas."""
    # Imported here: pyarrow (the `analysis` extra) is neither needed by nor free for the other commands.
    try:
        from recorder.export.cli import run_export
    except ImportError as exc:
        raise UserError(f"export needs pyarrow ({exc.name} is missing): pip install 'ime-recorder[analysis]'") \
            from None
    run_export(paths, out, contracts, start, end, shown, tables, quiet)


@cli.command("report")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True, help="The HTML file to write (replaced if it exists).")
@click.option("--from", "start", help=f"Only records from this time: {TIME_HELP}")
@click.option("--to", "end", help="Only records before this time, same forms as --from.")
@time_options
@one_line_errors(PROG)
def report_cmd(paths: tuple[str, ...], out: str, start: str | None, end: str | None, shown: TimeLocale) -> None:
    """A recording's health as one self-contained HTML page: connections, gaps, rates, lag, events.

    \b
    The figures are `stats`' own (its JSON document is embedded); the page loads nothing from anywhere.
    Example: ime-segments report ime-data/ --tz Asia/Tehran --from 09:00 --to 17:00 --out today.html
    """
    # Imported here: the report draws with matplotlib (the `analysis` extra), which the recorder does not need.
    try:
        from recorder.report.cli import run_report
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("matplotlib", "numpy", "PIL"):
            raise
        raise UserError(f"report needs matplotlib ({exc.name} is missing): pip install 'ime-recorder[analysis]'") \
            from None
    run_report(paths, out, start, end, shown)


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
