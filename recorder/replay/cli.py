"""`ime-replay`: play recorded segments back at the original pace (or faster) to stdout or a WebSocket server."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterable
from types import FrameType
from typing import IO

import click

from recorder.cli_support import OneLineCommand, one_line_errors, setup_logging, time_options
from recorder.errors import EXIT_RUNTIME, RuntimeFailure, UserError
from recorder.feed.message import identifier_of
from recorder.humanize import human_duration
from recorder.replay.pacing import Pacer, parse_speed
from recorder.replay.player import ReplayReport, Row, play
from recorder.segment.output import jsonl_line, raw_payload
from recorder.segment.reader import SegmentFile, open_inputs
from recorder.segment.selection import Selection, recorded_contracts
from recorder.segment.stats import RecordingStats
from recorder.timeparse import TIME_HELP, TimeLocale

PROG = "ime-replay"
DEFAULT_SEND_TIMEOUT = 5.0  # --serve: seconds the replay waits for one client before cutting it
def open_segments(paths: Iterable[str]) -> tuple[list[SegmentFile], list[str]]:
    """The segments that files, directories and (quoted) globs name, and a message for each file that does not
    open (reader.open_inputs): one unreadable file must not stop the replay of the others."""
    return open_inputs(paths, globs=True)


def check_contracts(segments: list[SegmentFile], contracts: tuple[str, ...]) -> None:
    known = recorded_contracts(segments)
    if not known:
        return  # files without a subscription list in their header: nothing to check against
    unknown = [c for c in contracts if c not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:8]) + (" …" if len(known) > 8 else "")
        raise UserError(f"contract {unknown[0]!r} is not in the recording (it has: {sample})")


class StreamSink:
    """Writes batches as JSON lines or raw payloads; events are JSON lines only."""

    def __init__(self, stream: IO[bytes], fmt: str, shown: TimeLocale | None = None) -> None:
        self.stream = stream
        self.raw = fmt == "raw"
        self.shown = shown or TimeLocale()
        self._parts: list[bytes] = []
        self._size = 0

    def emit(self, batch: list[Row]) -> None:
        parts = self._parts
        if self.raw:
            for rec, _ in batch:
                payload = raw_payload(rec)
                if payload is not None:
                    parts.append(payload)
                    parts.append(b"\n")
                    self._size += len(payload) + 1
        else:
            shown = self.shown
            for rec, contract in batch:
                line = jsonl_line(rec, contract, shown)
                parts.append(line)
                self._size += len(line)
        if self._size >= 1 << 16:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self.stream.write(b"".join(self._parts))
            self._parts.clear()
            self._size = 0
        self.stream.flush()


def print_listing(segments: list[SegmentFile], selection: Selection, shown: TimeLocale) -> None:
    stats = RecordingStats()
    for rec, _ in selection.rows(segments, identify=False):
        stats.add(rec.ts_ns, rec.kind, rec.payload, identifier_of)
    first = shown.format(stats.first_ns) if stats.first_ns is not None else "-"
    last = shown.format(stats.last_ns) if stats.last_ns is not None else "-"
    w = shown.width(3)
    span = (stats.last_ns - stats.first_ns) / 1e9 if stats.first_ns is not None and stats.last_ns else 0.0
    shards = sorted({s.shard for s in segments})
    click.echo(f"{len(segments)} files, shards {', '.join(map(str, shards))}: {stats.records} records "
               f"from {first} to {last} ({human_duration(span)})")
    click.echo(f"{'CONTRACT':<30} {'RECORDS':>9} {'FIRST':<{w}} {'LAST':<{w}}")
    for name, c in sorted(stats.contracts.items()):
        click.echo(f"{name:<30} {c.records:>9} {shown.format(c.first_ns, 3):<{w}} {shown.format(c.last_ns, 3):<{w}}")
    if stats.events:
        click.echo("connection events: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())))


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="ime-recorder", prog_name=PROG)
@click.argument("paths", nargs=-1)
@click.option("--speed", default="1x", show_default=True, help="1x, 10x, 0.25x … or max (no pacing).")
@click.option("--contract", "contracts", multiple=True, help="Only this contract id or name (repeatable).")
@click.option("--from", "start", help=f"Start at this receive time: {TIME_HELP}")
@click.option("--to", "end", help="Stop before this receive time, same forms as --from.")
@time_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "raw"]), default="jsonl", show_default=True,
              help="stdout format: JSON lines (time, contract, frame) or raw payloads, one per line.")
@click.option("--max-gap", type=click.FloatRange(min=0), help="Shorten idle periods longer than this many seconds.")
@click.option("--list", "listing", is_flag=True, help="Show what would be played (contracts, times, counts).")
@click.option("--serve", metavar="[HOST:]PORT", help="Serve an IME-compatible WebSocket endpoint instead of stdout.")
@click.option("--start", "start_mode", type=click.Choice(["first-client", "now"]), default="first-client",
              show_default=True, help="With --serve: when the replay clock starts.")
@click.option("--token", envvar="IME_REPLAY_TOKEN", help="With --serve: clients must send this Authorization token.")
@click.option("--all-copies", is_flag=True,
              help="With --redundancy recordings: play every copy of a message as it arrived on each connection, "
                   "not only the first arrival.")
@click.option("--send-timeout", type=click.FloatRange(min=0), default=DEFAULT_SEND_TIMEOUT, show_default=True,
              metavar="S", help="With --serve: a client that cannot take more data for S seconds is closed (1013) "
                                "and counted, and the replay goes on for the others; 0: wait for it forever.")
@click.option("--from-nats", "from_nats", metavar="nats://HOST:PORT",
              help="Read the live feed from NATS JetStream instead of files (see --since), then follow it.")
@click.option("--since", help="With --from-nats: start at this time (ISO-8601, epoch, 30m, 1h, or all); "
                              "default: new messages only.")
@click.option("--nats-stream", default="IME", show_default=True, help="With --from-nats: the JetStream stream.")
@click.option("--count", "max_count", type=click.IntRange(min=1),
              help="With --from-nats: stop after this many messages.")
@click.option("-q", "--quiet", is_flag=True, help="No timing report.")
@one_line_errors(PROG)
def main(paths: tuple[str, ...], speed: str, contracts: tuple[str, ...], start: str | None, end: str | None,
         shown: TimeLocale, fmt: str, max_gap: float | None, listing: bool, serve: str | None, start_mode: str,
         token: str | None, all_copies: bool, send_timeout: float, from_nats: str | None, since: str | None,
         nats_stream: str, max_count: int | None, quiet: bool) -> None:
    """Play recorded IME segments back in receive-time order, all shards merged.

    \b
    Examples:
      ime-replay ime-data/ --speed 10x --format raw | my-backtest
      ime-replay 'ime-data/*/*.zst' --contract 1001 --from 09:00 --tz Asia/Tehran --speed max
      ime-replay ime-data/ --serve 127.0.0.1:8765 --speed 1x
      ime-replay --from-nats nats://10.0.0.5:4222 --contract 1001 --since 1h --format raw | my-bot
    """
    if serve is None:
        check_serve_only_options(click.get_current_context())
    setup_logging(0, quiet, shown.gregorian)
    if from_nats is not None:
        if paths or serve or listing:
            raise UserError("--from-nats reads NATS, not files: give no PATHS, --serve or --list with it")
        from recorder.replay.nats_source import follow_nats

        follow_nats(from_nats, nats_stream, contracts, since, fmt, max_count, shown)
        return
    if not paths:
        raise UserError("give segment files or directories to replay (or --from-nats URL)")
    # The server's per-connection INFO lines are for ime-sim operators; here they would drown the report.
    logging.getLogger("recorder.server").setLevel(logging.WARNING)
    factor = parse_speed(speed)
    segments, unreadable = open_segments(paths)
    for problem in unreadable:
        click.echo(f"{PROG}: warning: skipped {problem}", err=True)
    check_contracts(segments, contracts)
    selection = Selection.parse(segments, contracts, start, end, shown, all_copies=all_copies)
    if selection.window_misses(segments):
        raise RuntimeFailure(selection.nothing_selected(segments, shown))
    if listing:
        print_listing(segments, selection, shown)
        damaged = report_damage(segments)
        sys.exit(EXIT_RUNTIME if damaged or unreadable else 0)
    pacer = Pacer(factor, int(max_gap * 1e9) if max_gap is not None else None)
    if serve is not None:
        from recorder.replay.serve import serve_replay

        report = serve_replay(segments, selection, pacer, serve, start_mode, token, send_timeout or None)
    else:
        report = replay_to_stdout(segments, selection, pacer, fmt, shown.gregorian)
    if not quiet or report.signal is not None:
        for line in report.lines():
            click.echo(f"{PROG}: {line}", err=True)
    damaged = report_damage(segments)
    if report.signal is not None:
        sys.exit(128 + report.signal)  # as a shell reports a command a signal stopped: a script sees it
    if damaged or unreadable:
        sys.exit(EXIT_RUNTIME)


SERVE_ONLY = ("start_mode", "token", "send_timeout")


def check_serve_only_options(ctx: click.Context) -> None:
    """--start/--token/--send-timeout mean nothing without --serve: say so rather than silently ignore them.

    Only the command line counts: IME_REPLAY_TOKEN set in the environment for serving must not break stdout use.
    """
    for param in ctx.command.params:
        if param.name in SERVE_ONLY and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            flag = max(param.opts, key=len)
            raise UserError(f"{flag} only applies with --serve [HOST:]PORT; add --serve or drop {flag}")


def replay_to_stdout(segments: list[SegmentFile], selection: Selection, pacer: Pacer, fmt: str,
                     shown: TimeLocale | None = None) -> ReplayReport:
    sink = StreamSink(sys.stdout.buffer, fmt, shown)
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = play(selection.rows(segments, identify=fmt == "jsonl"), pacer, sink.emit, sink.flush,
                      should_stop=lambda: bool(received))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    report.signal = received[0] if received else None
    return report


def report_damage(segments: list[SegmentFile]) -> int:
    count = 0
    for seg in segments:
        for d in seg.damage:
            click.echo(f"{PROG}: warning: {d} (played what verified)", err=True)
            count += 1
    return count
