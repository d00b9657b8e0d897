"""The server's slow-client policy: a client that stays paused for the send timeout is closed and counted;
without a timeout (the simulator's policy) it is kept; a client that keeps reading is never cut."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import pytest
from sim_util import picows_session, run
from test_server_backpressure import stalled_client

from recorder.feed.endpoints import EndpointKind, build_url
from recorder.server import FeedServer, ServerConfig, Subscriber
from recorder.server.slowclient import TRY_AGAIN_LATER, SlowClientPolicy

BLOCK = [b"m" * 1000] * 64  # 64 kB per write
HIGH = 64 * 1024


class PumpSource:
    """Writes `blocks` writes of BLOCK to each subscriber as fast as it takes them, then closes it with 1000."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.tasks: list[asyncio.Task[None]] = []

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return identifier == "A"

    def on_subscribe(self, sub: Subscriber) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self.pump(sub)))

    async def pump(self, sub: Subscriber) -> None:
        for _ in range(self.blocks):
            if not await sub.wait_writable():
                return
            sub.send_payloads(BLOCK)
            await asyncio.sleep(0)
        sub.close(1000, "end of data")

    def on_unsubscribe(self, sub: Subscriber) -> None:
        pass

    def stats(self) -> Mapping[str, Any]:
        return {}


def scenario(policy: SlowClientPolicy, watch_s: float) -> tuple[dict, dict, int, int, float]:
    async def go() -> tuple[dict, dict, int, int, float]:
        source = PumpSource(blocks=400)  # 25 MB for each client
        server = FeedServer(ServerConfig(require_token=False, write_buffer_high=HIGH, write_buffer_low=HIGH // 4,
                                         slow_client=policy), source)
        await server.start()
        url = build_url(server.base_url, EndpointKind.ID, ["A"])
        try:
            started = time.monotonic()
            _, reader, writer = await stalled_client(url, "none")
            reading = asyncio.ensure_future(picows_session(url, None, timeout=60, keep_text=False))
            # A cut client gets the close timeout to answer the CLOSE (it does not: it is not reading).
            deadline = time.monotonic() + watch_s
            while time.monotonic() < deadline and any(s.id == 1 for s in server.subscribers):  # 1: stalled
                await asyncio.sleep(0.05)
            session = await reading
            stalled, fast = sorted(server.stats()["connections"], key=lambda c: c["id"])
            # What the stalled socket sees once it reads again: the bytes queued before the cut, then the end.
            got = 0
            if stalled["state"] == "closed":
                with contextlib.suppress(ConnectionError):
                    while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                        got += len(chunk)
            writer.close()
            return stalled, fast, len(session.data()), server.cut_slow, time.monotonic() - started
        finally:
            await server.close()
            for t in source.tasks:
                t.cancel()

    return run(go(), timeout=90)


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout():
    # 2 s, not less: the reader that keeps up shares this process and is often briefly paused above the high-water
    # mark; a loaded machine that stops the process longer than the timeout would cut it too.
    stalled, fast, received, cut, _ = scenario(SlowClientPolicy(send_timeout=2.0), watch_s=15)
    assert stalled["cut_slow"] and stalled["closed_by"] == "server" and stalled["state"] == "closed"
    assert stalled["close_code"] == TRY_AGAIN_LATER and stalled["close_reason"] == "too slow: could not take more " \
                                                                                  "data for 2s"
    assert stalled["sent"] < 400 * 64
    # The reader kept up: it was never cut and got every message.
    assert not fast["cut_slow"] and fast["close_code"] == 1000 and received == fast["sent"] == 400 * 64
    assert cut == 1


def test_without_a_send_timeout_a_stalled_client_is_kept():
    stalled, fast, received, cut, _ = scenario(SlowClientPolicy(), watch_s=1.5)
    assert stalled["state"] == "open" and not stalled["cut_slow"] and stalled["close_code"] is None
    assert received == fast["sent"] == 400 * 64 and cut == 0


def test_policy_is_validated():
    with pytest.raises(ValueError, match="positive"):
        SlowClientPolicy(send_timeout=0)
