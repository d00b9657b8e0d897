"""`ime-sim`: run the IME-compatible simulator on loopback until SIGINT/SIGTERM or --duration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import orjson

from recorder.cli_support import OneLineCommand, one_line_errors, setup_logging
from recorder.errors import EXIT_USAGE, RuntimeFailure, UserError
from recorder.segment.files import SegmentWriteError
from recorder.sim.app import DEMO_PASSWORD, DEMO_USERNAME, SimConfig, SimHandle, start_sim
from recorder.sim.faults import FaultConfig

PROG = "ime-sim"


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Write `info` as JSON so that a reader never sees a partial file: temp file, fsync, rename."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def banner(sim: SimHandle) -> str:
    cfg = sim.config
    pace = "as fast as each client reads" if cfg.rate == 0 else f"{cfg.rate:g} msg/s market-wide"
    info = sim.ready_info()
    names = " | ".join(sim.names[:5]) + (" | ..." if len(sim.names) > 5 else "")
    ids = " ".join(sim.ids[:8]) + (" ..." if len(sim.ids) > 8 else "")
    return "\n".join([
        f"{PROG}: synthetic IME market: {len(sim.contracts)} contracts, {pace}, seed {cfg.seed}",
        f"  WebSocket base URL: {sim.base_url}",
        f"  by id:              {info['id_url']}",
        f"  by name:            {info['name_url']}",
        f"  token URL:          {sim.token_url}",
        f"  stats:              {sim.stats_url}",
        f"  demo login:         username={sim.username} password={sim.password}",
        f"  demo token:         {sim.token}",
        f"  ids ({len(sim.ids)}):  {ids}",
        f"  names:              {names}",
        f"  try: curl -d username={sim.username} -d password={sim.password} {sim.token_url}",
    ])


def summary(sim: SimHandle, elapsed: float) -> str:
    stats = sim.stats()
    totals = stats["totals"]
    paced = stats["source"].get("mode") == "paced"
    repeats = stats["source"].get("repeats", 0)
    published = stats["source"].get("events", 0) + repeats if paced else None
    lines = [
        f"{PROG}: stopped after {elapsed:.1f}s: "
        + (f"the market published {published} messages" + (f" ({repeats} of them repeats)" if repeats else "")
           + "; " if published is not None else "")
        + f"{totals['connections']} connection(s), sent {totals['sent']} "
        f"messages ({totals['bytes'] / 1e6:.1f} MB), dropped {totals['dropped']}"
        + (f", refused {sum(stats['refused'].values())}" if stats["refused"] else "")
    ]
    for c in stats["connections"]:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(c["faults"].items()))
        ended = f"closed by {c['closed_by']}" + (f" ({c['close_code']})" if c["close_code"] else "") \
            if c["state"] == "closed" else c["state"]
        lines.append(f"  #{c['id']} {c['kind']} x{len(c['contracts'])} {c['peer']}: sent {c['sent']}, "
                     f"dropped {c['dropped']}, {ended}" + (f"; faults: {faults}" if faults else ""))
    return "\n".join(lines)


async def serve(config: SimConfig, ready_file: Path | None, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = await start_sim(config)
    started = time.monotonic()
    try:
        click.echo(banner(sim))
        sys.stdout.flush()
        if ready_file is not None:
            write_ready_file(ready_file, sim.ready_info())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await sim.close()
        click.echo(summary(sim, time.monotonic() - started), err=True)


def _seconds(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive number of seconds", param=param)
    return value


FAULT_OPTIONS = [
    click.option("--drop-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: drain what was sent, then drop TCP without a CLOSE, after a gap drawn "
                      "uniformly from [0.5 S, 1.5 S] (its own seeded schedule per connection, so redundant "
                      "connections do not drop together)."),
    click.option("--close-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: close with --close-code every S seconds."),
    click.option("--close-code", type=int, default=1011, show_default=True, help="Close code for --close-every."),
    click.option("--stall-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: send nothing for --stall-for seconds, every S seconds."),
    click.option("--stall-for", type=float, default=2.0, show_default=True, metavar="S",
                 help="How long each --stall-every stall lasts, seconds."),
    click.option("--delay-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: a path hiccup (a TCP retransmission, a congested hop) after a gap drawn "
                      "uniformly from [0.5 S, 1.5 S]: its messages are held for --delay-for seconds, then sent "
                      "all at once, in order, with their publish timestamps; none is dropped (unless the held "
                      "messages would overflow the connection's write buffer, counted as dropped)."),
    click.option("--delay-for", type=float, default=0.02, show_default=True, metavar="S",
                 help="How long each --delay-every hiccup holds a connection's messages, seconds (0.02: about "
                      "one retransmission on a path with a 20 ms round trip)."),
    click.option("--malformed-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: a text frame that is not valid JSON, every S seconds."),
    click.option("--binary-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: a binary frame, every S seconds."),
    click.option("--oversized-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: a valid message padded to --oversized-bytes, every S seconds."),
    click.option("--oversized-bytes", type=click.IntRange(min=1), default=2_000_000, show_default=True,
                 help="Size of each --oversized-every message, bytes."),
    click.option("--fragment-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: one message split into --fragment-parts frames, every S seconds."),
    click.option("--fragment-parts", type=click.IntRange(min=2), default=3, show_default=True,
                 help="Frames each --fragment-every message is split into."),
    click.option("--ping-every", type=float, callback=_seconds, metavar="S",
                 help="Per connection: a PING frame every S seconds."),
    click.option("--revoke-after", type=float, callback=_seconds, metavar="S",
                 help="Per connection: revoke its token after S seconds and close 1008 'token revoked'."),
    click.option("--repeat-every", type=float, callback=_seconds, metavar="S",
                 help="Market-wide (needs --rate > 0): every S seconds (+/- 10%, seeded) the market publishes again "
                      "the exact bytes it published --repeat-after seconds earlier (that contract's message, its "
                      "timestamp included), to every subscriber of the contract, and --published-log records it "
                      "as a message of its own: a feed that repeats itself at a dedupe window's edge."),
    click.option("--repeat-after", type=float, callback=_seconds, default=FaultConfig().repeat_after,
                 show_default=True, metavar="D", help="How old the bytes each --repeat-every repeat publishes again "
                 "are, seconds (by default ime-record's default --dedupe-window)."),
]


def fault_options(fn: Any) -> Any:
    for option in reversed(FAULT_OPTIONS):
        fn = option(fn)
    return fn


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="ime-recorder", prog_name=PROG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="WebSocket port (0: any free port).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Token endpoint and /stats port (0: any free port).")
@click.option("--contracts", type=click.IntRange(min=1), default=20, show_default=True,
              help="Number of synthetic contracts (ids 1001.., names incl. Persian text).")
@click.option("--rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="Market-wide messages/s shared by all contracts; a client gets its contracts' share. "
                   "0: each client as fast as it reads.")
@click.option("--burst", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra messages sent at once every --burst-every seconds (with --rate > 0).")
@click.option("--burst-every", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="S", help="Seconds between --burst bursts.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seeds the market and the fault schedule.")
@click.option("--token", default=None, help="A fixed token to accept besides the ones the sim issues.")
@click.option("--token-ttl", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
              help="Lifetime of issued tokens, seconds.")
@click.option("--username", default=DEMO_USERNAME, show_default=True, help="Demo login for the token endpoint.")
@click.option("--password", default=DEMO_PASSWORD, show_default=True,
              help="Demo password for the token endpoint (a test credential, not a secret).")
@click.option("--reject", type=click.Choice(["close", "handshake"]), default="close", show_default=True,
              help="Refuse bad subscriptions by closing 1008 after the upgrade, or by HTTP 403.")
@fault_options
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Once listening, write the addresses, credentials, token and contracts here as JSON.")
@click.option("--duration", type=float, callback=_seconds, metavar="S", help="Stop after S seconds.")
@click.option("--sent-log", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write every message sent, per connection, into segment files here (ground truth for tests).")
@click.option("--published-log", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write every message the market published, once, into segment files here, whether or not "
                   "any connection was open (ground truth of real loss; by-id envelope, connection 0; needs "
                   "--rate > 0).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: picows too).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only.")
@one_line_errors(PROG)
def cli(host: str, port: int, http_port: int, contracts: int, rate: float, burst: int, burst_every: float,
        seed: int, token: str | None, token_ttl: float, username: str, password: str, reject: str,
        ready_file: Path | None, duration: float | None, sent_log: Path | None, published_log: Path | None,
        verbose: int, quiet: bool,
        **faults: Any) -> None:
    """An IME-compatible WebSocket server with a synthetic market and fault injection, for offline use."""
    setup_logging(verbose, quiet)
    try:
        config = SimConfig(host=host, port=port, http_port=http_port, contracts=contracts, rate=rate, burst=burst,
                           burst_every=burst_every, seed=seed, token=token, username=username, password=password,
                           token_ttl=token_ttl, reject=reject,  # type: ignore[arg-type]
                           faults=FaultConfig(**faults), sent_log=sent_log, published_log=published_log)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if ready_file is not None and not ready_file.parent.is_dir():
        raise UserError(f"--ready-file: directory {ready_file.parent} does not exist")
    import uvloop

    try:
        uvloop.run(serve(config, ready_file, duration))
    except SegmentWriteError as exc:  # --sent-log / --published-log in a directory it cannot write
        raise RuntimeFailure(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's own usage errors become one line and exit 2, like every other error."""
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
