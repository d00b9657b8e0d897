"""The supervisor: the workers (one per shard) and the live hub, the token, status, clean stops, reloads.

Signals are the supervisor's alone (children ignore what is sent to the whole process group, recorder/child.py):
SIGINT, SIGTERM, SIGQUIT, SIGUSR1 and SIGUSR2 seal every segment and stop; SIGHUP re-reads the config file and the
contract file and resubscribes only what changed (`systemctl reload`, and a dropped SSH session sends it too).
Its children (record/children.py) are the workers (record/workers.py) and the live hub (record/livehub.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from recorder import clock
from recorder.errors import EXIT_OK, EXIT_RUNTIME
from recorder.model.settings import ConnectionSettings, LiveSettings, OpsSettings, RunOptions, StorageSettings
from recorder.record import messages as m
from recorder.record.auth import CredentialsRefused, TokenProvider
from recorder.record.children import child_context, prestart
from recorder.record.config import WorkerConfig
from recorder.record.livehub import HubControl
from recorder.record.metrics import Figure, MetricsServer
from recorder.record.operations import Operations
from recorder.record.reload import ReloadError, Reread, describe, shard_changes
from recorder.record.retention import scan
from recorder.record.shard import partition
from recorder.record.status import Console, DiskFigures, exit_summary, logging_through, summary_line, table
from recorder.record.workers import Workers

log = logging.getLogger("recorder.supervisor")

NOTHING_ACCEPTED_AFTER_S = 1.0  # a run this long in which the server never accepted a connection is a failure
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


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
        self.stopping = asyncio.Event()
        self.exit_code = EXIT_OK
        self.fatal_message: str | None = None
        self.started = time.monotonic()
        self._ctx = child_context()
        template = WorkerConfig(shard=0, shards=len(settings.shards), contracts=(), connection=settings.connection,
                                storage=settings.storage, run_id=self.run_id, status_interval_s=1.0,
                                log_level=settings.log_level, live=settings.live_outputs)
        self.workers = Workers(settings.shards, template, tokens, self._ctx, self.console.log, self.fail,
                               self.stopping)
        self.hub: HubControl | None = None  # --relay / --publish
        self.ops: Operations | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._workers_started = False  # a SIGHUP before that is applied right after
        self._reload_deferred = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self.stop, f"received {signal.Signals(sig).name}")
        self.loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # The supervisor's own log lines go through the console, which survives stderr going away.
        with logging_through(self.console):
            return await self._run()

    async def _run(self) -> int:
        assert self.loop is not None
        prestart(self._ctx)
        try:
            await self.tokens.initial()
        except CredentialsRefused as exc:
            self.console.log(f"ime-record: error: {exc}")
            return EXIT_RUNTIME
        active = self.workers.mark_empty()
        log.info("recording %d contracts on %d shards into %s (run %s, token from %s)",
                 sum(len(c) for c in self.workers.contracts()), active, self.settings.storage.out_dir, self.run_id,
                 self.tokens.source)
        self.workers.start()
        self._start_hub()
        self._workers_started = True
        if self._reload_deferred:
            self.request_reload()
        # notify/watchdog, disk guard, retention, --on-sealed, token renewal, stall alarm
        ops = self.ops = Operations(
            self.settings.ops, self.settings.storage.out_dir, self.settings.storage.prefix,
            views=lambda: self.workers.views, tokens=self.tokens, fail=self.fail,
            broadcast_token=lambda t, g: self.workers.broadcast(m.Token(g, t)),
            send_event=self.workers.record_event)
        await ops.start()
        metrics = await self._start_metrics()
        run = self.settings.run
        if run.duration_s is not None:
            self.loop.call_later(run.duration_s, self.stop, f"--duration {run.duration_s:g}s reached")
        status = asyncio.create_task(self._status_loop())
        await self.stopping.wait()
        await self.workers.stop(self.settings.stop_timeout_s)
        if self.hub is not None:  # after the workers, so that it relays and publishes their last messages
            await self.hub.stop()
        self._judge()
        status.cancel()
        await ops.close(self.fatal_message or "stopped")  # after the workers sealed their files
        if metrics is not None:
            await metrics.close()
        self.console.close()
        self._summarise()
        return self.exit_code

    def _start_hub(self) -> None:
        """After the workers, at the lowest priority from its first instruction (record/livehub.py): the workers
        hand messages over without waiting for it, and their start must not wait behind its imports."""
        if self.settings.live_outputs is not None:
            self.hub = HubControl(replace(self.settings.live_outputs, shard_contracts=self.workers.contracts()),
                                  self._ctx, self.console.log, self.settings.log_level)
            self.hub.start()

    async def _start_metrics(self) -> MetricsServer | None:
        run = self.settings.run
        if run.metrics_port is None:
            return None
        assert self.ops is not None
        metrics = MetricsServer(lambda: self.workers.views, run.metrics_host, run.metrics_port,
                                figures=self._figures, health=self.ops.health)
        port = await metrics.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", run.metrics_host, port)
        return metrics

    def _judge(self) -> None:
        """A run that recorded nothing, or nothing of some shards, is a failure even though nothing crashed."""
        elapsed = time.monotonic() - self.started
        if self.exit_code != EXIT_OK or elapsed < NOTHING_ACCEPTED_AFTER_S:
            return
        if not self.workers.accepted_any:
            # Exit 0 with nothing recorded would hide the failure from a script or a service manager.
            self.fatal_message = (f"no connection to the feed was accepted in {elapsed:.0f}s, so nothing was "
                                  "recorded; see the warnings above (check --base-url, the network and the token)")
            self.exit_code = EXIT_RUNTIME
        elif (never := self.workers.never_connected(elapsed)) is not None:
            # The others recorded, so the run looks fine; these shards' contracts were not recorded at all.
            self.fatal_message = never
            self.exit_code = EXIT_RUNTIME

    def _summarise(self) -> None:
        elapsed = time.monotonic() - self.started
        for line in exit_summary(self.workers.views, elapsed, self._disk_figures()):
            self.console.log(line)
        nats_missing = None
        if self.hub is not None:
            self.console.log(f"  {self.hub.view.line()}")
            if self.hub.settings.nats_url is not None:
                account = self.hub.view.nats_account(sum(v.total_live_handed for v in self.workers.views))
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

    def stop(self, reason: str = "stopping", exit_code: int | None = None) -> None:
        if exit_code is not None and self.exit_code == EXIT_OK:
            self.exit_code = exit_code
        if not self.stopping.is_set():
            log.info("%s: sealing segments and stopping", reason)
            self.stopping.set()
            self.workers.retire()

    def fail(self, message: str) -> None:
        if self.fatal_message is None:
            self.fatal_message = message
        self.stop("fatal error", EXIT_RUNTIME)

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
                found = await self._reread()
                if found is not None:
                    self._apply(found)
            except Exception as exc:  # a bug in a reload must not take the recording down
                log.exception("reload failed: %r; keeping the running settings", exc)
            if not self._reload_again or self.stopping.is_set():
                return

    async def _reread(self) -> Reread | None:
        """The config and contract files as they are now; None when there is nothing to apply."""
        assert self.loop is not None
        reread = self.settings.reread
        if reread is None:
            log.info("reload: nothing to re-read")
            return None
        try:
            found = await self.loop.run_in_executor(None, reread)
        except ReloadError as exc:
            log.error("reload: %s; keeping the running settings", exc)
            return None
        return None if self.stopping.is_set() else found

    def _apply(self, found: Reread) -> None:
        old = list(self.workers.contracts())
        new = partition(found.contracts, len(old)) if found.contracts is not None else old
        changes = shard_changes(old, new)
        for line in describe(changes, found, sum(len(c) for c in new)):
            log.info("reload: %s", line)
        if found.status_interval_s is not None:
            self.settings.run = replace(self.settings.run, status_interval_s=found.status_interval_s)
        if not changes:
            return
        for change in changes:
            self.workers.apply_contracts(self.workers.shards[change.shard], new[change.shard])
        if self.hub is not None:  # the relay accepts subscriptions to what is recorded
            self.hub.set_contracts(tuple(c for shard in new for c in shard), tuple(new))
        if self.settings.live_outputs is not None:
            live = self.settings.live_outputs = replace(self.settings.live_outputs,
                                                        contracts=tuple(found.contracts or ()),
                                                        shard_contracts=tuple(new))
            self.workers.template = replace(self.workers.template, live=live)

    # --- status ---------------------------------------------------------------------------------

    def _figures(self) -> list[Figure]:
        """Recorder-wide figures for Prometheus: operations (disk, tokens, stalls) and the live hub."""
        hub = self.hub.view.prometheus() if self.hub is not None else []
        return (self.ops.figures() if self.ops is not None else []) + hub

    async def _status_loop(self) -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            views = self.workers.views
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

