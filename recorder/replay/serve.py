"""`ime-replay --serve`: recorded frames, at the replay pace, to any IME client over WebSocket.

The server side is ime-sim's (`recorder.server`): same paths, same 1008 refusals, same token check. The
pacing runs on its own thread (uvloop's timers have 1 ms resolution; the pacer needs better) and hands
each due batch to the event loop, which writes every subscriber's share in one frame burst.
A client that cannot keep up is not dropped from: the replay waits for it (lateness shows that), since
losing frames would make a backtest silently wrong. But one client that never reads must not freeze the
others: a client that stays unable to take more for `send_timeout` seconds is closed (code 1013 and a
reason; the server's slow-client policy, recorder/server/slowclient.py), counted in the timing report, and
the replay goes on for the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import click
import uvloop

from recorder.errors import UserError
from recorder.feed.endpoints import EndpointKind, build_url
from recorder.model.record import RecordKind
from recorder.model.settings import parse_host_port
from recorder.replay.pacing import Pacer
from recorder.replay.player import ReplayReport, Row, play
from recorder.segment.reader import SegmentFile
from recorder.segment.selection import Selection
from recorder.server.framing import OP_BINARY, OP_TEXT
from recorder.server.server import FeedServer, ServerConfig
from recorder.server.slowclient import SlowClientPolicy
from recorder.server.subscriber import Subscriber

log = logging.getLogger("recorder.replay")

MAX_CLIENT_BUFFER = 8 << 20  # bytes queued for one client before the replay waits for it


def parse_serve(spec: str) -> tuple[str, int]:
    """'8765', ':8765', '127.0.0.1:8765', '[::1]:8765' → (host, port); the host defaults to 127.0.0.1."""
    return parse_host_port(spec, "--serve")


def recorded_subscriptions(segments: list[SegmentFile], selection: Selection) -> dict[EndpointKind, set[str]]:
    """Which contracts a client may subscribe to, per endpoint, from the file headers (or a scan)."""
    known: dict[EndpointKind, set[str]] = {EndpointKind.ID: set(), EndpointKind.NAME: set()}
    headerless = False
    for seg in segments:
        contracts = seg.header.meta.get("contracts")
        endpoint = seg.header.meta.get("endpoint")
        if isinstance(contracts, list) and endpoint in ("id", "name"):
            known[EndpointKind(endpoint)].update(str(c) for c in contracts)
        else:
            headerless = True
    if headerless:
        # Files without a subscription list (not written by ime-record): learn the identifiers by reading.
        for rec, contract in selection.rows(segments):
            if contract is not None:
                known[EndpointKind.NAME if b'"contractName":' in rec.payload else EndpointKind.ID].add(contract)
    if selection.contracts:
        for kind in known:
            known[kind] &= selection.contracts
    return known


class ReplaySource:
    """A FeedSource whose frames come from the replay thread instead of a synthetic market."""

    def __init__(self, known: dict[EndpointKind, set[str]]) -> None:
        self.known = known
        self.by_contract: dict[str, set[Subscriber]] = defaultdict(set)
        self.subscribers: set[Subscriber] = set()
        self.first_client = asyncio.Event()
        self.sent = 0
        # Set while every client can take more. Transports may only be asked on the loop's thread, so the
        # loop keeps this up to date and the replay thread just waits on it.
        self.clear = threading.Event()
        self.clear.set()

    def has_contract(self, kind: EndpointKind, identifier: str) -> bool:
        return identifier in self.known[kind]

    def on_subscribe(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        for c in sub.contracts:
            self.by_contract[c].add(sub)
        self.first_client.set()

    def on_unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        for c in sub.contracts:
            self.by_contract[c].discard(sub)

    def stats(self) -> Mapping[str, Any]:
        return {"replayed_messages_sent": self.sent}

    def dispatch(self, batch: list[Row]) -> None:
        """Runs on the event loop: each subscriber gets its contracts' frames of the batch in one write."""
        texts: dict[Subscriber, list[bytes]] = {}
        binaries: dict[Subscriber, list[bytes]] = {}
        by_contract = self.by_contract
        for rec, contract in batch:
            if contract is None or rec.kind not in (RecordKind.TEXT, RecordKind.BINARY, RecordKind.RECEIPT):
                continue  # connection events are not market data; receipts come only with --all-copies
            subs = by_contract.get(contract)
            if not subs:
                continue
            target = binaries if rec.kind == RecordKind.BINARY else texts
            for sub in subs:
                target.setdefault(sub, []).append(rec.payload)
        for sub, payloads in texts.items():
            if sub.send_payloads(payloads, OP_TEXT):
                self.sent += len(payloads)
        for sub, payloads in binaries.items():
            if sub.send_payloads(payloads, OP_BINARY):
                self.sent += len(payloads)
        if texts or binaries:
            self._check_backlog()

    def _check_backlog(self) -> None:
        # Paused = over MAX_CLIENT_BUFFER (the server's high-water mark); a client being cut no longer counts.
        if any(s.paused and not s.closing for s in self.subscribers):
            self.clear.clear()
            asyncio.get_running_loop().call_later(0.002, self._check_backlog)
        else:
            self.clear.set()


async def _serve(segments: list[SegmentFile], selection: Selection, pacer: Pacer, host: str, port: int,
                 start_mode: str, token: str | None, send_timeout: float | None) -> ReplayReport:
    known = recorded_subscriptions(segments, selection)
    if not any(known.values()):
        raise UserError("nothing to serve: no contract in the selection")
    source = ReplaySource(known)
    policy = SlowClientPolicy(send_timeout)
    server = FeedServer(ServerConfig(host=host, port=port, http_port=0, static_token=token,
                                     require_token=token is not None, write_buffer_high=MAX_CLIENT_BUFFER,
                                     write_buffer_low=MAX_CLIENT_BUFFER // 4, slow_client=policy), source)
    try:
        await server.start()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    kinds = ", ".join(f"/contract/{k.value}: {len(v)} contracts" for k, v in known.items() if v)
    click.echo(f"ime-replay: serving {server.base_url} ({kinds})", err=True)
    for kind, contracts in known.items():
        if contracts:
            sample = sorted(contracts)[:3]
            click.echo(f"  e.g. {build_url(server.base_url, kind, sample)}", err=True)
    if start_mode == "first-client":
        click.echo("ime-replay: the clock starts when the first client subscribes", err=True)
        waiter = asyncio.ensure_future(source.first_client.wait())
        while not waiter.done() and not stop.is_set():
            await asyncio.wait([waiter], timeout=0.2)
        if stop.is_set():
            waiter.cancel()
            await server.close()
            return ReplayReport(stopped_early=True, signal=received[0] if received else None)

    def emit(batch: list[Row]) -> None:
        while not source.clear.wait(0.1) and not stop.is_set():
            pass
        loop.call_soon_threadsafe(source.dispatch, batch)

    rows = selection.rows(segments, identify=True)
    report = await loop.run_in_executor(None, lambda: play(rows, pacer, emit, lambda: None,
                                                         should_stop=stop.is_set))
    # Let the loop write the last batches before saying goodbye.
    await asyncio.sleep(0.05)
    await server.close(1000, "end of replay", timeout=2.0)
    report.signal = received[0] if received else None
    report.clients_cut = server.cut_slow
    if server.cut_slow:
        report.cut_reason = f"close {policy.close_code}, {policy.reason()}"
    log.debug("sent %d messages to %d clients", source.sent, len(source.subscribers))
    return report


def serve_replay(segments: list[SegmentFile], selection: Selection, pacer: Pacer, spec: str, start_mode: str,
                 token: str | None, send_timeout: float | None) -> ReplayReport:
    host, port = parse_serve(spec)
    return uvloop.run(_serve(segments, selection, pacer, host, port, start_mode, token, send_timeout))
