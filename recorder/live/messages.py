"""Typed messages between the supervisor and the live hub, over the hub's pipe (recorder/child.py has the ones every
child knows: `LogLine` up, `Stop` down).

The hub says `HubReady` once it listens and `HubStatus` every second (and once more as it stops); the supervisor
sends `HubContracts` when a reload changed the contracts being recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- hub → supervisor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubReady:
    pid: int
    relay_url: str | None = None  # None: no --relay, or it could not listen (the hub's log says why)
    stats_url: str | None = None


@dataclass(frozen=True, slots=True)
class RelayFigures:
    clients: int
    sent: int  # messages written to clients
    cut: int  # clients cut for not reading
    gap_cut: int  # clients cut because messages never reached the hub
    error_cut: int  # clients closed because writing to them raised
    protocol_errors: int  # clients closed for frames that break the WebSocket protocol


@dataclass(frozen=True, slots=True)
class NatsFigures:
    state: str  # up, connecting, down; once closed: stopped or down (live/publisher.py: NatsPublisher.state)
    connected: bool
    closed: bool
    yielding: bool  # publishing paused while the hub is behind the workers
    problem: str  # why nothing is published ("" while publishing)
    down_since: float  # epoch seconds, 0 while publishing
    backlog: int  # messages waiting for NATS (unsent or unconfirmed)
    yield_s: float
    yields: int
    confirmed: int
    dropped: int
    republished: int
    unrouted: int
    reconnects: int


# The figures that count from zero in each hub (a restarted hub starts again): the supervisor adds them up.
RELAY_COUNTERS = ("sent", "cut", "gap_cut", "error_cut", "protocol_errors")
NATS_COUNTERS = ("yields", "confirmed", "dropped", "republished", "unrouted", "reconnects")


@dataclass(frozen=True, slots=True)
class HubStatus:
    received: int  # first arrivals received from the workers
    worker_dropped: int  # messages workers could not hand over (seen as gaps in their sequence numbers)
    links: int  # workers connected
    relay: RelayFigures | None = None  # None: no relay
    nats: NatsFigures | None = None  # None: no --publish

    def counters(self) -> dict[str, int]:
        """The counters by their status names (`relay_sent`, `nats_confirmed`): what a restarted hub starts again."""
        out = {"received": self.received, "worker_dropped": self.worker_dropped}
        if self.relay is not None:
            out.update({f"relay_{name}": getattr(self.relay, name) for name in RELAY_COUNTERS})
        if self.nats is not None:
            out.update({f"nats_{name}": getattr(self.nats, name) for name in NATS_COUNTERS})
        return out


HubMessage = HubReady | HubStatus

# --- supervisor → hub ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubContracts:
    """A reload changed the contracts being recorded: the relay accepts subscriptions to exactly these."""

    contracts: tuple[str, ...]
    shard_contracts: tuple[tuple[str, ...], ...]  # each shard's, so that a gap cuts only its contracts' clients
