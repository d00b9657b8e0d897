"""The click side of `ime-record`'s operator options: --config, --print-config, secrets, --metrics-port."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from recorder.cli_support import fail
from recorder.errors import UserError
from recorder.record.configfile import SECRET_KEYS, read_config, render_effective

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


def long_names(command: click.Command) -> dict[str, str]:
    """Long option name (`ids-file`) → parameter name (`ids_file`) for every option of the command."""
    names: dict[str, str] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            names[longs[0][2:]] = param.name
    return names


def option_kinds(command: click.Command) -> dict[str, tuple[str, bool]]:
    """Parameter name → (kind, repeatable) for configfile's type check, from each option's click type."""
    kinds: dict[str, tuple[str, bool]] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if param.is_flag:
            kind = "bool"
        elif isinstance(param.type, click.types.IntParamType):
            kind = "int"
        elif isinstance(param.type, click.types.FloatParamType):
            kind = "float"
        elif isinstance(param.type, click.types.BoolParamType):
            kind = "bool"
        else:
            kind = "text"
        kinds[param.name] = (kind, param.multiple)
    return kinds


def load_config_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback of --config: its values become the defaults, so the command line and the
    environment still override them (click: command line > environment > default_map > default)."""
    if value is not None:
        try:
            values = read_config(value, long_names(ctx.command), option_kinds(ctx.command))
        except UserError as exc:
            if ctx.obj is RELOADING:
                raise
            # Raised while click parses, outside the command's one-line error handling.
            fail("ime-record", str(exc), exc.exit_code)
        options = [p for p in ctx.command.params if isinstance(p, click.Option)]
        multiple = {p.name for p in options if p.multiple}
        paths = {p.name for p in options if isinstance(p.type, click.Path)}
        # A repeatable option (--base-url) may be one string in the file, or a list.
        values = {k: [v] if k in multiple and not isinstance(v, list) else v for k, v in values.items()}
        # A relative path in the file is relative to the file, not to wherever the service happens to start.
        values = {k: str(value.parent / v) if k in paths and isinstance(v, str) and not Path(v).is_absolute()
                  else v for k, v in values.items()}
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def effective_settings(ctx: click.Context) -> Iterator[str]:
    names = long_names(ctx.command)
    rows = []
    for long, name in names.items():
        if long in ("print-config", "help", "version", "config"):
            continue
        source = ctx.get_parameter_source(name)
        rows.append((long, ctx.params.get(name), _SOURCES.get(source, "default") if source else "default"))
    yield "# ime-record effective settings (command line > environment > config file > default)"
    yield from render_effective(rows)


def warn_secrets_on_command_line(ctx: click.Context) -> None:
    for key in SECRET_KEYS:
        if ctx.get_parameter_source(key.replace("-", "_")) is ParameterSource.COMMANDLINE:
            env = {"password": "IME_PASSWORD or --password-file", "token": "IME_TOKEN or --token-file"}.get(
                key, "IME_RELAY_TOKEN")
            log.warning("--%s on the command line is readable by every local user (ps, /proc/PID/cmdline); "
                        "use %s instead", key, env)


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
