"""The hub process: first arrivals from every worker in, the relay and the NATS publisher out.

It is a process of its own so that neither serving clients nor talking to NATS can take CPU time or event
loop turns from a worker's receive path, and so that its failure is a restart, never a gap in recording. It
runs at the lowest CPU priority (SCHED_IDLE, record/timeslice.py: yield_cpu): when the machine is short of CPU
the hub falls behind, the workers drop what it cannot take (counted, and the relay's clients told), and the
recording loses nothing.
Workers connect to its Unix socket (see record/live.py and live/wire.py); it talks to the supervisor over
a multiprocessing pipe: `ready` once listening, `status` every second, `fatal` if it cannot start; the supervisor
sends `stop`, and `contracts` after a reload changed the contracts being recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from recorder.feed.endpoints import EndpointKind
from recorder.live.fanout import Fanout
from recorder.live.relay import LiveSource
from recorder.live.route import Router
from recorder.live.wire import WireError
from recorder.record.childproc import ignore_group_signals
from recorder.record.live import LiveSettings
from recorder.server.server import FeedServer, ServerConfig

log = logging.getLogger("recorder.live")

STATUS_INTERVAL_S = 1.0
GAP_LOG_INTERVAL_S = 10.0
DRAIN_S = 2.0  # on stop, how long worker links get to deliver their last bytes


class _WorkerLink(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.link = hub.fanout.new_link()  # this worker's stream: a partial record, its shard and pid
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.hub.links.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.hub.on_data(self.link, data)
        except WireError as exc:
            log.error("dropping a worker link: %s", exc)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.links.discard(self)
        self.hub.link_closed.set()


class Hub:
    def __init__(self, settings: LiveSettings, pipe: Connection | None) -> None:
        self.settings = settings
        self.pipe = pipe
        self.kind = EndpointKind(settings.kind)
        self.links: set[_WorkerLink] = set()
        self.link_closed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.next_seq: dict[tuple[int, int], int] = {}
        self.received = 0
        self.worker_dropped = 0  # messages workers could not hand over (seen as sequence gaps)
        self._next_gap_log = 0.0
        self.shard_sets = {shard: frozenset(c) for shard, c in enumerate(settings.shard_contracts)}
        self.source: LiveSource | None = None
        self.server: FeedServer | None = None
        self.publisher: Any = None  # recorder.live.publisher.NatsPublisher when --publish is on
        self.relay_error: str | None = None
        self.fanout = Fanout(Router())

    # -- the data path -------------------------------------------------------------------------------

    def on_data(self, link: Any, data: bytes) -> None:
        """What a worker sent: decoded, routed and framed by the fanout, then to the relay and the publisher.

        Raises WireError when the stream is not a worker's (the caller drops the link).
        """
        source = self.source
        if source is not None:
            source.prepare()
        batch = self.fanout.feed(link, data, self.publisher is not None)
        if batch is None:
            return
        count, first, last, rows, contracts = batch
        shard = link.shard or 0
        key = (shard, link.pid or 0)
        # A worker numbers its messages 0, 1, 2, …: whatever it could not hand over shows as missing numbers.
        first = self.next_seq.get(key, first)
        missed = last + 1 - first - count
        self.next_seq[key] = last + 1
        if missed:
            self.worker_dropped += missed
            if source is not None:
                source.cut_for_gap(missed, self.shard_sets.get(shard))
            now = time.monotonic()
            if now >= self._next_gap_log:  # at most one line per interval: a starved machine would flood the log
                self._next_gap_log = now + GAP_LOG_INTERVAL_S
                outputs = [text for on, text in ((source is not None, "relay clients were cut to reconnect"),
                                                 (self.publisher is not None, "NATS will not have them")) if on]
                log.warning("shard %d could not hand %d messages to the live hub in time (short of CPU); %s; the "
                            "recording has them", shard, missed, ", ".join(outputs) or "nothing was serving them")
        self.received += count
        if source is not None:
            try:
                source.deliver(self.fanout.take())
            except Exception:  # one broken client must not take the feed from the others
                log.exception("relay delivery failed")
        if self.publisher is not None:
            self.publisher.enqueue(rows, contracts)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.pipe is not None:
            loop.add_reader(self.pipe.fileno(), self._on_pipe)
        s = self.settings
        unix = await loop.create_unix_server(lambda: _WorkerLink(self), s.address)
        ready: dict[str, Any] = {"type": "ready", "pid": os.getpid()}
        if s.relay_port is not None:
            self.source = LiveSource(self.kind, s.contracts, s.relay_client_buffer, fanout=self.fanout)
            self.server = FeedServer(ServerConfig(host=s.relay_host or "127.0.0.1", port=s.relay_port, http_port=0,
                                                  static_token=s.relay_token, require_token=s.relay_token is not None),
                                     self.source)
            try:
                await self.server.start()
                ready["relay_url"] = self.server.base_url
                ready["stats_url"] = self.server.stats_url
            except OSError as exc:
                # Recording goes on without the relay; the operator is told why.
                self.relay_error = f"relay cannot listen on {s.relay_host}:{s.relay_port}: {exc.strerror}"
                self.source = self.server = None
                log.error("%s; recording goes on without it", self.relay_error)
        if s.nats_url is not None:
            from recorder.live.publisher import NatsPublisher

            self.publisher = NatsPublisher(s)
            self.publisher.start()
        self._send(ready)
        status = asyncio.create_task(self._status_loop())
        await self.stopping.wait()
        unix.close()
        deadline = time.monotonic() + DRAIN_S
        while self.links and time.monotonic() < deadline:
            self.link_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link_closed.wait(), max(0.0, deadline - time.monotonic()))
        if self.server is not None:
            await self.server.close(1001, "recorder stopping", timeout=1.0)
        if self.publisher is not None:
            await self.publisher.close()
        status.cancel()
        self._send(self._status())
        return 0

    def _on_pipe(self) -> None:
        assert self.pipe is not None
        try:
            while self.pipe.poll():
                msg = self.pipe.recv()
                if isinstance(msg, dict) and msg.get("type") == "stop":
                    self.stopping.set()
                elif isinstance(msg, dict) and msg.get("type") == "contracts":
                    self.set_contracts(tuple(msg["contracts"]), tuple(tuple(c) for c in msg["shard_contracts"]))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.stopping.set()  # the supervisor is gone

    def set_contracts(self, contracts: tuple[str, ...], shard_contracts: tuple[tuple[str, ...], ...]) -> None:
        """A reload changed the contracts being recorded: the relay accepts subscriptions to exactly these."""
        self.shard_sets = {shard: frozenset(c) for shard, c in enumerate(shard_contracts)}
        if self.source is not None:
            self.source.set_contracts(contracts)

    def _send(self, msg: dict[str, Any]) -> None:
        if self.pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                self.pipe.send(msg)

    def _status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "status", "received": self.received, "worker_dropped": self.worker_dropped,
                               "links": len(self.links)}
        if self.server is not None and self.source is not None:
            out.update(relay_clients=len(self.server.subscribers), relay_sent=self.source.sent,
                       relay_cut=self.source.cut, relay_gap_cut=self.source.gap_cut,
                       relay_error_cut=self.source.errors, relay_protocol_errors=self.server.protocol_errors)
        if self.publisher is not None:
            out.update(self.publisher.status())
        return out

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self._send(self._status())


PROCESS_NAME = "ime-live-hub"  # what top/ps -o comm show, so operators can tell the hub from the workers


def _set_process_name(name: str) -> None:
    with contextlib.suppress(Exception):  # Linux only; cosmetic
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


class _PipeLog(logging.Handler):
    """Log lines go to the supervisor, which prints them above its status table, as workers' do."""

    def __init__(self, pipe: Connection) -> None:
        super().__init__()
        self.pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pipe.send({"type": "log", "line": self.format(record)})
        except Exception:
            self.handleError(record)


def hub_main(settings: LiveSettings, pipe: Connection, log_level: int = logging.INFO) -> None:
    """Entry point of the hub process (multiprocessing spawn target)."""
    # The supervisor decides when we stop (after the workers, so that their last messages are relayed), whatever a
    # terminal or `kill -- -PGID` sends the whole process group (record/childproc.py).
    ignore_group_signals()
    _set_process_name(PROCESS_NAME)
    handler = _PipeLog(pipe)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s live: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    logging.getLogger("recorder.server").setLevel(logging.WARNING)
    logging.getLogger("picows").setLevel(logging.ERROR)
    # Recording first: this process runs under SCHED_IDLE (record/timeslice.py), set by the supervisor right after
    # starting it (live/control.py), so that even the imports above yielded to the workers' start-up.
    # As in the workers (worker_main): what is imported lives as long as the process, so a full collection need
    # not walk it. Traced at 20k msgs/s, one unfrozen full collection held the hub for 6.8 ms.
    gc.freeze()
    code = uvloop.run(Hub(settings, pipe).run())
    pipe.close()
    os._exit(code)
