"""One worker process: a shard's picows connections on uvloop, recording into one SegmentWriter.

The worker talks to the supervisor over a multiprocessing pipe (dict messages):
  worker → supervisor: status, need_token, rejected, accepted, fatal, stopped
  supervisor → worker: token, token_unavailable, stop
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import random
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop
from picows import WSCloseCode, WSError, WSHandshakeError, WSTransport, ws_connect

from recorder import __version__
from recorder.events import Event, encode_event
from recorder.feed.endpoints import EndpointKind, build_url, split_contracts
from recorder.record.backoff import Backoff
from recorder.record.config import WORKER_EXIT_FATAL, WORKER_EXIT_OK, WORKER_EXIT_REFUSED, WorkerConfig
from recorder.record.listener import RecordingListener
from recorder.record.live import close_live_output, make_live_output, tee  # LIVE-WIRING
from recorder.record.planner import Action, Group, Planner
from recorder.record.timeslice import request_slice
from recorder.redact import redact_text, redact_url
from recorder.segment.format import RecordKind
from recorder.segment.naming import OPEN_SUFFIX, parse_segment_name
from recorder.segment.recover import recover
from recorder.segment.writer import SegmentWriteError, SegmentWriter, describe_os_error

log = logging.getLogger("recorder.worker")

_EVENT = int(RecordKind.EVENT)
_HIDDEN_HEADERS = {"set-cookie", "authorization", "cookie", "proxy-authorization"}


class ShardLocked(Exception):
    pass


@dataclass(slots=True)
class GroupRun:
    """What one connection group is doing now (for status lines and stopping)."""

    group: Group
    transport: WSTransport | None = None
    listener: RecordingListener | None = None
    task: asyncio.Task[None] | None = None
    backoff: Backoff = field(default_factory=Backoff)


class Worker:
    def __init__(self, cfg: WorkerConfig, pipe: Connection) -> None:
        self.cfg = cfg
        self.pipe = pipe
        self.kind = EndpointKind(cfg.connection.kind)
        self.token = cfg.token
        self.token_gen = cfg.token_gen
        self.planner = Planner()
        self.runs: dict[int, GroupRun] = {}
        self.stopping = asyncio.Event()
        self.exit_code = WORKER_EXIT_OK
        self.stop_reason = "stopped"
        self._conn_seq = 0
        self._token_waiter: asyncio.Future[bool] | None = None
        self._paused = False
        self._ssl: ssl.SSLContext | None = None
        self.writer: SegmentWriter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Figures for status lines.
        self.reconnects = 0
        self.closed_messages = 0
        self.closed_bytes = 0
        self.rejected: list[str] = []
        self._lock_fd: int | None = None
        self._pipe_lock = threading.Lock()
        self._live = make_live_output(cfg.live)  # LIVE-WIRING

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
        self.loop.add_reader(self.pipe.fileno(), self._on_pipe)
        storage = self.cfg.storage
        try:
            self._lock_shard(storage.out_dir)
            stale = self._stale_open_files(storage.out_dir)
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
                meta={
                    "shards": self.cfg.shards,
                    "endpoint": self.kind.value,
                    "contracts": list(self.cfg.contracts),
                    "base_url": redact_url(self.cfg.connection.base_url),
                    "run_id": self.cfg.run_id,
                    "worker": {"pid": os.getpid(), "incarnation": self.cfg.incarnation},
                },
            )
        except (ShardLocked, SegmentWriteError) as exc:
            self._send({"type": "fatal", "message": str(exc)})
            return WORKER_EXIT_FATAL
        if stale:
            # A crashed predecessor left .open files: seal them beside recording, not before it.
            threading.Thread(target=self._recover, args=(stale,), name="recover", daemon=True).start()
        # After the writer and recovery threads exist: they inherit a slice and must keep the default.
        if self.cfg.connection.receive_slice_us:
            why_not = request_slice(self.cfg.connection.receive_slice_us)
            if why_not:
                log.debug("short CPU slice for the receive thread not applied: %s", why_not)

        self._event(Event.WORKER_STARTED, pid=os.getpid(), incarnation=self.cfg.incarnation,
                    contracts=list(self.cfg.contracts), version=__version__)
        if self.cfg.connection.base_url.startswith("wss:"):
            self._ssl = ssl.create_default_context(cafile=self.cfg.connection.ca_file)
        groups = split_contracts(self.cfg.connection.base_url, self.kind, self.cfg.contracts,
                                 max_url_length=self.cfg.connection.max_url_length,
                                 max_per_connection=self.cfg.connection.max_contracts_per_connection)
        for group in self.planner.start(groups):
            self._start_group(group)

        tick = asyncio.create_task(self._ticker())
        status = asyncio.create_task(self._status_loop())
        await self.stopping.wait()
        await self._shutdown()
        close_live_output(self._live)  # LIVE-WIRING
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
        for run in self.runs.values():
            if run.transport is not None:
                with contextlib.suppress(Exception):
                    run.transport.send_close(WSCloseCode.GOING_AWAY, b"recorder stopping")
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        writer = self.writer
        assert writer is not None and self.loop is not None
        try:
            await self.loop.run_in_executor(None, writer.close, "closed")
        except SegmentWriteError as exc:
            self._send({"type": "fatal", "message": str(exc)})
            self.exit_code = WORKER_EXIT_FATAL
        self._send({"type": "stopped", **self._status()})

    # --- groups and connections -----------------------------------------------------------------

    def _start_group(self, group: Group, delay: float = 0.0) -> None:
        run = GroupRun(group, backoff=Backoff(self.cfg.connection.backoff_base_s, self.cfg.connection.backoff_cap_s,
                                              self.cfg.connection.backoff_stable_s))
        self.runs[group.gid] = run
        run.task = asyncio.create_task(self._run_group(run, delay))
        run.task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the connection loop must be loud, and must not silently stop a shard's recording.
        exc = task.exception()
        log.error("shard %d: connection task failed: %s", self.cfg.shard, exc, exc_info=exc)
        self._send({"type": "fatal", "message": f"internal error in shard {self.cfg.shard}: {exc!r}"})
        self.request_stop("internal error", 1)

    async def _run_group(self, run: GroupRun, delay: float) -> None:
        if delay:
            await self._sleep(delay)
        settings = self.cfg.connection
        url = build_url(settings.base_url, self.kind, run.group.contracts)
        shown_url = redact_url(url)
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            self._conn_seq += 1
            conn_id = self._conn_seq
            token, token_gen = self.token, self.token_gen
            accepted = False

            def on_accepted(gid: int = run.group.gid) -> None:
                nonlocal accepted
                if not accepted:
                    accepted = True
                    self._accepted(gid)

            self._event(Event.CONNECTING, conn=conn_id, url=shown_url, contracts=list(run.group.contracts),
                        attempt=attempt)
            refused_status: int | None = None
            started = time.monotonic()
            try:
                assert self.writer is not None
                transport, listener = await ws_connect(
                    functools.partial(RecordingListener, conn_id, tee(self.writer.append, self._live),
                                      settings.max_message_bytes, on_accepted),  # LIVE-WIRING: tee(...)
                    url,
                    ssl_context=self._ssl,
                    websocket_handshake_timeout=settings.handshake_timeout_s,
                    enable_auto_ping=settings.ping_interval_s > 0,
                    auto_ping_idle_timeout=settings.ping_interval_s or 10,
                    auto_ping_reply_timeout=settings.ping_timeout_s,
                    max_frame_size=max(4 * settings.max_message_bytes, 16 << 20),
                    extra_headers={"Authorization": token},
                    logger_name="client",
                )
            except WSHandshakeError as exc:
                status = int(exc.response.status) if exc.response is not None else None
                self._event(Event.ERROR, conn=conn_id, stage="handshake", status=status,
                            error=self._clean(str(exc)))
                if status in (401, 403):
                    refused_status = status
                else:
                    await self._backoff_sleep(run, conn_id, 0.0)
                    continue
            except (OSError, TimeoutError, WSError, ValueError) as exc:
                reason = self._clean(f"{type(exc).__name__}: {exc}")
                self._event(Event.ERROR, conn=conn_id, stage="connect", error=reason)
                log.warning("shard %d: connect failed (%s); retrying", self.cfg.shard, reason)
                await self._backoff_sleep(run, conn_id, 0.0)
                continue
            else:
                if listener is None:
                    # picows: the peer hung up before answering the upgrade.
                    self._event(Event.ERROR, conn=conn_id, stage="handshake",
                                error="connection closed before the upgrade")
                    await self._backoff_sleep(run, conn_id, 0.0)
                    continue
                assert isinstance(listener, RecordingListener)
                run.transport, run.listener = transport, listener
                started = time.monotonic()
                self._event(Event.OPENED, conn=conn_id, url=shown_url, contracts=list(run.group.contracts),
                            status=int(transport.response.status), headers=self._headers(transport),
                            **self._addresses(transport))
                if self._paused:
                    transport.underlying_transport.pause_reading()
                try:
                    close_code, close_reason = await self._watch(transport, listener, on_accepted)
                except asyncio.CancelledError:
                    self._connection_ended(run, conn_id, listener, started, 1006, "close handshake timed out")
                    raise
                lived = self._connection_ended(run, conn_id, listener, started, close_code, close_reason)
                if self.stopping.is_set():
                    return
                if close_code != 1008:
                    log.warning("shard %d: connection closed (code %s%s) after %.1fs; reconnecting", self.cfg.shard,
                                close_code, f", {close_reason!r}" if close_reason else "", lived)
                    run.backoff.connection_ended(lived)
                    await self._backoff_sleep(run, conn_id, lived)
                    continue
                refused_status = 1008

            # Refused: close 1008, or HTTP 401/403 on the upgrade.
            if self.stopping.is_set():
                return
            decision = self.planner.refused(run.group.gid, token_gen, self.token_gen, accepted)
            if decision.action is Action.RETRY:
                await self._backoff_sleep(run, conn_id, 0.0, quiet=True)
            elif decision.action is Action.REFRESH:
                log.warning("shard %d: server refused the connection (%s); getting a fresh token", self.cfg.shard,
                            refused_status)
                await self._refresh_token(token_gen)
            elif decision.action is Action.SPLIT:
                log.warning("shard %d: a fresh token was refused too; looking for the refused contract(s) among %d",
                            self.cfg.shard, len(run.group.contracts))
                del self.runs[run.group.gid]
                for g in decision.groups:
                    self._start_group(g, delay=random.uniform(0, 0.2))
                return
            else:
                del self.runs[run.group.gid]
                self._reject(decision.rejected, refused_status)
                return

    def _connection_ended(self, run: GroupRun, conn_id: int, listener: RecordingListener, started: float,
                          code: int, reason: str) -> float:
        run.transport, run.listener = None, None
        lived = time.monotonic() - started
        self.closed_messages += listener.messages
        self.closed_bytes += listener.bytes
        self._event(Event.CLOSED, conn=conn_id, code=code, reason=reason, messages=listener.messages,
                    bytes=listener.bytes, lived_s=round(lived, 3))
        return lived

    async def _watch(self, transport: WSTransport, listener: RecordingListener,
                     on_accepted: Any) -> tuple[int, str]:
        """Wait for the connection to end; count it as accepted after the probe window; enforce idle timeout."""
        settings = self.cfg.connection
        probe_deadline = time.monotonic() + settings.probe_s
        idle_ns = int(settings.idle_timeout_s * 1e9)
        opened_ns = time.time_ns()
        waiter = asyncio.ensure_future(transport.wait_disconnected())
        try:
            while True:
                done, _ = await asyncio.wait([waiter], timeout=0.5)
                if done:
                    break
                if time.monotonic() >= probe_deadline:
                    on_accepted()
                if idle_ns and time.time_ns() - max(listener.last_ns, opened_ns) > idle_ns:
                    self._event(Event.IDLE_TIMEOUT, conn=listener.conn_id, idle_s=settings.idle_timeout_s)
                    log.warning("shard %d: nothing received for %.0fs; reconnecting", self.cfg.shard,
                                settings.idle_timeout_s)
                    transport.send_close(WSCloseCode.GOING_AWAY, b"idle timeout")
                    transport.disconnect(False)
            exc = waiter.exception()
        except asyncio.CancelledError:
            transport.disconnect(False)
            raise
        if listener.close_code is not None:
            return listener.close_code, listener.close_reason
        handshake = transport.close_handshake
        if handshake is not None and handshake.recv is not None:
            return int(handshake.recv.code), handshake.recv.reason or ""
        if exc is not None:
            return 1006, self._clean(f"{type(exc).__name__}: {exc}")
        return 1006, "connection dropped without a close frame"

    async def _backoff_sleep(self, run: GroupRun, conn_id: int, lived: float, quiet: bool = False) -> None:
        delay = run.backoff.next_delay()
        self.reconnects += 1
        self._event(Event.RECONNECT, conn=conn_id, delay_s=round(delay, 3), attempt=run.backoff.attempt)
        if not quiet:
            log.debug("shard %d: reconnecting in %.2fs", self.cfg.shard, delay)
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _accepted(self, gid: int) -> None:
        first = not self.planner.accepted_any
        self.planner.accepted(gid)
        if first:
            self._send({"type": "accepted"})

    def _reject(self, contracts: tuple[str, ...], status: int | None) -> None:
        self.rejected.extend(contracts)
        self._event(Event.REJECTED, contracts=list(contracts), code=status,
                    reason="refused by the server with a fresh token")
        log.error("shard %d: the server refuses contract %s (close %s with a fresh token); excluded, "
                  "recording the rest", self.cfg.shard, ", ".join(contracts), status)
        self._send({"type": "rejected", "contracts": list(contracts)})
        if self.planner.give_up:
            self._send({"type": "fatal", "refused": True,
                        "message": f"the server refused every contract tried on shard {self.cfg.shard} "
                                   f"({len(self.planner.rejected)} of {self.planner.total}) and accepted none: "
                                   "the token or the account's IME access is probably the problem"})
            self.request_stop("every contract refused", WORKER_EXIT_REFUSED)
        elif not self.runs:
            self._send({"type": "fatal", "refused": True,
                        "message": f"shard {self.cfg.shard}: every contract was refused; nothing left to record"})
            self.request_stop("every contract refused", WORKER_EXIT_REFUSED)

    # --- token ----------------------------------------------------------------------------------

    async def _refresh_token(self, used_gen: int) -> None:
        if self.token_gen > used_gen:
            return
        assert self.loop is not None
        if self._token_waiter is None or self._token_waiter.done():
            self._token_waiter = self.loop.create_future()
            self._send({"type": "need_token", "gen": used_gen})
        waiter = self._token_waiter
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([waiter, stop], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _on_pipe(self) -> None:
        try:
            while self.pipe.poll():
                msg = self.pipe.recv()
                self._handle(msg)
        except (EOFError, OSError):
            assert self.loop is not None
            self.loop.remove_reader(self.pipe.fileno())
            self.request_stop("supervisor went away")

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "stop":
            self.request_stop(str(msg.get("reason", "stopped")))
        elif kind == "token":
            if int(msg["gen"]) > self.token_gen:
                self.token, self.token_gen = str(msg["token"]), int(msg["gen"])
                self.planner.token_refreshed()
                self._event(Event.TOKEN_REFRESHED, gen=self.token_gen)
            if self._token_waiter is not None and not self._token_waiter.done():
                self._token_waiter.set_result(True)
        elif kind == "token_unavailable":
            # No fresh token can be had (a fixed --token); the planner proceeds as if it had been refreshed.
            self.planner.token_refreshed()
            if self._token_waiter is not None and not self._token_waiter.done():
                self._token_waiter.set_result(False)

    # --- writer callbacks (may come from the writer thread) ---------------------------------------

    def _backlog_threadsafe(self, paused: bool) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._backlog, paused)

    def _backlog(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        for run in self.runs.values():
            if run.transport is not None:
                t = run.transport.underlying_transport
                if paused:
                    t.pause_reading()
                else:
                    t.resume_reading()
        self._event(Event.BACKPRESSURE, paused=paused)
        if paused:
            log.warning("shard %d: the disk is not keeping up; reading paused until the writer catches up",
                        self.cfg.shard)

    def _writer_error_threadsafe(self, error: SegmentWriteError) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._writer_error, error)

    def _writer_error(self, error: SegmentWriteError) -> None:
        log.error("shard %d: %s", self.cfg.shard, error)
        self._send({"type": "fatal", "message": str(error)})
        self.request_stop("write error", WORKER_EXIT_FATAL)

    # --- helpers --------------------------------------------------------------------------------

    def _event(self, event: Event, **fields: Any) -> None:
        writer = self.writer
        if writer is not None:
            writer.append(time.time_ns(), int(fields.get("conn", 0)), _EVENT, encode_event(event, **fields))

    def _clean(self, text: str) -> str:
        return redact_text(text, (self.token,))

    @staticmethod
    def _addresses(transport: WSTransport) -> dict[str, str]:
        """Both ends of the TCP connection: lets an operator match a recording to server-side logs."""
        out = {}
        for key, info in (("local", "sockname"), ("peer", "peername")):
            addr = transport.underlying_transport.get_extra_info(info)
            if isinstance(addr, tuple) and len(addr) >= 2:
                out[key] = f"{addr[0]}:{addr[1]}"
        return out

    @staticmethod
    def _headers(transport: WSTransport) -> dict[str, str]:
        headers = transport.response.headers
        return {str(k): str(v) for k, v in headers.items() if k.lower() not in _HIDDEN_HEADERS}

    def _send(self, msg: dict[str, Any]) -> None:
        # The recovery thread and log lines send too; a Connection is not safe to share unlocked.
        try:
            with self._pipe_lock:
                self.pipe.send({"shard": self.cfg.shard, **msg})
        except (OSError, ValueError):
            if self.loop is not None and threading.current_thread() is threading.main_thread():
                self.request_stop("supervisor went away")

    def _status(self) -> dict[str, Any]:
        open_runs = [r for r in self.runs.values() if r.listener is not None]
        messages = self.closed_messages + sum(r.listener.messages for r in open_runs if r.listener)
        received = self.closed_bytes + sum(r.listener.bytes for r in open_runs if r.listener)
        last = max((r.listener.last_ns for r in open_runs if r.listener), default=0)
        w = self.writer
        return {
            "type": "status",
            "pid": os.getpid(),
            "connections_open": len(open_runs),
            "connections": len(self.runs),
            "messages": messages,
            "bytes": received,
            "reconnects": self.reconnects,
            "last_message_ns": last,
            "records_written": w.records_written if w else 0,
            "bytes_on_disk": w.bytes_written if w else 0,
            "files_sealed": w.files_sealed if w else 0,
            "backlog_bytes": w.backlog_bytes if w else 0,
            "paused": self._paused,
            "rejected": list(self.rejected),
        }

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

    def _lock_shard(self, out_dir: Path) -> None:
        path = out_dir / f".{self.cfg.storage.prefix}-s{self.cfg.shard:02d}.lock"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:  # restarting cannot fix a directory that went away or turned read-only
            raise SegmentWriteError(describe_os_error(exc, out_dir)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShardLocked(f"another recorder is writing shard {self.cfg.shard} in {out_dir}; "
                              "use another --out or stop it first") from None
        self._lock_fd = fd

    def _stale_open_files(self, out_dir: Path) -> list[Path]:
        stale = []
        for p in sorted(out_dir.glob(f"{self.cfg.storage.prefix}-s*{OPEN_SUFFIX}")):
            parsed = parse_segment_name(p.name)
            if parsed is not None and parsed[0] == self.cfg.storage.prefix and parsed[1] == self.cfg.shard:
                stale.append(p)
        return stale

    def _recover(self, paths: list[Path]) -> None:
        for p in paths:
            try:
                result = recover(p)
                log.warning("shard %d: recovered %s", self.cfg.shard, result)
                self._send({"type": "recovered", "message": str(result)})
            except Exception as exc:  # report and carry on: recording matters more than one old file
                log.error("shard %d: could not recover %s: %s", self.cfg.shard, p, exc)


class PipeLogHandler(logging.Handler):
    """Log lines travel to the supervisor, which prints them above its live status table."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.worker._send({"type": "log", "line": self.format(record)})
        except Exception:
            self.handleError(record)


def worker_main(cfg: WorkerConfig, pipe: Connection) -> None:
    """Entry point of the worker process (multiprocessing spawn target)."""
    # Until the event loop installs its handlers, a Ctrl-C aimed at the supervisor must not kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(cfg, pipe)
    handler = PipeLogHandler(worker)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s s{cfg.shard:02d}: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level)
    logging.getLogger("picows").setLevel(logging.ERROR)
    code = uvloop.run(worker.run())
    pipe.close()
    os._exit(code)  # skip interpreter teardown: everything is sealed and flushed already
