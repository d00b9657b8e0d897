"""A reload (the supervisor's `Contracts`): only the groups whose contracts changed (`endpoints.regroup`) are
touched, make before break: a changed group's new connections open beside its old ones (a `Handover`, see
shard_state.py); a group whose every contract left the list closes for good. One reload is applied at a time (one
that arrives during a handover waits for it), which keeps every group's dedupe sources apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from recorder.events import Event
from recorder.feed.endpoints import regroup
from recorder.record.copies import Copies
from recorder.record.reload import contract_diff
from recorder.record.shard_state import CopyRun, GroupRun, Handover, ShardState

log = logging.getLogger("recorder.worker")

# The old connections close at the latest this long after the new ones started, accepted or not (a feed that
# accepts nothing for this long has the old ones down too; the removed contracts must stop).
HANDOVER_MAX_S = 30.0


class Handovers:
    def __init__(self, state: ShardState, copies: Copies) -> None:
        self.state, self.copies = state, copies
        self.pending: tuple[str, ...] | None = None  # arrived while a handover was still under way

    def reload(self, contracts: tuple[str, ...]) -> None:
        state = self.state
        if state.stopping.is_set():
            return
        if state.handovers:
            self.pending = contracts
            return
        self.pending = None
        old = state.contracts
        added, removed = contract_diff(old, contracts)
        state.contracts = contracts
        # A contract the server refused stays excluded while it is listed; one that left the list is forgotten.
        wanted = set(contracts)
        state.planner.rejected[:] = [c for c in state.planner.rejected if c in wanted]
        if not added and not removed:
            return
        settings = state.cfg.connection
        runs = list(state.groups.values())
        refused = set(state.planner.rejected)
        try:
            target = regroup(settings.base_url, state.kind, [r.group.contracts for r in runs],
                             [c for c in contracts if c not in refused], max_url_length=settings.max_url_length,
                             max_per_connection=settings.max_contracts_per_connection)
        except ValueError as exc:  # the supervisor checked the list; a bug must not stop the shard
            log.error("shard %d: reload not applied: %s", state.shard, exc)
            return
        state.event(Event.RELOAD, added=added, removed=removed, contracts=len(contracts))
        # The file the new subscriptions start in lists what it holds: the old contracts too, while the old
        # connections hand over (the list is trimmed for the files after that).
        state.writer.update_meta(contracts=list(dict.fromkeys([*old, *contracts])))
        state.writer.rotate()
        changed = self._apply(runs, target)
        log.info("shard %d: reload: %d contracts added, %d removed: %d of %d groups resubscribed, %d new; the "
                 "others untouched", state.shard, len(added), len(removed), changed, len(runs), len(target) - len(runs))
        if not state.handovers:
            state.writer.update_meta(contracts=list(contracts))

    def _apply(self, runs: list[GroupRun], target: list[tuple[str, ...]]) -> int:
        """Each group to its entry of `target` (regroup's answer), and the entries after them as new groups; returns
        how many groups changed."""
        changed = 0
        for run, new in zip(runs, target, strict=False):
            if set(new) != set(run.group.contracts):
                changed += 1
                if new:
                    self._resubscribe(run, new)
                else:
                    self._unsubscribe(run)
        for new in target[len(runs):]:
            self.copies.start_group(self.state.planner.add(new))
        return changed

    def _resubscribe(self, run: GroupRun, contracts: tuple[str, ...]) -> None:
        """Make before break: new copies with the new list; the old ones record until those are accepted."""
        state = self.state
        old, run.copies = run.copies, []
        covering = [c for c in old if c.transport is not None or c.connecting]
        for c in old:
            c.retiring = True
            if c not in covering and c.task is not None:
                c.task.cancel()  # waiting to reconnect: nothing to hand over
        run.group = state.planner.update(run.group.gid, contracts)
        if covering and run.deduper is None:
            # One copy: a Deduper for the overlap only, so that a message that arrives on both connections is
            # recorded once (the later arrival becomes a receipt), as with --redundancy.
            run.deduper, run.handover_dedupe = state.dedupers.new(), True
            state.redirect(covering, run.deduper)
        used, redundancy = {c.source for c in old}, state.cfg.connection.redundancy
        self.copies.add_copies(run, [n for n in range(2 * redundancy) if n not in used][:redundancy])
        if covering:
            handover = Handover(run.group.gid, covering, {run.group.gid}, run.deduper)
            state.handovers.append(handover)
            self._when_ended(covering, lambda: self._old_copies_ended(handover))
            state.loop.call_later(HANDOVER_MAX_S, self._overdue, handover)

    def _unsubscribe(self, run: GroupRun) -> None:
        """Every contract of the group left the list: its connections close (a close handshake) for good."""
        state, gid, deduper = self.state, run.group.gid, run.deduper
        state.groups.pop(gid, None)
        state.planner.remove(gid)
        state.event(Event.UNSUBSCRIBED, group=gid, contracts=list(run.group.contracts), reason="removed by a reload")
        for c in run.copies:
            c.retiring = True
            self.copies.end_copy(c, b"unsubscribed")
        # Its copies deliver messages (through the dedupe) until the server answers their CLOSE.
        self._when_ended(run.copies, lambda: state.release_deduper(deduper))

    @staticmethod
    def _when_ended(copies: list[CopyRun], then: Callable[[], None]) -> None:
        tasks = [c.task for c in copies if c.task is not None and not c.task.done()]

        def ended(_task: object) -> None:
            if all(t.done() for t in tasks):
                then()

        for t in tasks:
            t.add_done_callback(ended)
        if not tasks:
            then()

    def of(self, gid: int) -> Handover | None:
        """The handover under way that waits for the group, if any."""
        return next((h for h in self.state.handovers if gid in h.waiting and not h.closing), None)

    def regrouped(self, gid: int, into: Iterable[int]) -> bool:
        """A refusal split the group (`into` its halves) or excluded it (into none): the handover that waited for
        it waits for those instead. False: it was in none."""
        handover = self.of(gid)
        if handover is None:
            return False
        handover.waiting.discard(gid)
        handover.waiting.update(into)
        return True

    def progress(self) -> None:
        """A connection was accepted: old copies whose successors are all accepted (every copy) close now."""
        groups = self.state.groups
        for h in self.state.handovers:
            if not h.closing and all(c.ever_accepted for g in h.waiting if g in groups for c in groups[g].copies):
                self._finish(h)

    def _overdue(self, h: Handover) -> None:
        if h in self.state.handovers and not h.closing and not self.state.stopping.is_set():
            log.warning("shard %d group %d: the resubscribed connection was not accepted within %.0fs; closing the "
                        "old one anyway", self.state.shard, h.gid, HANDOVER_MAX_S)
            self._finish(h)

    def _finish(self, h: Handover) -> None:
        h.closing = True
        for c in h.old:
            self.copies.end_copy(c, b"resubscribed")

    def _old_copies_ended(self, h: Handover) -> None:
        if h in self.state.handovers:
            # The old copies' last messages may still have copies on their way on the new connections: the dedupe
            # stays for one window more.
            self.state.loop.call_later(self.state.cfg.connection.dedupe_window_s, self._done, h)

    def _done(self, h: Handover) -> None:
        state = self.state
        if h not in state.handovers:
            return
        state.handovers.remove(h)
        for run in state.groups.values():
            if run.handover_dedupe and run.deduper is h.deduper:
                # One copy again: straight to the writer, as before the reload.
                run.deduper, run.handover_dedupe = None, False
                state.redirect(run.copies, None)
        state.release_deduper(h.deduper)
        if not state.handovers:
            state.writer.update_meta(contracts=list(state.contracts))
            if self.pending is not None and not state.stopping.is_set():
                self.reload(self.pending)
