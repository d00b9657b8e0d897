"""A bare picows client that only counts frames: the ceiling any recorder is compared with.

Run as a separate process: `python benchmarks/count_client.py URL TOKEN MESSAGES`; prints one JSON line
{"messages", "bytes", "seconds"} measured from the first frame to the MESSAGES-th.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


class Counter(WSListener):  # type: ignore[misc]
    def __init__(self, target: int, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.target = target
        self.done = done
        self.messages = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT or self.messages >= self.target:
            return
        if not self.messages:
            self.first = time.perf_counter()
        self.messages += 1
        self.bytes += frame.payload_size
        if self.messages == self.target:
            self.last = time.perf_counter()
            transport.disconnect(graceful=False)
            if not self.done.done():
                self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run(url: str, token: str, target: int) -> dict[str, float]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _, client = await ws_connect(lambda: Counter(target, done), url, extra_headers={"Authorization": token},
                                 max_frame_size=16 << 20)
    await asyncio.wait_for(done, 300)
    assert isinstance(client, Counter)
    end = client.last or time.perf_counter()
    return {"messages": client.messages, "bytes": client.bytes, "seconds": end - client.first}


if __name__ == "__main__":
    result = uvloop.run(run(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
