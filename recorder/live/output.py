"""Live outputs, worker side: hand each first arrival to the hub process without ever holding recording up.

`make_live_output(settings)` builds the one callable the worker calls for every first arrival: `live_output(ts_ns,
conn, kind, payload)`. It appends a record to a bounded in-memory buffer (about 0.5 µs a message, sends included; a
C version saved 0.3 µs of the worker's ~3.5 µs a message, which no user could tell: README, "Live fan-out") and
writes the buffer to the hub's Unix socket without blocking: the first frame of a burst at once, the rest of the
burst in one send at the end of the event-loop turn, or while a burst after a pause lasts, 40 µs into it and then at
doubling intervals up to 320 µs (a send per frame would cost the receive thread more than recording the frame, and
wake the hub for every one). When the hub is slow, restarting or gone, what does not fit is dropped and counted
(the hub also sees the gap in the sequence numbers): the segment file, not the live feed, is the record that must
be complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from recorder import clock
from recorder.live.wire import RECORD, hello
from recorder.model.record import MESSAGE_KINDS
from recorder.model.settings import LiveSettings

log = logging.getLogger("recorder.live")

LiveOutputFn = Callable[[int, int, int, bytes], None]

_RECONNECT_S = 0.1
# A frame that arrives this long after the last end-of-turn send starts a new burst and goes to the hub at once;
# the rest of the burst (one socket read can hold dozens of frames) goes in one send at the end of the loop turn.
_PAUSE_NS = 100_000
# A loop turn that buffers more than this sends it at once rather than holding it to the end of the turn.
_SEND_AT = 256 << 10
# Within a burst that followed a pause, what has waited this long goes without waiting for the end of the turn:
# a burst of ~20 frames takes the worker ~100 µs to record, and its early frames need not wait for the last.
# Measured at 20k msgs/s in six pairs of runs, relay p99 0.7-1.2 ms with it against 1.3-2.0 ms without, p50
# unchanged.
_BURST_SEND_NS = 40_000
# Each send within one burst waits twice as long as the one before, up to this: a burst that goes on is a feed
# at full speed, where a loop turn reads thousands of frames (~14 ms of work) and a send every 40 µs was 25k
# sends a second, each waking the hub: +0.6 µs a message on the worker and 13k hub wake-ups a second, with
# nothing gained (the hub is behind anyway). Doubling leaves a short burst's first sends where they were
# (at 0 and 40 µs) and a long one's at about one per 320 µs.
_BURST_MAX_NS = 320_000
_SOCKET_BUFFER = 4 << 20


class LiveOutput:
    """The worker's end of the hub socket. Call it on the event loop thread only."""

    __slots__ = ("_buf", "_burst_deadline", "_burst_step", "_last_flush_ns", "_loop", "_max", "_next_try", "_pack",
                 "_scheduled", "_send_at", "_seq", "_sock", "_writer_on", "address", "dropped", "sent", "shard")

    def __init__(self, address: str, shard: int, max_buffer: int) -> None:
        self.address = address
        self.shard = shard
        self._max = max_buffer
        self._send_at = min(_SEND_AT, max_buffer // 2)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_on = False
        self._next_try = 0.0
        self.sent = 0
        self._buf = bytearray()
        self._seq = 0
        self._scheduled = False
        self._pack = RECORD.pack
        self._last_flush_ns = 0
        self._burst_deadline = 0
        self._burst_step = _BURST_SEND_NS
        self.dropped = 0

    def __call__(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None:
        if kind not in MESSAGE_KINDS:  # events and receipts are not market data for consumers
            return
        seq = self._seq
        self._seq = seq + 1
        buf = self._buf
        if len(buf) > self._send_at:  # one comparison on the common path; the bound is checked behind it
            if len(buf) > self._max:
                self.dropped += 1
                return
            self._send_now()
        buf += self._pack(len(payload), seq, ts_ns, conn, kind)
        buf += payload
        if self._scheduled:  # not the first of this loop turn: it goes with the rest of the turn's frames
            if self._burst_deadline and ts_ns > self._burst_deadline:
                step = self._burst_step = min(self._burst_step * 2, _BURST_MAX_NS)
                self._burst_deadline = ts_ns + step
                self._send_now()
            return
        self._scheduled = True
        self._schedule()
        if ts_ns - self._last_flush_ns > _PAUSE_NS:
            self._burst_step = _BURST_SEND_NS
            self._burst_deadline = ts_ns + _BURST_SEND_NS
            self._send_now()

    def _schedule(self) -> None:
        """The first frame of a loop turn: the rest of the turn goes in one send at its end."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._flush)

    # -- the socket --------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._scheduled = False
        self._burst_deadline = 0
        self._last_flush_ns = clock.time_ns()
        self._send_now()

    def _send_now(self) -> None:
        try:
            self._send()
        except Exception:  # never into the receive path: recording goes on whatever happens here
            log.exception("live output failed; dropping its buffer")
            self._reset()
            self._buf.clear()

    def _send(self) -> None:
        buf = self._buf
        if not buf:
            return
        sock = self._sock
        if sock is None:
            sock = self._connect()
            if sock is None:
                # The hub is not listening (yet: workers start beside it, and it restarts after a crash). Keep
                # what waits, within the same bound as always (new messages are dropped past it), and try again.
                if self._loop is not None and not self._scheduled:
                    self._scheduled = True
                    self._loop.call_later(_RECONNECT_S, self._flush)
                return
        if self._writer_on:
            return  # the writability callback will send
        try:
            sent = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._reset()
            buf.clear()
            return
        del buf[:sent]
        self.sent += sent
        if buf and self._loop is not None:
            self._writer_on = True
            self._loop.add_writer(sock, self._on_writable)

    def _on_writable(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_writer(self._sock)
        self._writer_on = False
        self._flush()

    def _connect(self) -> socket.socket | None:
        now = time.monotonic()
        if now < self._next_try:
            return None
        self._next_try = now + _RECONNECT_S
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            # Non-blocking before connect: a Unix connect blocks while the listener's backlog is full, and this
            # runs in the receive path; without blocking it completes at once or fails (EAGAIN: try later).
            sock.setblocking(False)
            sock.connect(self.address)
            sock.send(hello(self.shard, os.getpid()))  # 10 bytes into an empty buffer
        except OSError:
            sock.close()
            return None
        self._sock = sock
        return sock

    def _reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._writer_on and self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(sock)
            self._writer_on = False
            sock.close()

    def close(self, timeout: float = 1.0) -> None:
        """Send what is buffered (waiting at most `timeout`), then hang up; the worker calls this on stop."""
        sock = self._sock
        if sock is None:
            self._buf.clear()
            return
        if self._writer_on and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sock)
            self._writer_on = False
        try:
            sock.settimeout(timeout)
            sock.sendall(self._buf)
        except OSError:
            pass
        self._buf.clear()
        self._sock = None
        sock.close()


def make_live_output(settings: LiveSettings | None) -> LiveOutputFn | None:
    """The worker's live output, or None when neither --relay nor --publish is on."""
    if settings is None or not settings.enabled:
        return None
    return LiveOutput(settings.address, settings.shard, settings.worker_buffer_bytes)


def close_live_output(output: LiveOutputFn | None, timeout: float = 1.0) -> None:
    if isinstance(output, LiveOutput):
        output.close(timeout)


def live_handed(output: LiveOutputFn | None) -> int:
    """Messages given to the live output so far (its sequence number), whether the hub got them or not: what the
    supervisor checks NATS's confirmations against at the end."""
    return int(output._seq) if isinstance(output, LiveOutput) else 0
