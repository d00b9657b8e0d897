"""A reload (SIGHUP, `systemctl reload`): what was re-read, and the log lines that say what changed.

The CLI re-reads the config file and the contract file (`Reread`); the supervisor applies the contracts per shard
and logs what this module words; a worker resubscribes what changed (handover.py). Pure: no I/O, no processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ReloadError(Exception):
    """The config or contract file cannot be used (one line); the running settings stay."""


@dataclass(frozen=True, slots=True)
class SettingChange:
    option: str  # the long option name, e.g. "shards"
    old: str  # as shown (secrets masked, URLs without credentials)
    new: str
    applied: bool  # applied now; otherwise it takes effect at the next start


@dataclass(frozen=True, slots=True)
class Reread:
    """What a reload found."""

    contracts: tuple[str, ...] | None  # None: nothing to re-read (--ids, --names, --demo)
    source: str  # where they came from, for the log line ("ids.txt, config rec.toml")
    changes: tuple[SettingChange, ...] = ()
    duplicates: tuple[str, ...] = ()
    status_interval_s: float | None = None  # applied at once (the supervisor's own setting)


@dataclass(frozen=True, slots=True)
class ShardChange:
    shard: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    before: int  # contracts before
    after: int


def contract_diff(before: Sequence[str], after: Sequence[str]) -> tuple[list[str], list[str]]:
    """What came (in `after`'s order) and what went (in `before`'s)."""
    b, a = set(before), set(after)
    return [c for c in after if c not in b], [c for c in before if c not in a]


def shard_changes(old: Sequence[Sequence[str]], new: Sequence[Sequence[str]]) -> list[ShardChange]:
    """Per shard whose contract set changed: what came and went (in list order)."""
    out = []
    for shard, (before, after) in enumerate(zip(old, new, strict=True)):
        added, removed = contract_diff(before, after)
        if added or removed:
            out.append(ShardChange(shard, tuple(added), tuple(removed), len(before), len(after)))
    return out


def _listed(contracts: Sequence[str], sign: str, limit: int = 8) -> str:
    shown = [f"{sign}{c}" for c in contracts[:limit]]
    if len(contracts) > limit:
        shown.append(f"{sign}{len(contracts) - limit} more")
    return " ".join(shown)


def describe(changes: list[ShardChange], reread: Reread, total: int) -> list[str]:
    """The log lines of a reload (without the "reload: " prefix); one line when nothing changed."""
    lines = [_contracts_line(changes, reread, total)] if changes else []
    for s in reread.changes:
        when = "applied" if s.applied else "takes effect at the next start"
        lines.append(f"--{s.option} {s.old} → {s.new} {when}")
    if reread.duplicates:
        lines.append(f"{len(reread.duplicates)} duplicate contract(s) ignored: {', '.join(reread.duplicates[:5])}"
                     + (" …" if len(reread.duplicates) > 5 else ""))
    if not changes and not reread.changes:
        where = f"{total} contracts from {reread.source}" if reread.contracts is not None else reread.source
        lines.insert(0, f"nothing changed ({where})")
    elif not changes:
        lines.insert(0, f"contracts unchanged ({total} from {reread.source})" if reread.contracts is not None
                     else f"contracts unchanged ({reread.source})")
    return lines


def _contracts_line(changes: list[ShardChange], reread: Reread, total: int) -> str:
    added = sum(len(c.added) for c in changes)
    removed = sum(len(c.removed) for c in changes)
    parts = []
    for c in changes:
        what = " ".join(x for x in (_listed(c.added, "+"), _listed(c.removed, "-")) if x)
        if not c.before:
            what += " (a worker starts)"
        elif not c.after:
            what += " (its worker stops)"
        parts.append(f"shard {c.shard} {what}")
    return f"{added} contracts added, {removed} removed ({total} from {reread.source}): " + "; ".join(parts)
