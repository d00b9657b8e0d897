"""What the server asks of whatever produces the frames (the synthetic market, or replayed segments)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from recorder.feed.endpoints import EndpointKind

if TYPE_CHECKING:
    from recorder.server.subscriber import Subscriber


class FeedSource(Protocol):
    """The server admits a client only if every contract it asks for `has_contract`; then `on_subscribe`.

    From `on_subscribe` on, the source owns sending: it writes to the `Subscriber` whenever it likes
    (`send_payloads`/`write_frames`, both one transport write), watching `writable` and `wait_writable()`
    for backpressure, until `on_unsubscribe` (called once, after the connection is gone, for whatever
    reason). All three are called on the event loop thread and must not block.
    """

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool: ...

    def on_subscribe(self, sub: Subscriber) -> None: ...

    def on_unsubscribe(self, sub: Subscriber) -> None: ...

    def stats(self) -> Mapping[str, Any]:
        """Source-wide figures for GET /stats (e.g. events generated); an empty mapping is fine."""
        ...
