"""The worker processes, one per shard, each a Child (record/children.py) restarted by WORKER_POLICY: what they are
started with, what they report (into their ShardView), the tokens they ask for, a reload's contracts, the stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.context import BaseContext
from typing import Any

from recorder.errors import RuntimeFailure
from recorder.record import messages as m
from recorder.record.auth import CredentialsRefused, TokenProvider, TokenUnavailable
from recorder.record.children import WORKER_POLICY, Child, Then, stop_children
from recorder.record.config import WorkerConfig
from recorder.record.status import ShardView
from recorder.record.worker import worker_main
from recorder.segment.recover import RecoveryFailure, recover_directory

log = logging.getLogger("recorder.supervisor")


@dataclass(slots=True, eq=False)
class Shard:
    number: int
    contracts: tuple[str, ...]
    view: ShardView
    child: Child
    incarnation: int = 0
    ever_accepted: bool = False  # some worker of this shard had a connection accepted
    respawn: bool = False  # a reload gave contracts back to a shard whose worker is still stopping


class Workers:
    """`template` is what every worker is given but its shard, contracts, token and incarnation."""

    def __init__(self, shards: list[tuple[str, ...]], template: WorkerConfig, tokens: TokenProvider,
                 ctx: BaseContext, on_log: Callable[[str], None], fail: Callable[[str], None],
                 stopping: asyncio.Event) -> None:
        self.template = template
        self.tokens = tokens
        self._on_log = on_log
        self._fail = fail
        self._stopping = stopping
        self.shards = [self._shard(i, c, ctx) for i, c in enumerate(shards)]
        self.accepted_any = False
        self._token_task: asyncio.Task[None] | None = None
        self._token_fixed_logged = False

    def _shard(self, number: int, contracts: tuple[str, ...], ctx: BaseContext) -> Shard:
        def handle(msg: m.WorkerMessage) -> None:
            self._handle(s, msg)

        def exited(then: Then) -> None:
            self._exited(s, then)

        def restart() -> None:
            # The new worker seals the .open file its predecessor left, beside recording.
            self.spawn(s)

        child = Child(f"shard {number} worker", WORKER_POLICY, ctx, handle, exited, restart, "other shards unaffected")
        s = Shard(number, contracts, ShardView(number, len(contracts)), child)
        return s

    @property
    def views(self) -> list[ShardView]:
        return [s.view for s in self.shards]

    def contracts(self) -> tuple[tuple[str, ...], ...]:
        return tuple(s.contracts for s in self.shards)

    def start(self) -> None:
        """A worker for every shard that has contracts (the token is the provider's current one)."""
        for s in self.shards:
            if s.contracts:
                self.spawn(s)

    def mark_empty(self) -> int:
        """Shards without contracts are not started (said once each); how many shards are."""
        for s in self.shards:
            if not s.contracts:
                s.view.state = "empty"
                log.warning("shard %d has no contracts (rendezvous hashing left it empty); not started", s.number)
        return sum(1 for s in self.shards if s.contracts)

    def spawn(self, s: Shard) -> None:
        s.incarnation += 1
        live = self.template.live
        cfg = replace(self.template, shard=s.number, contracts=s.contracts, incarnation=s.incarnation,
                      token=self.tokens.token, token_gen=self.tokens.gen,
                      live=replace(live, shard=s.number) if live is not None else None)
        pid = s.child.start(worker_main, (cfg,), name=f"ime-record-s{s.number:02d}")
        s.view.state, s.view.pid = "running", pid
        if self.accepted_any:
            s.child.send(m.AcceptedElsewhere())

    def _exited(self, s: Shard, then: Then) -> None:
        s.view.incarnation_ended()
        s.view.state, s.view.restarts = then.value, s.child.restarts
        if then is Then.STOPPED and s.respawn and s.contracts and not self._stopping.is_set():
            # A reload emptied the shard and then gave it contracts again while its worker was stopping.
            s.respawn = False
            self.spawn(s)
        elif then is Then.FAILED:
            self._fail(s.child.last_words or f"shard {s.number} failed")
        elif then is Then.REFUSED:
            message = s.child.last_words or f"shard {s.number}: every contract refused"
            if all(x.view.state in ("refused", "empty") for x in self.shards) or not self.accepted_any:
                # Nothing was ever accepted with this token anywhere: the other shards would only be
                # refused the same way, one log line each; stop now with one line.
                self._fail(message)
            else:
                log.error("%s; the other shards keep recording", message)

    def _handle(self, s: Shard, msg: m.WorkerMessage) -> None:
        match msg:
            case m.Status():
                s.view.update(msg, time.monotonic())
            case m.LogLine(line=line):
                self._on_log(line)
            case m.Accepted():
                self._accepted(s)
            case m.Rejected(contracts=contracts):
                s.view.rejected.extend(c for c in contracts if c not in s.view.rejected)
            case m.NeedToken(gen=gen):
                self._token_task = asyncio.ensure_future(self._refresh(s, gen))
            case m.Fatal(message=message):
                s.child.last_words = message
            case m.Recovered(message=message):
                log.warning("shard %d: recovered %s", s.number, message)

    def _accepted(self, s: Shard) -> None:
        s.ever_accepted = True
        if not self.accepted_any:
            self.accepted_any = True
            log.info("the feed accepted shard %d's connection: the token is good", s.number)
            # A refusal elsewhere is now about contracts, not the token: no token probe needed.
            for other in self.shards:
                if other is not s:
                    other.child.send(m.AcceptedElsewhere())

    async def _refresh(self, s: Shard, used_gen: int) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                token, gen = await self.tokens.refresh(used_gen)
            except TokenUnavailable as exc:
                if not self._token_fixed_logged:
                    self._token_fixed_logged = True
                    log.warning("the server refused a connection and %s; one probe per shard will tell a bad token "
                                "from a bad contract", exc)
                s.child.send(m.TokenUnavailable())
                return
            except CredentialsRefused as exc:
                self._fail(str(exc))
                return
            except RuntimeFailure as exc:
                # The token endpoint is down: keep trying; splitting contracts on an old token would be wrong.
                log.error("%s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            if gen > used_gen:
                log.info("new token obtained (generation %d); reconnecting refused connections", gen)
            self.broadcast(m.Token(gen, token))
            if self.accepted_any:
                self.broadcast(m.AcceptedElsewhere())
            return

    def broadcast(self, msg: m.SupervisorMessage) -> None:
        for s in self.shards:
            s.child.send(msg)

    def record_event(self, event: dict[str, Any]) -> None:
        """An event record in every running shard's segment (a stall during trading hours, and its end)."""
        fields = tuple((k, v) for k, v in event.items() if k != "event")
        self.broadcast(m.RecordEvent(str(event["event"]), fields))

    def apply_contracts(self, s: Shard, contracts: tuple[str, ...]) -> None:
        """A reload changed this shard's contracts."""
        had = s.contracts
        s.contracts = contracts
        s.view.contracts = len(contracts)
        s.view.rejected = [c for c in s.view.rejected if c in contracts]
        running = s.child.running
        if not contracts:
            s.respawn = False
            s.child.stop_soon("its contracts were all removed by a reload")
            if not running:
                s.view.state = "empty"
        elif not had or s.child.retired:
            if running:
                s.respawn = True  # still stopping; its successor starts when it has sealed its file
            else:
                self.spawn(s)
        elif running:
            s.child.send(m.Contracts(contracts))
        # Otherwise the worker is waiting to be restarted: its successor starts with the new list.

    def retire(self) -> None:
        """The recorder is stopping: no worker is restarted from now on."""
        for s in self.shards:
            s.child.retire()

    async def stop(self, timeout: float) -> None:
        """Every worker seals its files and exits; one that does not in time is killed and its file recovered."""
        late = await stop_children([s.child for s in self.shards], "recorder stopping", timeout)
        for s in self.shards:
            if s.child in late:
                log.error("shard %d did not stop within %.0fs; killing it and recovering its file", s.number, timeout)
                await s.child.kill()
                self._recover(s)

    def _recover(self, s: Shard) -> None:
        out_dir = self.template.storage.out_dir
        try:
            results = recover_directory(out_dir, s.number)
        except Exception as exc:
            log.error("could not recover shard %d's open file: %s; run `ime-segments recover %s`", s.number, exc,
                      out_dir)
            return
        for result in results:
            if isinstance(result, RecoveryFailure):
                log.error("shard %d: %s; run `ime-segments recover` on it once the cause is fixed", s.number, result)
            else:
                log.warning("recovered %s", result)

    def never_connected(self, elapsed: float) -> str | None:
        """The shards whose contracts were not recorded at all while others recorded, said in one line."""
        never = [s for s in self.shards if s.contracts and not s.ever_accepted and s.view.state != "refused"]
        if not never:
            return None
        contracts = [c for s in never for c in s.contracts]
        shown = ", ".join(contracts[:10]) + (f" and {len(contracts) - 10} more" if len(contracts) > 10 else "")
        which = (f"shard {never[0].number}" if len(never) == 1
                 else "shards " + ", ".join(str(s.number) for s in never))
        return (f"{which} never connected to the feed in {elapsed:.0f}s, so {len(contracts)} contracts were not "
                f"recorded ({shown}); see the warnings above")
