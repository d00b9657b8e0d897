"""Which contracts go on which connection, and what to do when the server says 1008: pure decisions.

IME refuses a whole connection with close code 1008 for a bad token *or* for one unknown contract in
its list, without saying which in a machine-readable way. So, for a connection that is refused:

1. if a newer token exists than the one it used, retry with that;
2. else ask for a fresh token once and retry;
3. if a fresh token is refused too, split the contracts in two and connect each half (bisection);
   a half that is accepted simply stays up and records, so nothing good is lost while searching;
4. a single contract refused with a fresh token is excluded (loudly) and the rest keep recording.

If nothing was ever accepted and contract after contract is refused, the credentials (or the account's
access to IME) are the problem, not the contracts: `give_up` says so, instead of hammering the server.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Action(enum.Enum):
    RETRY = "retry"  # reconnect the same group (after the usual backoff)
    REFRESH = "refresh"  # get a fresh token, then reconnect
    SPLIT = "split"  # replace the group by the groups in Decision.groups
    REJECT = "reject"  # exclude Decision.rejected; the group is gone


@dataclass(frozen=True, slots=True)
class Group:
    gid: int
    contracts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    groups: tuple[Group, ...] = ()
    rejected: tuple[str, ...] = ()


@dataclass(slots=True)
class _State:
    group: Group
    refreshed: bool = False  # a fresh token was already tried since this group was last accepted


@dataclass(slots=True)
class Planner:
    # Refusals of single contracts with no acceptance anywhere before we call it a credentials problem.
    give_up_after: int = 8
    _states: dict[int, _State] = field(default_factory=dict)
    _next_gid: int = 1
    accepted_any: bool = False
    rejected: list[str] = field(default_factory=list)
    total: int = 0

    def start(self, groups: Sequence[Sequence[str]]) -> list[Group]:
        out = [self._new(tuple(g), refreshed=False) for g in groups if g]
        self.total = sum(len(g.contracts) for g in out)
        return out

    def _new(self, contracts: tuple[str, ...], refreshed: bool) -> Group:
        group = Group(self._next_gid, contracts)
        self._next_gid += 1
        self._states[group.gid] = _State(group, refreshed)
        return group

    # --- a reload (SIGHUP) changing the contract list --------------------------------------------------

    def add(self, contracts: Sequence[str]) -> Group:
        """A new group for contracts a reload added (refusals of it follow the usual steps)."""
        group = self._new(tuple(contracts), refreshed=False)
        self.total += len(group.contracts)
        return group

    def update(self, gid: int, contracts: Sequence[str]) -> Group:
        """The group keeps its id with another list (a reload): a refusal of it is judged afresh."""
        state = self._states[gid]
        self.total += len(contracts) - len(state.group.contracts)
        state.group = Group(gid, tuple(contracts))
        state.refreshed = False
        return state.group

    def remove(self, gid: int) -> None:
        """Every contract of the group left the list (a reload)."""
        state = self._states.pop(gid, None)
        if state is not None:
            self.total -= len(state.group.contracts)

    @property
    def groups(self) -> list[Group]:
        return [s.group for s in self._states.values()]

    def accepted(self, gid: int) -> None:
        """The server kept the connection open (data arrived or the probe window passed)."""
        self.accepted_any = True
        state = self._states.get(gid)
        if state is not None:
            state.refreshed = False

    def refused(self, gid: int, used_token_gen: int, current_token_gen: int, was_accepted: bool) -> Decision:
        """The server refused the group's connection (close 1008, or HTTP 401/403 on the upgrade)."""
        state = self._states[gid]
        if was_accepted:
            # Refused after streaming for a while: the token expired or was revoked, not a contract.
            state.refreshed = False
        if used_token_gen < current_token_gen:
            return Decision(Action.RETRY)
        if not state.refreshed:
            state.refreshed = True
            return Decision(Action.REFRESH)
        contracts = state.group.contracts
        del self._states[gid]
        if len(contracts) == 1:
            self.rejected.append(contracts[0])
            return Decision(Action.REJECT, rejected=contracts)
        half = (len(contracts) + 1) // 2
        return Decision(Action.SPLIT, groups=(
            self._new(contracts[:half], refreshed=True),
            self._new(contracts[half:], refreshed=True),
        ))

    def token_refreshed(self) -> None:
        """A new token arrived: every group may use it once before being suspected of bad contracts."""
        for state in self._states.values():
            state.refreshed = True

    @property
    def give_up(self) -> bool:
        if self.accepted_any:
            return False
        return len(self.rejected) >= min(self.give_up_after, self.total) > 0
