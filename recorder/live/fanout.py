"""The hub's data path, pure: a worker link's bytes in; each relay output's frames, and the publisher's records, out.

`fanout.feed(link, data, keep)` decodes what a worker sent (live/wire.py), names each text message's contract
(live/route.py), and appends its WebSocket frame to every relay output that wants that contract; `take()` hands the
framed bytes of each output over, so LiveSource writes one buffer per output to each of its subscribers. With
`keep` (the NATS publisher is on) it also returns the rows (the model's, recorder/model/record.py) and their
contracts for the publisher. The worker's sequence numbers stay apart: the first and the last of the batch.

In Python only. A C twin (_fanout.c, dropped 2026-12-07) took ~0.25 µs a message where this takes ~0.94, but what
a relay user waits for did not follow, because sending to the clients costs the hub more than this: with ten
clients the hub's CPU per message was 1.3x lower, the recorder's throughput 0.88-1.43x, and the highest rate at
which the relay kept every client was the same with both (~30k msgs/s on the shared 2-core machine; above, both
cut clients): below the 2x the project keeps native code for (recorder/native.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from recorder.live.route import Router
from recorder.live.wire import Decoder
from recorder.model.record import RecordKind, Row
from recorder.server.framing import text_header

# (messages, first sequence number, last sequence number, rows, their contracts (None: names none)), in arrival
# order; rows and contracts only with `keep`.
Batch = tuple[int, int, int, list[Row] | None, list[str | None] | None]
# (output index, its framed bytes, messages in them) for each output that got something.
Output = tuple[int, bytes, int]


class Fanout:
    """See the module docstring. Call it on one thread (the hub's loop) only."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._routes: Mapping[str, tuple[int, ...]] = {}
        self._parts: list[list[bytes]] = []
        self.unrouted = 0  # text messages that were routed and named no contract (not an envelope)

    @staticmethod
    def new_link() -> Decoder:
        """The state of one worker's stream (a partial record, the worker's shard and pid once it said hello)."""
        return Decoder()

    def set_routes(self, routes: Mapping[str, tuple[int, ...]], outputs: int) -> None:
        """Which outputs (0 … outputs-1) want each contract; what the outputs held is dropped."""
        for targets in routes.values():
            for i in targets:
                if not 0 <= i < outputs:
                    raise ValueError(f"output {i} out of range (outputs: {outputs})")
        self._routes = dict(routes)
        self._parts = [[] for _ in range(outputs)]

    def feed(self, link: Decoder, data: bytes, keep: bool = False) -> Batch | None:
        """Whole records of `link`'s stream so far: framed into the outputs; None when `data` completed none.

        Raises WireError (from the decoder) when the stream is not what a worker sends; nothing of `data` is
        then in the outputs.
        """
        decoded = link.feed(data)
        if decoded is None:
            return None
        rows, first, last = decoded
        routes = self._routes
        parts = self._parts
        route = self.router.contract if routes or keep else None
        contracts: list[str | None] | None = [] if keep else None
        text = RecordKind.TEXT
        for _, _, kind, payload in rows:
            contract = None
            if kind == text and route is not None:
                contract = route(payload)
                if contract is None:
                    self.unrouted += 1
                else:
                    targets = routes.get(contract)
                    if targets:
                        header = text_header(len(payload))
                        for i in targets:
                            out = parts[i]
                            out.append(header)
                            out.append(payload)
            if contracts is not None:
                contracts.append(contract)
        return len(rows), first, last, rows if keep else None, contracts

    def take(self) -> list[Output]:
        """Each output's frames since the last take, as one buffer, and how many messages it holds."""
        out: list[Output] = []
        for i, parts in enumerate(self._parts):
            if parts:
                out.append((i, b"".join(parts), len(parts) >> 1))
                parts.clear()
        return out
