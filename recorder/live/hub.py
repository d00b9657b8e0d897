"""The hub process: first arrivals from every worker in, the relay and the NATS publisher out.

It is a process of its own so that neither serving clients nor talking to NATS can take CPU time or event
loop turns from a worker's receive path, and so that its failure is a restart, never a gap in recording. It
runs at the lowest CPU priority (SCHED_IDLE, record/timeslice.py: yield_cpu): when the machine is short of CPU
the hub falls behind, the workers drop what it cannot take (counted, and the relay's clients told), and the
recording loses nothing.
Workers connect to its Unix socket (live/output.py and live/wire.py); it talks to the supervisor over its pipe
(live/messages.py): `HubReady` once listening, `HubStatus` every second; the supervisor sends `Stop`, and
`HubContracts` after a reload changed the contracts being recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from recorder.child import ChildLink, Stop, run_child
from recorder.feed.endpoints import EndpointKind
from recorder.live.fanout import Fanout
from recorder.live.messages import HubContracts, HubReady, HubStatus, RelayFigures
from recorder.live.publisher import NatsPublisher
from recorder.live.relay import LiveSource
from recorder.live.route import Router
from recorder.live.wire import WireError
from recorder.model.settings import LiveSettings
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
    def __init__(self, settings: LiveSettings, link: ChildLink | None) -> None:
        self.settings = settings
        self.link = link
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
        self.publisher: NatsPublisher | None = None  # --publish
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
            self._gap(shard, missed)
        self.received += count
        if source is not None:
            try:
                source.deliver(self.fanout.take())
            except Exception:  # one broken client must not take the feed from the others
                log.exception("relay delivery failed")
        if self.publisher is not None:
            self.publisher.enqueue(rows, contracts)

    def _gap(self, shard: int, missed: int) -> None:
        """`missed` messages of a shard never reached the hub: its relay clients are cut, and the operator told."""
        self.worker_dropped += missed
        if self.source is not None:
            self.source.cut_for_gap(missed, self.shard_sets.get(shard))
        now = time.monotonic()
        if now >= self._next_gap_log:  # at most one line per interval: a starved machine would flood the log
            self._next_gap_log = now + GAP_LOG_INTERVAL_S
            outputs = [text for on, text in ((self.source is not None, "relay clients were cut to reconnect"),
                                             (self.publisher is not None, "NATS will not have them")) if on]
            log.warning("shard %d could not hand %d messages to the live hub in time (short of CPU); %s; the "
                        "recording has them", shard, missed, ", ".join(outputs) or "nothing was serving them")

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.link is not None:
            self.link.start(loop, self._on_message, self.stopping.set)  # the supervisor gone: stop
        unix = await loop.create_unix_server(lambda: _WorkerLink(self), self.settings.address)
        ready = HubReady(os.getpid())
        if self.settings.relay_port is not None:
            ready = await self._start_relay(ready)
        if self.settings.nats_url is not None:
            self.publisher = NatsPublisher(self.settings)
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

    async def _start_relay(self, ready: HubReady) -> HubReady:
        s = self.settings
        self.source = LiveSource(self.kind, s.contracts, s.relay_client_buffer, fanout=self.fanout)
        self.server = FeedServer(ServerConfig(host=s.relay_host or "127.0.0.1", port=s.relay_port or 0, http_port=0,
                                              static_token=s.relay_token, require_token=s.relay_token is not None),
                                 self.source)
        try:
            await self.server.start()
        except OSError as exc:
            # Recording goes on without the relay; the operator is told why.
            self.relay_error = f"relay cannot listen on {s.relay_host}:{s.relay_port}: {exc.strerror}"
            self.source = self.server = None
            log.error("%s; recording goes on without it", self.relay_error)
            return ready
        return HubReady(ready.pid, self.server.base_url, self.server.stats_url)

    def _on_message(self, msg: object) -> None:
        match msg:
            case Stop():
                self.stopping.set()
            case HubContracts(contracts=contracts, shard_contracts=shard_contracts):
                self.set_contracts(contracts, shard_contracts)

    def set_contracts(self, contracts: tuple[str, ...], shard_contracts: tuple[tuple[str, ...], ...]) -> None:
        """A reload changed the contracts being recorded: the relay accepts subscriptions to exactly these."""
        self.shard_sets = {shard: frozenset(c) for shard, c in enumerate(shard_contracts)}
        if self.source is not None:
            self.source.set_contracts(contracts)

    def _send(self, msg: HubReady | HubStatus) -> None:
        if self.link is not None:
            self.link.send(msg)

    def _status(self) -> HubStatus:
        relay = None
        if self.server is not None and self.source is not None:
            relay = RelayFigures(clients=len(self.server.subscribers), sent=self.source.sent, cut=self.source.cut,
                                 gap_cut=self.source.gap_cut, error_cut=self.source.errors,
                                 protocol_errors=self.server.protocol_errors)
        nats = self.publisher.status() if self.publisher is not None else None
        return HubStatus(self.received, self.worker_dropped, len(self.links), relay, nats)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self._send(self._status())


def hub_main(settings: LiveSettings, log_level: int, pipe: Connection) -> None:
    """Entry point of the hub process (a child of the supervisor's: record/livehub.py).

    Recording first: this process runs under SCHED_IDLE (record/timeslice.py), set by the supervisor right after
    starting it, so that even its imports yield to the workers' start-up.
    """
    logging.getLogger("recorder.server").setLevel(logging.WARNING)
    link = ChildLink(pipe)
    # "ime-live-hub": what top and `ps -o comm` show, so that operators can tell the hub from the workers.
    run_child(link, "ime-live-hub", "live", log_level, lambda: Hub(settings, link).run())
