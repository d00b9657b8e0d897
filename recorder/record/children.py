"""The supervisor's side of its child processes, workers and the live hub alike: how they start, what they say, when
and how fast one that exits is restarted, and how they stop (recorder/child.py is the child's side).

Children are forked from a fork server that imported the worker's modules once, with the group signals blocked
while they start: a signal to the process group while a child starts is the supervisor's to act on, not the
child's (recorder/child.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import MappingProxyType
from typing import Any

from recorder.child import GROUP_SIGNALS, Exit, Stop

log = logging.getLogger("recorder.supervisor")

# Imported once by the fork server, so that a worker (forked from it) starts in milliseconds instead of
# importing everything anew: with `spawn`, 18 workers starting at once on 2 cores took 4-10 s to import,
# and a shard that has not started is a shard recording nothing. "__main__" (multiprocessing's name for the
# program that started us: the `ime-record` script) because a worker runs that program's module again as
# __mp_main__, and it imports the command line. The hub's own modules are not: it imports them itself, at the
# lowest CPU priority (record/livehub.py).
PRELOAD = ["__main__", "recorder.record.worker"]


class Then(enum.Enum):
    """What follows a child's exit (the value is what the status table shows)."""

    STOPPED = "stopped"  # it was asked to stop: not restarted
    RESTART = "restarting"
    FAILED = "failed"  # the run cannot go on: not restarted, the recorder stops with an error
    REFUSED = "refused"  # given up on (the server refused every contract): not restarted, the others go on


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When and how fast a child that exited is started again."""

    first_s: float  # the wait after an exit nobody asked for
    max_s: float  # the longest wait
    factor: float  # each exit in a row waits this much longer than the one before
    healthy_after_s: float  # a child that ran this long waits first_s again
    # Exit codes after which the child is not restarted, asked to stop or not; any other exit is a restart, unless
    # the child was asked to stop.
    final: Mapping[int, Then] = field(default_factory=lambda: MappingProxyType({}))

    def after_exit(self, code: int | None, asked_to_stop: bool) -> Then:
        then = self.final.get(code) if code is not None else None
        if then is not None:
            return then
        return Then.STOPPED if asked_to_stop else Then.RESTART

    def wait(self, previous: float | None, lived_s: float) -> float:
        """How long to wait before this restart: `previous` is the last restart's wait (None: there was none)."""
        if previous is None or lived_s >= self.healthy_after_s:
            return self.first_s
        return min(self.max_s, previous * self.factor)


# The restart rules, by kind of child (h11-style: one table, looked up by the one piece of code that acts on it,
# Child._on_exit).
# A worker: a dead worker is a shard recording nothing, so it restarts fast and never waits long (a crash loop is
# visible in the log line each time, so a slow restart would only add lost data, not safety). The guide promises
# 0.1-2 s from the death to the new worker recording: the longest wait leaves a second for the start (0.1-0.2 s
# measured with both cores busy; over 0.5 s once in a full suite run on a loaded machine). Its FATAL (disk full,
# shard locked) and REFUSED exits are final: a new worker would meet the same.
WORKER_POLICY = RestartPolicy(first_s=0.1, max_s=1.0, factor=2.0, healthy_after_s=10.0,
                              final=MappingProxyType({Exit.FATAL: Then.FAILED, Exit.REFUSED: Then.REFUSED}))
# The live hub differs because nothing recorded depends on it while a crash loop would cost the workers: each start
# imports and sets up the relay and the NATS client (CPU the workers may need), so it backs off further, to 30 s.
# No exit of it is final: a hub failure never stops recording.
HUB_POLICY = RestartPolicy(first_s=0.2, max_s=30.0, factor=4.0, healthy_after_s=60.0)


@contextlib.contextmanager
def child_start() -> Iterator[None]:
    """Around starting a child (and the fork server, started by the first child): GROUP_SIGNALS blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def child_context() -> BaseContext:
    """Children are forked from a fork server that has imported the worker's modules once.

    Forking the supervisor itself would copy its event loop, threads and sockets into every child; the fork
    server is a clean process started (with `spawn`) the first time a child starts.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart(ctx: BaseContext) -> None:
    """Start the fork server now, so that its imports run while the supervisor fetches the token."""
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with child_start():
            forkserver.ensure_running()


def how_it_ended(code: int | None) -> str:
    return f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


class Child:
    """One child process, started again after each exit its policy calls for: its messages read on the event loop.

    `on_message` gets what the child sends; `on_exit` what follows its exit (after its last messages), `restart`
    is called when the policy's wait is over (the owner starts it again with `start`, with what it needs now).
    """

    def __init__(self, label: str, policy: RestartPolicy, ctx: BaseContext, on_message: Callable[[Any], None],
                 on_exit: Callable[[Then], None], restart: Callable[[], None], unaffected: str) -> None:
        self.label = label  # "shard 3 worker", "live hub": how the log names it
        self.policy = policy
        self.ctx = ctx
        self.on_message = on_message
        self.on_exit = on_exit
        self.restart = restart
        self.unaffected = unaffected  # what the restart line adds: what its death did not touch
        self.process: BaseProcess | None = None
        self.pipe: Connection | None = None
        self.started_at = 0.0
        self.delay: float | None = None  # the last restart's wait
        self.restarts = 0
        self.retired = True  # not restarted when it exits: not started yet, asked to stop, or a final exit
        self.last_words: str | None = None  # what it said was wrong (a worker's Fatal), for the line about its exit
        self.exited = asyncio.Event()
        self._restart_handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    @property
    def pid(self) -> int:
        return (self.process.pid or 0) if self.process is not None else 0

    def start(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> int:
        """Start `target(*args, pipe)` in a child process; its pid."""
        loop = asyncio.get_running_loop()
        self.cancel_restart()
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=target, args=(*args, child), name=name, daemon=False)
        with child_start():  # a signal to the process group while it starts is ours, not the child's
            proc.start()
        child.close()
        self.process, self.pipe, self.started_at = proc, parent, time.monotonic()
        self.retired, self.last_words = False, None
        self.exited = asyncio.Event()
        loop.add_reader(parent.fileno(), self._drain)
        loop.add_reader(proc.sentinel, self._on_exit)
        return self.pid

    def send(self, msg: object) -> None:
        if self.pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                self.pipe.send(msg)

    def retire(self) -> None:
        """Not to be restarted: a pending restart is called off (the running child, if any, is not told)."""
        self.retired = True
        self.cancel_restart()

    def stop_soon(self, reason: str) -> None:
        """Retire it and ask the running child to finish and exit."""
        self.retire()
        self.send(Stop(reason))

    def cancel_restart(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None

    async def kill(self) -> None:
        proc = self.process
        if proc is not None and proc.exitcode is None:
            proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)

    def _drain(self) -> None:
        pipe = self.pipe
        if pipe is None:
            return
        try:
            while pipe.poll():
                self.on_message(pipe.recv())
        except (EOFError, OSError):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(pipe.fileno())

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        proc = self.process
        assert proc is not None
        loop.remove_reader(proc.sentinel)
        # The sentinel closes while the child is still exiting; it is waitable a moment later.
        proc.join(5)
        self._drain()  # its last words, the final status
        if self.pipe is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self.pipe.fileno())
            self.pipe.close()
            self.pipe = None
        self.exited.set()
        then = self.policy.after_exit(proc.exitcode, self.retired)
        if then is Then.RESTART:
            self._schedule_restart(loop, proc)
        else:
            self.retired = True
        self.on_exit(then)

    def _schedule_restart(self, loop: asyncio.AbstractEventLoop, proc: BaseProcess) -> None:
        lived = time.monotonic() - self.started_at
        delay = self.delay = self.policy.wait(self.delay, lived)
        self.restarts += 1
        how = how_it_ended(proc.exitcode) + (f" ({self.last_words})" if self.last_words else "")
        log.error("%s (pid %s) %s after %.1fs; restarting in %.1fs (restart %d); %s", self.label, proc.pid, how, lived,
                  delay, self.restarts, self.unaffected)
        self._restart_handle = loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_handle = None
        if not self.retired:
            self.restart()


async def stop_children(children: Sequence[Child], reason: str, timeout: float) -> list[Child]:
    """Ask every child to stop and wait at most `timeout` for all of them; those still running are returned (the
    caller says so and kills them)."""
    for c in children:
        c.stop_soon(reason)
    running = [c for c in children if c.running]
    waits = [asyncio.ensure_future(c.exited.wait()) for c in running]
    if waits:
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for w in pending:
            w.cancel()
    return [c for c in running if c.running]
