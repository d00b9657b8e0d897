"""The supervisor's side of the hub: start it, restart it when it dies, stop it last, show its figures.

Recording never depends on the hub: workers do not wait for it, the supervisor starts it after the workers and
gives it the lowest CPU priority at once (its imports must not slow the workers' start), and a hub that dies is
restarted with a growing delay, like a worker. At the end `nats_account` says how many messages NATS did not
confirm, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any
from urllib.parse import urlsplit

from recorder.live.hub import hub_main
from recorder.model.settings import LiveSettings
from recorder.record.childproc import child_start
from recorder.record.metrics import Figure
from recorder.record.timeslice import hub_yields, yield_cpu
from recorder.timeparse import TimeLocale

log = logging.getLogger("recorder.supervisor")

RESTART_MIN_S = 0.2
RESTART_MAX_S = 30.0

# (name, type, help, status key) of the hub's Prometheus figures.
_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("ime_recorder_live_up", "gauge", "1 when the live hub (relay, NATS publisher) is running", "up"),
    ("ime_recorder_live_restarts_total", "counter", "live hub restarts", "restarts"),
    ("ime_recorder_live_received_total", "counter", "first arrivals the hub received from workers", "received"),
    ("ime_recorder_live_worker_dropped_total", "counter",
     "messages workers dropped instead of waiting for the hub", "worker_dropped"),
    ("ime_recorder_relay_clients", "gauge", "relay clients connected", "relay_clients"),
    ("ime_recorder_relay_messages_sent_total", "counter", "messages written to relay clients", "relay_sent"),
    ("ime_recorder_relay_slow_clients_cut_total", "counter", "relay clients cut for not reading", "relay_cut"),
    ("ime_recorder_relay_gap_clients_cut_total", "counter",
     "relay clients cut because messages never reached the hub", "relay_gap_cut"),
    ("ime_recorder_relay_error_clients_cut_total", "counter",
     "relay clients closed (1011) because writing to them raised; the hub's log has the traceback",
     "relay_error_cut"),
    ("ime_recorder_relay_client_protocol_errors_total", "counter",
     "relay clients closed for sending frames that break the WebSocket protocol", "relay_protocol_errors"),
    ("ime_recorder_nats_connected", "gauge", "1 while connected to NATS", "nats_connected"),
    ("ime_recorder_nats_published_total", "counter", "messages confirmed stored by JetStream", "nats_confirmed"),
    ("ime_recorder_nats_duplicates_total", "counter", "publishes JetStream reported as duplicates",
     "nats_duplicates"),
    ("ime_recorder_nats_backlog", "gauge", "messages waiting for NATS (unsent or unconfirmed)", "nats_backlog"),
    ("ime_recorder_nats_dropped_total", "counter", "messages dropped because the NATS backlog was full",
     "nats_dropped"),
    ("ime_recorder_nats_republished_total", "counter", "messages sent again after a reconnect or a missing ack",
     "nats_republished"),
    ("ime_recorder_nats_cpu_pauses_total", "counter",
     "times publishing paused because the live hub fell behind the workers (the machine short of CPU)", "nats_yields"),
)


_COUNTER_SUFFIXES = ("received", "dropped", "sent", "cut", "confirmed", "duplicates", "republished", "unrouted",
                    "errors", "reconnects", "yields")


@dataclass(frozen=True, slots=True)
class NatsAccount:
    """At the end of a run: what NATS should hold (every message the workers handed over that names a contract)
    against what it confirmed, and why the rest is missing."""

    expected: int
    confirmed: int
    missing: int
    reasons: tuple[str, ...]

    def line(self) -> str:
        if not self.missing:
            return f"NATS confirmed all {self.expected} messages published"
        return (f"NATS did not confirm {self.missing} of the {self.expected} messages it should hold: "
                + "; ".join(self.reasons))


@dataclass(slots=True)
class HubView:
    state: str = "starting"
    pid: int = 0
    restarts: int = 0
    relay_url: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    # Counters of earlier incarnations (a restarted hub counts from zero).
    base: dict[str, int] = field(default_factory=dict)

    def total(self, key: str) -> int:
        return int(self.base.get(key, 0)) + int(self.figures.get(key, 0) or 0)

    def incarnation_ended(self) -> None:
        for key, value in self.figures.items():
            if isinstance(value, int) and not isinstance(value, bool) and key.endswith(_COUNTER_SUFFIXES):
                self.base[key] = self.base.get(key, 0) + value
                self.figures[key] = 0
        for gauge in ("relay_clients", "nats_connected", "links"):
            if gauge in self.figures:
                self.figures[gauge] = 0

    def line(self) -> str:
        parts = [f"live hub {self.state}"]
        if "relay_clients" in self.figures:
            parts.append(f"relay {self.figures['relay_clients']} clients, {self.total('relay_sent')} sent, "
                         f"{self.total('relay_cut')} slow cut")
            if self.total("relay_gap_cut"):
                parts[-1] += f", {self.total('relay_gap_cut')} cut for gaps"
            if self.total("relay_protocol_errors"):
                parts[-1] += f", {self.total('relay_protocol_errors')} closed for protocol errors"
        if "nats_backlog" in self.figures:
            parts.append(f"NATS {self._nats_state()}, {self.total('nats_confirmed')} stored, backlog "
                         f"{self.figures['nats_backlog']}, {self.total('nats_dropped')} dropped")
            if self.total("nats_yields"):
                parts[-1] += f", paused {self.total('nats_yields')} times (the machine short of CPU)"
        if self.total("worker_dropped"):
            parts.append(f"{self.total('worker_dropped')} not handed over by workers")
        return "; ".join(parts)

    def _nats_state(self) -> str:
        """up / connecting / DOWN (why, since when) while running; stopped / DOWN at stop once the hub ended."""
        f = self.figures
        state = f.get("nats_state") or ("up" if f.get("nats_connected") else "down")
        ended = self.state == "stopped"
        if ended and not f.get("nats_closed"):
            return "not stopped cleanly (the hub was killed)"
        if state == "up" and f.get("nats_yielding"):
            return "up, paused (the machine is short of CPU)"
        if state != "down":
            return state
        problem = f.get("nats_problem") or "unavailable"
        since = f.get("nats_down_since") or 0
        when = f" since {TimeLocale.from_env().clock(since)}" if since else ""
        return f"DOWN{' at stop' if ended else ''}{when} ({problem})"

    def nats_account(self, handed: int) -> NatsAccount:
        """What NATS lacks at the end: `handed` is how many messages the workers gave the hub (or tried to)."""
        f = self.figures
        expected = max(0, handed - self.total("nats_unrouted"))
        confirmed = self.total("nats_confirmed")
        missing = max(0, expected - confirmed)
        reasons: list[str] = []
        explained = 0
        for count, why in (
                (self.total("worker_dropped"), "not handed over by the workers (the hub was behind: short of CPU)"),
                (self.total("nats_dropped"), "dropped from the full backlog (--nats-backlog)"),
                (int(f.get("nats_backlog", 0) or 0), "waiting when the hub stopped" + (
                    " (the hub was killed)" if not f.get("nats_closed")
                    else " (sent, not confirmed in time)" if f.get("nats_state") == "stopped"
                    else f" (NATS unavailable: {f.get('nats_problem') or 'never reached'})"))):
            count = min(count, missing - explained)
            if count > 0:
                reasons.append(f"{count} {why}")
                explained += count
        if missing > explained:
            reasons.append(f"{missing - explained} that never reached the hub or were lost with it (at the stop, or "
                           "a hub restart)")
        return NatsAccount(expected, confirmed, missing, tuple(reasons))

    def prometheus(self) -> list[Figure]:
        """The hub's figures for the recorder's Prometheus collector (absent ones are not exported)."""
        out: list[Figure] = []
        for name, kind, help_text, key in _METRICS:
            if key == "up":
                value = 1 if self.state == "running" else 0
            elif key == "restarts":
                value = self.restarts
            elif key in ("relay_clients", "nats_connected", "nats_backlog"):
                if key not in self.figures:
                    continue
                value = int(self.figures[key])
            else:
                if key.startswith(("relay_", "nats_")) and key not in self.figures and key not in self.base:
                    continue
                value = self.total(key)
            out.append(Figure(name.removesuffix("_total"), kind, help_text, float(value)))
        return out


class HubControl:
    def __init__(self, settings: LiveSettings, on_log: Callable[[str], None], log_level: int = logging.INFO) -> None:
        self.settings = settings
        self.view = HubView()
        self._on_log = on_log
        self._log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._stopping = False
        self._delay = RESTART_MIN_S
        self._started_at = 0.0
        self._restart_handle: asyncio.TimerHandle | None = None
        self._exited = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=hub_main, args=(self.settings, child, self._log_level), name="ime-record-live",
                                 daemon=False)
        with child_start():  # a signal to the process group while it starts is the supervisor's, not the hub's
            proc.start()
        # At once, before the new interpreter has imported anything: the hub's start-up (uvloop, picows, nats-py)
        # must not take CPU time from the workers', nor anything after. Threads it starts inherit it.
        why_not = yield_cpu(proc.pid) if hub_yields() and proc.pid else None
        if why_not:
            log.warning("could not lower the live hub's priority (%s): it competes with the workers for CPU", why_not)
        child.close()
        self._proc, self._pipe, self._started_at = proc, parent, time.monotonic()
        self._exited = asyncio.Event()
        self.view.state, self.view.pid = "starting", proc.pid or 0
        loop.add_reader(parent.fileno(), self._drain)
        loop.add_reader(proc.sentinel, self._on_exit)

    def set_contracts(self, contracts: tuple[str, ...], shard_contracts: tuple[tuple[str, ...], ...]) -> None:
        """A reload changed the contracts being recorded (a restarted hub starts with them too)."""
        self.settings = replace(self.settings, contracts=contracts, shard_contracts=shard_contracts)
        if self._pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                self._pipe.send({"type": "contracts", "contracts": list(contracts),
                                 "shard_contracts": [list(c) for c in shard_contracts]})

    def _drain(self) -> None:
        pipe = self._pipe
        if pipe is None:
            return
        try:
            while pipe.poll():
                self._handle(pipe.recv())
        except (EOFError, OSError):
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(pipe.fileno())

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ready":
            self.view.state = "running"
            self.view.relay_url = msg.get("relay_url")
            if self.view.relay_url and self.settings.relay_port == 0:
                # A restarted hub must listen where the bots already connect, not on another free port.
                self.settings = replace(self.settings, relay_port=urlsplit(self.view.relay_url).port)
            if self.view.relay_url:
                log.info("live relay serving %s (stats: %s, hub pid %s)", self.view.relay_url, msg.get("stats_url"),
                         msg.get("pid"))
            if self.settings.nats_url is not None:
                log.info("live hub ready; it publishes to NATS JetStream stream %s once connected",
                         self.settings.nats_stream)
        elif kind == "status":
            self.view.figures = {k: v for k, v in msg.items() if k != "type"}
        elif kind == "log":
            self._on_log(str(msg.get("line", "")))

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        proc = self._proc
        assert proc is not None
        loop.remove_reader(proc.sentinel)
        proc.join(5)
        self._drain()
        if self._pipe is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._pipe.fileno())
            self._pipe.close()
            self._pipe = None
        self.view.incarnation_ended()
        self._exited.set()
        if self._stopping:
            self.view.state = "stopped"
            return
        if time.monotonic() - self._started_at > 60:
            self._delay = RESTART_MIN_S
        self.view.state = "restarting"
        self.view.restarts += 1
        log.error("live hub (pid %s) exited with code %s; restarting in %.1fs; recording is unaffected",
                  proc.pid, proc.exitcode, self._delay)
        self._restart_handle = loop.call_later(self._delay, self._restart)
        self._delay = min(RESTART_MAX_S, self._delay * 4)

    def _restart(self) -> None:
        self._restart_handle = None
        if not self._stopping:
            self.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Called after the workers have stopped: the hub drains their last bytes, closes clients, flushes NATS."""
        self._stopping = True
        if self._restart_handle is not None:
            self._restart_handle.cancel()
        proc = self._proc
        if proc is None or proc.exitcode is not None:
            self.view.state = "stopped"
            return
        if self._pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                self._pipe.send({"type": "stop"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), timeout)
        if proc.exitcode is None:
            log.error("live hub did not stop within %.0fs; killing it", timeout)
            proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
        self.view.state = "stopped"
