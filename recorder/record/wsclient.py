"""One recording connection's socket work with picows: connect, watch until it ends, probe a single contract.

I/O only: what to do with each outcome is decided by `connection.py` and the planner. Outcomes are typed,
so the worker can `match` on them instead of catching picows's exceptions itself.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from picows import WSCloseCode, WSError, WSHandshakeError, WSTransport, ws_connect

from recorder import clock
from recorder.model.settings import ConnectionSettings
from recorder.record.connection import Failure
from recorder.record.listener import RecordingListener
from recorder.record.sink import Append

_HIDDEN_HEADERS = {"set-cookie", "authorization", "cookie", "proxy-authorization"}


@dataclass(frozen=True, slots=True)
class Connected:
    transport: WSTransport
    listener: RecordingListener


@dataclass(frozen=True, slots=True)
class HandshakeAnswered:
    """The upgrade was answered with an HTTP status other than 101 (None: not HTTP at all)."""

    status: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class NotConnected:
    failure: Failure
    detail: str


ConnectResult = Connected | HandshakeAnswered | NotConnected


async def connect(url: str, token: str, settings: ConnectionSettings, ssl_context: ssl.SSLContext | None,
                  conn_id: int, sink: Append, on_first_message: Callable[[], None] | None) -> ConnectResult:
    try:
        transport, listener = await ws_connect(
            functools.partial(RecordingListener, conn_id, sink, settings.max_message_bytes, on_first_message),
            url,
            ssl_context=ssl_context,
            websocket_handshake_timeout=settings.handshake_timeout_s,
            enable_auto_ping=settings.ping_interval_s > 0,
            auto_ping_idle_timeout=settings.ping_interval_s or 10,
            auto_ping_reply_timeout=settings.ping_timeout_s,
            max_frame_size=max(4 * settings.max_message_bytes, 16 << 20),
            extra_headers={"Authorization": token},
            logger_name="client",
        )
    except WSHandshakeError as exc:
        status = int(exc.response.status) if exc.response is not None else None
        return HandshakeAnswered(status, str(exc))
    except TimeoutError as exc:
        return NotConnected(Failure.TIMEOUT, f"{type(exc).__name__}: {exc}")
    except (OSError, WSError, ValueError) as exc:
        failure = Failure.NETWORK if isinstance(exc, OSError) else Failure.NOT_WEBSOCKET
        return NotConnected(failure, f"{type(exc).__name__}: {exc}")
    if listener is None:
        # picows: the peer hung up before answering the upgrade.
        return NotConnected(Failure.NOT_WEBSOCKET, "the server closed the connection before answering the upgrade")
    assert isinstance(listener, RecordingListener)
    return Connected(transport, listener)


async def watch(transport: WSTransport, listener: RecordingListener, settings: ConnectionSettings,
                on_accepted: Callable[[bool], None], on_idle: Callable[[], None]) -> tuple[int, str]:
    """Wait for the connection to end: (close code, reason). Counts it as accepted after the probe window."""
    probe_deadline = time.monotonic() + settings.probe_s
    idle_ns = int(settings.idle_timeout_s * 1e9)
    opened_ns = clock.time_ns()
    waiter = asyncio.ensure_future(transport.wait_disconnected())
    try:
        while True:
            done, _ = await asyncio.wait([waiter], timeout=0.5)
            if done:
                break
            if time.monotonic() >= probe_deadline:
                # Open past the probe window without a refusal: the token and contracts are good, even on
                # a quiet market (not data, so it does not reset the backoff).
                on_accepted(False)
            if idle_ns and clock.time_ns() - max(listener.last_ns, opened_ns) > idle_ns:
                on_idle()
                transport.send_close(WSCloseCode.GOING_AWAY, b"idle timeout")
                transport.disconnect(False)
        exc = waiter.exception()
    except asyncio.CancelledError:
        transport.disconnect(False)
        raise
    if listener.close_code is not None:
        return listener.close_code, listener.close_reason
    handshake = transport.close_handshake
    if handshake is not None and handshake.recv is not None:
        return int(handshake.recv.code), handshake.recv.reason or ""
    if exc is not None:
        return 1006, f"{type(exc).__name__}: {exc}"
    return 1006, "connection dropped without a close frame"


async def probe(url: str, token: str, settings: ConnectionSettings, ssl_context: ssl.SSLContext | None,
                conn_id: int) -> tuple[bool | None, int]:
    """One connection that records nothing: (True if the server keeps it, False if it refuses it, None if
    neither could be told), and the close code seen."""
    got_data = asyncio.Event()
    result = await connect(url, token, settings, ssl_context, conn_id, lambda *_: None, got_data.set)
    match result:
        case HandshakeAnswered(status=status):
            return (False if status in (401, 403) else None), status or 0
        case NotConnected():
            return None, 0
        case Connected(transport=transport, listener=listener):
            pass
    closed = asyncio.ensure_future(transport.wait_disconnected())
    data = asyncio.ensure_future(got_data.wait())
    await asyncio.wait([closed, data], timeout=settings.probe_s, return_when=asyncio.FIRST_COMPLETED)
    data.cancel()
    code = listener.close_code or 1000
    if closed.done() and listener.close_code == 1008:
        return False, code
    if not closed.done():
        transport.send_close(WSCloseCode.OK, b"probe done")
        transport.disconnect(False)
        closed.cancel()
        return True, code
    return (True if got_data.is_set() else None), code


def addresses(transport: WSTransport) -> dict[str, str]:
    """Both ends of the TCP connection: lets an operator match a recording to server-side logs."""
    out = {}
    for key, info in (("local", "sockname"), ("peer", "peername")):
        addr = transport.underlying_transport.get_extra_info(info)
        if isinstance(addr, tuple) and len(addr) >= 2:
            out[key] = f"{addr[0]}:{addr[1]}"
    return out


def response_headers(transport: WSTransport) -> dict[str, str]:
    headers = transport.response.headers
    return {str(k): str(v) for k, v in headers.items() if k.lower() not in _HIDDEN_HEADERS}
