"""`ime-record --relay`: the live feed as a FeedSource, so the IME-compatible server serves it to local bots.

The hub calls `dispatch` with each batch of first arrivals from the workers; every subscriber gets its
contracts' frames of the batch in one write, byte for byte as received, in arrival order. A client that
does not read is never waited for: once more than `max_client_buffer` bytes are queued for it, it is cut
with close code SLOW_CLIENT_CODE and a reason saying why, and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from recorder.feed.endpoints import EndpointKind
from recorder.server.framing import OP_BINARY, frame_header, text_header
from recorder.server.subscriber import Subscriber

SLOW_CLIENT_CODE = 1013  # RFC 6455 "Try Again Later": a temporary condition on the server's side
_TEXT = 1
_BINARY = 2

# (contract or None, record kind, payload) for each first arrival, in arrival order.
LiveItem = tuple[str | None, int, bytes]


class LiveSource:
    """Routes live messages to subscribers by contract; only the endpoint being recorded has contracts."""

    def __init__(self, kind: EndpointKind, contracts: Iterable[str], max_client_buffer: int = 4 << 20,
                 buffered: Callable[[Subscriber], int] | None = None) -> None:
        self.kind = kind
        self.known = frozenset(contracts)
        self.max_client_buffer = max_client_buffer
        self.by_contract: dict[str, list[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        self._buffered = buffered or Subscriber.write_buffer_size
        self.sent = 0  # messages handed to clients
        self.cut = 0  # clients disconnected for being too slow
        self.unrouted = 0  # messages with no contract (binary frames, non-envelopes): nobody subscribed to them

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return kind is self.kind and identifier in self.known

    def on_subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        for c in set(sub.contracts):
            self.by_contract.setdefault(c, []).append(sub)

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        for c in set(sub.contracts):
            subs = self.by_contract.get(c)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self.by_contract[c]

    def stats(self) -> Mapping[str, Any]:
        return {"live_messages_sent": self.sent, "slow_clients_cut": self.cut, "unrouted": self.unrouted}

    def dispatch(self, batch: list[LiveItem]) -> None:
        """Runs on the hub's loop: one framed write per subscriber for the whole batch."""
        by_contract = self.by_contract
        if not by_contract:
            return
        out: dict[Subscriber, list[bytes]] = {}
        counts: dict[Subscriber, int] = {}
        for contract, kind, payload in batch:
            if contract is None:
                self.unrouted += 1
                continue
            subs = by_contract.get(contract)
            if not subs:
                continue
            head = text_header(len(payload)) if kind == _TEXT else frame_header(len(payload), OP_BINARY)
            for sub in subs:
                parts = out.get(sub)
                if parts is None:
                    parts = out[sub] = []
                    counts[sub] = 0
                parts.append(head)
                parts.append(payload)
                counts[sub] += 1
        for sub, parts in out.items():
            if sub.closing:
                continue
            data = b"".join(parts)
            queued = self._buffered(sub)
            if queued + len(data) > self.max_client_buffer:
                self.cut_client(sub, queued)
                continue
            if sub.write_frames(data, counts[sub]):
                self.sent += counts[sub]

    def cut_client(self, sub: Subscriber, queued: int) -> None:
        self.cut += 1
        sub.add_dropped(1)
        sub.count_fault("slow_client_cut")
        sub.close(SLOW_CLIENT_CODE, f"too slow: {queued} bytes unread; the live relay never waits for a client")
