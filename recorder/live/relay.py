"""`ime-record --relay`: the live feed as a FeedSource, so the IME-compatible server serves it to local bots.

Subscribers with the same contract set are one output: the hub's fanout (live/fanout.py) frames each message once
for every output that wants its contract, and `deliver` writes each output's frames of the batch to its
subscribers in one write each, byte for byte as received, in arrival order. A client that does not read is never
waited for: once more than `max_client_buffer` bytes are queued for it, it is cut with close code
SLOW_CLIENT_CODE and a reason saying why, and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from recorder.feed.endpoints import EndpointKind
from recorder.live.fanout import Fanout, Output
from recorder.live.route import Router
from recorder.model.settings import DEFAULTS
from recorder.server.subscriber import Subscriber

SLOW_CLIENT_CODE = 1013  # RFC 6455 "Try Again Later": a temporary condition on the server's side
INTERNAL_ERROR_CODE = 1011  # RFC 6455: the server met a condition it did not expect
log = logging.getLogger("recorder.live")


class LiveSource:
    """Routes live messages to subscribers by contract; only the endpoint being recorded has contracts."""

    def __init__(self, kind: EndpointKind, contracts: Iterable[str],
                 max_client_buffer: int = DEFAULTS.live.relay_client_buffer,
                 buffered: Callable[[Subscriber], int] | None = None, fanout: Fanout | None = None) -> None:
        self.kind = kind
        self.known = frozenset(contracts)
        self.max_client_buffer = max_client_buffer
        self.fanout = fanout if fanout is not None else Fanout(Router())
        self.subscribers: set[Subscriber] = set()
        self._sets: dict[Subscriber, frozenset[str]] = {}
        self._buffered = buffered or Subscriber.write_buffer_size
        # The subscribers of each output (one per distinct contract set), as last given to the fanout by `prepare`;
        # replanned only there, so that the outputs of a batch always index the plan they were framed for.
        self._groups: list[list[Subscriber]] = []
        self._stale = False
        self.sent = 0  # messages handed to clients
        self.cut = 0  # clients disconnected for being too slow
        self.gap_cut = 0  # clients disconnected because messages never reached the hub (see cut_for_gap)
        self.errors = 0  # clients closed because writing to them raised (a bug: logged with its traceback)

    @property
    def unrouted(self) -> int:
        """Text messages with no contract (not an envelope): nobody can have subscribed to them."""
        return self.fanout.unrouted

    def set_contracts(self, contracts: Iterable[str]) -> None:
        """A reload changed what is recorded: new subscriptions are checked against it (clients already
        subscribed keep their subscription; a contract no longer recorded simply sends them nothing more)."""
        self.known = frozenset(contracts)

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return kind is self.kind and identifier in self.known

    def on_subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        self._sets[sub] = frozenset(sub.contracts)
        self._stale = True

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._sets.pop(sub, None)
        self._stale = True

    def stats(self) -> Mapping[str, Any]:
        return {"live_messages_sent": self.sent, "slow_clients_cut": self.cut, "gap_clients_cut": self.gap_cut,
                "error_clients_cut": self.errors, "unrouted": self.unrouted}

    def prepare(self) -> None:
        """Before the hub feeds a batch: the fanout's routes for the current subscribers, if they changed.

        Each distinct contract set is one output: ten bots on the same contracts cost one framing and ten writes.
        """
        if not self._stale:
            return
        self._stale = False
        groups: dict[frozenset[str], list[Subscriber]] = {}
        for sub in self.subscribers:
            groups.setdefault(self._sets[sub], []).append(sub)
        routes: dict[str, list[int]] = {}
        for index, contracts in enumerate(groups):
            for contract in contracts:
                routes.setdefault(contract, []).append(index)
        self.fanout.set_routes({c: tuple(t) for c, t in routes.items()}, len(groups))
        self._groups = list(groups.values())

    def deliver(self, outputs: list[Output]) -> None:
        """Runs on the hub's loop: each output's frames of the batch (`fanout.take()`) in one write per subscriber."""
        groups = self._groups
        for index, data, n in outputs:
            for sub in groups[index]:
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

    def _failed(self, sub: Subscriber) -> None:
        self.errors += 1
        log.exception("relay: writing to a client failed; closing it")
        with contextlib.suppress(Exception):
            sub.count_fault("error_cut")
            sub.close(INTERNAL_ERROR_CODE, "relay error; reconnect to resume")

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
