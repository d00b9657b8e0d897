"""One accepted client: the handle a FeedSource writes to, with backpressure state and counters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from picows import WSCloseCode, WSTransport

from recorder.feed.endpoints import EndpointKind
from recorder.server.framing import MAX_CLOSE_REASON as _MAX_REASON
from recorder.server.framing import OP_PING, OP_TEXT, frame, frame_header, text_header, truncate_utf8
from recorder.server.slowclient import SlowClientPolicy

CLOSE_TIMEOUT = 2.0  # how long a client gets to answer our CLOSE before the TCP connection is cut


class Subscriber:
    """A subscribed WebSocket client.

    Writing: `send_payloads` frames text payloads and hands them to the transport in ONE write;
    `write_frames` takes bytes that are already framed. Both refuse (return False) once the connection
    is closing; neither waits. `writable` is False while the transport's buffer is over its high-water
    mark (picows `pause_writing`) or the connection is closing; `await wait_writable()` resumes when it
    drains (True) or the connection ends (False). A source that ignores `writable` can buffer without
    bound, so live sources drop instead (and count it with `add_dropped`).

    Counters: `sent` market messages and `frames` data frames handed to the transport, `sent_bytes` on
    the wire (headers included), `dropped`, `pongs` received, `faults` by name.

    Slow clients: with a `SlowClientPolicy` that has a `send_timeout`, a client that stays paused that long
    is closed with the policy's code and reason, and `cut_slow` is set (see recorder/server/slowclient.py).
    """

    __slots__ = (
        "__weakref__", "_close_handle", "_closing", "_cut_handle", "_disconnected", "_on_close", "_paused",
        "_policy", "_transport", "_waiters", "_write", "close_code", "close_reason", "closed_at", "closed_by",
        "connected_at", "contracts", "cut_slow", "dropped", "faults", "frames", "id", "kind", "peer", "pongs",
        "sent", "sent_bytes", "state", "tap", "token_id",
    )

    def __init__(self, sub_id: int, kind: EndpointKind, contracts: tuple[str, ...], token_id: str | None,
                 transport: WSTransport, on_close: Callable[[Subscriber], None] | None = None,
                 policy: SlowClientPolicy | None = None) -> None:
        self.id = sub_id
        self.kind = kind
        self.contracts = contracts
        self.token_id = token_id
        self._transport = transport
        underlying = transport.underlying_transport
        self._write = underlying.write
        peer = underlying.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.connected_at = time.time()
        self.closed_at: float | None = None
        self.state = "open"
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by: str | None = None  # "server", "client", or "abort" (no close handshake)
        self.sent = 0
        self.sent_bytes = 0
        self.frames = 0
        self.dropped = 0
        self.pongs = 0
        self.faults: Counter[str] = Counter()
        self._paused = False
        self._closing = False
        self._disconnected = False
        self._waiters: list[asyncio.Future[None]] = []
        self._close_handle: asyncio.TimerHandle | None = None
        self._on_close = on_close
        self._policy = policy
        self._cut_handle: asyncio.TimerHandle | None = None
        self.cut_slow = False  # closed by the slow-client policy
        # Sees every byte handed to the transport (ime-sim --sent-log); None costs one check per write.
        self.tap: Callable[[int, bytes | bytearray | memoryview], None] | None = None

    def __repr__(self) -> str:
        return (f"Subscriber(id={self.id}, kind={self.kind.value}, contracts={len(self.contracts)}, "
                f"peer={self.peer}, state={self.state})")

    # -- state ---------------------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return not (self._paused or self._closing)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closing(self) -> bool:
        """True once nothing more may be written: a CLOSE was sent or received, or the link is gone."""
        return self._closing

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    def write_buffer_size(self) -> int:
        return 0 if self._disconnected else int(self._transport.underlying_transport.get_write_buffer_size())

    async def wait_writable(self) -> bool:
        """Wait until more can be written (True) or the connection is closing or gone (False)."""
        while self._paused and not self._closing:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return not self._closing

    async def wait_closed(self) -> None:
        while not self._disconnected:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- writing -------------------------------------------------------------------------------------

    def write_frames(self, data: bytes | bytearray | memoryview, messages: int, frames: int | None = None) -> bool:
        """Write already-framed bytes holding `messages` market messages (and `frames` frames in all)."""
        if self._closing:
            return False
        self._write(data)
        if self.tap is not None:
            self.tap(self.id, data)
        self.sent += messages
        self.frames += messages if frames is None else frames
        self.sent_bytes += len(data)
        return True

    def send_payloads(self, payloads: Sequence[bytes], opcode: int = OP_TEXT) -> bool:
        """Frame each payload as one FIN message of `opcode` and write them all in one transport write."""
        if self._closing or not payloads:
            return not self._closing
        parts: list[bytes] = []
        append = parts.append
        if opcode == OP_TEXT:
            for p in payloads:
                append(text_header(len(p)))
                append(p)
        else:
            for p in payloads:
                append(frame_header(len(p), opcode))
                append(p)
        return self.write_frames(b"".join(parts), len(payloads))

    def send_ping(self, payload: bytes = b"") -> bool:
        return self.write_frames(frame(payload, OP_PING), 0, 0)

    def add_dropped(self, n: int = 1) -> None:
        self.dropped += n

    def count_fault(self, name: str, n: int = 1) -> None:
        self.faults[name] += n

    # -- ending --------------------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake: CLOSE(code, reason) now, TCP close when the client answers."""
        if self._closing:
            return
        self._closing = True
        self.state = "closing"
        self.close_code, self.close_reason, self.closed_by = code, reason, "server"
        self._transport.send_close(WSCloseCode(code), truncate_utf8(reason, _MAX_REASON))
        # The client should echo the CLOSE; if it never does (or never reads), cut the connection anyway.
        self._close_handle = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._transport.disconnect, False)
        self._wake()

    def abort(self) -> None:
        """Drop the TCP connection now, without a CLOSE frame; anything still buffered here is lost."""
        self._closing = True
        if self.closed_by is None:
            self.closed_by = "abort"
        self._transport.disconnect(graceful=False)
        self._wake()

    async def drain_and_abort(self, timeout: float = 5.0) -> None:
        """Stop writing, let the buffer reach the kernel, then drop the connection without a CLOSE.

        What `sent` counts has then really been handed to the kernel, so a client that reads to the end
        receives all of it before the connection breaks.
        """
        self._closing = True
        self.closed_by = "abort"
        self._wake()
        deadline = time.monotonic() + timeout
        while not self._disconnected and self.write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if not self._disconnected:
            self._transport.disconnect(graceful=False)

    # -- called by the server's listener -------------------------------------------------------------

    def _on_pause(self) -> None:
        self._paused = True
        timeout = self._policy.send_timeout if self._policy is not None else None
        if timeout is not None and self._cut_handle is None and not self._closing:
            self._cut_handle = asyncio.get_running_loop().call_later(timeout, self._cut_if_still_paused)

    def _on_resume(self) -> None:
        self._paused = False
        if self._cut_handle is not None:
            self._cut_handle.cancel()
            self._cut_handle = None
        self._wake()

    def _cut_if_still_paused(self) -> None:
        self._cut_handle = None
        if not self._paused or self._closing or self._policy is None:
            return
        self.cut_slow = True
        self.close(self._policy.close_code, self._policy.reason())

    def _on_client_close(self, code: int | None, reason: str) -> None:
        if not self._closing:
            # The client started the handshake: echo its code, then close our side.
            self._closing = True
            self.close_code, self.close_reason, self.closed_by = code, reason, "client"
            self._transport.send_close(WSCloseCode(code if code else 1000))
        self._transport.disconnect()
        self._wake()

    def _on_disconnected(self) -> None:
        self._disconnected = True
        self._closing = True
        self.state = "closed"
        self.closed_at = time.time()
        if self.closed_by is None:
            self.closed_by = "client"  # the peer went away without a close handshake
        for handle in (self._close_handle, self._cut_handle):
            if handle is not None:
                handle.cancel()
        self._wake()
        if self._on_close is not None:
            self._on_close(self)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "contracts": list(self.contracts),
            "peer": self.peer,
            "state": self.state,
            "connected_at": self.connected_at,
            "closed_at": self.closed_at,
            "sent": self.sent,
            "frames": self.frames,
            "bytes": self.sent_bytes,
            "dropped": self.dropped,
            "pongs": self.pongs,
            "faults": dict(self.faults),
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            "cut_slow": self.cut_slow,
        }
