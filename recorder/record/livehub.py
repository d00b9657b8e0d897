"""The supervisor's side of the live hub (--relay, --publish): its child process and what the operator sees of it.

Recording never depends on the hub: workers do not wait for it, the supervisor starts it after the workers and
gives it the lowest CPU priority at once (its imports must not slow the workers' start), and a hub that dies is
restarted by its own policy (record/children.py). At the end `nats_account` says how many messages NATS did not
confirm, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.context import BaseContext
from urllib.parse import urlsplit

from recorder.child import LogLine
from recorder.live.messages import (
    NATS_COUNTERS,
    RELAY_COUNTERS,
    HubContracts,
    HubReady,
    HubStatus,
    NatsFigures,
)
from recorder.model.settings import LiveSettings
from recorder.record.children import HUB_POLICY, Child, Then, stop_children
from recorder.record.metrics import Figure
from recorder.record.timeslice import hub_yields, yield_cpu
from recorder.timeparse import TimeLocale

log = logging.getLogger("recorder.supervisor")

# (name, type, help, status key) of the hub's Prometheus figures.
_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("ime_recorder_live_up", "gauge", "1 when the live hub (relay, NATS publisher) is running", "up"),
    ("ime_recorder_live_restarts_total", "counter", "live hub restarts", "restarts"),
    ("ime_recorder_live_received_total", "counter", "first arrivals the hub received from workers", "received"),
    ("ime_recorder_live_worker_dropped_total", "counter",
     "messages workers dropped instead of waiting for the hub", "worker_dropped"),
    ("ime_recorder_relay_clients", "gauge", "relay clients connected", "relay_clients"),
    ("ime_recorder_relay_messages_sent_total", "counter", "messages written to relay clients", "relay_sent"),
    ("ime_recorder_relay_slow_clients_cut_total", "counter", "relay clients cut for not reading", "relay_cut"),
    ("ime_recorder_relay_gap_clients_cut_total", "counter",
     "relay clients cut because messages never reached the hub", "relay_gap_cut"),
    ("ime_recorder_relay_error_clients_cut_total", "counter",
     "relay clients closed (1011) because writing to them raised; the hub's log has the traceback",
     "relay_error_cut"),
    ("ime_recorder_relay_client_protocol_errors_total", "counter",
     "relay clients closed for sending frames that break the WebSocket protocol", "relay_protocol_errors"),
    ("ime_recorder_nats_connected", "gauge", "1 while connected to NATS", "nats_connected"),
    ("ime_recorder_nats_published_total", "counter", "messages confirmed stored by JetStream", "nats_confirmed"),
    ("ime_recorder_nats_backlog", "gauge", "messages waiting for NATS (unsent or unconfirmed)", "nats_backlog"),
    ("ime_recorder_nats_dropped_total", "counter", "messages dropped because the NATS backlog was full",
     "nats_dropped"),
    ("ime_recorder_nats_republished_total", "counter", "messages sent again after a reconnect or a missing ack",
     "nats_republished"),
    ("ime_recorder_nats_cpu_pauses_total", "counter",
     "times publishing paused because the live hub fell behind the workers (the machine short of CPU)", "nats_yields"),
)

# The gauges among them, read from the last status (absent when the hub has no relay, or no NATS publisher).
_GAUGES: dict[str, Callable[[HubStatus], int | None]] = {
    "relay_clients": lambda s: s.relay.clients if s.relay is not None else None,
    "nats_connected": lambda s: int(s.nats.connected) if s.nats is not None else None,
    "nats_backlog": lambda s: s.nats.backlog if s.nats is not None else None,
}


@dataclass(frozen=True, slots=True)
class NatsAccount:
    """At the end of a run: what NATS should hold (every message the workers handed over that names a contract)
    against what it confirmed, and why the rest is missing."""

    expected: int
    confirmed: int
    missing: int
    reasons: tuple[str, ...]

    def line(self) -> str:
        if not self.missing:
            return f"NATS confirmed all {self.expected} messages published"
        return (f"NATS did not confirm {self.missing} of the {self.expected} messages it should hold: "
                + "; ".join(self.reasons))


def _ended(status: HubStatus) -> HubStatus:
    """A hub's last status once it has gone: its counters moved to the view's base, nothing connected."""
    relay, nats = status.relay, status.nats
    return replace(status, received=0, worker_dropped=0, links=0,
                   relay=replace(relay, clients=0, **dict.fromkeys(RELAY_COUNTERS, 0)) if relay else None,
                   nats=replace(nats, connected=False, **dict.fromkeys(NATS_COUNTERS, 0)) if nats else None)


@dataclass(slots=True)
class HubView:
    state: str = "starting"
    pid: int = 0
    restarts: int = 0
    relay_url: str | None = None
    status: HubStatus | None = None  # the last one the hub sent (kept, emptied of counters, when it has gone)
    # Counters of earlier hubs (a restarted hub counts from zero).
    base: dict[str, int] = field(default_factory=dict)

    def total(self, key: str) -> int:
        now = self.status.counters().get(key, 0) if self.status is not None else 0
        return self.base.get(key, 0) + now

    def incarnation_ended(self) -> None:
        if self.status is not None:
            for key, value in self.status.counters().items():
                self.base[key] = self.base.get(key, 0) + value
            self.status = _ended(self.status)

    def line(self) -> str:
        parts = [f"live hub {self.state}"]
        relay = self.status.relay if self.status is not None else None
        nats = self.status.nats if self.status is not None else None
        if relay is not None:
            parts.append(f"relay {relay.clients} clients, {self.total('relay_sent')} sent, "
                         f"{self.total('relay_cut')} slow cut")
            if self.total("relay_gap_cut"):
                parts[-1] += f", {self.total('relay_gap_cut')} cut for gaps"
            if self.total("relay_protocol_errors"):
                parts[-1] += f", {self.total('relay_protocol_errors')} closed for protocol errors"
        if nats is not None:
            parts.append(f"NATS {self._nats_state(nats)}, {self.total('nats_confirmed')} stored, backlog "
                         f"{nats.backlog}, {self.total('nats_dropped')} dropped")
            if self.total("nats_yields"):
                parts[-1] += f", paused {self.total('nats_yields')} times (the machine short of CPU)"
        if self.total("worker_dropped"):
            parts.append(f"{self.total('worker_dropped')} not handed over by workers")
        return "; ".join(parts)

    def _nats_state(self, f: NatsFigures) -> str:
        """up / connecting / DOWN (why, since when) while running; stopped / DOWN at stop once the hub ended."""
        ended = self.state == "stopped"
        if ended and not f.closed:
            return "not stopped cleanly (the hub was killed)"
        if f.state == "up" and f.yielding:
            return "up, paused (the machine is short of CPU)"
        if f.state != "down":
            return f.state
        when = f" since {TimeLocale.from_env().clock(f.down_since)}" if f.down_since else ""
        return f"DOWN{' at stop' if ended else ''}{when} ({f.problem or 'unavailable'})"

    def nats_account(self, handed: int) -> NatsAccount:
        """What NATS lacks at the end: `handed` is how many messages the workers gave the hub (or tried to)."""
        f = self.status.nats if self.status is not None else None
        expected = max(0, handed - self.total("nats_unrouted"))
        confirmed = self.total("nats_confirmed")
        missing = max(0, expected - confirmed)
        reasons: list[str] = []
        explained = 0
        for count, why in (
                (self.total("worker_dropped"), "not handed over by the workers (the hub was behind: short of CPU)"),
                (self.total("nats_dropped"), "dropped from the full backlog (--nats-backlog)"),
                (f.backlog if f is not None else 0, "waiting when the hub stopped" + self._why_waiting(f))):
            count = min(count, missing - explained)
            if count > 0:
                reasons.append(f"{count} {why}")
                explained += count
        if missing > explained:
            reasons.append(f"{missing - explained} that never reached the hub or were lost with it (at the stop, or "
                           "a hub restart)")
        return NatsAccount(expected, confirmed, missing, tuple(reasons))

    @staticmethod
    def _why_waiting(f: NatsFigures | None) -> str:
        if f is None or not f.closed:
            return " (the hub was killed)"
        if f.state == "stopped":
            return " (sent, not confirmed in time)"
        return f" (NATS unavailable: {f.problem or 'never reached'})"

    def prometheus(self) -> list[Figure]:
        """The hub's figures for the recorder's Prometheus collector (absent ones are not exported)."""
        out: list[Figure] = []
        counters = self.status.counters() if self.status is not None else {}
        for name, kind, help_text, key in _METRICS:
            if key == "up":
                value: int | None = 1 if self.state == "running" else 0
            elif key == "restarts":
                value = self.restarts
            elif key in _GAUGES:
                value = _GAUGES[key](self.status) if self.status is not None else None
            elif key.startswith(("relay_", "nats_")) and key not in counters and key not in self.base:
                value = None
            else:
                value = self.total(key)
            if value is not None:
                out.append(Figure(name.removesuffix("_total"), kind, help_text, float(value)))
        return out


class HubControl:
    """The hub's child process: started after the workers, at the lowest CPU priority from its first instruction;
    restarted by HUB_POLICY; stopped after the workers, so that it relays and publishes their last messages."""

    def __init__(self, settings: LiveSettings, ctx: BaseContext, on_log: Callable[[str], None],
                 log_level: int = logging.INFO) -> None:
        self.settings = settings
        self.view = HubView()
        self._on_log = on_log
        self._log_level = log_level
        self.child = Child("live hub", HUB_POLICY, ctx, self._handle, self._exited, self.start,
                           "recording is unaffected")

    def start(self) -> None:
        # Here, not at the top: the hub's modules (the relay's server, the NATS publisher) stay out of the fork
        # server's preload and the supervisor's start, which the workers' start waits for.
        from recorder.live.hub import hub_main

        pid = self.child.start(hub_main, (self.settings, self._log_level), name="ime-record-live")
        # At once, before the child has imported anything of its own: the hub's start-up (the relay, nats-py) must
        # not take CPU time from the workers', nor anything after. Threads it starts inherit it.
        why_not = yield_cpu(pid) if hub_yields() and pid else None
        if why_not:
            log.warning("could not lower the live hub's priority (%s): it competes with the workers for CPU", why_not)
        self.view.state, self.view.pid = "starting", pid

    def set_contracts(self, contracts: tuple[str, ...], shard_contracts: tuple[tuple[str, ...], ...]) -> None:
        """A reload changed the contracts being recorded (a restarted hub starts with them too)."""
        self.settings = replace(self.settings, contracts=contracts, shard_contracts=shard_contracts)
        self.child.send(HubContracts(contracts, shard_contracts))

    def _handle(self, msg: HubReady | HubStatus | LogLine) -> None:
        match msg:
            case HubStatus():
                self.view.status = msg
            case LogLine(line=line):
                self._on_log(line)
            case HubReady():
                self._ready(msg)

    def _ready(self, msg: HubReady) -> None:
        self.view.state = "running"
        self.view.relay_url = msg.relay_url
        if msg.relay_url:
            if self.settings.relay_port == 0:
                # A restarted hub must listen where the bots already connect, not on another free port.
                self.settings = replace(self.settings, relay_port=urlsplit(msg.relay_url).port)
            log.info("live relay serving %s (stats: %s, hub pid %s)", msg.relay_url, msg.stats_url, msg.pid)
        if self.settings.nats_url is not None:
            log.info("live hub ready; it publishes to NATS JetStream stream %s once connected",
                     self.settings.nats_stream)

    def _exited(self, then: Then) -> None:
        self.view.incarnation_ended()
        self.view.state = then.value
        self.view.restarts = self.child.restarts

    async def stop(self, timeout: float = 10.0) -> None:
        """Called after the workers have stopped: the hub drains their last bytes, closes clients, flushes NATS."""
        for child in await stop_children([self.child], "recorder stopping", timeout):
            log.error("live hub did not stop within %.0fs; killing it", timeout)
            await child.kill()
        self.view.state = "stopped"
