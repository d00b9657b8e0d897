"""The supervisor: one worker process per shard, restarted when it dies; the token; status; clean stops; reloads.

Signals are the supervisor's alone (children ignore what is sent to the whole process group, childproc.py):
SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 seal every segment and stop; SIGHUP re-reads the config file and the
contract file and resubscribes only what changed (`systemctl reload`, and a dropped SSH session sends it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from recorder import clock
from recorder.errors import EXIT_OK, EXIT_RUNTIME, RuntimeFailure
from recorder.model.settings import ConnectionSettings, LiveSettings, OpsSettings, RunOptions, StorageSettings
from recorder.record import messages as m
from recorder.record.auth import CredentialsRefused, TokenProvider, TokenUnavailable
from recorder.record.childproc import child_start, prestart, worker_context
from recorder.record.config import WORKER_EXIT_FATAL, WORKER_EXIT_OK, WORKER_EXIT_REFUSED, WorkerConfig
from recorder.record.metrics import Figure, MetricsServer
from recorder.record.operations import Operations
from recorder.record.reload import ReloadError, Reread, describe, shard_changes
from recorder.record.retention import scan
from recorder.record.shard import partition
from recorder.record.status import (
    Console,
    ConsoleHandler,
    DiskFigures,
    ShardView,
    exit_summary,
    summary_line,
    table,
)
from recorder.record.worker import worker_main
from recorder.segment.recover import RecoveryFailure, recover_directory

log = logging.getLogger("recorder.supervisor")

# A dead worker is a shard recording nothing: restart fast, and never wait long (a crash loop is
# visible in the log line each time, so a slow restart would only add lost data, not safety). README promises
# 0.1-2 s from the death to the new worker recording: the longest wait leaves half a second for the start
# (milliseconds when forked from the fork server; a loaded machine may delay the supervisor's timer).
RESTART_MIN_S = 0.1
RESTART_MAX_S = 1.5
HEALTHY_AFTER_S = 10.0  # a worker that ran this long restarts at RESTART_MIN_S again
NOTHING_ACCEPTED_AFTER_S = 1.0  # a run this long in which the server never accepted a connection is a failure
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(slots=True)
class ShardProcess:
    shard: int
    contracts: tuple[str, ...]
    view: ShardView
    process: BaseProcess | None = None
    pipe: Connection | None = None
    incarnation: int = 0
    started_at: float = 0.0
    restart_delay: float = RESTART_MIN_S
    done: bool = False  # will not be restarted (stopped, fatal or refused)
    restart_handle: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    ever_accepted: bool = False  # some worker of this shard had a connection accepted
    respawn: bool = False  # a reload gave contracts back to a shard whose worker is still stopping


@dataclass(slots=True)
class RunSettings:
    shards: list[tuple[str, ...]]  # contracts per shard (possibly empty)
    connection: ConnectionSettings
    storage: StorageSettings
    run: RunOptions = field(default_factory=RunOptions)  # --duration, --status-interval (a reload sets it), metrics
    stop_timeout_s: float = 15.0
    log_level: int = logging.INFO
    live: bool | None = None
    ops: OpsSettings = field(default_factory=OpsSettings)
    live_outputs: LiveSettings | None = None  # --relay / --publish
    # SIGHUP: re-reads the config and contract files (raises ReloadError); None: nothing can be re-read.
    reread: Callable[[], Reread] | None = None


class Supervisor:
    def __init__(self, settings: RunSettings, tokens: TokenProvider, console: Console | None = None) -> None:
        self.settings = settings
        self.tokens = tokens
        self.console = console or Console(live=settings.live)
        self.run_id = uuid.uuid4().hex[:12]
        self.shards = [ShardProcess(i, c, ShardView(i, len(c))) for i, c in enumerate(settings.shards)]
        self.stopping = asyncio.Event()
        self.exit_code = EXIT_OK
        self.fatal_message: str | None = None
        self.accepted_any = False
        self.started = time.monotonic()
        self._ctx = worker_context()
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._workers_started = False  # a SIGHUP before that is applied right after
        self._reload_deferred = False
        self._token_task: asyncio.Task[None] | None = None
        self._pending_fatal: dict[int, str] = {}  # a worker's last words, used when it exits
        self._token_fixed_logged = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ops: Operations | None = None
        self.hub: Any = None  # recorder.live.control.HubControl when --relay/--publish is on

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self.stop, f"received {signal.Signals(sig).name}")
        self.loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # The supervisor's own log lines go through the console, which survives stderr going away.
        root = logging.getLogger()
        replaced = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                    and getattr(h, "stream", None) is self.console.stream]
        handler = ConsoleHandler(self.console, replaced[0].formatter, replaced[0].level) if replaced else None
        if handler is not None:
            for h in replaced:
                root.removeHandler(h)
            root.addHandler(handler)
        try:
            return await self._run()
        finally:
            if handler is not None:
                root.removeHandler(handler)
                for h in replaced:
                    root.addHandler(h)

    async def _run(self) -> int:
        assert self.loop is not None
        prestart(self._ctx)
        try:
            token, gen = await self.tokens.initial()
        except CredentialsRefused as exc:
            self.console.log(f"ime-record: error: {exc}")
            return EXIT_RUNTIME
        active = [s for s in self.shards if s.contracts]
        for s in self.shards:
            if not s.contracts:
                s.done = True
                s.view.state = "empty"
                log.warning("shard %d has no contracts (rendezvous hashing left it empty); not started", s.shard)
        log.info("recording %d contracts on %d shards into %s (run %s, token from %s)",
                 sum(len(s.contracts) for s in self.shards), len(active), self.settings.storage.out_dir,
                 self.run_id, self.tokens.source)
        for s in active:
            self._spawn(s, token, gen)
        if self.settings.live_outputs is not None:
            # After the workers, and at the lowest priority from its first instruction (live/control.py): the
            # workers hand messages over without waiting for it, and their start must not wait behind its imports.
            from recorder.live.control import HubControl

            hub_settings = replace(self.settings.live_outputs,
                                   shard_contracts=tuple(tuple(s.contracts) for s in self.shards))
            self.hub = HubControl(hub_settings, self.console.log, self.settings.log_level)
            self.hub.start()
        self._workers_started = True
        if self._reload_deferred:
            self.request_reload()
        # notify/watchdog, disk guard, retention, --on-sealed, token renewal, stall alarm
        ops = self.ops = Operations(
            self.settings.ops, self.settings.storage.out_dir, self.settings.storage.prefix,
            views=lambda: [s.view for s in self.shards], tokens=self.tokens, fail=self.fail,
            broadcast_token=lambda t, g: [self._send(o, m.Token(g, t)) for o in self.shards],
            send_event=self._record_event)
        await ops.start()

        metrics: MetricsServer | None = None
        run = self.settings.run
        if run.metrics_port is not None:
            metrics = MetricsServer(lambda: [s.view for s in self.shards], run.metrics_host, run.metrics_port,
                                    figures=self._figures, health=ops.health)
            port = await metrics.start()
            log.info("Prometheus metrics on http://%s:%d/metrics", run.metrics_host, port)
        if run.duration_s is not None:
            self.loop.call_later(run.duration_s, self.stop, f"--duration {run.duration_s:g}s reached")
        status = asyncio.create_task(self._status_loop())
        await self.stopping.wait()
        await self._stop_workers()
        if self.hub is not None:  # after the workers, so it relays and publishes their last messages
            await self.hub.stop()
        elapsed = time.monotonic() - self.started
        if self.exit_code == EXIT_OK and not self.accepted_any and elapsed >= NOTHING_ACCEPTED_AFTER_S:
            # Exit 0 with nothing recorded would hide the failure from a script or a service manager.
            self.fatal_message = (f"no connection to the feed was accepted in {elapsed:.0f}s, so nothing was "
                                  "recorded; see the warnings above (check --base-url, the network and the token)")
            self.exit_code = EXIT_RUNTIME
        never = [s for s in self.shards if s.contracts and not s.ever_accepted and s.view.state != "refused"]
        if self.exit_code == EXIT_OK and self.accepted_any and never and elapsed >= NOTHING_ACCEPTED_AFTER_S:
            # The others recorded, so the run looks fine; these shards' contracts were not recorded at all.
            self.fatal_message = self._never_connected(never, elapsed)
            self.exit_code = EXIT_RUNTIME
        status.cancel()
        await ops.close(self.fatal_message or "stopped")  # after the workers sealed their files
        if metrics is not None:
            await metrics.close()
        self.console.close()
        elapsed = time.monotonic() - self.started
        for line in exit_summary([s.view for s in self.shards], elapsed, self._disk_figures()):
            self.console.log(line)
        nats_missing = None
        if self.hub is not None:
            self.console.log(f"  {self.hub.view.line()}")
            if self.settings.live_outputs is not None and self.settings.live_outputs.nats_url is not None:
                account = self.hub.view.nats_account(sum(s.view.total_live_handed for s in self.shards))
                self.console.log(f"  {account.line()}")
                if account.missing:
                    nats_missing = account
        if self.fatal_message:
            self.console.log(f"ime-record: error: {self.fatal_message}")
        if nats_missing is not None:
            # --publish asked for every message in NATS: a run that leaves some out does not exit 0, even though
            # the recording is whole (the hub only ever gets messages the workers have already recorded).
            self.exit_code = self.exit_code or EXIT_RUNTIME
            self.console.log(f"ime-record: error: NATS lacks {nats_missing.missing} of the {nats_missing.expected} "
                             "messages --publish should have stored (see above); the recording is not affected: each "
                             "was recorded before it was handed to the live hub")
        return self.exit_code

    def _disk_figures(self) -> DiskFigures | None:
        storage = self.settings.storage
        try:
            files = scan(storage.out_dir, storage.prefix)
        except OSError:
            return None  # the directory went away: the summary says what was written, the errors said the rest
        ops = self.ops
        return DiskFigures(len(files), sum(f.size for f in files),
                           ops.retention_removed_total if ops is not None else 0,
                           ops.retention_removed_bytes_total if ops is not None else 0)

    @staticmethod
    def _never_connected(never: list[ShardProcess], elapsed: float) -> str:
        contracts = [c for s in never for c in s.contracts]
        shown = ", ".join(contracts[:10]) + (f" and {len(contracts) - 10} more" if len(contracts) > 10 else "")
        which = (f"shard {never[0].shard}" if len(never) == 1
                 else "shards " + ", ".join(str(s.shard) for s in never))
        return (f"{which} never connected to the feed in {elapsed:.0f}s, so {len(contracts)} contracts were not "
                f"recorded ({shown}); see the warnings above")

    def stop(self, reason: str = "stopping", exit_code: int | None = None) -> None:
        if exit_code is not None and self.exit_code == EXIT_OK:
            self.exit_code = exit_code
        if not self.stopping.is_set():
            log.info("%s: sealing segments and stopping", reason)
            self.stopping.set()

    def fail(self, message: str) -> None:
        if self.fatal_message is None:
            self.fatal_message = message
        self.stop("fatal error", EXIT_RUNTIME)

    async def _stop_workers(self) -> None:
        for s in self.shards:
            s.done = True
            if s.restart_handle is not None:
                s.restart_handle.cancel()
            self._send(s, m.Stop("recorder stopping"))
        running = [s for s in self.shards if s.process is not None and s.process.exitcode is None]
        waits = [asyncio.ensure_future(s.exited.wait()) for s in running]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.settings.stop_timeout_s)
            for w in pending:
                w.cancel()
        for s in running:
            proc = s.process
            if proc is not None and proc.exitcode is None:
                log.error("shard %d did not stop within %.0fs; killing it and recovering its file", s.shard,
                          self.settings.stop_timeout_s)
                proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
                self._recover(s.shard)

    # --- workers --------------------------------------------------------------------------------

    def _spawn(self, s: ShardProcess, token: str, gen: int) -> None:
        assert self.loop is not None
        s.incarnation += 1
        s.exited = asyncio.Event()
        cfg = WorkerConfig(
            shard=s.shard,
            shards=len(self.shards),
            contracts=s.contracts,
            connection=self.settings.connection,
            storage=self.settings.storage,
            run_id=self.run_id,
            incarnation=s.incarnation,
            token=token,
            token_gen=gen,
            status_interval_s=1.0,
            log_level=self.settings.log_level,
            live=(replace(self.settings.live_outputs, shard=s.shard)
                  if self.settings.live_outputs is not None else None),
        )
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(cfg, child), name=f"ime-record-s{s.shard:02d}",
                                 daemon=False)
        with child_start():  # a signal to the process group while it starts is ours, not the worker's
            proc.start()
        child.close()
        s.process, s.pipe, s.started_at = proc, parent, time.monotonic()
        s.view.state = "running"
        s.view.pid = proc.pid or 0
        self.loop.add_reader(parent.fileno(), self._on_pipe, s)
        self.loop.add_reader(proc.sentinel, self._on_exit, s)
        if self.accepted_any:
            self._send(s, m.AcceptedElsewhere())

    def _on_exit(self, s: ShardProcess) -> None:
        assert self.loop is not None and s.process is not None
        self.loop.remove_reader(s.process.sentinel)
        # The sentinel closes while the child is still exiting; it is waitable a moment later.
        s.process.join(5)
        code = s.process.exitcode
        self._drain_pipe(s)
        if s.pipe is not None:
            self.loop.remove_reader(s.pipe.fileno())
            s.pipe.close()
            s.pipe = None
        s.view.incarnation_ended()
        s.exited.set()
        lived = time.monotonic() - s.started_at
        if code == WORKER_EXIT_OK and (s.done or self.stopping.is_set()):
            s.view.state = "stopped"
            if s.respawn and s.contracts and not self.stopping.is_set():
                # A reload emptied the shard and then gave it contracts again while its worker was stopping.
                s.respawn, s.done = False, False
                self._spawn(s, self.tokens.token, self.tokens.gen)
            return
        if code == WORKER_EXIT_FATAL:
            s.view.state = "failed"
            s.done = True
            self.fail(self._pending_fatal.pop(s.shard, f"shard {s.shard} failed"))
            return
        if code == WORKER_EXIT_REFUSED:
            s.view.state = "refused"
            s.done = True
            message = self._pending_fatal.pop(s.shard, f"shard {s.shard}: every contract refused")
            if all(x.view.state in ("refused", "empty") for x in self.shards) or not self.accepted_any:
                # Nothing was ever accepted with this token anywhere: the other shards would only be
                # refused the same way, one log line each; stop now with one line.
                self.fail(message)
            else:
                log.error("%s; the other shards keep recording", message)
            return
        if self.stopping.is_set() or s.done:
            s.view.state = "stopped"
            return
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        if lived >= HEALTHY_AFTER_S:
            s.restart_delay = RESTART_MIN_S
        delay = s.restart_delay
        s.restart_delay = min(RESTART_MAX_S, s.restart_delay * 2)
        last_words = self._pending_fatal.pop(s.shard, None)
        if last_words:
            how += f" ({last_words})"
        s.view.restarts += 1
        s.view.state = "restarting"
        log.error("shard %d worker (pid %s) %s after %.1fs; restarting in %.1fs (restart %d); other shards unaffected",
                  s.shard, s.process.pid, how, lived, delay, s.view.restarts)
        s.restart_handle = self.loop.call_later(delay, self._restart, s)

    def _restart(self, s: ShardProcess) -> None:
        s.restart_handle = None
        if self.stopping.is_set() or s.done:
            return
        # The new worker seals the .open file its predecessor left, beside recording.
        self._spawn(s, self.tokens.token, self.tokens.gen)

    def _recover(self, shard: int) -> None:
        try:
            results = recover_directory(self.settings.storage.out_dir, shard)
        except Exception as exc:
            log.error("could not recover shard %d's open file: %s; run `ime-segments recover %s`", shard, exc,
                      self.settings.storage.out_dir)
            return
        for result in results:
            if isinstance(result, RecoveryFailure):
                log.error("shard %d: %s; run `ime-segments recover` on it once the cause is fixed", shard, result)
            else:
                log.warning("recovered %s", result)

    # --- messages from workers ------------------------------------------------------------------

    def _on_pipe(self, s: ShardProcess) -> None:
        self._drain_pipe(s)

    def _drain_pipe(self, s: ShardProcess) -> None:
        pipe = s.pipe
        if pipe is None:
            return
        try:
            while pipe.poll():
                self._handle(s, pipe.recv())
        except (EOFError, OSError):
            if self.loop is not None and s.pipe is not None:
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(pipe.fileno())

    def _handle(self, s: ShardProcess, msg: m.WorkerMessage) -> None:
        match msg:
            case m.Status():
                s.view.update(msg, time.monotonic())
            case m.LogLine(line=line):
                self.console.log(line)
            case m.Accepted():
                s.ever_accepted = True
                if not self.accepted_any:
                    self.accepted_any = True
                    log.info("the feed accepted shard %d's connection: the token is good", s.shard)
                    # A refusal elsewhere is now about contracts, not the token: no token probe needed.
                    for other in self.shards:
                        if other is not s:
                            self._send(other, m.AcceptedElsewhere())
            case m.Rejected(contracts=contracts):
                s.view.rejected.extend(c for c in contracts if c not in s.view.rejected)
            case m.NeedToken(gen=gen):
                self._token_task = asyncio.ensure_future(self._refresh(s, gen))
            case m.Fatal(message=message):
                self._pending_fatal[s.shard] = message
            case m.Recovered(message=message):
                log.warning("shard %d: recovered %s", s.shard, message)

    # --- reload (SIGHUP) ---------------------------------------------------------------------------

    def request_reload(self) -> None:
        if self.stopping.is_set():
            log.info("reload: ignored, the recorder is stopping")
            return
        if not self._workers_started:
            self._reload_deferred = True  # the shards are not set up yet: right after they are
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True  # once more after this one: the files may have changed again meanwhile
            return
        self._reload_task = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            try:
                await self._reload_once()
            except Exception as exc:  # a bug in a reload must not take the recording down
                log.exception("reload failed: %r; keeping the running settings", exc)
            if not self._reload_again or self.stopping.is_set():
                return

    async def _reload_once(self) -> None:
        assert self.loop is not None
        reread = self.settings.reread
        if reread is None:
            log.info("reload: nothing to re-read")
            return
        try:
            found = await self.loop.run_in_executor(None, reread)
        except ReloadError as exc:
            log.error("reload: %s; keeping the running settings", exc)
            return
        if self.stopping.is_set():
            return
        old = [s.contracts for s in self.shards]
        new = partition(found.contracts, len(self.shards)) if found.contracts is not None else old
        changes = shard_changes(old, new)
        total = sum(len(c) for c in new)
        for line in describe(changes, found, total):
            log.info("reload: %s", line)
        if found.status_interval_s is not None:
            self.settings.run = replace(self.settings.run, status_interval_s=found.status_interval_s)
        if not changes:
            return
        for change in changes:
            self._apply_contracts(self.shards[change.shard], new[change.shard])
        if self.hub is not None:  # the relay accepts subscriptions to what is recorded
            self.hub.set_contracts(tuple(c for shard in new for c in shard), tuple(new))
        if self.settings.live_outputs is not None:
            self.settings.live_outputs = replace(self.settings.live_outputs, contracts=tuple(found.contracts or ()),
                                                 shard_contracts=tuple(new))

    def _apply_contracts(self, s: ShardProcess, contracts: tuple[str, ...]) -> None:
        had = s.contracts
        s.contracts = contracts
        s.view.contracts = len(contracts)
        s.view.rejected = [c for c in s.view.rejected if c in contracts]
        running = s.process is not None and s.process.exitcode is None
        if not contracts:
            s.done, s.respawn = True, False
            if s.restart_handle is not None:
                s.restart_handle.cancel()
                s.restart_handle = None
            if running:
                self._send(s, m.Stop("its contracts were all removed by a reload"))
            else:
                s.view.state = "empty"
        elif not had or s.done:
            if running:
                s.respawn = True  # still stopping; its successor starts when it has sealed its file
            else:
                s.done = False
                self._spawn(s, self.tokens.token, self.tokens.gen)
        elif running:
            self._send(s, m.Contracts(contracts))
        # Otherwise the worker is waiting to be restarted: its successor starts with the new list.

    async def _refresh(self, s: ShardProcess, used_gen: int) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                token, gen = await self.tokens.refresh(used_gen)
            except TokenUnavailable as exc:
                if not self._token_fixed_logged:
                    self._token_fixed_logged = True
                    log.warning("the server refused a connection and %s; one probe per shard will tell a bad token "
                                "from a bad contract", exc)
                self._send(s, m.TokenUnavailable())
                return
            except CredentialsRefused as exc:
                self.fail(str(exc))
                return
            except RuntimeFailure as exc:
                # The token endpoint is down: keep trying; splitting contracts on an old token would be wrong.
                log.error("%s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            if gen > used_gen:
                log.info("new token obtained (generation %d); reconnecting refused connections", gen)
            for other in self.shards:
                self._send(other, m.Token(gen, token))
            if self.accepted_any:
                for other in self.shards:
                    self._send(other, m.AcceptedElsewhere())
            return

    def _figures(self) -> list[Figure]:
        """Recorder-wide figures for Prometheus: operations (disk, tokens, stalls) and the live hub."""
        hub = self.hub.view.prometheus() if self.hub is not None else []
        return (self.ops.figures() if self.ops is not None else []) + hub

    def _record_event(self, event: dict[str, Any]) -> None:
        """An event record in every running shard's segment (a stall during trading hours, and its end)."""
        fields = tuple((k, v) for k, v in event.items() if k != "event")
        for s in self.shards:
            self._send(s, m.RecordEvent(str(event["event"]), fields))

    def _send(self, s: ShardProcess, msg: m.SupervisorMessage) -> None:
        if s.pipe is not None:
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                s.pipe.send(msg)

    # --- status ---------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            views = [s.view for s in self.shards]
            now = clock.time_ns()
            lines = table(views, now, time.monotonic() - self.started)
            if self.hub is not None:
                lines.append(self.hub.view.line())
            self.console.draw(lines)
            if self.ops is not None:
                self.ops.tick()
            if not self.console.live and time.monotonic() - last_line >= self.settings.run.status_interval_s:
                last_line = time.monotonic()
                log.info(summary_line(views, now))
                if self.hub is not None:
                    log.info("status: %s", self.hub.view.line())


def run_supervisor(settings: RunSettings, tokens: TokenProvider) -> int:
    import uvloop

    return uvloop.run(Supervisor(settings, tokens).run())

