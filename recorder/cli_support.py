"""What every console script shares: one-line errors, exit codes, quiet logging setup."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from recorder.errors import EXIT_RUNTIME, UserError

P = ParamSpec("P")
R = TypeVar("R")


def fail(prog: str, message: str, exit_code: int) -> None:
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(exit_code)


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


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    # picows logs every refused handshake at INFO; our own lines say it better.
    logging.getLogger("picows").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
