"""The recorder's child processes (workers, the live hub) and signals: the supervisor decides, children obey it.

A terminal sends SIGINT (Ctrl-C), SIGQUIT (Ctrl-\\) and SIGHUP (the SSH session dropped) to a whole process
group, and `kill -- -PGID` does the same with any signal. Were children to act on these themselves they would
die with frames still buffered (SIGHUP and SIGQUIT kill by default) or stop in no particular order (the hub
before the workers whose last messages it should relay). So children ignore every such signal, and the
supervisor, which gets it too, tells them over their pipe what to do.

A child cannot ignore a signal before its first Python line runs, so the supervisor starts children with these
signals *blocked*: the mask is inherited across fork and exec, so a signal aimed at the group while a child
starts stays pending in it until `ignore_group_signals` discards it. The supervisor's own copy is delivered
when it unblocks.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Iterator
from multiprocessing.context import BaseContext

# What a user (or a terminal) can send to the recorder's process group; SIGPIPE is ignored by Python itself.
GROUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# Imported once by the fork server, so that a worker (forked from it) starts in milliseconds instead of
# importing everything anew: with `spawn`, 18 workers starting at once on 2 cores took 4-10 s to import,
# and a shard that has not started is a shard recording nothing. The CLI module is listed because a worker
# started from the `ime-record` console script runs that script again (as __mp_main__), which imports it.
WORKER_PRELOAD = ["recorder.record.worker", "recorder.record.cli"]


@contextlib.contextmanager
def child_start() -> Iterator[None]:
    """Around starting a child (and the fork server, started by the first child): GROUP_SIGNALS blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_group_signals() -> None:
    """First thing in a child: ignore GROUP_SIGNALS (discarding any that arrived while it started)."""
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)


def worker_context() -> BaseContext:
    """Workers are forked from a fork server that has imported the worker's modules once.

    Forking the supervisor itself would copy its event loop, threads and sockets into every worker; the fork
    server is a clean process started (with `spawn`) the first time a worker starts.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def prestart(ctx: BaseContext) -> None:
    """Start the fork server now, so that its imports run while the supervisor fetches the token."""
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with child_start():
            forkserver.ensure_running()


def set_process_name(name: str) -> None:
    """What top and `ps -o comm` show (Linux, 15 bytes), so that an operator can tell the processes apart."""
    with contextlib.suppress(Exception):  # cosmetic
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
