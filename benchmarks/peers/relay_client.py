"""Relay clients for the live benchmarks: N picows connections in one process, counting frames.

    python benchmarks/peers/relay_client.py URL CLIENTS SECONDS OUT.json [--latency | --bytes | --split]

Connects (retrying until the relay listens), then reads until the relay closes or SECONDS pass. With
--latency, the process asks for a short CPU slice (as a latency-minded bot would) and client 0 keeps
(receive time_ns, xxh3-64 of the payload) per frame, so the benchmark can join
them with the recorder's receive times from the segment files. With --bytes the clients only read and
count bytes after the upgrade (no per-frame Python callback): what serving N readers costs the recorder,
without N Python frame parsers competing for the same cores. --split is --bytes with client i of N subscribed
to every N-th contract of the URL's list (bots on disjoint contracts). Writes one JSON object to OUT.json.
"""

from __future__ import annotations

import asyncio
import base64
import os
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


class ByteReader(asyncio.BufferedProtocol):
    """Counts what the relay sends after the upgrade, read into one buffer (no bytes object per read): a bot that
    keeps up at full speed, so that what is measured is the relay's cost, not this reader's."""

    def __init__(self, done: asyncio.Event) -> None:
        self.done = done
        self.bytes = 0
        self.head = b""
        self.buffer = bytearray(1 << 20)
        self.upgraded = asyncio.get_running_loop().create_future()
        self.upgraded_at = 0.0
        self.ended_at: float | None = None

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if not self.upgraded.done():
            self.head += bytes(self.buffer[:nbytes])
            if b"\r\n\r\n" in self.head:
                head, _, rest = self.head.partition(b"\r\n\r\n")
                self.upgraded.set_result(head.startswith(b"HTTP/1.1 101"))
                self.upgraded_at = time.monotonic()
                self.bytes += len(rest)
            return
        self.bytes += nbytes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)
        self.ended_at = time.monotonic()
        self.done.set()


def split_path(path: str, clients: int, i: int) -> str:
    """Client i of N subscribes to every N-th contract of the URL's list, starting at the i-th."""
    route, _, query = path.partition("?")
    params = query.split("&")
    return f"{route}?{'&'.join(params[i::clients])}"


async def read_bytes(url: str, clients: int, seconds: float, split: bool = False) -> dict[str, object]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 20
    readers: list[tuple[asyncio.BaseTransport, ByteReader]] = []
    for i in range(clients):
        target = split_path(path, clients, i) if split else path
        while True:
            done = asyncio.Event()
            try:
                transport, reader = await loop.create_connection(lambda ev=done: ByteReader(ev), host, int(port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /{target} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())
        assert await reader.upgraded
        readers.append((transport, reader))
    await asyncio.wait([asyncio.ensure_future(r.done.wait()) for _, r in readers], timeout=seconds)
    for transport, _ in readers:
        transport.close()
    # How long each client was served: the relay closes every one at the recorder's stop, so a much shorter
    # time means it was cut (too slow, or messages that never reached the hub).
    return {"bytes": [r.bytes for _, r in readers],
            "served_s": [round((r.ended_at or time.monotonic()) - r.upgraded_at, 2) for _, r in readers]}


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
    if "--latency" in sys.argv:
        # A bot that wants the feed fast asks Linux (>= 6.12) for a short CPU slice, as the recorder's receive
        # thread and hub do, so that waking on a busy core it preempts bulk work (docs/live.md).
        from recorder.record.timeslice import request_slice

        why_not = request_slice(100)
        if why_not:
            print(f"relay_client: short CPU slice not applied: {why_not}", file=sys.stderr)
    if "--bytes" in sys.argv or "--split" in sys.argv:
        result = uvloop.run(read_bytes(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "--split" in sys.argv))
    else:
        result = uvloop.run(run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "--latency" in sys.argv))
    with open(sys.argv[4], "wb") as out:
        out.write(orjson.dumps(result))
