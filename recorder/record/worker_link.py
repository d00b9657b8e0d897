"""The worker's end of its pipe to the supervisor (recorder/child.py's ChildLink), and the wait for a fresh token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from multiprocessing.connection import Connection

from recorder.child import ChildLink
from recorder.record import messages as m


class SupervisorLink(ChildLink):
    def __init__(self, pipe: Connection, shard: int) -> None:
        super().__init__(pipe)
        self.shard = shard
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token_waiter: asyncio.Future[bool] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[m.SupervisorMessage], None],
              on_gone: Callable[[], None]) -> None:
        self._loop = loop
        super().start(loop, on_message, on_gone)

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
