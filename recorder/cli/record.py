"""`ime-record`: record the IME feed into zstd segment files, sharded across worker processes.

Its options are the settings tree's (recorder/model/settings.py): `main` builds the tree from them in one call,
checks here what the tree cannot check by itself (files, ports, the disk, the contracts, the credentials), and
hands the supervisor its sections.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import click

from recorder.cli_support import OneLineCommand, one_line_errors, setup_logging
from recorder.errors import RuntimeFailure, UserError
from recorder.feed.endpoints import EndpointKind, split_contracts
from recorder.live.options import check_live, for_run
from recorder.model.settings import ConnectionSettings, ContractSource, Credentials, Settings
from recorder.record.auth import TokenProvider
from recorder.record.clioptions import (
    ARGV_KEY,
    RELOADING,
    check_port_free,
    effective_settings,
    load_config_file,
    read_password,
    setting_changes,
    setting_options,
    warn_secrets_on_command_line,
)
from recorder.record.contracts import ContractList, parse_inline, read_contract_file
from recorder.record.operations import check_disk_before_start, check_ops
from recorder.record.reload import ReloadError, Reread, SettingChange
from recorder.record.shard import partition
from recorder.record.supervisor import RunSettings, run_supervisor
from recorder.redact import redact_url
from recorder.segment.files import describe_os_error
from recorder.timeparse import TimeLocale

PROG = "ime-record"
log = logging.getLogger("recorder.record")
Chosen = tuple[EndpointKind, ContractList]


def load_contracts(source: ContractSource) -> Chosen | None:
    given = [x for x in (source.ids_file, source.names_file, source.ids, source.names) if x is not None]
    if len(given) > 1:
        raise UserError("give only one of --ids-file, --names-file, --ids, --names")
    if source.ids_file is not None:
        return EndpointKind.ID, read_contract_file(source.ids_file, "id")
    if source.names_file is not None:
        return EndpointKind.NAME, read_contract_file(source.names_file, "name")
    if source.ids is not None:
        return EndpointKind.ID, parse_inline(source.ids, "id")
    if source.names is not None:
        return EndpointKind.NAME, parse_inline(source.names, "name")
    return None


def check_url_length(connection: ConnectionSettings, kind: EndpointKind, contracts: tuple[str, ...]) -> None:
    try:
        split_contracts(connection.base_url, kind, contracts, max_url_length=connection.max_url_length)
    except ValueError as exc:
        raise UserError(f"{exc}; raise --max-url-length") from None


class RecordCommand(OneLineCommand):
    """Keeps the arguments it was started with, so that a reload (SIGHUP) parses them again, the config file
    re-read: the command line and the environment still override the file, as at the start."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        argv = list(args)  # click's parser consumes the list it is given
        ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta[ARGV_KEY] = argv
        return ctx


def make_reread(ctx: click.Context, connection: ConnectionSettings) -> Callable[[], Reread] | None:
    """SIGHUP's work in the CLI's terms: parse the same arguments again (which re-reads --config), re-read the
    contract file, and say which settings changed. Raises ReloadError with one line."""
    argv = ctx.meta.get(ARGV_KEY)
    if argv is None:
        return None
    command, info_name, start = ctx.command, ctx.info_name, dict(ctx.params)
    kind = EndpointKind(connection.kind)

    def reread() -> Reread:
        try:
            params = command.make_context(info_name, list(argv), obj=RELOADING).params
            chosen = load_contracts(ContractSource.build(**params))
            listed = chosen[1] if chosen is not None and chosen[0] is kind else None
            if listed is not None:
                check_url_length(connection, kind, listed.contracts)
        except UserError as exc:
            raise ReloadError(str(exc)) from None
        except click.ClickException as exc:
            raise ReloadError(exc.format_message()) from None
        changes = ([SettingChange("endpoint", kind.value, chosen[0].value, applied=False)]
                   if chosen is not None and listed is None else [])
        changes += setting_changes(start, params, contracts_reread=listed is not None)
        files = [str(params[k]) for k in ("ids_file", "names_file") if params[k] is not None]
        if params["config"] is not None:
            files.append(f"config {params['config']}")
        return Reread(listed.contracts if listed else None, ", ".join(files) or "the command line", tuple(changes),
                      listed.duplicates if listed else (), status_interval_s=float(params["status_interval"]))

    return reread


@click.command(cls=RecordCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@setting_options
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), is_eager=True,
              callback=load_config_file, expose_value=True,
              help="TOML file of options under their long names; the command line overrides it.")
@click.option("--print-config", is_flag=True, help="Print the effective settings (secrets masked) and exit.")
@click.version_option(package_name="ime-recorder", prog_name=PROG)
@one_line_errors(PROG)
def main(config: Path | None, print_config: bool, **options: Any) -> None:
    """Record the IME WebSocket feed, every frame with its receive time, into zstd segment files.

    \b
    Examples:
      ime-record --demo --duration 20
      IME_USERNAME=me IME_PASSWORD=... ime-record --shards 4 --ids-file ids.txt --out /data/ime
      ime-record --config /etc/ime-record/ime-record.toml --print-config
    """
    shown = TimeLocale.parse(options["tz"], options["calendar"])
    setup_logging(options["verbose"], options["quiet"], shown)
    os.environ.update(shown.environ())  # the status table, and the workers' and the hub's log lines, read it
    ctx = click.get_current_context()
    if print_config:
        for line in effective_settings(ctx):
            click.echo(line)
        return
    warn_secrets_on_command_line(ctx)
    code = record(Settings.build(**options), ctx)
    if code:
        raise SystemExit(code)


def record(settings: Settings, ctx: click.Context) -> int:
    """Check what can be checked before anything starts, then run the supervisor (and the demo simulator)."""
    settings, chosen = check_before_start(settings)
    sim = None
    try:  # the demo simulator is a child process: stop it on every way out
        if settings.demo.on:
            from recorder.record.demo import DemoSimulator

            sim = DemoSimulator(contracts=settings.demo.contracts, rate=settings.demo.rate)
            sim.start()
            settings = replace(settings, connection=replace(settings.connection, base_urls=(sim.base_url,)),
                               credentials=Credentials(token_url=sim.token_url, username=sim.username,
                                                       password=sim.password))
            chosen = chosen or (EndpointKind.ID, ContractList(tuple(sim.ids), ()))
            log.info("demo: simulator pid %d at %s with %d contracts", sim.pid, sim.base_url,
                     settings.demo.contracts)
        assert chosen is not None
        run, tokens = run_settings(settings, chosen, ctx)
        return run_supervisor(run, tokens)
    finally:
        if sim is not None:
            sim.stop()


def check_before_start(settings: Settings) -> tuple[Settings, Chosen | None]:
    """Everything the tree cannot check by itself, so that a mistake is one line before anything starts; the
    settings with the password read from --password-file, and the contracts (None: the demo's)."""
    credentials = settings.credentials
    credentials = replace(credentials, password=read_password(credentials.password, credentials.password_file))
    check_ops(settings.ops)
    if settings.run.metrics_port:
        check_port_free(settings.run.metrics_host, settings.run.metrics_port)
    chosen = load_contracts(settings.contracts)
    demo = settings.demo.on
    if chosen is None and not demo:
        raise UserError("no contracts: give --ids-file, --names-file, --ids or --names (or --demo)")
    base_urls = settings.connection.base_urls
    for url in base_urls:
        check_base_url(url)
    if not demo and credentials.username:
        check_token_url(credentials.token_url)
    if len(base_urls) > 1 and settings.connection.redundancy == 1:
        log.warning("%d --base-url given but --redundancy 1: only the first is used (copy k uses URL k mod "
                    "count)", len(base_urls))
    check_writable(settings.storage.out_dir)
    check_disk_before_start(settings.ops, settings.storage.out_dir)
    check_live(settings.live)  # before the demo simulator starts, so a bad option starts nothing
    return replace(settings, credentials=credentials), chosen


def run_settings(settings: Settings, chosen: Chosen, ctx: click.Context) -> tuple[RunSettings, TokenProvider]:
    """The supervisor's settings (the tree's sections, completed with the contracts) and the token's source."""
    kind, contract_list = chosen
    if contract_list.duplicates:
        shown = ", ".join(contract_list.duplicates[:5]) + (" …" if len(contract_list.duplicates) > 5 else "")
        log.warning("%d duplicate contract(s) removed: %s", len(contract_list.duplicates), shown)
    check_url_length(settings.connection, kind, contract_list.contracts)
    c = settings.credentials
    tokens = TokenProvider(token=c.token or "", token_file=c.token_file, username=c.username or "",
                           password=c.password or "", token_url=c.token_url, ca_file=settings.connection.ca_file)
    if c.username and not c.password:
        raise UserError("--username needs --password (or IME_PASSWORD)")
    if not (c.token or c.token_file or c.username):
        raise UserError("no credentials: set IME_TOKEN, or --token-file, or IME_USERNAME and IME_PASSWORD")
    live = for_run(settings.live, kind.value, contract_list.contracts) if settings.live.enabled else None
    connection = replace(settings.connection, kind=kind.value)
    return RunSettings(
        shards=partition(contract_list.contracts, settings.run.shards),
        connection=connection,
        storage=replace(settings.storage, fault_enospc_after_bytes=_fault_hook()),
        run=settings.run,
        log_level=logging.getLogger().level,
        ops=settings.ops,
        live_outputs=live,
        reread=make_reread(ctx, connection),
    ), tokens


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


if __name__ == "__main__":
    main(prog_name=PROG)
