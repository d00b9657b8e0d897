"""A child process of the recorder (a worker, the live hub), its side of the supervisor's pipe: what every child does
the same way.

A terminal sends SIGINT (Ctrl-C), SIGQUIT (Ctrl-\\) and SIGHUP (the SSH session dropped) to a whole process
group, and `kill -- -PGID` does the same with any signal. Were children to act on these themselves they would
die with frames still buffered (SIGHUP and SIGQUIT kill by default) or stop in no particular order (the hub
before the workers whose last messages it should relay). So children ignore every such signal, and the
supervisor, which gets it too, tells them over their pipe what to do. It starts them with these signals blocked
(record/children.py): a signal aimed at the group while a child starts stays pending in it until
`ignore_group_signals` discards it.

Messages both ways are frozen dataclasses: the ones every child knows are here (`LogLine` up, `Stop` down); a
worker's are in record/messages.py, the hub's in live/messages.py. A child's exit code is one of `Exit` (anything
else, a signal included, means it crashed); what the supervisor does about each is in record/children.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import uvloop

from recorder.timeparse import LogFormatter

# What a user (or a terminal) can send to the recorder's process group; SIGPIPE is ignored by Python itself.
GROUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Exit(IntEnum):
    OK = 0  # stopped as asked (or the supervisor went away)
    FATAL = 3  # disk full, unwritable directory, shard locked: restarting would not help
    REFUSED = 4  # the server refused every contract of the shard (or the credentials)


@dataclass(frozen=True, slots=True)
class LogLine:
    """A child's log line, formatted: the supervisor prints it above its status table."""

    line: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish what is under way (seal files, relay the last messages) and exit with Exit.OK."""

    reason: str


def ignore_group_signals() -> None:
    """First thing in a child: ignore GROUP_SIGNALS (discarding any that arrived while it started)."""
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)


def set_process_name(name: str) -> None:
    """What top and `ps -o comm` show (Linux, 15 bytes), so that an operator can tell the processes apart."""
    with contextlib.suppress(Exception):  # cosmetic
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


class ChildLink:
    """The child's end of its pipe: messages out from any thread, messages in on the event loop."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()  # log lines and helper threads send too; a Connection is not shareable

    def start(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[Any], None],
              on_gone: Callable[[], None]) -> None:
        """Deliver the supervisor's messages to `on_message`; `on_gone` once the supervisor has gone away."""

        def readable() -> None:
            try:
                while self.pipe.poll():
                    on_message(self.pipe.recv())
            except (EOFError, OSError):
                loop.remove_reader(self.pipe.fileno())
                on_gone()

        loop.add_reader(self.pipe.fileno(), readable)

    def send(self, msg: object) -> bool:
        """False when the supervisor is gone."""
        try:
            with self._lock:
                self.pipe.send(msg)
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        self.pipe.close()


class PipeLogHandler(logging.Handler):
    """Log lines travel to the supervisor, which prints them above its live status table."""

    def __init__(self, link: ChildLink) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.send(LogLine(self.format(record)))
        except Exception:
            self.handleError(record)


def run_child(link: ChildLink, process_name: str, log_label: str, log_level: int,
              main: Callable[[], Coroutine[Any, Any, int]]) -> NoReturn:
    """A child's life: group signals ignored, named, logging to the supervisor, `main` on uvloop, its code the exit's.

    `log_label` begins each log line's message (`s03`, `live`), so the supervisor's output says whose it is.
    """
    ignore_group_signals()
    set_process_name(process_name)
    handler = PipeLogHandler(link)
    # Stamped in --tz's zone, with the zone: the supervisor put its --tz in IME_TZ before starting the children.
    handler.setFormatter(LogFormatter(f"%(asctime)s %(levelname)s {log_label}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    logging.getLogger("picows").setLevel(logging.ERROR)
    # Everything imported so far lives as long as the process: out of the collector's sight, a full collection
    # walks only what the child creates (in a worker it walked ~27k objects, a 10-15 ms stall of the receive
    # thread; traced at 20k msgs/s, one unfrozen full collection held the hub for 6.8 ms).
    gc.freeze()
    code = uvloop.run(main())
    link.close()
    os._exit(code)  # skip interpreter teardown: everything is sealed and flushed already
