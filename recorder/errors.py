"""Errors that reach the operator as one clear line, never a traceback."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A problem the operator can fix; printed as one line, then the process exits with `exit_code`."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RuntimeFailure(UserError):
    """Something failed while running (disk full, credentials refused): exit 1."""

    exit_code = EXIT_RUNTIME


def exception_text(exc: BaseException) -> str:
    """`Type: message` (or just the type when the message is empty), for one-line reports of a library's error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
