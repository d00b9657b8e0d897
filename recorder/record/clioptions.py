"""The click side of `ime-record`'s settings: the options (from the settings tree), --config, --print-config, a
reload's changes, secrets on the command line, --password-file, --metrics-port."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from recorder.cli_support import fail
from recorder.errors import UserError
from recorder.model.settings import OPTIONS, Opt, Reload
from recorder.record.configfile import read_config, render_effective, shown_value
from recorder.record.reload import SettingChange

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("recorder.record")

# `ctx.obj` of a reload's parse (SIGHUP): errors are raised to the running recorder instead of ending the process.
RELOADING = object()
ARGV_KEY = "recorder.argv"  # ctx.meta key: the arguments the command was started with

_SOURCES = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
    ParameterSource.DEFAULT_MAP: "config file",
    ParameterSource.DEFAULT: "default",
}
_BY_PARAM = {o.param: o for o in OPTIONS}
_KINDS = {o.param: (o.toml, o.repeatable) for o in OPTIONS}  # what configfile checks a value against


def setting_options(fn: F) -> F:
    """One click option per option of the settings tree, in the tree's order."""
    for o in reversed(OPTIONS):
        long = f"--{o.name}/--no-{o.name}" if o.type is bool and o.default else f"--{o.name}"
        kind = ({"count": True} if o.count else {"is_flag": True} if o.type is bool and not o.default
                else {"type": _click_type(o), "show_default": o.default is not None})
        fn = click.option(*([o.short] if o.short else []), long, o.param, help=o.help, default=o.default,
                          envvar=o.env, multiple=o.repeatable, metavar=o.metavar, **kind)(fn)
    return fn


def _click_type(o: Opt) -> click.ParamType | None:
    ranged = o.min is not None or o.max is not None
    if o.type is int:
        return click.IntRange(o.min, o.max, min_open=o.min_open) if ranged else click.INT  # type: ignore[arg-type]
    if o.type is float:
        return click.FloatRange(o.min, o.max, min_open=o.min_open) if ranged else click.FLOAT
    if o.exists:
        return click.Path(exists=True, dir_okay=False)
    return click.Path(path_type=Path) if o.type is Path else None


def load_config_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback of --config: its values become the defaults, so the command line and the
    environment still override them (click: command line > environment > default_map > default)."""
    if value is not None:
        try:
            values = read_config(value, {o.name: o.param for o in OPTIONS}, _KINDS)
        except UserError as exc:
            if ctx.obj is RELOADING:
                raise
            # Raised while click parses, outside the command's one-line error handling.
            fail("ime-record", str(exc), exc.exit_code)
        values = {k: _from_file(_BY_PARAM[k], v, value.parent) for k, v in values.items()}
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _from_file(o: Opt, value: Any, folder: Path) -> Any:
    if o.repeatable and not isinstance(value, list):
        return [value]  # a repeatable option (--base-url) may be one string in the file, or a list
    if (o.type is Path or o.exists) and isinstance(value, str) and not Path(value).is_absolute():
        # A relative path in the file is relative to the file, not to wherever the service happens to start.
        return str(folder / value)
    return value


def effective_settings(ctx: click.Context) -> Iterator[str]:
    yield "# ime-record effective settings (command line > environment > config file > default)"
    yield from render_effective((o.name, ctx.params.get(o.param), _SOURCES.get(ctx.get_parameter_source(o.param),
                                                                               "default")) for o in OPTIONS)


def setting_changes(start: dict[str, Any], now: dict[str, Any], contracts_reread: bool) -> list[SettingChange]:
    """A reload's changed options (by parameter name), each applied now or at the next start as its option says."""
    return [SettingChange(o.name, shown_value(o.name, start.get(o.param)), shown_value(o.name, now.get(o.param)),
                          o.reload is Reload.NOW or (o.reload is Reload.WITH_CONTRACTS and contracts_reread))
            for o in OPTIONS if now.get(o.param) != start.get(o.param)]


def warn_secrets_on_command_line(ctx: click.Context) -> None:
    for o in OPTIONS:
        if o.secret and ctx.get_parameter_source(o.param) is ParameterSource.COMMANDLINE:
            instead = f"{o.env} or --{o.secret_file}" if o.secret_file else o.env
            log.warning("--%s on the command line is readable by every local user (ps, /proc/PID/cmdline); "
                        "use %s instead", o.name, instead)


def read_password(password: str | None, password_file: Path | None) -> str | None:
    if password_file is None:
        return password
    if password:
        raise UserError("give the password once: --password-file, or --password / IME_PASSWORD, not both")
    try:
        text = password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read password file {password_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"password file {password_file} is not UTF-8 text") from None
    first = text.splitlines()[0] if text.strip() else ""
    if not first:
        raise UserError(f"password file {password_file} is empty")
    try:
        if password_file.stat().st_mode & 0o004:
            log.warning("password file %s is readable by every local user; chmod o-r it", password_file)
    except OSError:
        pass
    return first


def check_port_free(host: str, port: int) -> None:
    """A busy --metrics-port is found before any worker connects, not after minutes of recording."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--metrics-host {host}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # The same option asyncio's server sets, so a port in TIME_WAIT is not reported busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"--metrics-port {port} on {host} is already in use; choose another port") from None
            raise UserError(f"--metrics-port {port} on {host}: {exc.strerror}") from None
