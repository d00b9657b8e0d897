"""The server said no (close 1008, HTTP 401/403): the token, the account's connection limit, or a contract.

What a refusal says is `connection.classify_refusal`'s decision, what the group does next the planner's (planner.py);
this module carries them out (tokens, probes, splits, exclusion) and keeps what proves the token good.
"""

from __future__ import annotations

import logging

from recorder.child import Exit
from recorder.events import Event
from recorder.feed.endpoints import build_url
from recorder.record import messages as m
from recorder.record import wsclient
from recorder.record.connection import RefusalKind, Step, Wait, classify_refusal
from recorder.record.copies import Copies
from recorder.record.handover import Handovers
from recorder.record.planner import Action, Group
from recorder.record.shard_state import CopyRun, GroupRun, ShardState
from recorder.redact import redact_url

log = logging.getLogger("recorder.worker")


class Refusals:
    def __init__(self, state: ShardState, copies: Copies, handovers: Handovers) -> None:
        self.state, self.copies, self.handovers = state, copies, handovers
        self.accepted_elsewhere = False  # another shard's connection was accepted with the current token
        self._accepted_sent = False
        self._limit_logged: set[int] = set()  # groups whose connection-limit refusal was logged

    def accepted(self, gid: int) -> None:
        """A connection (or a probe, gid 0) was accepted: the token is good."""
        state = self.state
        state.planner.accepted(gid)
        if not self._accepted_sent:
            self._accepted_sent = True
            state.send(m.Accepted(state.shard))

    def token(self, gen: int, token: str) -> None:
        state = self.state
        if gen > state.token_gen:
            state.token, state.token_gen = token, gen
            state.planner.token_refreshed()
            state.event(Event.TOKEN_REFRESHED, gen=gen)
        state.link.token_answered(True)

    def token_unavailable(self) -> None:
        """No fresh token can be had (a fixed --token): the planner proceeds as if it had been refreshed."""
        self.state.planner.token_refreshed()
        self.state.link.token_answered(False)

    async def refused(self, run: GroupRun, crun: CopyRun, how: str, code: int) -> Step | None:
        """The copy's next step, or None when it ends (its group was split or excluded, or the shard stops)."""
        state = self.state
        if state.stopping.is_set():
            return None
        other = run.other_copy_open(crun)
        kind = classify_refusal(crun.copy, crun.accepted, other is not None, crun.token_gen == state.token_gen)
        if kind is RefusalKind.CONNECTION_LIMIT:
            if run.group.gid not in self._limit_logged:
                self._limit_logged.add(run.group.gid)
                log.warning("shard %d group %d: copy %d refused (%s) while copy %d with the same contracts and token "
                            "is open: the account's connection limit, not a contract; recording with the accepted "
                            "copies and retrying this one slowly", state.shard, run.group.gid, crun.copy, how,
                            other.copy if other is not None else -1)
            return crun.core.connection_limit_wait()
        if kind is RefusalKind.FOLLOW:
            return crun.core.refused_retry()
        # A working connection refused (TOKEN) is judged by the planner as a token that expired: never a split.
        decision = state.planner.refused(run.group.gid, crun.token_gen, state.token_gen, kind is RefusalKind.TOKEN)
        match decision.action:
            case Action.RETRY:
                return crun.core.refused_retry()
            case Action.REFRESH:
                if kind is RefusalKind.TOKEN:
                    log.info("shard %d: the server closed a working connection with %s; getting a fresh token",
                             state.shard, how)
                else:
                    log.info("shard %d: the server refused a connection (%s); asking for a fresh token", state.shard,
                             how)
                if state.token_gen <= crun.token_gen:
                    await state.link.fresh_token(crun.token_gen, state.stopping)
                return Wait(0.0)
            case Action.SPLIT:
                await self._split(run, decision.groups, how)
            case _:
                self._reject(run, decision.rejected, how, code)
        return None

    async def _split(self, run: GroupRun, groups: tuple[Group, ...], how: str) -> None:
        state = self.state
        contracts = run.group.contracts
        # With nothing accepted anywhere, a probe first. Its None (no connection, or closed without a verdict)
        # cannot tell: the token is called bad only on a refusal, otherwise the bisection goes ahead.
        if not (state.planner.accepted_any or self.accepted_elsewhere) and await self._probe(contracts[0]) is False:
            self.copies.retire_group(run, "token refused")
            state.fatal(f"the server refuses the token: it refused it ({how}) for shard {state.shard}'s contracts "
                        "after a refresh was tried, and for a probe with the single contract "
                        f"{contracts[0]}; check the token or the account's IME access", "token refused",
                        Exit.REFUSED, refused=True)
            return
        log.warning("shard %d: the token was refused again (%s) for %d contracts although it works (another "
                    "connection or a probe was accepted); looking for the refused contract(s)", state.shard, how,
                    len(contracts))
        # In a handover (a contract a reload added is refused), the old connections cover the others until the
        # halves that hold them are accepted; the halves share the group's dedupe with them.
        inherit = run if self.handovers.of(run.group.gid) is not None else None
        halves = [self.copies.start_group(g, inherit=inherit) for g in groups]
        self.copies.retire_group(run, "split to find the refused contract")
        self.handovers.regrouped(run.group.gid, [h.group.gid for h in halves])

    async def _probe(self, contract: str) -> bool | None:
        """One connection for a single contract: True if the server keeps it, False if it refuses it."""
        state = self.state
        url = build_url(state.cfg.connection.base_url, state.kind, (contract,))
        conn_id = state.next_conn_id()
        state.event(Event.CONNECTING, conn=conn_id, url=redact_url(url), contracts=[contract], probe=True)
        verdict, code = await wsclient.probe(url, state.token, state.cfg.connection, state.ssl, conn_id)
        state.event(Event.CLOSED, conn=conn_id, code=code, reason="probe", probe=True, accepted=verdict)
        if verdict:
            self.accepted(0)
        return verdict

    def _reject(self, run: GroupRun, contracts: tuple[str, ...], how: str, code: int) -> None:
        state = self.state
        self.copies.retire_group(run, "refused")
        in_handover = self.handovers.regrouped(run.group.gid, [])
        state.event(Event.REJECTED, contracts=list(contracts), code=code,
                    reason="refused by the server with a fresh token")
        log.error("shard %d: the server refuses contract %s (%s, also after a token refresh); excluded%s",
                  state.shard, ", ".join(contracts), how, ", recording the rest" if state.groups else "")
        state.send(m.Rejected(state.shard, tuple(contracts)))
        if state.planner.give_up:
            state.fatal(f"the server refused every contract tried on shard {state.shard} "
                        f"({', '.join(state.planner.rejected[:5])}) and accepted none: either they do not exist on "
                        f"the {state.kind.value} endpoint or the token lacks IME access", "every contract refused",
                        Exit.REFUSED, refused=True)
        elif not state.groups:
            state.fatal(f"shard {state.shard}: every contract was refused; nothing left to record",
                        "every contract refused", Exit.REFUSED, refused=True)
        if in_handover:
            self.handovers.progress()
