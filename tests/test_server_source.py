"""The FeedServer with a source other than the simulator: the contract the replay server plugs into."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from picows import WSMsgType
from sim_util import picows_session, run

from recorder.feed.endpoints import EndpointKind, build_url
from recorder.server import FeedServer, FeedSource, ServerConfig, Subscriber
from recorder.server.framing import OP_BINARY

PAYLOADS = [b"", b"x" * 125, b"y" * 126, "سکه".encode() * 100, b"z" * 70_000, b'{"contractId":"A"}']


class ListSource:
    """Sends fixed payloads to each subscriber, then a binary frame, then closes it with 1000."""

    def __init__(self) -> None:
        self.subscribed: list[Subscriber] = []
        self.unsubscribed: list[Subscriber] = []
        self.tasks: list[asyncio.Task[None]] = []

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return identifier in ({"A", "B"} if kind is EndpointKind.ID else {"Alpha & Co"})

    def on_subscribe(self, sub: Subscriber) -> None:
        self.subscribed.append(sub)
        self.tasks.append(asyncio.get_running_loop().create_task(self.feed(sub)))

    async def feed(self, sub: Subscriber) -> None:
        assert sub.writable and not sub.closing
        assert sub.send_payloads(PAYLOADS)
        assert sub.send_payloads([b"\x00\x01"], OP_BINARY)
        await sub.wait_writable()
        sub.close(1000, "end of data")
        assert not sub.writable and not sub.send_payloads([b"late"])

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.unsubscribed.append(sub)

    def stats(self) -> Mapping[str, Any]:
        return {"subscribed": len(self.subscribed)}


@pytest.mark.parametrize("require_token", [True, False])
def test_a_custom_source_is_served(require_token):
    async def go() -> None:
        source = ListSource()
        checked: FeedSource = source  # the protocol is satisfied structurally
        server = FeedServer(ServerConfig(require_token=require_token), checked)
        await server.start()
        try:
            url = build_url(server.base_url, EndpointKind.ID, ["A", "B", "A"])
            token = server.issue_token() if require_token else None
            session = await picows_session(url, token)
            assert [f.payload for f in session.data()] == PAYLOADS
            assert [f.payload for f in session.data(WSMsgType.BINARY)] == [b"\x00\x01"]
            assert (session.close_code, session.close_reason) == (1000, "end of data")
            await asyncio.sleep(0.05)
            (sub,) = source.subscribed
            assert source.unsubscribed == [sub] and sub.disconnected
            assert (sub.kind, sub.contracts, sub.sent, sub.frames) == (EndpointKind.ID, ("A", "B", "A"), 7, 7)
            headers = [2, 2, 4, 4, 10, 2, 2]  # by payload length: <126, 126..65535, more; the binary one last
            assert sub.sent_bytes == sum(len(p) for p in PAYLOADS) + 2 + sum(headers)
            assert (sub.token_id is not None) == require_token
            stats = server.stats()
            assert stats["source"] == {"subscribed": 1} and stats["connections"][0]["closed_by"] == "server"
            refused = await picows_session(build_url(server.base_url, EndpointKind.NAME, ["Alpha & Co", "Beta"]),
                                           token)
            assert (refused.close_code, refused.close_reason) == (1008, "unknown contract: Beta")
            named = await picows_session(build_url(server.base_url, EndpointKind.NAME, ["Alpha & Co"]), token)
            assert len(named.data()) == len(PAYLOADS) and source.subscribed[1].contracts == ("Alpha & Co",)
        finally:
            await server.close()
            await asyncio.gather(*source.tasks, return_exceptions=True)

    run(go())


def test_no_token_needed_only_when_configured():
    async def go() -> None:
        server = FeedServer(ServerConfig(), ListSource())
        await server.start()
        try:
            session = await picows_session(build_url(server.base_url, EndpointKind.ID, ["A"]), None)
            assert (session.close_code, session.close_reason) == (1008, "missing token")
        finally:
            await server.close()

    run(go())


def test_server_close_says_going_away_to_open_clients():
    class Silent(ListSource):
        async def feed(self, sub: Subscriber) -> None:
            sub.send_payloads([b"hello"])

    async def go() -> None:
        server = FeedServer(ServerConfig(require_token=False), Silent())
        await server.start()
        task = asyncio.ensure_future(picows_session(build_url(server.base_url, EndpointKind.ID, ["A"]), None))
        await asyncio.sleep(0.2)
        await server.close()
        session = await task
        assert [f.payload for f in session.data()] == [b"hello"]
        assert (session.close_code, session.close_reason) == (1001, "server shutting down")

    run(go())
