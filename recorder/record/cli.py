"""`ime-record`: record the IME feed into zstd segment files, sharded across worker processes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import click

from recorder.cli_support import OneLineCommand, calendar_option, one_line_errors, setup_logging
from recorder.errors import RuntimeFailure, UserError
from recorder.feed.endpoints import DEFAULT_BASE_URL, DEFAULT_TOKEN_URL, EndpointKind, split_contracts
from recorder.record.auth import TokenProvider
from recorder.record.clioptions import (  # OPS-WIRING
    ARGV_KEY,
    RELOADING,
    check_port_free,
    effective_settings,
    load_config_file,
    long_names,
    read_password,
    warn_secrets_on_command_line,
)
from recorder.record.config import ConnectionSettings, StorageSettings
from recorder.record.configfile import shown_value
from recorder.record.contracts import ContractList, parse_inline, read_contract_file
from recorder.record.operations import OpsSettings  # OPS-WIRING
from recorder.record.reload import ReloadError, Reread, SettingChange
from recorder.record.sessions import DEFAULT_SESSIONS  # OPS-WIRING
from recorder.record.shard import partition
from recorder.record.supervisor import RunSettings, run_supervisor
from recorder.redact import redact_url
from recorder.segment.files import describe_os_error
from recorder.timeparse import TZ_ENV, TimeLocale

PROG = "ime-record"
log = logging.getLogger("recorder.record")


def load_contracts(ids_file: Path | None, names_file: Path | None, ids: str | None,
                   names: str | None) -> tuple[EndpointKind, ContractList] | None:
    given = [x for x in (ids_file, names_file, ids, names) if x is not None]
    if len(given) > 1:
        raise UserError("give only one of --ids-file, --names-file, --ids, --names")
    if ids_file is not None:
        return EndpointKind.ID, read_contract_file(ids_file, "id")
    if names_file is not None:
        return EndpointKind.NAME, read_contract_file(names_file, "name")
    if ids is not None:
        return EndpointKind.ID, parse_inline(ids, "id")
    if names is not None:
        return EndpointKind.NAME, parse_inline(names, "name")
    return None


class RecordCommand(OneLineCommand):
    """Keeps the arguments it was started with, so that a reload (SIGHUP) parses them again, the config file
    re-read: the command line and the environment still override the file, as at the start."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        argv = list(args)  # click's parser consumes the list it is given
        ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta[ARGV_KEY] = argv
        return ctx


# Options a reload applies at once; the contract list is applied too (by the supervisor, shard by shard).
_CONTRACT_SOURCES = ("ids_file", "names_file", "ids", "names")
_APPLIED_AT_RELOAD = frozenset({"status_interval", *_CONTRACT_SOURCES})
_NOT_SETTINGS = frozenset({"config", "print_config"})


def make_reread(ctx: click.Context, kind: EndpointKind, base_url: str,
                max_url_length: int) -> Callable[[], Reread] | None:
    """SIGHUP's work in the CLI's terms: parse the same arguments again (which re-reads --config), re-read the
    contract file, and say which settings changed. Raises ReloadError with one line."""
    argv = ctx.meta.get(ARGV_KEY)
    if argv is None:
        return None
    command, info_name = ctx.command, ctx.info_name
    start = dict(ctx.params)
    longs = {name: long for long, name in long_names(command).items()}

    def reread() -> Reread:
        try:
            params = command.make_context(info_name, list(argv), obj=RELOADING).params
            chosen = load_contracts(params["ids_file"], params["names_file"], params["ids"], params["names"])
        except UserError as exc:
            raise ReloadError(str(exc)) from None
        except click.ClickException as exc:
            raise ReloadError(exc.format_message()) from None
        changes: list[SettingChange] = []
        contracts: tuple[str, ...] | None = None
        duplicates: tuple[str, ...] = ()
        if chosen is not None and chosen[0] is not kind:
            changes.append(SettingChange("endpoint", kind.value, chosen[0].value, applied=False))
        elif chosen is not None:
            try:
                split_contracts(base_url, kind, chosen[1].contracts, max_url_length=max_url_length)
            except ValueError as exc:
                raise ReloadError(f"{exc}; raise --max-url-length") from None
            contracts, duplicates = chosen[1].contracts, chosen[1].duplicates
        for name, value in params.items():
            if name not in _NOT_SETTINGS and value != start.get(name):
                long = longs.get(name, name)
                applied = name in _APPLIED_AT_RELOAD and (contracts is not None or name not in _CONTRACT_SOURCES)
                changes.append(SettingChange(long, shown_value(long, start.get(name)), shown_value(long, value),
                                             applied))
        files = [str(params[k]) for k in ("ids_file", "names_file") if params[k] is not None]
        if params["config"] is not None:
            files.append(f"config {params['config']}")
        return Reread(contracts, ", ".join(files) or "the command line", tuple(changes),
                      duplicates, status_interval_s=float(params["status_interval"]))

    return reread


@click.command(cls=RecordCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--ids-file", type=click.Path(path_type=Path), help="File with one contract id per line.")
@click.option("--names-file", type=click.Path(path_type=Path), help="File with one contract name per line.")
@click.option("--ids", help="Comma-separated contract ids.")
@click.option("--names", help="Comma-separated contract names.")
@click.option("--shards", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes; contracts are spread over them by rendezvous hashing.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("ime-data"), show_default=True,
              help="Directory for segment files.")
@click.option("--base-url", "base_urls", multiple=True, default=(DEFAULT_BASE_URL,), show_default=True,
              help="WebSocket base URL; /contract/id or /contract/name is appended. Repeat it for a provider "
                   "with several entry points: redundant copy k uses URL k mod count.")
@click.option("--redundancy", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Independent connections per contract group; the first copy of each message to arrive is "
                   "recorded, later copies become small receipts. 2 survives any single connection drop.")
@click.option("--dedupe-window", type=click.FloatRange(min=0.01, max=600), default=2.0, show_default=True,
              help="With --redundancy: seconds within which copies of one message are matched.")
@click.option("--token", envvar="IME_TOKEN", help="JWT (prefer the IME_TOKEN variable: arguments show in `ps`).")
@click.option("--token-file", type=click.Path(path_type=Path), help="File holding the JWT; re-read when refused.")
@click.option("--username", envvar="IME_USERNAME", help="Account for the token endpoint (or IME_USERNAME).")
@click.option("--password", envvar="IME_PASSWORD", help="Password (prefer the IME_PASSWORD variable).")
# OPS-WIRING begin: --password-file
@click.option("--password-file", type=click.Path(path_type=Path),
              help="File holding the password (its first line); not visible in `ps` like --password is.")
# OPS-WIRING end
@click.option("--token-url", default=DEFAULT_TOKEN_URL, show_default=True, help="Token endpoint.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop cleanly after this many seconds (default: until SIGINT/SIGTERM).")
@click.option("--demo", is_flag=True, help="Start the built-in IME simulator on 127.0.0.1 and record from it.")
@click.option("--demo-contracts", type=click.IntRange(1, 10_000), default=24, show_default=True,
              help="With --demo: contracts the simulator lists.")
@click.option("--demo-rate", type=click.FloatRange(min=0), default=2000, show_default=True,
              help="With --demo: total messages/s the simulator sends.")
@click.option("--max-contracts-per-connection", type=click.IntRange(min=1),
              help="Split a shard's contracts over several connections of at most this many.")
@click.option("--max-url-length", type=click.IntRange(min=256), default=4096, show_default=True,
              help="Split contracts over several connections so that no URL is longer.")
@click.option("--max-message-bytes", type=click.IntRange(min=1024), default=16 << 20, show_default=True,
              help="Larger messages are recorded as an 'oversized' event instead.")
@click.option("--flush-ms", type=click.FloatRange(min=1), default=200, show_default=True,
              help="Cut a frame when its oldest record is this old (the most a crash can lose).")
@click.option("--frame-kib", type=click.IntRange(min=4), default=1024, show_default=True,
              help="Cut a frame at this much raw data.")
@click.option("--rotate-mb", type=click.FloatRange(min=0.01), default=1024, show_default=True,
              help="Seal and start a new file at this compressed size.")
@click.option("--rotate-minutes", type=click.FloatRange(min=0), default=60, show_default=True,
              help="Seal and start a new file on wall-clock multiples of this period (0: off).")
@click.option("--level", type=click.IntRange(-7, 22), default=3, show_default=True, help="zstd level.")
@click.option("--ping-interval", type=click.FloatRange(min=0), default=15, show_default=True,
              help="Ping when nothing arrived for this many seconds; no pong in time drops the connection.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Reconnect after this many seconds without a message (0: off; IME is quiet off-hours).")
@click.option("--receive-slice-us", type=click.IntRange(min=0, max=100_000), default=100, show_default=True,
              help="CPU time slice (µs) the receive thread asks Linux ≥ 6.12 for, so it preempts compression "
                   "on wake-up; 0: the kernel's default.")
@click.option("--writer-nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="Added to the compression thread's nice value, so that local bots waking on a busy core run "
                   "before it; the recording then yields to them (a starved writer pauses reading).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--status-interval", type=click.FloatRange(min=1), default=30, show_default=True,
              help="Seconds between status log lines when stderr is not a terminal.")
@click.option("--tz", envvar=TZ_ENV, default="UTC", show_default=True,
              help=f"Time zone of the times shown (log lines, the status table): an IANA name (Asia/Tehran), UTC, or "
                   f"an offset (+03:30). Also ${TZ_ENV}.")
@calendar_option()
# LIVE-WIRING begin: live outputs (recorder/live/options.py)
@click.option("--relay", metavar="[HOST:]PORT",
              help="Serve the live feed to local IME clients (both endpoints, real paths); host 127.0.0.1 by default.")
@click.option("--relay-token", envvar="IME_RELAY_TOKEN",
              help="Relay clients must send this Authorization token (prefer the IME_RELAY_TOKEN variable).")
@click.option("--relay-client-kib", type=click.IntRange(min=16), default=4096, show_default=True,
              help="A relay client with more than this much unread is cut (close code 1013); the relay never waits.")
@click.option("--publish", metavar="nats://HOST:PORT", envvar="IME_NATS_URL",
              help="Publish every message to NATS JetStream (needs the 'nats' extra); comma-separate several "
                   "servers; a URL with user:password belongs in IME_NATS_URL (arguments show in `ps`).")
@click.option("--nats-stream", default="IME", show_default=True, help="JetStream stream (created if missing).")
@click.option("--nats-max-age", default="24h", show_default=True,
              help="Stream retention when the recorder creates it: 3600, 30m, 24h, 7d.")
@click.option("--nats-duplicate-window", default="2m", show_default=True,
              help="Stream duplicate window when the recorder creates it (Nats-Msg-Id deduplication).")
@click.option("--nats-replicas", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Stream replicas when the recorder creates it (3 on a 3-node cluster).")
@click.option("--nats-backlog", type=click.IntRange(min=1000), default=1_000_000, show_default=True,
              help="Messages kept for NATS while it is down or slow; older ones are dropped and counted.")
# LIVE-WIRING end
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle for wss:// and https://.")
# OPS-WIRING begin: unattended operation (recorder/record/operations.py)
@click.option("--retain-days", type=click.FloatRange(min=0, min_open=True),
              help="Remove sealed segments that were finished this many days ago or earlier.")
@click.option("--retain-gb", type=click.FloatRange(min=0, min_open=True),
              help="Remove the oldest sealed segments while the recording takes more than this many GB.")
@click.option("--warn-free-gb", type=click.FloatRange(min=0), help="Log a warning while the data disk has less free.")
@click.option("--min-free-gb", type=click.FloatRange(min=0),
              help="Seal every segment and stop (exit 1) when the data disk has less free than this.")
@click.option("--on-sealed", help="Command run for each sealed segment, its path appended as the last argument.")
@click.option("--on-sealed-jobs", type=click.IntRange(1, 64), default=2, show_default=True,
              help="At most this many --on-sealed commands at once.")
@click.option("--stall-alert", type=click.FloatRange(min=0, min_open=True),
              help="ERROR line, event and metric when no message arrives for this many seconds in a session.")
@click.option("--sessions", default=DEFAULT_SESSIONS, show_default=True,
              help="Trading sessions in Asia/Tehran time for --stall-alert and the ime_recorder_trading_session "
                   "metric, e.g. 'sat-wed 09:00-17:00'.")
@click.option("--notify/--no-notify", default=True, show_default=True,
              help="Tell systemd (NOTIFY_SOCKET) when recording is ready and that the supervisor is alive.")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), is_eager=True,
              callback=load_config_file, expose_value=True,
              help="TOML file of options under their long names; the command line overrides it.")
@click.option("--print-config", is_flag=True, help="Print the effective settings (secrets masked) and exit.")
# OPS-WIRING end
@click.option("-v", "--verbose", count=True, help="More log lines (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="ime-recorder", prog_name=PROG)
@one_line_errors(PROG)
def main(ids_file: Path | None, names_file: Path | None, ids: str | None, names: str | None, shards: int,
         out_dir: Path, base_urls: tuple[str, ...], redundancy: int, dedupe_window: float, token: str | None,
         token_file: Path | None, username: str | None,
         password: str | None, token_url: str, duration: float | None, demo: bool, demo_contracts: int,
         demo_rate: float, max_contracts_per_connection: int | None, max_url_length: int, max_message_bytes: int,
         flush_ms: float, frame_kib: int, rotate_mb: float, rotate_minutes: float, level: int,
         ping_interval: float, idle_timeout: float, receive_slice_us: int,
         writer_nice: int, metrics_port: int | None,
         metrics_host: str, status_interval: float, tz: str, calendar: str, relay: str | None, relay_token: str | None,
         relay_client_kib: int, publish: str | None, nats_stream: str, nats_max_age: str,
         nats_duplicate_window: str, nats_replicas: int, nats_backlog: int,  # LIVE-WIRING: relay..nats_backlog
         ca_file: str | None, verbose: int, quiet: bool,
         password_file: Path | None, retain_days: float | None, retain_gb: float | None,  # OPS-WIRING
         warn_free_gb: float | None, min_free_gb: float | None, on_sealed: str | None, on_sealed_jobs: int,
         stall_alert: float | None, sessions: str, notify: bool, config: Path | None, print_config: bool) -> None:
    """Record the IME WebSocket feed, every frame with its receive time, into zstd segment files.

    \b
    Examples:
      ime-record --demo --duration 20
      IME_USERNAME=me IME_PASSWORD=... ime-record --shards 4 --ids-file ids.txt --out /data/ime
      ime-record --config /etc/ime-record/ime-record.toml --print-config
    """
    shown = TimeLocale.parse(tz, calendar)
    setup_logging(verbose, quiet, shown)
    os.environ.update(shown.environ())  # the status table, and the workers' and the hub's log lines, read it
    # OPS-WIRING begin: --print-config, secrets on the command line, --password-file, ops settings
    ctx = click.get_current_context()
    if print_config:
        for line in effective_settings(ctx):
            click.echo(line)
        return
    warn_secrets_on_command_line(ctx)
    password = read_password(password, password_file)
    ops = OpsSettings.build(retain_days=retain_days, retain_gb=retain_gb, warn_free_gb=warn_free_gb,
                            min_free_gb=min_free_gb, on_sealed=on_sealed, on_sealed_jobs=on_sealed_jobs,
                            stall_alert_s=stall_alert, sessions=sessions, notify=notify)
    if metrics_port:
        check_port_free(metrics_host, metrics_port)
    # OPS-WIRING end
    chosen = load_contracts(ids_file, names_file, ids, names)
    if chosen is None and not demo:
        raise UserError("no contracts: give --ids-file, --names-file, --ids or --names (or --demo)")
    for url in base_urls:
        check_base_url(url)
    if not demo and username:
        check_token_url(token_url)
    if len(base_urls) > 1 and redundancy == 1:
        log.warning("%d --base-url given but --redundancy 1: only the first is used (copy k uses URL k mod "
                    "count)", len(base_urls))
    base_url = base_urls[0]

    check_writable(out_dir)
    ops.check_disk_before_start(out_dir)  # OPS-WIRING
    # LIVE-WIRING: checked before the demo simulator starts, so a bad option starts nothing.
    from recorder.live.options import parse_live_options

    live = parse_live_options(relay, relay_token, relay_client_kib, publish, nats_stream, nats_max_age,
                              nats_duplicate_window, nats_replicas, nats_backlog)
    sim = None
    try:  # the demo simulator is a child process: stop it on every way out
        if demo:
            from recorder.record.demo import DemoSimulator

            sim = DemoSimulator(contracts=demo_contracts, rate=demo_rate)
            sim.start()
            base_url, token_url = sim.base_url, sim.token_url
            username, password, token, token_file = sim.username, sim.password, None, None
            if chosen is None:
                chosen = EndpointKind.ID, ContractList(tuple(sim.ids), ())
            log.info("demo: simulator pid %d at %s with %d contracts", sim.pid, base_url, demo_contracts)
        assert chosen is not None
        kind, contract_list = chosen
        if contract_list.duplicates:
            shown = ", ".join(contract_list.duplicates[:5]) + (" …" if len(contract_list.duplicates) > 5 else "")
            log.warning("%d duplicate contract(s) removed: %s", len(contract_list.duplicates), shown)

        try:
            split_contracts(base_url, kind, contract_list.contracts, max_url_length=max_url_length)
        except ValueError as exc:
            raise UserError(f"{exc}; raise --max-url-length") from None

        tokens = TokenProvider(token=token or "", token_file=token_file, username=username or "",
                               password=password or "", token_url=token_url, ca_file=ca_file)
        if username and not password:
            raise UserError("--username needs --password (or IME_PASSWORD)")
        if not (token or token_file or username):
            raise UserError("no credentials: set IME_TOKEN, or --token-file, or IME_USERNAME and IME_PASSWORD")

        live_outputs = live.settings(kind.value, contract_list.contracts) if live else None  # LIVE-WIRING
        settings = RunSettings(
            shards=partition(contract_list.contracts, shards),
            connection=ConnectionSettings(
                base_url=base_url,
                extra_base_urls=tuple(base_urls[1:]) if not demo else (),
                redundancy=redundancy,
                dedupe_window_s=dedupe_window,
                kind=kind.value,
                max_contracts_per_connection=max_contracts_per_connection,
                max_url_length=max_url_length,
                max_message_bytes=max_message_bytes,
                ping_interval_s=ping_interval,
                idle_timeout_s=idle_timeout,
                ca_file=ca_file,
                receive_slice_us=receive_slice_us,
                writer_nice=writer_nice,
            ),
            storage=StorageSettings(
                out_dir=out_dir,
                level=level,
                frame_bytes=frame_kib * 1024,
                flush_ms=flush_ms,
                rotate_bytes=int(rotate_mb * 1024 * 1024),
                rotate_seconds=rotate_minutes * 60,
                fault_enospc_after_bytes=_fault_hook(),
            ),
            duration_s=duration,
            status_interval_s=status_interval,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            log_level=logging.getLogger().level,
            ops=ops,  # OPS-WIRING
            live_outputs=live_outputs,  # LIVE-WIRING
            reread=make_reread(ctx, kind, base_url, max_url_length),
        )
        code = run_supervisor(settings, tokens)
    finally:
        if sim is not None:
            sim.stop()
    if code:
        raise SystemExit(code)


def check_base_url(url: str) -> None:
    parts = _check_url("--base-url", url, ("ws", "wss"), "ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH")
    if parts.query or parts.fragment:
        raise UserError("--base-url must not hold a query or fragment: the recorder adds the contracts' query "
                        "itself; give the path only (…/data-engine/ime/live/data/websocket)")


def check_token_url(url: str) -> None:
    _check_url("--token-url", url, ("http", "https"), "https://HOST[:PORT]/PATH")


def _check_url(option: str, url: str, schemes: tuple[str, ...], form: str) -> SplitResult:
    """A URL the recorder can connect to, or one line saying why not (never a traceback)."""
    shown = redact_url(url if len(url) <= 60 else url[:57] + "...")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number or out of range
    except ValueError as exc:
        raise UserError(f"{option} {shown!r} is not a valid URL ({exc}): give {form}") from None
    if parts.scheme not in schemes or not parts.hostname:
        kind = "WebSocket" if "ws" in schemes else "HTTP"
        raise UserError(f"{option} {shown!r} is not a {kind} URL: give {form}")
    if port == 0:
        raise UserError(f"{option} {shown!r} has port 0: give the server's port")
    if parts.username or parts.password:
        raise UserError(f"{option} must not hold credentials: use IME_TOKEN, --token-file or IME_USERNAME")
    return parts


def _fault_hook() -> int | None:
    """IME_RECORDER_FAULT_ENOSPC_AFTER=N makes writers fail with ENOSPC after N bytes (for tests)."""
    value = os.environ.get("IME_RECORDER_FAULT_ENOSPC_AFTER")
    return int(value) if value else None


def check_writable(out_dir: Path) -> None:
    """Refuse an unusable --out before any worker starts (and before connecting to the feed)."""
    probe = out_dir / f".ime-record-probe-{os.getpid()}"
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RuntimeFailure(describe_os_error(exc, out_dir)) from None
    finally:
        # A run refused later (credentials, usage) must not leave empty directories behind; the workers
        # create the directory again when they start.
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()
