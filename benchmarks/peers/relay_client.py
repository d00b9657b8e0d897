"""Relay clients for the live benchmarks: N picows connections in one process, counting frames.

    python benchmarks/peers/relay_client.py URL CLIENTS SECONDS OUT.json [--latency]

Connects (retrying until the relay listens), then reads until the relay closes or SECONDS pass. With
--latency, client 0 keeps (receive time_ns, xxh3-64 of the payload) per frame, so the benchmark can join
them with the recorder's receive times from the segment files. Writes one JSON object to OUT.json.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import uvloop
import xxhash
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, keep: bool, done: asyncio.Event) -> None:
        super().__init__()
        self.keep = keep
        self.done = done
        self.messages = 0
        self.close_code: int | None = None
        self.samples: list[tuple[int, int]] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time_ns()
        mt = frame.msg_type
        if mt is WSMsgType.TEXT:
            self.messages += 1
            if self.keep:
                self.samples.append((now, xxhash.xxh3_64_intdigest(frame.get_payload_as_bytes())))
        elif mt is WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.done.set()


async def connect(url: str, keep: bool, deadline: float) -> tuple[WSTransport, Client, asyncio.Event]:
    while True:
        done = asyncio.Event()
        try:
            transport, client = await ws_connect(lambda ev=done: Client(keep, ev), url, max_frame_size=16 << 20)
            return transport, client, done
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def run(url: str, clients: int, seconds: float, latency: bool) -> dict[str, object]:
    deadline = time.monotonic() + 20
    conns = await asyncio.gather(*(connect(url, latency and i == 0, deadline) for i in range(clients)))
    connected_ns = time.time_ns()
    waits = [asyncio.ensure_future(done.wait()) for _, _, done in conns]
    await asyncio.wait(waits, timeout=seconds)
    for transport, _, _ in conns:
        if not transport.is_disconnected:
            transport.disconnect(graceful=False)
    return {"connected_ns": connected_ns, "messages": [c.messages for _, c, _ in conns],
            "close_codes": [c.close_code for _, c, _ in conns], "samples": conns[0][1].samples}


if __name__ == "__main__":
    result = uvloop.run(run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "--latency" in sys.argv))
    with open(sys.argv[4], "wb") as out:
        out.write(orjson.dumps(result))
