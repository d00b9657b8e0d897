"""`ime-sim --sent-log DIR`: every message the simulator hands to the kernel, as a segment file.

It is the ground truth for "nothing lost" tests and benchmarks: a recording must hold, per connection
and in order, exactly these payloads. Frames are decoded back from what was written to the socket, so
fragmented, binary and malformed messages are logged as the client must reassemble them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recorder.events import encode_event
from recorder.feed.endpoints import EndpointKind
from recorder.segment.format import RecordKind
from recorder.segment.writer import SegmentWriter
from recorder.server.framing import OP_BINARY, OP_CONTINUATION, OP_TEXT, parse_frames
from recorder.server.source import FeedSource
from recorder.server.subscriber import Subscriber

_KINDS = {OP_TEXT: int(RecordKind.TEXT), OP_BINARY: int(RecordKind.BINARY)}


class SentLog:
    def __init__(self, directory: Path) -> None:
        self.writer = SegmentWriter(directory, prefix="sent", meta={"role": "ime-sim sent log"}, flush_ms=50)
        self._partial: dict[int, tuple[int, list[bytes]]] = {}

    def opened(self, sub: Subscriber) -> None:
        self.writer.append(time.time_ns(), sub.id, int(RecordKind.EVENT), encode_event(
            "opened", conn=sub.id, peer=sub.peer, endpoint=sub.kind.value, contracts=list(sub.contracts)))

    def closed(self, sub: Subscriber) -> None:
        self.writer.append(time.time_ns(), sub.id, int(RecordKind.EVENT), encode_event(
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
