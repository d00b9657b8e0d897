"""One worker process: a shard's picows connections on uvloop, recording into one SegmentWriter.

This is I/O glue. What to do after each connection outcome is decided by `connection.py` (one core per
redundant copy); what to do when the server refuses a group is decided by `planner.py`; what travels to
and from the supervisor is typed in `messages.py`. Copies of a group share a `Deduper`, so that the first
arrival of each message is the record and later copies become receipts.

A reload (the supervisor's `Contracts`) changes only the groups whose contracts changed (`endpoints.regroup`),
make before break: a changed group's new connections open beside its old ones, a Deduper in front of both, and
the old ones close once the new ones are accepted (`groups.Handover`); the other groups are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import ssl
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvloop
from picows import WSCloseCode

from recorder import __version__, clock
from recorder.events import Event, encode_event
from recorder.feed.endpoints import EndpointKind, build_url, regroup, split_contracts
from recorder.model.record import RecordKind
from recorder.record import messages as m
from recorder.record import wsclient
from recorder.record.childproc import ignore_group_signals, set_process_name
from recorder.record.config import WORKER_EXIT_FATAL, WORKER_EXIT_OK, WORKER_EXIT_REFUSED, WorkerConfig
from recorder.record.connection import (
    ConnectionCore,
    GiveUp,
    Policy,
    Refusal,
    RefusalKind,
    Step,
    Wait,
    classify_refusal,
)
from recorder.record.groups import CopyRun, GroupRun, Handover
from recorder.record.listener import RecordingListener
from recorder.record.live import close_live_output, live_handed, make_live_output
from recorder.record.planner import Action, Group, Planner
from recorder.record.shard_dir import ShardLocked, lock_shard, stale_open_files
from recorder.record.sink import Append, first_arrival_sink
from recorder.record.timeslice import lower_priority, request_slice
from recorder.record.worker_link import PipeLogHandler, SupervisorLink
from recorder.redact import redact_text, redact_url
from recorder.segment.dedupe import Deduper
from recorder.segment.files import SegmentWriteError
from recorder.segment.layout import day_layout
from recorder.segment.recover import RecoveryFailure, recover_each
from recorder.segment.writer import SegmentWriter

log = logging.getLogger("recorder.worker")

CLOSE_IDLE_S = 3.0  # at stop: no message for this long and no CLOSE from the server, so hang up
CLOSE_MAX_S = 10.0  # below the supervisor's stop timeout (15 s), which leaves time to seal
# A reload's handover: the old connections close at the latest this long after the new ones started, accepted or
# not (a feed that accepts nothing for this long has the old ones down too; the removed contracts must stop).
HANDOVER_MAX_S = 30.0


class Worker:
    def __init__(self, cfg: WorkerConfig, link: SupervisorLink) -> None:
        self.cfg = cfg
        self.link = link
        self.contracts = cfg.contracts  # a reload changes them
        self.kind = EndpointKind(cfg.connection.kind)
        self.token = cfg.token
        self.token_gen = cfg.token_gen
        self.planner = Planner()
        self.groups: dict[int, GroupRun] = {}
        self.handovers: list[Handover] = []
        self._groups_started = False
        self._reload_pending: tuple[str, ...] | None = None  # arrived while a handover was still under way
        # Every Deduper in use, by id: messages = arrivals - copies (receipts), over live and retired ones.
        self._dedupers: dict[int, Deduper] = {}
        self.stopping = asyncio.Event()
        self.exit_code = WORKER_EXIT_OK
        self.stop_reason = "stopped"
        self._conn_seq = 0
        self._paused = False
        self._ssl: ssl.SSLContext | None = None
        self.writer: SegmentWriter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.accepted_elsewhere = False
        # The relay/NATS hub: first arrivals only, never blocking the receive path (record/live.py).
        self._live = make_live_output(cfg.live)
        self._accepted_sent = False
        self.rng = random.Random()
        self.policy = Policy(backoff_base_s=cfg.connection.backoff_base_s, backoff_cap_s=cfg.connection.backoff_cap_s,
                             reconnect_jitter_s=cfg.connection.reconnect_jitter_s, stagger_s=cfg.connection.stagger_s)
        # Figures for status lines.
        self.reconnects = 0
        self.closed_messages = 0
        self.closed_bytes = 0
        self.retired_copies = 0
        self.rejected: list[str] = []
        self._limit_logged: set[int] = set()
        self._lock_fd: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.link.start(self.loop, self._handle, lambda: self.request_stop("supervisor went away"))
        storage = self.cfg.storage
        settings = self.cfg.connection
        try:
            self._lock_fd = lock_shard(storage.out_dir, storage.prefix, self.cfg.shard)
            stale = stale_open_files(storage.out_dir, storage.prefix, self.cfg.shard)
            self.writer = SegmentWriter(
                storage.out_dir,
                shard=self.cfg.shard,
                prefix=storage.prefix,
                level=storage.level,
                frame_bytes=storage.frame_bytes,
                flush_ms=storage.flush_ms,
                rotate_bytes=storage.rotate_bytes,
                rotate_seconds=storage.rotate_seconds,
                max_backlog_bytes=storage.max_backlog_bytes,
                on_backlog=self._backlog_threadsafe,
                on_error=self._writer_error_threadsafe,
                fault_enospc_after_bytes=storage.fault_enospc_after_bytes,
                days=day_layout(ZoneInfo(storage.day_tz)) if storage.day_tz else None,
                meta={
                    "shards": self.cfg.shards,
                    "endpoint": self.kind.value,
                    "contracts": list(self.contracts),
                    "base_url": redact_url(settings.base_url),
                    "redundancy": settings.redundancy,
                    "run_id": self.cfg.run_id,
                    "worker": {"pid": os.getpid(), "incarnation": self.cfg.incarnation},
                },
            )
        except (ShardLocked, SegmentWriteError) as exc:
            self._send(m.Fatal(self.cfg.shard, str(exc)))
            return WORKER_EXIT_FATAL
        if stale:
            # A crashed predecessor left .open files: seal them beside recording, not before it.
            threading.Thread(target=self._recover, args=(stale,), name="recover", daemon=True).start()
        # After the writer and recovery threads exist: they inherit a slice and must keep the default.
        if settings.receive_slice_us:
            why_not = request_slice(settings.receive_slice_us)
            if why_not:
                log.debug("short CPU slice for the receive thread not applied: %s", why_not)
        if settings.writer_nice and self.writer.thread_id is not None:
            why_not = lower_priority(self.writer.thread_id, settings.writer_nice)
            if why_not:
                log.debug("lower priority for the writer thread not applied: %s", why_not)

        self._event(Event.WORKER_STARTED, pid=os.getpid(), incarnation=self.cfg.incarnation,
                    contracts=list(self.contracts), version=__version__, redundancy=settings.redundancy)
        if any(u.startswith("wss:") for u in (settings.base_url, *settings.extra_base_urls)):
            self._ssl = ssl.create_default_context(cafile=settings.ca_file)
        groups = split_contracts(settings.base_url, self.kind, self.contracts,
                                 max_url_length=settings.max_url_length,
                                 max_per_connection=settings.max_contracts_per_connection)
        for group in self.planner.start(groups):
            self._start_group(group)
        self._groups_started = True
        if self._reload_pending is not None:
            self._reload(self._reload_pending)

        tick = asyncio.create_task(self._ticker())
        status = asyncio.create_task(self._status_loop())
        await self.stopping.wait()
        await self._shutdown()
        tick.cancel()
        status.cancel()
        return self.exit_code

    def request_stop(self, reason: str = "stopped", exit_code: int | None = None) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            if exit_code is not None:
                self.exit_code = exit_code
            self.stopping.set()

    async def _shutdown(self) -> None:
        self._event(Event.WORKER_STOPPING, reason=self.stop_reason)
        # A close handshake, not a hang-up: frames the server sent before it saw our CLOSE keep arriving
        # and are recorded until its CLOSE comes back (the listener then disconnects).
        for run in self._copies():
            if run.transport is not None:
                with contextlib.suppress(Exception):
                    run.transport.send_close(WSCloseCode.GOING_AWAY, b"recorder stopping")
        pending = {r.task for r in self._copies() if r.task is not None}
        # Wait for the server's CLOSE while data still arrives: a feed faster than the disk (reading paused by
        # backpressure) needs longer than a fixed timeout to drain, and cutting it short would lose its tail.
        # Give up after CLOSE_IDLE_S without a new message, or CLOSE_MAX_S in all.
        started = last_progress = time.monotonic()
        last_count = self._received()
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            now = time.monotonic()
            count = self._received()
            if count != last_count:
                last_count, last_progress = count, now
            if now - last_progress > CLOSE_IDLE_S or now - started > CLOSE_MAX_S:
                break
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
        writer = self.writer
        assert writer is not None and self.loop is not None
        try:
            await self.loop.run_in_executor(None, writer.close, "closed")
        except SegmentWriteError as exc:
            self._send(m.Fatal(self.cfg.shard, str(exc)))
            self.exit_code = WORKER_EXIT_FATAL
        # Before the final status, which then counts every message handed to the hub: nothing follows it.
        close_live_output(self._live)
        self._send(self._status(final=True))

    def _received(self) -> int:
        return self.closed_messages + sum(c.listener.messages for c in self._copies() if c.listener is not None)

    def _copies(self) -> list[CopyRun]:
        """Every copy with a connection or a task: the groups', and the old ones of handovers under way."""
        return [c for g in self.groups.values() for c in g.copies] + [c for h in self.handovers for c in h.old]

    # --- groups and connections -----------------------------------------------------------------

    def _start_group(self, group: Group, inherit: GroupRun | None = None) -> GroupRun:
        """`inherit`: a group in a handover that a refusal split; its halves share its dedupe (and its source
        numbers), so that the old connections' copies of their messages are still matched."""
        settings = self.cfg.connection
        redundancy = settings.redundancy
        if inherit is not None:
            deduper, sources = inherit.deduper, [c.source for c in inherit.copies]
        else:
            deduper = self._new_deduper() if redundancy > 1 else None
            sources = list(range(redundancy))
        now = clock.time_ns()
        run = GroupRun(group, deduper, started_ns=now, down_since_ns=now,
                       handover_dedupe=inherit is not None and inherit.handover_dedupe)
        self.groups[group.gid] = run
        self._add_copies(run, sources)
        return run

    def _add_copies(self, run: GroupRun, sources: list[int]) -> None:
        redundancy = len(sources)
        for copy, source in enumerate(sources):
            label = f"shard {self.cfg.shard} group {run.group.gid}" + (f" copy {copy}" if redundancy > 1 else "")
            core = ConnectionCore(label, copy, self.policy, self.rng)
            crun = CopyRun(copy, core, source=source)
            run.copies.append(crun)
            crun.task = asyncio.create_task(self._run_copy(run, crun))
            crun.task.add_done_callback(self._copy_done)

    def _sink(self, deduper: Deduper | None, source: int) -> Append:
        assert self.writer is not None
        return first_arrival_sink(self.writer, deduper, source, self._live)

    def _new_deduper(self) -> Deduper:
        deduper = Deduper(int(self.cfg.connection.dedupe_window_s * 1e9))
        self._dedupers[id(deduper)] = deduper
        return deduper

    def _release_deduper(self, deduper: Deduper | None) -> None:
        """No group or handover uses it any more: its figures join the retired ones, its memory goes."""
        if deduper is None or any(g.deduper is deduper for g in self.groups.values()) or any(
                h.deduper is deduper for h in self.handovers):
            return
        if self._dedupers.pop(id(deduper), None) is not None:
            self.retired_copies += deduper.counts.copies

    def _retire_group(self, run: GroupRun, reason: str) -> None:
        """The group was split or excluded: keep its figures, stop its other copies."""
        self.groups.pop(run.group.gid, None)
        # Readers (ime-segments stats) end the group here: its connection going away is not a gap.
        self._event(Event.UNSUBSCRIBED, group=run.group.gid, contracts=list(run.group.contracts), reason=reason)
        self._release_deduper(run.deduper)
        current = asyncio.current_task()
        for c in run.copies:
            if c.task is not None and c.task is not current:
                c.task.cancel()

    def _copy_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the connection loop must be loud, and must not silently stop a shard's recording.
        exc = task.exception()
        log.error("shard %d: connection task failed: %s", self.cfg.shard, exc, exc_info=exc)
        self._send(m.Fatal(self.cfg.shard, f"internal error in shard {self.cfg.shard}: {exc!r}"))
        self.request_stop("internal error", 1)

    async def _run_copy(self, run: GroupRun, crun: CopyRun) -> None:
        core = crun.core
        step: Step = core.start()
        first = True
        while not self.stopping.is_set() and run.group.gid in self.groups and not crun.retiring:
            match step:
                case Wait(delay_s=delay, logs=logs):
                    self._logs(logs)
                    if not first:
                        # Counted here, once per new attempt, so the summary matches the `reconnect` events.
                        self.reconnects += 1
                        self._event(Event.RECONNECT, conn=crun.conn_id, group=run.group.gid, copy=crun.copy,
                                    delay_s=round(delay, 3), attempt=core.failures)
                    first = False
                    if delay > 0:
                        await self._sleep(delay)
                    if self.stopping.is_set() or run.group.gid not in self.groups or crun.retiring:
                        return
                    step = await self._connect_once(run, crun)
                case Refusal(how=how, code=code):
                    next_step = await self._refused(run, crun, how, code)
                    if next_step is None:
                        return
                    step = next_step
                case GiveUp(message=message):
                    self._logs(step.logs)
                    self._send(m.Fatal(self.cfg.shard, message))
                    self.request_stop("cannot connect", WORKER_EXIT_FATAL)
                    return

    async def _connect_once(self, run: GroupRun, crun: CopyRun) -> Step:
        """One connection attempt and, if it opens, its whole life; returns what the core says next."""
        settings = self.cfg.connection
        core = crun.core
        group = run.group
        url = build_url(settings.url_for_copy(crun.copy), self.kind, group.contracts)
        shown_url = redact_url(url)
        self._conn_seq += 1
        conn_id = crun.conn_id = self._conn_seq
        crun.token_gen, crun.accepted = self.token_gen, False

        def on_accepted(data: bool = True) -> None:
            if data:
                core.data()
            if not crun.accepted:
                crun.accepted = crun.ever_accepted = True
                if crun.retiring:
                    return  # an old list's connection says nothing about the group's new one
                self._accepted(group.gid)
                if self.handovers:
                    self._handover_progress()

        where = {"group": group.gid, "copy": crun.copy}
        self._event(Event.CONNECTING, conn=conn_id, url=shown_url, contracts=list(group.contracts), **where)
        assert self.writer is not None
        sink = self._sink(run.deduper, crun.source)
        crun.connecting = True
        try:
            result = await wsclient.connect(url, self.token, settings, self._ssl, conn_id, sink, on_accepted)
        finally:
            crun.connecting = False
        now = time.monotonic()
        match result:
            case wsclient.HandshakeAnswered(status=status, detail=detail):
                detail = self._clean(detail)
                self._event(Event.ERROR, conn=conn_id, stage="handshake", status=status, error=detail, **where)
                return core.handshake_status(now, status, "" if status else detail)
            case wsclient.NotConnected(failure=failure, detail=detail):
                detail = self._clean(detail)
                self._event(Event.ERROR, conn=conn_id, stage="connect", error=detail, **where)
                return core.connect_failed(now, failure, detail)
            case wsclient.Connected(transport=transport, listener=listener):
                pass
        crun.transport, crun.listener = transport, listener
        run.open_one(clock.time_ns())
        core.opened(now)
        self._event(Event.OPENED, conn=conn_id, url=shown_url, contracts=list(group.contracts),
                    status=int(transport.response.status), headers=wsclient.response_headers(transport),
                    **wsclient.addresses(transport), **where)
        if self._paused:
            transport.underlying_transport.pause_reading()
        if crun.retiring:
            # A reload replaced it while the upgrade was under way: through the handover's dedupe, and closed at
            # once if the handover is already over.
            listener.redirect(self._sink(run.deduper, crun.source))
            if crun.closing:
                self._close_copy(crun, b"resubscribed")

        def on_idle() -> None:
            self._event(Event.IDLE_TIMEOUT, conn=conn_id, idle_s=settings.idle_timeout_s)
            log.warning("shard %d: nothing received for %.0fs; reconnecting", self.cfg.shard, settings.idle_timeout_s)

        try:
            code, reason = await wsclient.watch(transport, listener, settings, on_accepted, on_idle)
        except asyncio.CancelledError:
            self._connection_ended(run, crun, listener, 1006, "close handshake timed out")
            raise
        reason = self._clean(reason)
        self._connection_ended(run, crun, listener, code, reason)
        return core.closed(time.monotonic(), code, reason, stopping=self.stopping.is_set() or crun.retiring,
                           copy_open=run.open_copies > 0)

    def _connection_ended(self, run: GroupRun, crun: CopyRun, listener: RecordingListener, code: int,
                          reason: str) -> None:
        crun.transport, crun.listener = None, None
        run.close_one(clock.time_ns())
        lived = (time.monotonic() - crun.core.opened_at_s) if crun.core.opened_at_s is not None else 0.0
        self.closed_messages += listener.messages
        self.closed_bytes += listener.bytes
        self._event(Event.CLOSED, conn=crun.conn_id, code=code, reason=reason, messages=listener.messages,
                    bytes=listener.bytes, lived_s=round(lived, 3), group=run.group.gid, copy=crun.copy)

    async def _refused(self, run: GroupRun, crun: CopyRun, how: str, code: int) -> Step | None:
        """Close 1008 or HTTP 401/403: the token, a contract, or (for an extra copy) the connection limit."""
        if self.stopping.is_set():
            return None
        gid = run.group.gid
        used_gen = crun.token_gen
        other = run.other_copy_open(crun)
        match classify_refusal(crun.copy, crun.accepted, other is not None, used_gen == self.token_gen):
            case RefusalKind.TOKEN:
                decision = self.planner.refused(gid, used_gen, self.token_gen, True)
                if decision.action is Action.REFRESH:
                    log.info("shard %d: the server closed a working connection with %s; getting a fresh token",
                             self.cfg.shard, how)
                    await self._refresh_token(used_gen)
                    return Wait(0.0)
                return crun.core.refused_retry()
            case RefusalKind.CONNECTION_LIMIT:
                if gid not in self._limit_logged:
                    self._limit_logged.add(gid)
                    log.warning("shard %d group %d: copy %d refused (%s) while copy %d with the same contracts and "
                                "token is open: the account's connection limit, not a contract; recording with the "
                                "accepted copies and retrying this one slowly", self.cfg.shard, gid, crun.copy, how,
                                other.copy if other is not None else -1)
                return crun.core.connection_limit_wait()
            case RefusalKind.FOLLOW:
                return crun.core.refused_retry()
            case RefusalKind.PLANNER:
                pass
        decision = self.planner.refused(gid, used_gen, self.token_gen, False)
        match decision.action:
            case Action.RETRY:
                return crun.core.refused_retry()
            case Action.REFRESH:
                log.info("shard %d: the server refused a connection (%s); asking for a fresh token", self.cfg.shard,
                         how)
                await self._refresh_token(used_gen)
                return Wait(0.0)
            case Action.SPLIT:
                if not (self.planner.accepted_any or self.accepted_elsewhere):
                    verdict = await self._probe(run.group.contracts[0])
                    # None: the probe could not tell (no connection, or closed without a verdict); the token
                    # is called bad only on a refusal, otherwise the bisection goes ahead.
                    if verdict is False:
                        self._retire_group(run, "token refused")
                        self._send(m.Fatal(self.cfg.shard, refused=True, message=(
                            f"the server refuses the token: it refused it ({how}) for shard {self.cfg.shard}'s "
                            "contracts after a refresh was tried, and for a probe with the single contract "
                            f"{run.group.contracts[0]}; check the token or the account's IME access")))
                        self.request_stop("token refused", WORKER_EXIT_REFUSED)
                        return None
                log.warning("shard %d: the token was refused again (%s) for %d contracts although it works "
                            "(another connection or a probe was accepted); looking for the refused contract(s)",
                            self.cfg.shard, how, len(run.group.contracts))
                handover = self._handover_of(gid)
                halves = [self._start_group(g, inherit=run if handover is not None else None)
                          for g in decision.groups]
                self._retire_group(run, "split to find the refused contract")
                if handover is not None:
                    # A contract a reload added is refused: the old connections cover the others until the
                    # halves that hold them are accepted.
                    handover.waiting.discard(gid)
                    handover.waiting.update(h.group.gid for h in halves)
                return None
            case _:
                self._retire_group(run, "refused")
                handover = self._handover_of(gid)
                if handover is not None:
                    handover.waiting.discard(gid)
                self._reject(decision.rejected, how, code)
                if handover is not None:
                    self._handover_progress()
                return None

    async def _probe(self, contract: str) -> bool | None:
        """One connection for a single contract: True if the server keeps it, False if it refuses it."""
        settings = self.cfg.connection
        url = build_url(settings.base_url, self.kind, (contract,))
        self._conn_seq += 1
        conn_id = self._conn_seq
        self._event(Event.CONNECTING, conn=conn_id, url=redact_url(url), contracts=[contract], probe=True)
        verdict, code = await wsclient.probe(url, self.token, settings, self._ssl, conn_id)
        self._event(Event.CLOSED, conn=conn_id, code=code, reason="probe", probe=True, accepted=verdict)
        if verdict:
            self._accepted(0)
        return verdict

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _accepted(self, gid: int) -> None:
        """A connection (or a probe, gid 0) was accepted: the token is good."""
        if gid in self.groups:
            self.planner.accepted(gid)
        self.planner.accepted_any = True
        if not self._accepted_sent:
            self._accepted_sent = True
            self._send(m.Accepted(self.cfg.shard))

    def _reject(self, contracts: tuple[str, ...], how: str, code: int) -> None:
        self.rejected.extend(contracts)
        self._event(Event.REJECTED, contracts=list(contracts), code=code,
                    reason="refused by the server with a fresh token")
        log.error("shard %d: the server refuses contract %s (%s, also after a token refresh); excluded%s",
                  self.cfg.shard, ", ".join(contracts), how, ", recording the rest" if self.groups else "")
        self._send(m.Rejected(self.cfg.shard, tuple(contracts)))
        if self.planner.give_up:
            self._send(m.Fatal(self.cfg.shard, refused=True,
                               message=f"the server refused every contract tried on shard {self.cfg.shard} "
                                       f"({', '.join(self.planner.rejected[:5])}) and accepted none: either they "
                                       f"do not exist on the {self.kind.value} endpoint or the token lacks IME "
                                       "access"))
            self.request_stop("every contract refused", WORKER_EXIT_REFUSED)
        elif not self.groups:
            self._send(m.Fatal(self.cfg.shard, refused=True,
                               message=f"shard {self.cfg.shard}: every contract was refused; nothing left to record"))
            self.request_stop("every contract refused", WORKER_EXIT_REFUSED)

    # --- token ----------------------------------------------------------------------------------

    async def _refresh_token(self, used_gen: int) -> None:
        if self.token_gen <= used_gen:
            await self.link.fresh_token(used_gen, self.stopping)

    def _handle(self, msg: m.SupervisorMessage) -> None:
        match msg:
            case m.Stop(reason=reason):
                self.request_stop(reason)
            case m.Token(gen=gen, token=token):
                if gen > self.token_gen:
                    self.token, self.token_gen = token, gen
                    self.planner.token_refreshed()
                    self._event(Event.TOKEN_REFRESHED, gen=self.token_gen)
                self.link.token_answered(True)
            case m.TokenUnavailable():
                # No fresh token can be had (a fixed --token): the planner proceeds as if it had been refreshed.
                self.planner.token_refreshed()
                self.link.token_answered(False)
            case m.AcceptedElsewhere():
                self.accepted_elsewhere = True
            case m.RecordEvent(event=event, fields=fields):
                self._event(event, **dict(fields))
            case m.Contracts(contracts=contracts):
                self._reload(contracts)

    # --- a reload (SIGHUP): only the groups whose contracts changed are resubscribed --------------------

    def _reload(self, contracts: tuple[str, ...]) -> None:
        if self.stopping.is_set():
            return
        if not self._groups_started or self.handovers:
            # Applied once the groups exist, or once the previous handover is over (one at a time keeps every
            # group's dedupe sources apart).
            self._reload_pending = contracts
            return
        self._reload_pending = None
        old, wanted = self.contracts, set(contracts)
        added = [c for c in contracts if c not in set(old)]
        removed = [c for c in old if c not in wanted]
        self.contracts = contracts
        # A contract the server refused stays excluded while it is listed; one that left the list is forgotten.
        self.rejected = [c for c in self.rejected if c in wanted]
        self.planner.rejected[:] = [c for c in self.planner.rejected if c in wanted]
        if not added and not removed:
            return
        settings = self.cfg.connection
        runs = list(self.groups.values())
        refused = set(self.planner.rejected)
        try:
            target = regroup(settings.base_url, self.kind, [r.group.contracts for r in runs],
                             [c for c in contracts if c not in refused], max_url_length=settings.max_url_length,
                             max_per_connection=settings.max_contracts_per_connection)
        except ValueError as exc:  # the supervisor checked the list; a bug must not stop the shard
            log.error("shard %d: reload not applied: %s", self.cfg.shard, exc)
            return
        self._event(Event.RELOAD, added=added, removed=removed, contracts=len(contracts))
        writer = self.writer
        assert writer is not None
        # The file the new subscriptions start in lists what it holds: the old contracts too, while the old
        # connections hand over (the list is trimmed for the files after that).
        writer.update_meta(contracts=list(dict.fromkeys([*old, *contracts])))
        writer.rotate()
        changed = new_groups = 0
        for run, new in zip(runs, target, strict=False):
            if set(new) == set(run.group.contracts):
                continue
            changed += 1
            if new:
                self._resubscribe(run, new)
            else:
                self._unsubscribe(run)
        for new in target[len(runs):]:
            new_groups += 1
            self._start_group(self.planner.add(new))
        log.info("shard %d: reload: %d contracts added, %d removed: %d of %d groups resubscribed, %d new; the "
                 "others untouched", self.cfg.shard, len(added), len(removed), changed, len(runs), new_groups)
        if not self.handovers:
            writer.update_meta(contracts=list(contracts))

    def _resubscribe(self, run: GroupRun, contracts: tuple[str, ...]) -> None:
        """Make before break: new copies with the new list; the old ones record until those are accepted."""
        old = run.copies
        run.copies = []
        covering = [c for c in old if c.transport is not None or c.connecting]
        for c in old:
            c.retiring = True
            if c not in covering and c.task is not None:
                c.task.cancel()  # waiting to reconnect: nothing to hand over
        run.group = self.planner.update(run.group.gid, contracts)
        if covering and run.deduper is None:
            # One copy: a Deduper for the overlap only, so that a message that arrives on both connections is
            # recorded once (the later arrival becomes a receipt), as with --redundancy.
            run.deduper = self._new_deduper()
            run.handover_dedupe = True
            for c in covering:
                if c.listener is not None:
                    c.listener.redirect(self._sink(run.deduper, c.source))
        used = {c.source for c in old}
        redundancy = self.cfg.connection.redundancy
        self._add_copies(run, [n for n in range(2 * redundancy) if n not in used][:redundancy])
        if not covering:
            return
        assert self.loop is not None
        handover = Handover(run.group.gid, covering, {run.group.gid}, run.deduper, time.monotonic())
        self.handovers.append(handover)
        for c in covering:
            if c.task is not None:
                c.task.add_done_callback(lambda _t, h=handover: self._old_copy_ended(h))
        self.loop.call_later(HANDOVER_MAX_S, self._handover_overdue, handover)

    def _unsubscribe(self, run: GroupRun) -> None:
        """Every contract of the group left the list: its connections close (a close handshake) for good."""
        gid = run.group.gid
        self.groups.pop(gid, None)
        self.planner.remove(gid)
        self._event(Event.UNSUBSCRIBED, group=gid, contracts=list(run.group.contracts), reason="removed by a reload")
        for c in run.copies:
            c.retiring = c.closing = True
            if c.transport is not None:
                self._close_copy(c, b"unsubscribed")
            elif not c.connecting and c.task is not None:
                c.task.cancel()
        deduper = run.deduper
        tasks = [c.task for c in run.copies if c.task is not None and not c.task.done()]

        def copy_ended(_task: asyncio.Task[None]) -> None:
            # Its copies deliver messages (through the dedupe) until the server answers their CLOSE.
            if all(t.done() for t in tasks):
                self._release_deduper(deduper)

        for t in tasks:
            t.add_done_callback(copy_ended)
        if not tasks:
            self._release_deduper(deduper)

    def _handover_of(self, gid: int) -> Handover | None:
        return next((h for h in self.handovers if gid in h.waiting and not h.closing), None)

    def _handover_progress(self) -> None:
        """A connection was accepted: old copies whose successors are all accepted (every copy) close now."""
        for h in self.handovers:
            if h.closing:
                continue
            waiting = [self.groups[g] for g in h.waiting if g in self.groups]
            if all(c.ever_accepted for run in waiting for c in run.copies):
                self._finish_handover(h)

    def _handover_overdue(self, h: Handover) -> None:
        if h in self.handovers and not h.closing and not self.stopping.is_set():
            log.warning("shard %d group %d: the resubscribed connection was not accepted within %.0fs; closing the "
                        "old one anyway", self.cfg.shard, h.gid, HANDOVER_MAX_S)
            self._finish_handover(h)

    def _finish_handover(self, h: Handover) -> None:
        h.closing = True
        for c in h.old:
            c.closing = True
            if c.transport is not None:
                self._close_copy(c, b"resubscribed")
            elif not c.connecting and c.task is not None:
                c.task.cancel()

    def _close_copy(self, c: CopyRun, reason: bytes) -> None:
        """A close handshake: what the server sent before it saw our CLOSE is still recorded."""
        transport = c.transport
        if transport is None:
            return
        with contextlib.suppress(Exception):
            transport.send_close(WSCloseCode.OK, reason)

        def hang_up() -> None:  # a server that never answers the CLOSE
            if c.transport is transport:
                transport.disconnect(False)

        assert self.loop is not None
        self.loop.call_later(CLOSE_MAX_S, hang_up)

    def _old_copy_ended(self, h: Handover) -> None:
        if h in self.handovers and all(c.task is None or c.task.done() for c in h.old):
            # The old copies' last messages may still have copies on their way on the new connections: the dedupe
            # stays for one window more.
            assert self.loop is not None
            self.loop.call_later(self.cfg.connection.dedupe_window_s, self._handover_done, h)

    def _handover_done(self, h: Handover) -> None:
        if h not in self.handovers:
            return
        self.handovers.remove(h)
        for run in self.groups.values():
            if run.handover_dedupe and run.deduper is h.deduper:
                # One copy again: straight to the writer, as before the reload.
                run.deduper, run.handover_dedupe = None, False
                for c in run.copies:
                    if c.listener is not None:
                        c.listener.redirect(self._sink(None, c.source))
        self._release_deduper(h.deduper)
        if not self.handovers:
            assert self.writer is not None
            self.writer.update_meta(contracts=list(self.contracts))
            if self._reload_pending is not None and not self.stopping.is_set():
                self._reload(self._reload_pending)

    # --- writer callbacks (may come from the writer thread) ---------------------------------------

    def _backlog_threadsafe(self, paused: bool) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._backlog, paused)

    def _backlog(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        for run in self._copies():
            if run.transport is not None:
                t = run.transport.underlying_transport
                if paused:
                    t.pause_reading()
                else:
                    t.resume_reading()
        self._event(Event.BACKPRESSURE, paused=paused)
        if paused:
            # A niced writer can also fall behind because busy processes (bots) outrank it: say how to rule that out.
            niced = self.cfg.connection.writer_nice
            hint = (f" (its thread runs at nice +{niced}: if the machine is busy rather than the disk slow, "
                    "--writer-nice 0 gives it a full share)") if niced else ""
            log.warning("shard %d: the disk or the compression is not keeping up; reading paused until the writer "
                        "catches up%s", self.cfg.shard, hint)

    def _writer_error_threadsafe(self, error: SegmentWriteError) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._writer_error, error)

    def _writer_error(self, error: SegmentWriteError) -> None:
        log.error("shard %d: %s", self.cfg.shard, error)
        self._send(m.Fatal(self.cfg.shard, str(error)))
        self.request_stop("write error", WORKER_EXIT_FATAL)

    # --- helpers --------------------------------------------------------------------------------

    def _logs(self, logs: tuple[Any, ...]) -> None:
        for line in logs:
            log.log(line.level, "%s", self._clean(line.message))

    def _event(self, event: Event | str, **fields: Any) -> None:
        writer = self.writer
        if writer is not None:
            writer.append(clock.time_ns(), int(fields.get("conn", 0)), RecordKind.EVENT, encode_event(event, **fields))

    def _clean(self, text: str) -> str:
        return redact_text(text, (self.token,))

    def _send(self, msg: m.WorkerMessage) -> None:
        if not self.link.send(msg) and self.loop is not None and threading.current_thread() is threading.main_thread():
            self.request_stop("supervisor went away")

    def _status(self, final: bool = False) -> m.Status:
        now = clock.time_ns()
        copies = self._copies()
        open_runs = [c for c in copies if c.listener is not None]
        received = self._received()
        received_bytes = self.closed_bytes + sum(c.listener.bytes for c in open_runs if c.listener)
        last = max((c.listener.last_ns for c in open_runs if c.listener), default=0)
        # Arrivals less those recorded as receipts (copies of a message another connection delivered first).
        duplicates = self.retired_copies + sum(d.counts.copies for d in self._dedupers.values())
        originals = received - duplicates
        w = self.writer
        return m.Status(
            shard=self.cfg.shard, pid=os.getpid(), sent_ns=now,
            connections_open=len(open_runs), connections=len(copies),
            messages=originals, copies=duplicates, bytes=received_bytes, reconnects=self.reconnects,
            last_message_ns=last,
            records_written=w.records_written if w else 0, bytes_on_disk=w.bytes_written if w else 0,
            files_sealed=w.files_sealed if w else 0, backlog_bytes=w.backlog_bytes if w else 0,
            paused=self._paused, rejected=tuple(self.rejected),
            # Over the groups recording now: a group split by bisection or excluded is not a gap of theirs.
            downtime_ns=sum(g.downtime(now) for g in self.groups.values()),
            group_ns=sum(now - g.started_ns for g in self.groups.values()),
            groups=len(self.groups),
            groups_disconnected=sum(1 for g in self.groups.values() if g.open_copies == 0),
            final=final,
            live_handed=live_handed(self._live),
        )

    async def _ticker(self) -> None:
        writer = self.writer
        assert writer is not None
        parent = os.getppid()
        n = 0
        while True:
            await asyncio.sleep(0.05)
            writer.tick()
            n += 1
            if n % 20 == 0 and os.getppid() != parent:
                self.request_stop("supervisor went away")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            self._send(self._status())

    def _recover(self, paths: list[Path]) -> None:
        try:
            # The routine `ime-segments recover` runs: every file is attempted, and one with no record to keep
            # (empty, header only) is moved aside, so that it is reported once, not at every start.
            results = recover_each(paths)
        except Exception as exc:  # report and carry on: recording matters more than old files
            log.error("shard %d: could not recover %s: %s", self.cfg.shard, ", ".join(map(str, paths)), exc)
            return
        for result in results:
            if isinstance(result, RecoveryFailure):
                log.error("shard %d: %s; run `ime-segments recover` on it once the cause is fixed", self.cfg.shard,
                          result)
            else:
                # One report, by the supervisor: logging here as well printed every recovery twice.
                self._send(m.Recovered(self.cfg.shard, str(result)))


def worker_main(cfg: WorkerConfig, pipe: Connection) -> None:
    """Entry point of the worker process (multiprocessing target, forked from the fork server)."""
    # Signals a terminal or `kill -- -PGID` sends to the whole process group are the supervisor's to act on; it
    # tells us over the pipe (childproc.py).
    ignore_group_signals()
    set_process_name(f"ime-rec-s{cfg.shard:02d}")
    link = SupervisorLink(pipe, cfg.shard)
    worker = Worker(cfg, link)
    handler = PipeLogHandler(link)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s s{cfg.shard:02d}: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level)
    logging.getLogger("picows").setLevel(logging.ERROR)
    # Everything imported so far lives as long as the process: out of the collector's sight, a full collection
    # walks only what recording creates (it walked ~27k objects, a 10-15 ms stall of the receive thread).
    gc.freeze()
    code = uvloop.run(worker.run())
    link.close()
    os._exit(code)  # skip interpreter teardown: everything is sealed and flushed already
