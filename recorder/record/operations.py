"""Unattended operation, run by the supervisor: systemd notify/watchdog, disk guard, retention, --on-sealed,
token renewal ahead of `exp`, the trading-session stall alarm, and the figures behind their metrics.

The supervisor calls `start()`, `tick()` once a second from its status loop, and `close()`; everything else
is driven from here through the callbacks it is given, so the supervisor holds only those few call sites.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder import clock
from recorder.errors import RuntimeFailure
from recorder.events import Event
from recorder.feed.token import token_expiry
from recorder.humanize import human_bytes
from recorder.model.settings import OpsSettings
from recorder.record.auth import CredentialsRefused, TokenProvider, TokenUnavailable
from recorder.record.diskguard import DiskGuard, DiskLevel, free_bytes
from recorder.record.hooks import HookRunner, parse_command
from recorder.record.metrics import Figure
from recorder.record.renewal import renew_at
from recorder.record.retention import SegmentFile, plan_removals, remove, scan
from recorder.record.sdnotify import Notifier
from recorder.record.sessions import Session, StallAlarm, describe, in_session, parse_sessions
from recorder.record.status import ShardView

log = logging.getLogger("recorder.operations")

# States in which a shard counts as settled for READY=1: connected or retrying, or never going to be.
_SETTLED = frozenset({"refused", "empty", "failed", "stopped"})


def check_ops(settings: OpsSettings) -> None:
    """What the settings tree cannot check itself: the --on-sealed command, --sessions, and the disk limits
    together (one line, exit 2)."""
    if settings.on_sealed is not None:
        parse_command(settings.on_sealed)
    parse_sessions(settings.sessions)
    warn, low = settings.warn_free_bytes, settings.min_free_bytes
    if warn is not None and low is not None and warn < low:
        raise RuntimeFailure("--warn-free-gb must not be below --min-free-gb", exit_code=2)


def check_disk_before_start(settings: OpsSettings, out_dir: Path) -> None:
    """Refuse to start on a disk already below --min-free-gb: one line, exit 1, nothing recorded."""
    if settings.min_free_bytes is None:
        return
    free = free_bytes(out_dir)
    if free < settings.min_free_bytes:
        raise RuntimeFailure(f"{out_dir} has {human_bytes(free)} free, below --min-free-gb "
                             f"({human_bytes(settings.min_free_bytes)}); free some space or lower the limit")


def settled(views: list[ShardView]) -> bool:
    """Every shard is connected or retrying (it reported its connection groups), or out of the game."""
    return all(v.state in _SETTLED or (v.state == "running" and v.connections > 0) for v in views)


@dataclass(slots=True)
class TokenRenewal:
    """Renews the token ahead of its `exp` (renewal.py says when) and hands it to every shard."""

    tokens: TokenProvider
    fail: Callable[[str], None]
    broadcast_token: Callable[[str, int], object]
    renewals_total: int = 0
    failures_total: int = 0

    async def run(self) -> None:
        warned_gen = -1
        obtained: dict[int, float] = {}  # generation → when this loop first saw it (wall clock)
        while True:
            gen = self.tokens.gen
            obtained.setdefault(gen, time.time())
            exp = token_expiry(self.tokens.token)
            if exp is None:
                await asyncio.sleep(30)  # no exp claim (or no JWT): nothing to plan; the token may change
                continue
            due = renew_at(exp, obtained[gen])
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, 30))  # re-plan at least every 30 s: a refusal may renew it first
                continue
            if self.tokens.gen != gen:
                continue
            try:
                token, new_gen = await self.tokens.refresh(gen)
            except TokenUnavailable:
                if warned_gen != gen:
                    warned_gen = gen
                    log.warning("the token expires in %.0fs and the %s cannot give a fresh one; replace it",
                                exp - time.time(), self.tokens.source)
                await asyncio.sleep(max(1.0, min(30.0, exp - time.time())))
                continue
            except CredentialsRefused as exc:
                self.failures_total += 1
                self.fail(str(exc))
                return
            except RuntimeFailure as exc:
                self.failures_total += 1
                log.error("renewing the token before it expires failed: %s; retrying in 5s", exc)
                await asyncio.sleep(5)
                continue
            self.renewals_total += 1
            left = token_expiry(token)
            log.info("token renewed ahead of expiry (generation %d%s)", new_gen,
                     f", valid for {left - time.time():.0f}s" if left is not None else "")
            self.broadcast_token(token, new_gen)

    def remaining_s(self) -> float | None:
        exp = token_expiry(self.tokens.token) if self.tokens.token else None
        return None if exp is None else exp - time.time()


@dataclass(slots=True)
class Housekeeping:
    """Retention and --on-sealed: now and then a scan of the output directory (one at a time, off the loop),
    each sealed file handed to the command, and the oldest files removed past --retain-days/--retain-gb."""

    settings: OpsSettings
    out_dir: Path
    prefix: str
    hooks: HookRunner | None
    removed_total: int = 0
    removed_bytes_total: int = 0
    errors_total: int = 0
    scanning: bool = False
    last_scan: float = 0.0

    def due(self) -> bool:
        """Whether a scan should start now: there is something to do with its result, none is running, and
        --scan-interval has passed since the last one."""
        s = self.settings
        wanted = self.hooks is not None or bool(s.retain_days) or bool(s.retain_bytes)
        return wanted and not self.scanning and time.monotonic() - self.last_scan >= s.scan_interval_s

    async def run(self) -> None:
        try:
            files = await asyncio.to_thread(scan, self.out_dir, self.prefix)
            if self.hooks is not None:
                for f in files:
                    if f.sealed:
                        self.hooks.submit(f.path)
            await self._retain(files)
        except OSError as exc:
            log.warning("housekeeping of %s failed: %s", self.out_dir, exc)
        finally:
            self.scanning = False
            self.last_scan = time.monotonic()

    async def _retain(self, files: list[SegmentFile]) -> None:
        s = self.settings
        if s.retain_days is None and s.retain_bytes is None:
            return
        protected = self.hooks.protected if self.hooks is not None else set()
        if self.hooks is not None:
            # Sealed but not yet handed to the command (found by this very scan): not finished with either.
            protected = protected | {f.path for f in files if f.sealed and not self.hooks.is_known(f.path)}
        removed: set[Path] = set()
        for r in plan_removals(files, time.time_ns(), s.retain_days, s.retain_bytes, protected):
            try:
                await asyncio.to_thread(remove, r.file.path, self.out_dir)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.errors_total += 1
                log.error("retention: cannot remove %s: %s", r.file.path, exc.strerror)
                continue
            removed.add(r.file.path)
            self.removed_total += 1
            self.removed_bytes_total += r.file.size
            log.info("retention: removed %s (%s, %s)", r.file.path, human_bytes(r.file.size), r.reason)
        if removed and self.hooks is not None:
            self.hooks.forget(removed)


@dataclass(slots=True)
class Operations:
    settings: OpsSettings
    out_dir: Path
    prefix: str
    views: Callable[[], list[ShardView]]
    tokens: TokenProvider
    fail: Callable[[str], None]  # seal everything, stop, exit 1 with this line
    broadcast_token: Callable[[str, int], object]
    send_event: Callable[[dict[str, Any]], object] | None  # an event record in every shard's segment
    notifier: Notifier | None = None
    guard: DiskGuard = field(default_factory=DiskGuard)
    hooks: HookRunner | None = None
    stall: StallAlarm | None = None
    sessions: tuple[Session, ...] = ()  # settings.sessions, parsed
    ready: bool = False
    started_ns: int = field(default_factory=clock.time_ns)
    disk_free: int = -1
    renewal: TokenRenewal = field(init=False)
    housekeeping: Housekeeping = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    last_tick: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        s = self.settings
        self.renewal = TokenRenewal(self.tokens, self.fail, self.broadcast_token)
        self.sessions = parse_sessions(s.sessions)
        self.guard = DiskGuard(s.warn_free_bytes, s.min_free_bytes)
        if self.notifier is None and s.notify:
            self.notifier = Notifier()
        if s.on_sealed is not None:
            self.hooks = HookRunner(s.on_sealed, self.out_dir, jobs=s.on_sealed_jobs,
                                    backoff_base_s=s.hook_backoff_s)
        if s.stall_alert_s is not None:
            self.stall = StallAlarm(s.stall_alert_s, self.sessions)
        self.housekeeping = Housekeeping(s, self.out_dir, self.prefix, self.hooks)

    @property
    def retention_removed_total(self) -> int:
        return self.housekeeping.removed_total

    @property
    def retention_removed_bytes_total(self) -> int:
        return self.housekeeping.removed_bytes_total

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.notifier is not None and self.notifier.watchdog_s is not None:
            self._tasks.append(loop.create_task(self._watchdog(self.notifier.watchdog_s)))
        self._tasks.append(loop.create_task(self.renewal.run()))
        if self.stall is not None:
            log.info("stall alert after %gs without a message during sessions %s (Asia/Tehran)",
                     self.stall.after_s, describe(self.stall.sessions))

    async def close(self, reason: str) -> None:
        if self.notifier is not None:
            self.notifier.stopping(reason)
        tasks = list(self._tasks)  # finished housekeeping tasks remove themselves from the list
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        # The workers sealed their last files just now: give each its --on-sealed run before leaving.
        if self.hooks is not None:
            await self.housekeeping.run()
            await self.hooks.close()
        if self.notifier is not None:
            self.notifier.close()

    def tick(self) -> None:
        """Once a second from the supervisor's loop."""
        self.last_tick = time.monotonic()
        views = self.views()
        now_ns = clock.time_ns()
        if not self.ready and views and settled(views):
            self.ready = True
            if self.notifier is not None:
                self.notifier.ready(f"recording {sum(v.contracts for v in views)} contracts on {len(views)} shards")
            log.info("ready: every shard is connected or retrying")
        if self.guard.enabled:
            self._check_disk()
        if self.stall is not None:
            self._check_stall(views, now_ns)
        if self.housekeeping.due():
            self.housekeeping.scanning = True
            task = asyncio.get_running_loop().create_task(self.housekeeping.run())
            self._tasks.append(task)
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _watchdog(self, interval_s: float) -> None:
        # Sent from the supervisor's own loop, and only while its status loop (which drives stopping, disk
        # guard and the rest) still ticks: a hung loop or a dead status task stops the pings and systemd
        # restarts the service.
        assert self.notifier is not None
        grace = max(5.0, 3 * interval_s)
        withheld = False
        while True:
            if time.monotonic() - self.last_tick <= grace:
                self.notifier.watchdog()
                withheld = False
            elif not withheld:
                withheld = True
                log.error("the supervisor's status loop has not run for %.0fs; no longer telling systemd we are "
                          "alive", time.monotonic() - self.last_tick)
            await asyncio.sleep(interval_s)

    # --- disk -----------------------------------------------------------------------------------

    def _check_disk(self) -> None:
        try:
            self.disk_free = free_bytes(self.out_dir)
        except OSError as exc:
            log.warning("cannot read free space of %s: %s", self.out_dir, exc.strerror)
            return
        change = self.guard.check(self.disk_free)
        if change is not None and self.send_event is not None:
            # In the data too, so that a report of the recording shows when the disk ran low.
            self.send_event({"event": str(Event.DISK), "level": change.value, "free_bytes": self.disk_free})
        if change is DiskLevel.CRITICAL:
            assert self.guard.min_bytes is not None
            self.fail(f"{self.out_dir} has only {human_bytes(self.disk_free)} free, below --min-free-gb "
                      f"({human_bytes(self.guard.min_bytes)}): every segment was sealed and recording stopped; "
                      "free some space (or set --retain-gb) and start again")
        elif change is DiskLevel.LOW:
            assert self.guard.warn_bytes is not None
            log.warning("%s has only %s free, below --warn-free-gb (%s)", self.out_dir,
                        human_bytes(self.disk_free), human_bytes(self.guard.warn_bytes))
        elif change is DiskLevel.OK:
            log.info("%s has %s free again", self.out_dir, human_bytes(self.disk_free))

    # --- stall alarm ----------------------------------------------------------------------------

    def _check_stall(self, views: list[ShardView], now_ns: int) -> None:
        assert self.stall is not None
        last = max((v.last_message_ns for v in views), default=0)
        change = self.stall.check(now_ns, last, self.started_ns)
        if change == "raised":
            silent = (now_ns - max(last, self.started_ns)) / 1e9
            log.error("stall: no message for %.0fs during a trading session (--stall-alert %g); check the "
                      "feed, the network and the credentials", silent, self.stall.after_s)
            if self.send_event is not None:
                self.send_event({"event": "stall", "silent_s": round(silent, 3), "after_s": self.stall.after_s})
        elif change == "cleared":
            log.info("stall over: messages are arriving again (or the session ended)")
            if self.send_event is not None:
                self.send_event({"event": "stall_over"})

    # --- metrics and health ---------------------------------------------------------------------

    def figures(self) -> list[Figure]:
        out = [
            Figure("ime_recorder_ready", "gauge", "1 once every shard was connected or retrying",
                   float(self.ready)),
            # A restart by systemd can fall between two scrapes: a new start time shows it all the same.
            Figure("ime_recorder_start_time_seconds", "gauge", "when the recorder started (Unix time)",
                   self.started_ns / 1e9),
            # Exported whether or not --stall-alert is on: alert rules tell silence in a session (an outage)
            # from silence at night (normal) by it.
            Figure("ime_recorder_trading_session", "gauge", "1 while the clock is within --sessions (Asia/Tehran)",
                   float(in_session(self.sessions, clock.time_ns()))),
            Figure("ime_recorder_retention_removed_files", "counter", "segments removed by retention",
                   self.housekeeping.removed_total),
            Figure("ime_recorder_retention_removed_bytes", "counter", "bytes removed by retention",
                   self.housekeeping.removed_bytes_total),
            Figure("ime_recorder_retention_errors", "counter", "segments retention could not remove",
                   self.housekeeping.errors_total),
            Figure("ime_recorder_token_renewals", "counter", "tokens renewed ahead of expiry",
                   self.renewal.renewals_total),
            Figure("ime_recorder_token_renewal_failures", "counter", "failed attempts to renew the token early",
                   self.renewal.failures_total),
        ]
        remaining = self.renewal.remaining_s()
        out.append(Figure("ime_recorder_token_remaining_seconds", "gauge",
                          "seconds until the token's exp claim (-1: no exp)",
                          remaining if remaining is not None else -1.0))
        if self.guard.warn_bytes is not None:
            out.append(Figure("ime_recorder_disk_warn_free_bytes", "gauge", "--warn-free-gb in bytes",
                              self.guard.warn_bytes))
        if self.guard.min_bytes is not None:
            out.append(Figure("ime_recorder_disk_min_free_bytes", "gauge",
                              "--min-free-gb in bytes: below it the recorder seals everything and stops",
                              self.guard.min_bytes))
        if self.guard.enabled:
            out += [
                Figure("ime_recorder_disk_free_bytes", "gauge", "free bytes on the data disk", self.disk_free),
                Figure("ime_recorder_disk_low", "gauge", "1 while free space is below --warn-free-gb",
                       float(self.guard.level is not DiskLevel.OK)),
                Figure("ime_recorder_disk_low_warnings", "counter", "times free space fell below --warn-free-gb",
                       self.guard.warnings_total),
            ]
        if self.hooks is not None:
            h = self.hooks
            out += [
                Figure("ime_recorder_on_sealed_pending", "gauge", "sealed segments waiting for --on-sealed",
                       len(h.pending)),
                Figure("ime_recorder_on_sealed_succeeded", "counter", "--on-sealed runs that succeeded",
                       h.succeeded_total),
                Figure("ime_recorder_on_sealed_failures", "counter", "--on-sealed runs that failed",
                       h.failures_total),
                Figure("ime_recorder_on_sealed_given_up", "counter", "segments --on-sealed gave up on",
                       h.given_up_total),
            ]
        if self.stall is not None:
            out += [
                Figure("ime_recorder_stalled", "gauge", "1 while no message arrived for --stall-alert in a session",
                       float(self.stall.raised)),
                Figure("ime_recorder_stalls", "counter", "stall alerts raised", self.stall.raised_total),
            ]
        return out

    def health(self) -> tuple[bool, str]:
        """For /healthz: 503 with the reason while something needs a look."""
        views = self.views()
        now = time.monotonic()
        bad = [f"shard {v.shard} {v.state}" for v in views if v.state not in ("running", "empty")]
        stale = [f"shard {v.shard} silent for {now - v.updated_at:.0f}s" for v in views if v.stale(now)]
        problems = bad + stale
        if self.guard.level is not DiskLevel.OK:
            problems.append(f"disk free {human_bytes(self.disk_free)}")
        if self.stall is not None and self.stall.raised:
            problems.append("stalled during a trading session")
        if not self.ready:
            problems.append("not ready yet")
        return (not problems, "; ".join(problems) or "ok")
