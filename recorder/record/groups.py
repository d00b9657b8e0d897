"""What a worker holds per connection group and per redundant copy, the group's connected-time account, and the
handover of a group a reload resubscribed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from picows import WSTransport

from recorder.record.connection import ConnectionCore
from recorder.record.listener import RecordingListener
from recorder.record.planner import Group
from recorder.segment.dedupe import Deduper


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
    started_s: float
    closing: bool = False  # the old copies were told to close
