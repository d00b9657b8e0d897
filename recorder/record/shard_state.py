"""What the parts of a worker (copies.py, refusals.py, handover.py, shard_status.py) share: its groups and their
copies, the handovers under way, the token, the writer, the counts; never one another's insides."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from picows import WSTransport

from recorder import clock
from recorder.child import Exit
from recorder.events import Event, encode_event
from recorder.feed.endpoints import EndpointKind
from recorder.model.record import RecordKind
from recorder.record import messages as m
from recorder.record.config import WorkerConfig
from recorder.record.connection import ConnectionCore, Log
from recorder.record.listener import RecordingListener
from recorder.record.planner import Group, Planner
from recorder.record.sink import Append, Dedupers, first_arrival_sink
from recorder.record.worker_link import SupervisorLink
from recorder.redact import redact_text
from recorder.segment.dedupe import Deduper
from recorder.segment.writer import SegmentWriter

log = logging.getLogger("recorder.worker")


@dataclass(slots=True)
class CopyRun:
    """One redundant copy of a group: its core and its current connection, if any."""

    copy: int
    core: ConnectionCore
    source: int = 0  # its source number in the group's Deduper (the copy number, until a reload resubscribes it)
    conn_id: int = 0
    token_gen: int = 0  # the token generation its current (or last) connection used
    accepted: bool = False  # its current (or last) connection was accepted (data, or open past the probe window)
    ever_accepted: bool = False  # some connection of this copy was accepted
    connecting: bool = False  # an upgrade is under way
    retiring: bool = False  # a reload replaced it: it closes (after its successor is accepted) and never reconnects
    closing: bool = False  # retiring, and told to close now
    transport: WSTransport | None = None
    listener: RecordingListener | None = None
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class GroupRun:
    """A group's copies, their shared dedupe, and the time no copy was connected (when data can be missed)."""

    group: Group
    deduper: Deduper | None
    copies: list[CopyRun] = field(default_factory=list)
    # The deduper exists only while a reload hands the group over from its old connections (redundancy 1).
    handover_dedupe: bool = False
    open_copies: int = 0
    started_ns: int = 0
    down_since_ns: int = 0  # when the last open copy closed (or the group started); 0 while covered
    downtime_ns: int = 0

    def open_one(self, now_ns: int) -> None:
        if self.open_copies == 0 and self.down_since_ns:
            self.downtime_ns += now_ns - self.down_since_ns
            self.down_since_ns = 0
        self.open_copies += 1

    def close_one(self, now_ns: int) -> None:
        self.open_copies -= 1
        if self.open_copies == 0:
            self.down_since_ns = now_ns

    def downtime(self, now_ns: int) -> int:
        return self.downtime_ns + (now_ns - self.down_since_ns if self.down_since_ns else 0)

    def other_copy_open(self, copy: CopyRun) -> CopyRun | None:
        return next((c for c in self.copies if c is not copy and c.transport is not None), None)


@dataclass(slots=True)
class Handover:
    """A group a reload resubscribed (its contract list changed): make before break.

    Its old copies keep recording, through the group's Deduper (a message that arrives on an old and on a new
    connection is recorded once), until every copy of every group in `waiting` has been accepted: the resubscribed
    group, or the groups a refusal split it into. Then they close with a close handshake, so what the server sent
    them before it saw their CLOSE is recorded too, and nothing falls between the old and the new connections.
    """

    gid: int
    old: list[CopyRun]
    waiting: set[int]
    deduper: Deduper | None
    closing: bool = False  # the old copies were told to close


@dataclass(eq=False)
class ShardState:
    cfg: WorkerConfig
    link: SupervisorLink
    writer: SegmentWriter
    loop: asyncio.AbstractEventLoop
    live: Append | None  # the relay/NATS hub: first arrivals only, never blocking the receive path (live/output.py)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int = Exit.OK
    stop_reason: str = "stopped"
    planner: Planner = field(default_factory=Planner)
    groups: dict[int, GroupRun] = field(default_factory=dict)
    handovers: list[Handover] = field(default_factory=list)
    paused: bool = False  # reading paused: the writer is behind (backpressure)
    reconnects: int = 0
    closed_messages: int = 0  # received on connections that have closed (open ones count on their listener)
    closed_bytes: int = 0
    _conn_seq: int = 0

    def __post_init__(self) -> None:
        settings = self.cfg.connection
        self.contracts = self.cfg.contracts  # a reload changes them
        self.kind = EndpointKind(settings.kind)
        self.token, self.token_gen = self.cfg.token, self.cfg.token_gen
        self.dedupers = Dedupers(settings.dedupe_window_s)
        wss = any(u.startswith("wss:") for u in settings.base_urls)
        self.ssl = ssl.create_default_context(cafile=settings.ca_file) if wss else None

    @property
    def shard(self) -> int:
        return self.cfg.shard

    def next_conn_id(self) -> int:
        self._conn_seq += 1
        return self._conn_seq

    def copies(self) -> list[CopyRun]:
        """Every copy with a connection or a task: the groups', and the old ones of handovers under way."""
        return [c for g in self.groups.values() for c in g.copies] + [c for h in self.handovers for c in h.old]

    def received(self) -> int:
        """Messages received on every connection so far, copies included."""
        return self.closed_messages + sum(c.listener.messages for c in self.copies() if c.listener is not None)

    def request_stop(self, reason: str = "stopped", exit_code: int | None = None) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            if exit_code is not None:
                self.exit_code = exit_code
            self.stopping.set()

    def fatal(self, message: str, reason: str, exit_code: int, refused: bool = False) -> None:
        """Retrying cannot help: the supervisor is told why (the operator's one line), and the worker stops."""
        self.send(m.Fatal(self.shard, message, refused))
        self.request_stop(reason, exit_code)

    def send(self, msg: m.WorkerMessage) -> None:
        # Stop only from the loop: the recovery thread sends too.
        if not self.link.send(msg) and threading.current_thread() is threading.main_thread():
            self.request_stop("supervisor went away")

    def event(self, event: Event | str, **fields: Any) -> None:
        self.writer.append(clock.time_ns(), int(fields.get("conn", 0)), RecordKind.EVENT, encode_event(event, **fields))

    def clean(self, text: str) -> str:
        return redact_text(text, (self.token,))

    def logs(self, logs: tuple[Log, ...]) -> None:
        for line in logs:
            log.log(line.level, "%s", self.clean(line.message))

    def sink(self, deduper: Deduper | None, source: int) -> Append:
        return first_arrival_sink(self.writer, deduper, source, self.live)

    def redirect(self, copies: list[CopyRun], deduper: Deduper | None) -> None:
        """Their next messages through `deduper` (or none): a reload's handover dedupes only while it lasts."""
        for c in copies:
            if c.listener is not None:
                c.listener.redirect(self.sink(deduper, c.source))

    def release_deduper(self, deduper: Deduper | None) -> None:
        """Once no group or handover uses it: its figures join the retired ones, its memory goes."""
        if deduper is not None and all(g.deduper is not deduper for g in self.groups.values()) and all(
                h.deduper is not deduper for h in self.handovers):
            self.dedupers.retire(deduper)
