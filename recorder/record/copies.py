"""The life of each redundant copy's connections, one task per copy: connect, record until the connection ends,
connect again, as its ConnectionCore decides (connection.py); refusals and acceptances go to the worker's wiring.
Groups start and retire here; connections close with a close handshake and pause while the writer is behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from picows import WSCloseCode, WSTransport

from recorder import clock
from recorder.child import Exit
from recorder.events import Event
from recorder.feed.endpoints import build_url
from recorder.record import wsclient
from recorder.record.connection import ConnectionCore, GiveUp, Policy, Refusal, Step, Wait
from recorder.record.listener import RecordingListener
from recorder.record.planner import Group
from recorder.record.shard_state import CopyRun, GroupRun, ShardState
from recorder.redact import redact_url

log = logging.getLogger("recorder.worker")

CLOSE_IDLE_S = 3.0  # at stop: no message for this long and no CLOSE from the server, so hang up
CLOSE_MAX_S = 10.0  # below the supervisor's stop timeout (15 s), which leaves time to seal

# (group, copy, how, code) -> the copy's next step, or None when it ends (refusals.Refusals.refused).
OnRefusal = Callable[[GroupRun, CopyRun, str, int], Awaitable[Step | None]]


class Copies:
    def __init__(self, state: ShardState, on_refusal: OnRefusal, on_accepted: Callable[[int], None]) -> None:
        self.state, self.on_refusal, self.on_accepted, self.rng = state, on_refusal, on_accepted, random.Random()
        s = state.cfg.connection
        self.policy = Policy(backoff_base_s=s.backoff_base_s, backoff_cap_s=s.backoff_cap_s,
                             reconnect_jitter_s=s.reconnect_jitter_s, stagger_s=s.stagger_s)

    def start_group(self, group: Group, inherit: GroupRun | None = None) -> GroupRun:
        """`inherit`: a group in a handover that a refusal split; its halves share its dedupe (and its source
        numbers), so that the old connections' copies of their messages are still matched."""
        redundancy = self.state.cfg.connection.redundancy
        if inherit is not None:
            deduper, sources = inherit.deduper, [c.source for c in inherit.copies]
        else:
            deduper, sources = self.state.dedupers.new() if redundancy > 1 else None, list(range(redundancy))
        now = clock.time_ns()
        run = self.state.groups[group.gid] = GroupRun(group, deduper, started_ns=now, down_since_ns=now,
                                                      handover_dedupe=inherit is not None and inherit.handover_dedupe)
        self.add_copies(run, sources)
        return run

    def add_copies(self, run: GroupRun, sources: list[int]) -> None:
        for copy, source in enumerate(sources):
            label = f"shard {self.state.shard} group {run.group.gid}" + (f" copy {copy}" if len(sources) > 1 else "")
            crun = CopyRun(copy, ConnectionCore(label, copy, self.policy, self.rng), source=source)
            run.copies.append(crun)
            crun.task = asyncio.create_task(self._run_copy(run, crun))
            crun.task.add_done_callback(self._copy_done)

    def retire_group(self, run: GroupRun, reason: str) -> None:
        """The group was split or excluded: keep its figures, stop its other copies."""
        self.state.groups.pop(run.group.gid, None)
        # Readers (ime-segments stats) end the group here: its connection going away is not a gap.
        self.state.event(Event.UNSUBSCRIBED, group=run.group.gid, contracts=list(run.group.contracts), reason=reason)
        self.state.release_deduper(run.deduper)
        current = asyncio.current_task()
        for c in run.copies:
            if c.task is not None and c.task is not current:
                c.task.cancel()

    def _copy_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the connection loop must be loud, and must not silently stop a shard's recording.
        exc, shard = task.exception(), self.state.shard
        log.error("shard %d: connection task failed: %s", shard, exc, exc_info=exc)
        self.state.fatal(f"internal error in shard {shard}: {exc!r}", "internal error", 1)

    def _wanted(self, run: GroupRun, crun: CopyRun) -> bool:
        return not self.state.stopping.is_set() and run.group.gid in self.state.groups and not crun.retiring

    async def _run_copy(self, run: GroupRun, crun: CopyRun) -> None:
        state = self.state
        step: Step | None = crun.core.start()
        first = True
        while step is not None and self._wanted(run, crun):
            match step:
                case Wait(delay_s=delay, logs=logs):
                    state.logs(logs)
                    if not first:
                        # Counted here, once per new attempt, so the summary matches the `reconnect` events.
                        state.reconnects += 1
                        state.event(Event.RECONNECT, conn=crun.conn_id, group=run.group.gid, copy=crun.copy,
                                    delay_s=round(delay, 3), attempt=crun.core.failures)
                    first = False
                    if delay > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(state.stopping.wait(), timeout=delay)
                    step = await self._connect_once(run, crun) if self._wanted(run, crun) else None
                case Refusal(how=how, code=code):
                    step = await self.on_refusal(run, crun, how, code)
                case GiveUp(message=message):
                    state.fatal(message, "cannot connect", Exit.FATAL)
                    step = None

    async def _connect_once(self, run: GroupRun, crun: CopyRun) -> Step:
        """One connection attempt and, if it opens, its whole life; returns what the core says next."""
        state, group = self.state, run.group
        url = build_url(state.cfg.connection.url_for_copy(crun.copy), state.kind, group.contracts)
        conn_id = crun.conn_id = state.next_conn_id()
        crun.token_gen, crun.accepted = state.token_gen, False
        where = {"group": group.gid, "copy": crun.copy}
        state.event(Event.CONNECTING, conn=conn_id, url=redact_url(url), contracts=list(group.contracts), **where)
        if run.deduper is not None:
            # This connection receives only what is published after the server subscribes it, so none of its
            # arrivals is a copy of an original already here. Now, not at `opened`: the server subscribes it before
            # we see the upgrade answer (and picows may hand the listener frames before connect returns), and a
            # join after a copy's original would store that copy a second time.
            # A reload's new connection carries other contracts than the old ones it overlaps: it does not settle.
            run.deduper.join(crun.source, settle=not any(run.group.gid in h.waiting for h in state.handovers))
        crun.connecting = True
        try:
            result = await wsclient.connect(url, state.token, state.cfg.connection, state.ssl, conn_id,
                                            state.sink(run.deduper, crun.source), lambda: self._accepted(run, crun))
        finally:
            crun.connecting = False
        match result:
            case wsclient.HandshakeAnswered(status=status, detail=detail):
                detail = state.clean(detail)
                state.event(Event.ERROR, conn=conn_id, stage="handshake", status=status, error=detail, **where)
                return crun.core.handshake_status(time.monotonic(), status, "" if status else detail)
            case wsclient.NotConnected(failure=failure, detail=detail):
                detail = state.clean(detail)
                state.event(Event.ERROR, conn=conn_id, stage="connect", error=detail, **where)
                return crun.core.connect_failed(time.monotonic(), failure, detail)
            case wsclient.Connected(transport=transport, listener=listener):
                return await self._record(run, crun, group, url, transport, listener)

    def _accepted(self, run: GroupRun, crun: CopyRun, data: bool = True) -> None:
        """Data arrived (`data`), or the connection stayed open past the probe window."""
        if data:
            crun.core.data()
        if not crun.accepted:
            crun.accepted = crun.ever_accepted = True
            if not crun.retiring:  # an old list's connection says nothing about the group's new one
                self.on_accepted(run.group.gid)

    async def _record(self, run: GroupRun, crun: CopyRun, group: Group, url: str, transport: WSTransport,
                      listener: RecordingListener) -> Step:
        """An open connection's life (`group`: what it subscribed; a reload may have changed the group's since)."""
        state, settings = self.state, self.state.cfg.connection
        crun.transport, crun.listener = transport, listener
        run.open_one(clock.time_ns())
        crun.core.opened(time.monotonic())
        state.event(Event.OPENED, conn=crun.conn_id, url=redact_url(url), contracts=list(group.contracts),
                    status=int(transport.response.status), headers=wsclient.response_headers(transport),
                    **wsclient.addresses(transport), group=group.gid, copy=crun.copy)
        if state.paused:
            transport.underlying_transport.pause_reading()
        if crun.retiring:
            # A reload replaced it while the upgrade was under way: through the handover's dedupe, and closed at
            # once if the handover is already over.
            state.redirect([crun], run.deduper)
            if crun.closing:
                self.close_copy(crun, b"resubscribed")

        def on_idle() -> None:
            state.event(Event.IDLE_TIMEOUT, conn=crun.conn_id, idle_s=settings.idle_timeout_s)
            log.warning("shard %d: nothing received for %.0fs; reconnecting", state.shard, settings.idle_timeout_s)

        try:
            code, reason = await wsclient.watch(transport, listener, settings,
                                                lambda data: self._accepted(run, crun, data), on_idle)
        except asyncio.CancelledError:
            self._ended(run, crun, listener, 1006, "close handshake timed out")
            raise
        reason = state.clean(reason)
        self._ended(run, crun, listener, code, reason)
        return crun.core.closed(time.monotonic(), code, reason, stopping=state.stopping.is_set() or crun.retiring,
                                copy_open=run.open_copies > 0)

    def _ended(self, run: GroupRun, crun: CopyRun, listener: RecordingListener, code: int, reason: str) -> None:
        crun.transport, crun.listener = None, None
        run.close_one(clock.time_ns())
        lived = (time.monotonic() - crun.core.opened_at_s) if crun.core.opened_at_s is not None else 0.0
        self.state.closed_messages += listener.messages
        self.state.closed_bytes += listener.bytes
        self.state.event(Event.CLOSED, conn=crun.conn_id, code=code, reason=reason, messages=listener.messages,
                         bytes=listener.bytes, lived_s=round(lived, 3), group=run.group.gid, copy=crun.copy)

    def close_copy(self, c: CopyRun, reason: bytes) -> None:
        """A close handshake: what the server sent before it saw our CLOSE is still recorded."""
        transport = c.transport
        if transport is None:
            return
        with contextlib.suppress(Exception):
            transport.send_close(WSCloseCode.OK, reason)

        def hang_up() -> None:  # a server that never answers the CLOSE
            if c.transport is transport:
                transport.disconnect(False)

        self.state.loop.call_later(CLOSE_MAX_S, hang_up)

    def end_copy(self, c: CopyRun, reason: bytes) -> None:
        """A retiring copy closes now: with a close handshake if it is open, at once if it waits to reconnect (an
        upgrade under way closes when it opens: see `_record`)."""
        c.closing = True
        if c.transport is not None:
            self.close_copy(c, reason)
        elif not c.connecting and c.task is not None:
            c.task.cancel()

    def backlog(self, paused: bool) -> None:
        """The writer is behind (or caught up again): reading pauses (resumes), so TCP pushes back on the server."""
        state = self.state
        if paused == state.paused:
            return
        state.paused = paused
        for c in state.copies():
            if c.transport is not None:
                t = c.transport.underlying_transport
                t.pause_reading() if paused else t.resume_reading()
        state.event(Event.BACKPRESSURE, paused=paused)
        if paused:
            # A niced writer can also fall behind because busy processes (bots) outrank it: say how to rule that out.
            niced = state.cfg.connection.writer_nice
            hint = (f" (its thread runs at nice +{niced}: if the machine is busy rather than the disk slow, "
                    "--writer-nice 0 gives it a full share)") if niced else ""
            log.warning("shard %d: the disk or the compression is not keeping up; reading paused until the writer "
                        "catches up%s", state.shard, hint)

    async def close_all(self) -> None:
        """At stop: a close handshake on every connection, not a hang-up. Frames the server sent before it saw our
        CLOSE keep arriving and are recorded until its CLOSE comes back (the listener then disconnects)."""
        for c in self.state.copies():
            if c.transport is not None:
                with contextlib.suppress(Exception):
                    c.transport.send_close(WSCloseCode.GOING_AWAY, b"recorder stopping")
        pending = {c.task for c in self.state.copies() if c.task is not None}
        # Wait for the server's CLOSE while data still arrives: a feed faster than the disk (reading paused by
        # backpressure) needs longer than a fixed timeout to drain, and cutting it short would lose its tail.
        # Give up after CLOSE_IDLE_S without a new message, or CLOSE_MAX_S in all.
        started = last_progress = time.monotonic()
        last_count = self.state.received()
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            now, count = time.monotonic(), self.state.received()
            if count != last_count:
                last_count, last_progress = count, now
            if now - last_progress > CLOSE_IDLE_S or now - started > CLOSE_MAX_S:
                break
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
