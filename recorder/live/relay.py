"""`ime-record --relay`: the live feed as a FeedSource, so the IME-compatible server serves it to local bots.

The hub calls `dispatch` with each batch of first arrivals from the workers; every subscriber gets its
contracts' frames of the batch in one write, byte for byte as received, in arrival order. A client that
does not read is never waited for: once more than `max_client_buffer` bytes are queued for it, it is cut
with close code SLOW_CLIENT_CODE and a reason saying why, and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from recorder.feed.endpoints import EndpointKind
from recorder.server.framing import OP_BINARY, frame_header, text_header
from recorder.server.subscriber import Subscriber

SLOW_CLIENT_CODE = 1013  # RFC 6455 "Try Again Later": a temporary condition on the server's side
INTERNAL_ERROR_CODE = 1011  # RFC 6455: the server met a condition it did not expect
_TEXT = 1
_BINARY = 2
log = logging.getLogger("recorder.live")

# (contract or None, record kind, payload) for each first arrival, in arrival order.
LiveItem = tuple[str | None, int, bytes]


class LiveSource:
    """Routes live messages to subscribers by contract; only the endpoint being recorded has contracts."""

    def __init__(self, kind: EndpointKind, contracts: Iterable[str], max_client_buffer: int = 4 << 20,
                 buffered: Callable[[Subscriber], int] | None = None) -> None:
        self.kind = kind
        self.known = frozenset(contracts)
        self.max_client_buffer = max_client_buffer
        self.subscribers: set[Subscriber] = set()
        self._sets: dict[Subscriber, frozenset[str]] = {}
        self._buffered = buffered or Subscriber.write_buffer_size
        # Built by _plan from the subscribers: each distinct contract set's frame parts (filled per batch) and its
        # subscribers, and for each contract the parts lists of the sets that hold it. None: to be rebuilt.
        self._outputs: list[tuple[list[bytes], list[Subscriber]]] = []
        self._routes: dict[str | None, list[list[bytes]]] | None = None
        self.sent = 0  # messages handed to clients
        self.cut = 0  # clients disconnected for being too slow
        self.gap_cut = 0  # clients disconnected because messages never reached the hub (see cut_for_gap)
        self.errors = 0  # clients closed because writing to them raised (a bug: logged with its traceback)
        self.unrouted = 0  # messages with no contract (binary frames, non-envelopes): nobody subscribed to them

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return kind is self.kind and identifier in self.known

    def on_subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        self._sets[sub] = frozenset(sub.contracts)
        self._routes = None

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._sets.pop(sub, None)
        self._routes = None

    def stats(self) -> Mapping[str, Any]:
        return {"live_messages_sent": self.sent, "slow_clients_cut": self.cut, "gap_clients_cut": self.gap_cut,
                "error_clients_cut": self.errors, "unrouted": self.unrouted}

    def dispatch(self, batch: list[LiveItem]) -> None:
        """Runs on the hub's loop: one framed write per subscriber for the whole batch.

        Subscribers with the same contract set get the same bytes, so each distinct set is framed once: ten bots
        on the same contracts cost one framing and ten writes, not ten framings. Each message is looked up once
        in a table from contract to the sets that hold it, so bots on many different sets cost the hub per
        delivery, not per set and message (ten bots on disjoint tenths of 50 contracts used to cost ten
        membership tests a message).
        """
        if not self.subscribers:
            return
        routes = self._routes
        if routes is None:
            routes = self._plan()
        get = routes.get
        try:
            for contract, kind, payload in batch:
                targets = get(contract)
                if targets is None:
                    if contract is None:
                        self.unrouted += 1
                    continue
                header = text_header(len(payload)) if kind == _TEXT else frame_header(len(payload), OP_BINARY)
                for parts in targets:
                    parts.append(header)
                    parts.append(payload)
            for parts, subs in self._outputs:
                if not parts:
                    continue
                n = len(parts) >> 1
                data = b"".join(parts)
                for sub in subs:
                    if sub.closing:
                        continue
                    try:
                        queued = self._buffered(sub)
                        if queued + len(data) > self.max_client_buffer:
                            self.cut_client(sub, queued)
                        elif sub.write_frames(data, n):
                            self.sent += n
                    except Exception:  # one broken client must not cost the others this batch
                        self._failed(sub)
        finally:
            # The parts lists live as long as the plan: what a failed batch left must not reach the next one.
            for parts, _ in self._outputs:
                parts.clear()

    def _failed(self, sub: Subscriber) -> None:
        self.errors += 1
        log.exception("relay: writing to a client failed; closing it")
        with contextlib.suppress(Exception):
            sub.count_fault("error_cut")
            sub.close(INTERNAL_ERROR_CODE, "relay error; reconnect to resume")

    def _plan(self) -> dict[str | None, list[list[bytes]]]:
        """The routing table for the current subscribers (rebuilt only when one comes or goes)."""
        groups: dict[frozenset[str], list[Subscriber]] = {}
        for sub in self.subscribers:
            groups.setdefault(self._sets[sub], []).append(sub)
        self._outputs = [([], subs) for subs in groups.values()]
        routes: dict[str | None, list[list[bytes]]] = {}
        for (parts, _), contracts in zip(self._outputs, groups, strict=True):
            for contract in contracts:
                routes.setdefault(contract, []).append(parts)
        self._routes = routes
        return routes

    def cut_for_gap(self, missed: int, contracts: frozenset[str] | None = None) -> None:
        """Messages a worker recorded never reached the hub (it was behind): its clients are cut.

        A client that silently misses messages is worse off than one told to reconnect: it would trade on a
        book it believes is whole. The recording has them. `contracts`: the worker's (None: unknown, so all).
        """
        for sub in list(self.subscribers):
            if not sub.closing and (contracts is None or not contracts.isdisjoint(self._sets[sub])):
                self.gap_cut += 1
                sub.count_fault("gap_cut")
                sub.close(SLOW_CLIENT_CODE, f"the relay missed {missed} messages the recorder could not hand over "
                                            "(CPU overload); reconnect to resume")

    def cut_client(self, sub: Subscriber, queued: int) -> None:
        self.cut += 1
        sub.add_dropped(1)
        sub.count_fault("slow_client_cut")
        sub.close(SLOW_CLIENT_CODE, f"too slow: {queued} bytes unread; the live relay never waits for a client")
