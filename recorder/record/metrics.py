"""Prometheus text exposition of the recorder's figures, and the tiny HTTP server that serves it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from recorder.record.status import ShardView

_METRICS: tuple[tuple[str, str, str, Callable[[ShardView, int], float]], ...] = (
    ("ime_recorder_up", "gauge", "1 when the shard's worker is running",
     lambda v, _: 1.0 if v.state == "running" else 0.0),
    ("ime_recorder_connections_open", "gauge", "open WebSocket connections", lambda v, _: v.connections_open),
    ("ime_recorder_connections", "gauge", "connection groups (open or reconnecting)", lambda v, _: v.connections),
    ("ime_recorder_messages_total", "counter", "messages received", lambda v, _: v.total_messages),
    ("ime_recorder_received_bytes_total", "counter", "payload bytes received", lambda v, _: v.total_bytes),
    ("ime_recorder_messages_per_second", "gauge", "recent message rate", lambda v, _: v.msg_rate),
    ("ime_recorder_reconnects_total", "counter", "reconnect attempts", lambda v, _: v.total_reconnects),
    ("ime_recorder_restarts_total", "counter", "worker restarts", lambda v, _: v.restarts),
    ("ime_recorder_records_written_total", "counter", "records written to segments", lambda v, _: v.total_records),
    ("ime_recorder_disk_bytes_total", "counter", "compressed bytes written", lambda v, _: v.total_disk),
    ("ime_recorder_files_sealed_total", "counter", "segment files sealed", lambda v, _: v.total_files),
    ("ime_recorder_backlog_bytes", "gauge", "raw bytes waiting for the writer thread", lambda v, _: v.backlog_bytes),
    ("ime_recorder_rejected_contracts", "gauge", "contracts the server refused", lambda v, _: len(v.rejected)),
    ("ime_recorder_last_message_age_seconds", "gauge", "seconds since the last message (-1: none yet)",
     lambda v, now: (now - v.last_message_ns) / 1e9 if v.last_message_ns else -1.0),
)


def render(views: list[ShardView], now_ns: int | None = None) -> str:
    now = now_ns if now_ns is not None else time.time_ns()
    lines: list[str] = []
    for name, kind, help_text, get in _METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for v in views:
            value = float(get(v, now))
            lines.append(f'{name}{{shard="{v.shard}"}} {value:.6g}' if value != int(value)
                         else f'{name}{{shard="{v.shard}"}} {int(value)}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics on 127.0.0.1 (by default); anything else is 404. One response per connection."""

    def __init__(self, views: Callable[[], list[ShardView]], host: str = "127.0.0.1", port: int = 0,
                 extra: Callable[[], str] | None = None) -> None:
        self._views = views
        self._extra = extra  # LIVE-WIRING: the live hub's figures
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if request.startswith(b"GET ") and target.split(b"?")[0] in (b"/metrics", b"/"):
                body = (render(self._views()) + (self._extra() if self._extra is not None else "")).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            else:
                body = b"not found\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
