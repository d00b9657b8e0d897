"""One worker process: a shard's picows connections on uvloop, recording into one SegmentWriter.

The worker orchestrates: the life of each copy's connections is copies.py's, the server's refusals refusals.py's, a
reload's make-before-break handover handover.py's, what a connection appends to sink.py's, the status figures
shard_status.py's, and what they share is a ShardState (shard_state.py). Messages to and from the supervisor are
typed in messages.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from multiprocessing.connection import Connection

from recorder import __version__
from recorder.child import Exit, run_child
from recorder.events import Event
from recorder.feed.endpoints import split_contracts
from recorder.live.output import close_live_output, make_live_output
from recorder.record import messages as m
from recorder.record.config import WorkerConfig
from recorder.record.copies import Copies
from recorder.record.handover import Handovers
from recorder.record.refusals import Refusals
from recorder.record.shard_dir import ShardLocked, open_writer, recover_stale
from recorder.record.shard_state import ShardState
from recorder.record.shard_status import shard_status
from recorder.record.timeslice import lower_priority, request_slice
from recorder.record.worker_link import SupervisorLink
from recorder.segment.files import SegmentWriteError

log = logging.getLogger("recorder.worker")


class Worker:
    def __init__(self, cfg: WorkerConfig, link: SupervisorLink) -> None:
        self.cfg, self.link = cfg, link

    async def run(self) -> int:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        try:
            writer, stale = open_writer(cfg, lambda paused: loop.call_soon_threadsafe(self.copies.backlog, paused),
                                        lambda error: loop.call_soon_threadsafe(self._writer_error, error))
        except (ShardLocked, SegmentWriteError) as exc:
            self.link.send(m.Fatal(cfg.shard, str(exc)))
            return Exit.FATAL
        # The parts, once the writer is open (nothing of theirs runs before this coroutine first waits).
        state = self.state = ShardState(cfg, self.link, writer, loop, make_live_output(cfg.live))
        self.copies = Copies(state, lambda *refusal: self.refusals.refused(*refusal), self._accepted)
        self.handovers = Handovers(state, self.copies)
        self.refusals = Refusals(state, self.copies, self.handovers)
        if stale:
            threading.Thread(target=recover_stale, name="recover", daemon=True,
                             args=(stale, cfg.shard, lambda text: state.send(m.Recovered(cfg.shard, text)))).start()
        self._schedule_threads()
        settings = cfg.connection
        state.event(Event.WORKER_STARTED, pid=os.getpid(), incarnation=cfg.incarnation, contracts=list(state.contracts),
                    version=__version__, redundancy=settings.redundancy)
        groups = split_contracts(settings.base_url, state.kind, state.contracts, max_url_length=settings.max_url_length,
                                 max_per_connection=settings.max_contracts_per_connection)
        for group in state.planner.start(groups):
            self.copies.start_group(group)
        # Messages are handled from here on, with the groups started (a reload changes groups).
        self.link.start(loop, self._handle, lambda: state.request_stop("supervisor went away"))
        tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._status_loop())]
        await state.stopping.wait()
        await self._shutdown()
        for task in tasks:
            task.cancel()
        return state.exit_code

    def _schedule_threads(self) -> None:
        """After the writer and recovery threads exist: they inherit a slice and must keep the default."""
        settings = self.cfg.connection
        if settings.receive_slice_us:
            why_not = request_slice(settings.receive_slice_us)
            if why_not:
                log.debug("short CPU slice for the receive thread not applied: %s", why_not)
        thread_id = self.state.writer.thread_id
        if settings.writer_nice and thread_id is not None:
            why_not = lower_priority(thread_id, settings.writer_nice)
            if why_not:
                log.debug("lower priority for the writer thread not applied: %s", why_not)

    async def _shutdown(self) -> None:
        state = self.state
        state.event(Event.WORKER_STOPPING, reason=state.stop_reason)
        await self.copies.close_all()
        try:
            await state.loop.run_in_executor(None, state.writer.close, "closed")
        except SegmentWriteError as exc:
            state.send(m.Fatal(state.shard, str(exc)))
            state.exit_code = Exit.FATAL
        # Before the final status, which then counts every message handed to the hub: nothing follows it.
        close_live_output(state.live)
        state.send(shard_status(state, final=True))

    def _handle(self, msg: m.SupervisorMessage) -> None:
        match msg:
            case m.Stop(reason=reason):
                self.state.request_stop(reason)
            case m.Token(gen=gen, token=token):
                self.refusals.token(gen, token)
            case m.TokenUnavailable():
                self.refusals.token_unavailable()
            case m.AcceptedElsewhere():
                self.refusals.accepted_elsewhere = True
            case m.RecordEvent(event=event, fields=fields):
                self.state.event(event, **dict(fields))
            case m.Contracts(contracts=contracts):
                self.handovers.reload(contracts)

    def _accepted(self, gid: int) -> None:
        """A connection was accepted: the token is good, and a handover may be complete."""
        self.refusals.accepted(gid)
        self.handovers.progress()

    def _writer_error(self, error: SegmentWriteError) -> None:
        log.error("shard %d: %s", self.cfg.shard, error)
        self.state.fatal(str(error), "write error", Exit.FATAL)

    async def _ticker(self) -> None:
        writer, parent, n = self.state.writer, os.getppid(), 0
        while True:
            await asyncio.sleep(0.05)
            writer.tick()
            n += 1
            if n % 20 == 0 and os.getppid() != parent:
                self.state.request_stop("supervisor went away")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            self.state.send(shard_status(self.state))


def worker_main(cfg: WorkerConfig, pipe: Connection) -> None:
    """Entry point of the worker process (a child of the supervisor's, forked from its fork server)."""
    link = SupervisorLink(pipe, cfg.shard)
    run_child(link, f"ime-rec-s{cfg.shard:02d}", f"s{cfg.shard:02d}", cfg.log_level, Worker(cfg, link).run)
