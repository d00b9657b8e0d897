"""A client that stops reading: a live market drops for it, a drained feed waits; memory stays bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from urllib.parse import urlsplit

import pytest
from sim_util import run, running_sim

from recorder.feed.endpoints import EndpointKind
from recorder.server.subscriber import Subscriber

HIGH = 64 * 1024


async def stalled_client(url: str, token: str) -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """A real WebSocket upgrade over a socket with a tiny receive buffer, then no reading at all."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: {token}\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return sock, reader, writer


@pytest.mark.parametrize("rate", [20_000.0, 0.0])
def test_slow_client_is_bounded_and_resumes(rate, monkeypatch):
    largest = 0
    write_frames = Subscriber.write_frames

    def measured(self: Subscriber, data: bytes, messages: int, frames: int | None = None) -> bool:
        nonlocal largest
        largest = max(largest, len(data))
        return write_frames(self, data, messages, frames)

    monkeypatch.setattr(Subscriber, "write_frames", measured)

    async def go() -> None:
        async with running_sim(contracts=3, rate=rate, write_buffer_high=HIGH, batch_bytes=32 * 1024) as sim:
            _, reader, writer = await stalled_client(sim.url(EndpointKind.ID), sim.token)
            # issue 15: wait for the state, not a fixed time (a loaded machine may take longer to fill the buffers).
            deadline = asyncio.get_running_loop().time() + 20
            while not (sim.server.subscribers and next(iter(sim.server.subscribers)).paused):
                assert asyncio.get_running_loop().time() < deadline, "the server never paused the stalled client"
                await asyncio.sleep(0.05)
            (sub,) = sim.server.subscribers
            assert sub.paused and not sub.writable
            before = sub.sent
            await asyncio.sleep(0.3)
            # Bounded: at most the high-water mark plus the write that crossed it: one batch (drain), or one tick
            # (live: a ticker a loaded machine made late sends its backlog, up to MAX_CATCH_UP, in one tick).
            assert sub.write_buffer_size() <= HIGH + largest, (sub.write_buffer_size(), largest)
            if rate:
                assert sub.dropped > 0 and sub.sent == before  # the market went on without this client
            else:
                assert largest <= 64 * 1024, largest  # a batch: batch_bytes and the frame that crossed it
                assert sub.dropped == 0 and sub.sent == before  # the pump waits for the client
            # The client reads again: sending resumes.
            drained = 0
            while drained < 4 << 20:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 5)
                assert chunk
                drained += len(chunk)
            assert sub.sent > before
            writer.close()

    run(go())
