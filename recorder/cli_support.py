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


def parse_host_port(spec: str, option: str) -> tuple[str, int]:
    """'8765', ':8765', '127.0.0.1:8765', '[::1]:8765' → (host, port); the host defaults to 127.0.0.1."""
    host, _, port_text = spec.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"bad {option} {spec!r}: give [HOST:]PORT, e.g. 127.0.0.1:8765") from None
    if not 0 <= port <= 65535:
        raise UserError(f"bad {option} {spec!r}: port must be 0-65535")
    return host, port
