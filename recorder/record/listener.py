"""The picows listener of one recording connection: timestamp first, then hand the raw bytes on.

`on_ws_frame` is the hottest code in the recorder. It takes `time_ns()` (recorder/clock.py) before anything else, does
no JSON parsing, copies the payload once (picows reuses its buffer after the callback) and hands it to its sink
(sink.py: the segment writer's current batch, behind dedupe when copies are redundant). Fragmented messages are
reassembled here, because picows delivers fragments as they come; the record gets the time the first fragment
arrived.
"""

from __future__ import annotations

from collections.abc import Callable

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from recorder.clock import time_ns
from recorder.events import Event, encode_event
from recorder.model.record import RecordKind
from recorder.record.sink import Append

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
OVERSIZED_HEAD_BYTES = 256


class RecordingListener(WSListener):
    """Counts and records every data message of one connection."""

    def __init__(self, conn_id: int, append: Append, max_message_bytes: int,
                 on_first_message: Callable[[], None] | None = None) -> None:
        self.conn_id = conn_id
        self._append = append
        self._max = max_message_bytes
        self._on_first = on_first_message
        self.messages = 0
        self.bytes = 0
        self.last_ns = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._frag: list[bytes] | None = None
        self._frag_ts = 0
        self._frag_kind = 0
        self._frag_size = 0
        self._frag_oversized = False

    def redirect(self, append: Append) -> None:
        """Where the following messages go: a reload's handover puts dedupe in front of the writer, and takes it
        away again once the old connection is gone."""
        self._append = append

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        ts = time_ns()
        mt = frame.msg_type
        if (mt is _TEXT or mt is _BINARY) and frame.fin and self._frag is None:
            size = frame.payload_size
            self.messages += 1
            self.bytes += size
            self.last_ns = ts
            if size <= self._max:
                self._append(ts, self.conn_id, RecordKind.TEXT if mt is _TEXT else RecordKind.BINARY,
                             frame.get_payload_as_bytes())
            else:
                self._oversized(ts, size, frame.get_payload_as_memoryview()[:OVERSIZED_HEAD_BYTES].tobytes(),
                                "text" if mt is _TEXT else "binary")
            if self._on_first is not None:
                callback, self._on_first = self._on_first, None
                callback()
            return
        self._slow_path(ts, transport, frame, mt)

    def _slow_path(self, ts: int, transport: WSTransport, frame: WSFrame, mt: WSMsgType) -> None:
        if mt is _TEXT or mt is _BINARY:
            if self._frag is not None:
                # RFC 6455 forbids a new data message inside a fragmented one; keep what we had.
                self._flush_fragments(ts, complete=False)
            self._frag = []
            self._frag_ts = ts
            self._frag_kind = RecordKind.TEXT if mt is _TEXT else RecordKind.BINARY
            self._frag_size = 0
            self._frag_oversized = False
            self._add_fragment(frame)
            if frame.fin:
                self._flush_fragments(ts, complete=True)
        elif mt is _CONT:
            if self._frag is None:
                self._append(ts, self.conn_id, RecordKind.EVENT, encode_event(
                    Event.MALFORMED, conn=self.conn_id, problem="continuation frame with no message to continue",
                    size=frame.payload_size))
                return
            self._add_fragment(frame)
            if frame.fin:
                self._flush_fragments(ts, complete=True)
        elif mt is _CLOSE:
            # Parsed from the bytes: custom codes (3000-4999) are not members of picows's enum.
            body = frame.get_payload_as_memoryview()
            self.close_code = int.from_bytes(body[:2], "big") if len(body) >= 2 else WSCloseCode.NO_INFO.value
            self.close_reason = bytes(body[2:]).decode("utf-8", "replace")
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # PING is answered by picows (auto-pong); PONG needs nothing.

    def _add_fragment(self, frame: WSFrame) -> None:
        assert self._frag is not None
        size = frame.payload_size
        self._frag_size += size
        self.bytes += size
        if self._frag_oversized:
            return
        if self._frag_size > self._max:
            # Keep only the head, for the event: memory must stay bounded whatever the server sends.
            self._frag_oversized = True
            head = b"".join(self._frag)[:OVERSIZED_HEAD_BYTES]
            self._frag = [head]
            return
        self._frag.append(frame.get_payload_as_bytes())

    def _flush_fragments(self, ts: int, complete: bool) -> None:
        parts, self._frag = self._frag, None
        assert parts is not None
        self.messages += 1
        self.last_ns = ts
        if self._frag_oversized:
            self._oversized(self._frag_ts, self._frag_size, parts[0][:OVERSIZED_HEAD_BYTES],
                            "text" if self._frag_kind == RecordKind.TEXT else "binary", fragmented=True)
        elif complete:
            self._append(self._frag_ts, self.conn_id, self._frag_kind, b"".join(parts))
        else:
            self._append(ts, self.conn_id, RecordKind.EVENT, encode_event(
                Event.MALFORMED, conn=self.conn_id, problem="fragmented message interrupted by a new message",
                size=self._frag_size, head=b"".join(parts)[:OVERSIZED_HEAD_BYTES].decode("utf-8", "replace")))
        if self._on_first is not None:
            callback, self._on_first = self._on_first, None
            callback()

    def _oversized(self, ts: int, size: int, head: bytes, kind: str, fragmented: bool = False) -> None:
        self._append(ts, self.conn_id, RecordKind.EVENT, encode_event(
            Event.OVERSIZED, conn=self.conn_id, size=size, limit=self._max, message_kind=kind,
            fragmented=fragmented, head=head.decode("utf-8", "replace")))
