"""ime-sim's ground-truth logs, as segment files: what it sent (`--sent-log`) and what it published
(`--published-log`).

The sent log holds every message the simulator hands to the kernel, per connection: a recording must
hold, per connection and in order, exactly these payloads. Frames are decoded back from what was written
to the socket, so fragmented, binary and malformed messages are logged as the client must reassemble them.

The published log holds every message the market published, once, whether or not any connection was open
to receive it: real loss is "published but recorded by no copy". Its records have connection 0 and the
by-id envelope (`"contractId":"1001"`); a by-name subscriber received the same message with
`"contractName"` instead. Injected faults (malformed, binary, oversized, fragmented frames) are not market
messages and appear only in the sent log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recorder.events import encode_event
from recorder.feed.endpoints import EndpointKind
from recorder.model.record import RecordKind
from recorder.segment.writer import SegmentWriter
from recorder.server.framing import OP_BINARY, OP_CONTINUATION, OP_TEXT, parse_frames
from recorder.server.source import FeedSource
from recorder.server.subscriber import Subscriber

_KINDS = {OP_TEXT: RecordKind.TEXT, OP_BINARY: RecordKind.BINARY}
PUBLISHED_CONN = 0  # the published log's connection number: no connection, the market itself


def ground_truth_writer(directory: Path, prefix: str, role: str, **meta: Any) -> SegmentWriter:
    """The segment writer both logs use: short flushes, so a test sees the truth soon after the fact."""
    return SegmentWriter(directory, prefix=prefix, meta={"role": role, **meta}, flush_ms=50)


class SentLog:
    def __init__(self, directory: Path) -> None:
        self.writer = ground_truth_writer(directory, "sent", "ime-sim sent log")
        self._partial: dict[int, tuple[int, list[bytes]]] = {}

    def opened(self, sub: Subscriber) -> None:
        self.writer.append(time.time_ns(), sub.id, RecordKind.EVENT, encode_event(
            "opened", conn=sub.id, peer=sub.peer, endpoint=sub.kind.value, contracts=list(sub.contracts)))

    def closed(self, sub: Subscriber) -> None:
        self.writer.append(time.time_ns(), sub.id, RecordKind.EVENT, encode_event(
            "closed", conn=sub.id, code=sub.close_code, by=sub.closed_by, sent=sub.sent))

    def wrote(self, sub_id: int, data: bytes | bytearray | memoryview) -> None:
        now = time.time_ns()
        append = self.writer.append
        for opcode, fin, payload in parse_frames(data):
            if opcode == OP_CONTINUATION:
                started = self._partial.get(sub_id)
                if started is None:
                    continue
                started[1].append(payload)
                if fin:
                    del self._partial[sub_id]
                    append(now, sub_id, _KINDS[started[0]], b"".join(started[1]))
            elif opcode in _KINDS:
                if fin:
                    append(now, sub_id, _KINDS[opcode], payload)
                else:
                    self._partial[sub_id] = (opcode, [payload])

    def close(self) -> None:
        self.writer.close()


class PublishedLog:
    """Every market message, once, at its publication time (see the module docstring)."""

    def __init__(self, directory: Path, ids: Sequence[str]) -> None:
        # endpoint/contracts in the header let ime-segments and ime-replay name the contracts without a scan.
        self.writer = ground_truth_writer(directory, "published", "ime-sim published log", endpoint="id",
                                          contracts=list(ids))
        self.messages = 0

    def published(self, ts_ns: int, payload: bytes) -> None:
        self.writer.append(ts_ns, PUBLISHED_CONN, RecordKind.TEXT, payload)
        self.messages += 1

    def close(self) -> None:
        self.writer.close()


class TappedSource:
    """Wraps a FeedSource so that everything written to its subscribers goes to a SentLog too."""

    def __init__(self, source: FeedSource, log: SentLog) -> None:
        self.source = source
        self.log = log

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return self.source.has_contract(kind, identifier)

    def on_subscribe(self, sub: Subscriber) -> None:
        self.log.opened(sub)
        sub.tap = self.log.wrote
        self.source.on_subscribe(sub)

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.source.on_unsubscribe(sub)
        self.log.closed(sub)

    def stats(self) -> Mapping[str, Any]:
        return self.source.stats()
