"""What every console script shares: one-line errors, exit codes, quiet logging setup."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from datetime import UTC
from typing import Any, ParamSpec, TypeVar

import click

from recorder.errors import EXIT_RUNTIME, UserError
from recorder.timeparse import (
    CALENDAR_ENV,
    CALENDAR_HELP,
    CALENDARS,
    GREGORIAN,
    TZ_ENV,
    TZ_HELP,
    LogFormatter,
    TimeLocale,
    parse_tz,
)

P = ParamSpec("P")
R = TypeVar("R")


def fail(prog: str, message: str, exit_code: int) -> None:
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(exit_code)


class OneLineUsageError(click.UsageError):
    """A usage error shown as one line naming the command, like every other error of ours.

    click's own form (usage, a hint and the error on three lines) breaks a service log into fragments.
    """

    def __init__(self, message: str, ctx: click.Context | None, prog: str, root: str) -> None:
        super().__init__(message, ctx)
        self.prog, self.root = prog, root

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.root}: error: {self.format_message()} (see {self.prog} --help)", err=True, file=file)


def _one_line(exc: click.UsageError, info_name: str | None, parent: click.Context | None) -> OneLineUsageError:
    if isinstance(exc, OneLineUsageError):
        return exc
    # Some parser errors carry no context: the names come from where the command was invoked.
    prog = f"{parent.command_path} {info_name}" if parent is not None else str(info_name)
    root = str(parent.find_root().info_name) if parent is not None else str(info_name)
    return OneLineUsageError(exc.format_message(), exc.ctx, prog, root)


class OneLineCommand(click.Command):
    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # Parsing and option callbacks raise their usage errors here, for a command and a group's subcommand.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc, info_name, parent) from None


class OneLineGroup(OneLineCommand, click.Group):
    command_class = OneLineCommand

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc, ctx.info_name, ctx.parent) from None


def one_line_errors(prog: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn UserError (and the OS errors a user can cause) into `prog: error: ...` and an exit code.

    Operators read these in terminals and logs; a traceback hides the one fact they need.
    """

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                fail(prog, str(exc), exc.exit_code)
            except KeyboardInterrupt:
                sys.exit(130)
            except BrokenPipeError:
                # `| head` closed the pipe: not an error for a filter-style command.
                sys.stderr.close()
                sys.exit(0)
            except OSError as exc:
                fail(prog, f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc),
                     EXIT_RUNTIME)
            raise AssertionError("unreachable")

        return inner

    return wrap


def setup_logging(verbose: int = 0, quiet: bool = False, where: TimeLocale | None = None) -> None:
    """Log lines on stderr, stamped in `where`'s zone (UTC by default), with the zone: `…T09:00:00+03:30`."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", where or TimeLocale()))
    logging.basicConfig(level=level, handlers=[handler])
    # picows logs every refused handshake at INFO; our own lines say it better.
    logging.getLogger("picows").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def time_options(fn: Callable[..., R]) -> Callable[..., R]:
    """--tz and --calendar (IME_TZ, IME_CALENDAR), declared here once for every command that shows or reads times
    (ime-record's are in its settings tree); the command is given them as one `shown: TimeLocale`, the display policy
    of recorder/timeparse.py. A bad value is a one-line usage error (exit 2) before the command starts."""

    @functools.wraps(fn)
    def with_locale(*args: Any, tz: str, calendar: str, **kwargs: Any) -> R:
        return fn(*args, shown=TimeLocale.parse(tz, calendar), **kwargs)

    wrapped = click.option("--calendar", envvar=CALENDAR_ENV, default=GREGORIAN, show_default=True,
                           metavar="|".join(CALENDARS), help=CALENDAR_HELP,
                           callback=_checked(lambda v: TimeLocale(UTC, v.strip().lower())))(with_locale)
    return click.option("--tz", envvar=TZ_ENV, default="UTC", show_default=True, metavar="ZONE", help=TZ_HELP,
                        callback=_checked(parse_tz))(wrapped)


def _checked(parse: Callable[[str], object]) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            parse(value)
        except UserError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        return value

    return check
