"""Typed messages between the supervisor and its worker processes (over a multiprocessing pipe).

Frozen dataclasses, matched with `match` on both sides, so that a field is spelled in one place only; the ones every
child knows (`LogLine` up, `Stop` down) are recorder/child.py's. The token travels in `Token`, whose repr hides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recorder.child import LogLine, Stop

# --- worker → supervisor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """A worker's figures, sent every second and once more when it stops (`final`)."""

    shard: int
    pid: int
    sent_ns: int  # when the worker sent it: a frozen worker's last status grows stale, visibly
    connections_open: int
    connections: int
    messages: int  # first arrivals recorded (with --redundancy, copies are in `copies`)
    copies: int
    bytes: int
    reconnects: int
    last_message_ns: int
    records_written: int
    bytes_on_disk: int
    files_sealed: int
    backlog_bytes: int
    paused: bool
    rejected: tuple[str, ...] = ()
    downtime_ns: int = 0  # summed over groups: time with no copy of the group connected (data may be missed)
    group_ns: int = 0  # summed over groups: how long each has existed (downtime's denominator)
    groups: int = 0  # connection groups recording now (each with --redundancy copies)
    groups_disconnected: int = 0  # of those, groups with no copy connected right now
    final: bool = False
    live_handed: int = 0  # messages given to the live output (--relay/--publish), whether or not the hub got them


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server accepted a connection of this worker: the token is good."""

    shard: int


@dataclass(frozen=True, slots=True)
class Rejected:
    shard: int
    contracts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NeedToken:
    shard: int
    gen: int  # the generation that was refused


@dataclass(frozen=True, slots=True)
class Fatal:
    """The worker cannot go on; the message is the one line the operator sees."""

    shard: int
    message: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Recovered:
    shard: int
    message: str


WorkerMessage = Status | LogLine | Accepted | Rejected | NeedToken | Fatal | Recovered

# --- supervisor → worker ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    gen: int
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenUnavailable:
    """No fresh token can be had (a fixed --token): go on as if the current one had been refreshed."""


@dataclass(frozen=True, slots=True)
class AcceptedElsewhere:
    """Another shard's connection was accepted with the current token: a refusal here is about contracts."""


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """An event the supervisor noticed (a stall in trading hours) that belongs in the data, in every shard."""

    event: str
    fields: tuple[tuple[str, float | int | str], ...] = ()


@dataclass(frozen=True, slots=True)
class Contracts:
    """A reload (SIGHUP) changed this shard's contracts: resubscribe the groups whose contracts changed, only them."""

    contracts: tuple[str, ...]


SupervisorMessage = Stop | Token | TokenUnavailable | AcceptedElsewhere | RecordEvent | Contracts
