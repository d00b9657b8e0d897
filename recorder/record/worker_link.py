"""The worker's end of its pipe to the supervisor: typed messages out (from any thread), in (on the loop),
and the wait for a fresh token."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from recorder.record import messages as m


class SupervisorLink:
    def __init__(self, pipe: Connection, shard: int) -> None:
        self.pipe = pipe
        self.shard = shard
        self._lock = threading.Lock()  # the recovery thread and log lines send too; a Connection is not shareable
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token_waiter: asyncio.Future[bool] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[m.SupervisorMessage], None],
              on_gone: Callable[[], None]) -> None:
        self._loop = loop

        def readable() -> None:
            try:
                while self.pipe.poll():
                    on_message(self.pipe.recv())
            except (EOFError, OSError):
                loop.remove_reader(self.pipe.fileno())
                on_gone()

        loop.add_reader(self.pipe.fileno(), readable)

    def send(self, msg: m.WorkerMessage) -> bool:
        try:
            with self._lock:
                self.pipe.send(msg)
        except (OSError, ValueError):
            return False
        return True

    async def fresh_token(self, used_gen: int, stopping: asyncio.Event, timeout_s: float = 120.0) -> None:
        """Ask once for a token newer than `used_gen` (however many connections ask) and wait for the answer."""
        assert self._loop is not None
        if self._token_waiter is None or self._token_waiter.done():
            self._token_waiter = self._loop.create_future()
            self.send(m.NeedToken(self.shard, used_gen))
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([self._token_waiter, stop], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def token_answered(self, fresh: bool) -> None:
        if self._token_waiter is not None and not self._token_waiter.done():
            self._token_waiter.set_result(fresh)

    def close(self) -> None:
        self.pipe.close()


class PipeLogHandler(logging.Handler):
    """Log lines travel to the supervisor, which prints them above its live status table."""

    def __init__(self, link: SupervisorLink) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.send(m.LogLine(self.link.shard, self.format(record)))
        except Exception:
            self.handleError(record)
