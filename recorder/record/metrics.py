"""Prometheus metrics (prometheus-client, a custom collector over the supervisor's figures) and /healthz.

The collector reads the supervisor's aggregated `ShardView`s and the operations figures at scrape time:
nothing is mirrored into client-side metric objects, so a restarted worker's totals are exactly what the
status table shows. The HTTP server is a tiny asyncio one on the supervisor's loop (no thread), which is
also why /healthz answering at all proves the supervisor is not hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from recorder import clock as wall_clock
from recorder.model.settings import DEFAULTS
from recorder.record.status import ShardView

_SHARD: tuple[tuple[str, str, str, Callable[[ShardView, int], float]], ...] = (
    ("ime_recorder_up", "gauge", "1 when the shard's worker is running and reporting",
     lambda v, _: 1.0 if v.state == "running" and not v.stale(time.monotonic()) else 0.0),
    ("ime_recorder_contracts", "gauge", "contracts assigned to the shard (0: an empty shard, never started)",
     lambda v, _: v.contracts),
    ("ime_recorder_copies", "counter", "redundant copies recorded as receipts", lambda v, _: v.total_copies),
    ("ime_recorder_connections_open", "gauge", "open WebSocket connections", lambda v, _: v.connections_open),
    ("ime_recorder_connections", "gauge", "WebSocket connections, open or reconnecting (groups x --redundancy)",
     lambda v, _: v.connections),
    ("ime_recorder_groups", "gauge", "connection groups (contracts on one connection, recorded by each copy)",
     lambda v, _: v.groups),
    ("ime_recorder_groups_disconnected", "gauge",
     "connection groups with no copy connected: what they publish now is missed", lambda v, _: v.groups_disconnected),
    ("ime_recorder_disconnected_seconds", "counter",
     "seconds summed over groups with no copy connected while the worker ran", lambda v, _: v.total_downtime_ns / 1e9),
    ("ime_recorder_messages", "counter", "messages received", lambda v, _: v.total_messages),
    ("ime_recorder_received_bytes", "counter", "payload bytes received", lambda v, _: v.total_bytes),
    ("ime_recorder_messages_per_second", "gauge", "recent message rate", lambda v, _: v.msg_rate),
    ("ime_recorder_reconnects", "counter", "reconnect attempts", lambda v, _: v.total_reconnects),
    ("ime_recorder_restarts", "counter", "worker restarts", lambda v, _: v.restarts),
    ("ime_recorder_records_written", "counter", "records written to segments", lambda v, _: v.total_records),
    ("ime_recorder_disk_bytes", "counter", "compressed bytes written", lambda v, _: v.total_disk),
    ("ime_recorder_files_sealed", "counter", "segment files sealed", lambda v, _: v.total_files),
    ("ime_recorder_backlog_bytes", "gauge", "raw bytes waiting for the writer thread", lambda v, _: v.backlog_bytes),
    ("ime_recorder_paused", "gauge", "1 while the worker stopped reading because the writer's backlog is full",
     lambda v, _: 1.0 if v.paused else 0.0),
    ("ime_recorder_rejected_contracts", "gauge", "contracts the server refused", lambda v, _: len(v.rejected)),
    ("ime_recorder_last_message_age_seconds", "gauge", "seconds since the last message (-1: none yet)",
     lambda v, now: (now - v.last_message_ns) / 1e9 if v.last_message_ns else -1.0),
)


@dataclass(frozen=True, slots=True)
class Figure:
    """One recorder-wide figure (not per shard): name without `_total`, kind, help, value."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    value: float


class RecorderCollector(Collector):
    def __init__(self, views: Callable[[], list[ShardView]], figures: Callable[[], list[Figure]] = lambda: [],
                 clock: Callable[[], int] = wall_clock.time_ns) -> None:
        self._views = views
        self._figures = figures
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        views = self._views()
        now = self._clock()
        for name, kind, help_text, get in _SHARD:
            family: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(name, help_text, labels=["shard"]) if kind == "counter"
                else GaugeMetricFamily(name, help_text, labels=["shard"]))
            for v in views:
                family.add_metric([str(v.shard)], float(get(v, now)))
            yield family
        for f in self._figures():
            if f.kind == "counter":
                yield CounterMetricFamily(f.name, f.help, value=f.value)
            else:
                yield GaugeMetricFamily(f.name, f.help, value=f.value)


def render(views: list[ShardView], figures: list[Figure] | None = None, now_ns: int | None = None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    clock = wall_clock.time_ns if now_ns is None else (lambda: now_ns)
    registry.register(RecorderCollector(lambda: views, lambda: figures or [], clock))
    return generate_latest(registry).decode()


class MetricsServer:
    """GET /metrics and GET /healthz on 127.0.0.1 (by default); anything else is 404.

    `health` returns (healthy, one line of why): /healthz answers 200 or 503 with that line.
    """

    def __init__(self, views: Callable[[], list[ShardView]], host: str = DEFAULTS.run.metrics_host, port: int = 0,
                 figures: Callable[[], list[Figure]] = lambda: [],
                 health: Callable[[], tuple[bool, str]] = lambda: (True, "ok")) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RecorderCollector(views, figures))
        self._health = health
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

    def respond(self, target: bytes) -> tuple[bytes, bytes, bytes]:
        path = target.split(b"?")[0]
        if path in (b"/metrics", b"/"):
            return b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)
        if path == b"/healthz":
            ok, why = self._health()
            return (b"200 OK" if ok else b"503 Service Unavailable"), b"text/plain", f"{why}\n".encode()
        return b"404 Not Found", b"text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if request.startswith(b"GET "):
                status, ctype, body = self.respond(target)
            else:
                status, ctype, body = b"405 Method Not Allowed", b"text/plain", b"GET only\n"
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, ctype, len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
