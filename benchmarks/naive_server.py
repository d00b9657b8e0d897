"""The baseline for benchmarks/test_sim_push.py: the same market messages, but one picows
`transport.send()` per message, as a straightforward server would do it.

Run as `python benchmarks/naive_server.py READY_FILE`; serves any path, needs no token, writes
{"url": ...} to READY_FILE once listening, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson
import uvloop
from picows import WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from recorder.sim.market import Market, make_contracts, message_prefix
from recorder.sim.source import Clock

CONTRACTS = 20


class NaivePusher(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.specs = make_contracts(CONTRACTS)
        self.market = Market(self.specs, seed=1)
        self.prefixes = [message_prefix("contractId", s.id) for s in self.specs]
        self.clock = Clock()
        self.resumed: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.task = asyncio.get_running_loop().create_task(self.pump(transport))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    async def pump(self, transport: WSTransport) -> None:
        step, prefixes, send, text = self.market.step, self.prefixes, transport.send, WSMsgType.TEXT
        closing = transport.underlying_transport.is_closing
        while not transport.is_disconnected:
            if self.resumed is not None:
                await self.resumed
                continue
            ts = self.clock.stamp()
            self.market.set_clock(self.clock.date, self.clock.time)
            for _ in range(256):
                i, tail = step()
                send(text, prefixes[i] + ts + tail)
                if self.resumed is not None or closing():
                    break
            await asyncio.sleep(0)


async def main(ready_file: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def route(_request: WSUpgradeRequest) -> WSListener:
        return NaivePusher()

    server = await ws_create_server(route, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = ready_file + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"url": f"ws://127.0.0.1:{port}/naive", "pid": os.getpid()}))
    os.replace(tmp, ready_file)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
