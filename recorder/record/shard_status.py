"""A shard's status figures: what its worker tells the supervisor every status interval, and once more at the end."""

from __future__ import annotations

import os

from recorder import clock
from recorder.live.output import live_handed
from recorder.record import messages as m
from recorder.record.shard_state import ShardState


def shard_status(state: ShardState, final: bool = False) -> m.Status:
    now = clock.time_ns()
    copies = state.copies()
    listeners = [c.listener for c in copies if c.listener is not None]
    # Arrivals less those recorded as receipts (copies of a message another connection delivered first).
    duplicates = state.dedupers.copies
    groups = state.groups.values()
    w = state.writer
    return m.Status(
        shard=state.shard, pid=os.getpid(), sent_ns=now, connections_open=len(listeners), connections=len(copies),
        messages=state.received() - duplicates, copies=duplicates,
        bytes=state.closed_bytes + sum(lr.bytes for lr in listeners), reconnects=state.reconnects,
        last_message_ns=max((lr.last_ns for lr in listeners), default=0),
        records_written=w.records_written, bytes_on_disk=w.bytes_written, files_sealed=w.files_sealed,
        backlog_bytes=w.backlog_bytes, paused=state.paused, rejected=tuple(state.planner.rejected),
        # Over the groups recording now: a group split by bisection or excluded is not a gap of theirs.
        downtime_ns=sum(g.downtime(now) for g in groups), group_ns=sum(now - g.started_ns for g in groups),
        groups=len(groups), groups_disconnected=sum(1 for g in groups if g.open_copies == 0),
        final=final, live_handed=live_handed(state.live))
