"""Coverage: when a recording's connections were up, from its connection events (recorder/events.py).

One account, two views. The account: each connection (ids are per recorder process) from `opened` to `closed`, or
to its process's last record when the worker died without writing one, with its group and contracts; both views
read the events alike (`connection_event`). They must differ in what they make of it:

- `Coverage` (`ime-segments stats`, `report`): per connection group of one recording, the time no copy of it was
  connected, and which copy delivered first. The group is the unit of redundancy, and its life (`connecting` to
  `unsubscribed`, the worker's stop, or its contracts moving to other groups) says when a gap is a gap. It runs
  as records come, in receive-time order, telling an observer each step (the report draws them).
- `ContractCoverage` (`ime-segments merge`): per contract, across recordings, the time no input had a connection
  for it. Recordings differ in group ids and sharding, so only contracts join them; it keeps every span and
  sweeps them once all inputs are read, exactly.

The time no copy of a group was connected is the only time a message of its contracts can be missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from recorder.events import decode_event
from recorder.histogram import Histogram
from recorder.model.record import MESSAGE_KINDS, RecordError, RecordKind, decode_receipt

MAX_GAPS = 20  # the longest uncovered intervals kept per group


class ConnectionEvent(NamedTuple):
    """What the coverage views read of a connection event; the rest of its fields are for people."""

    name: str
    contracts: tuple[str, ...] | None  # the contracts it names, when it names a list of them
    group: int  # 0 when it names none (recordings before format 1.1: one group per shard is the best guess)
    copy: int
    probe: bool  # a connection that only tests one contract (to find a refused one): it covers nothing


def connection_event(fields: Mapping[str, Any]) -> ConnectionEvent:
    contracts, group, copy = fields.get("contracts"), fields.get("group"), fields.get("copy")
    return ConnectionEvent(str(fields.get("event")),
                           tuple(str(c) for c in contracts) if isinstance(contracts, list) else None,
                           group if isinstance(group, int) else 0, copy if isinstance(copy, int) else 0,
                           bool(fields.get("probe")))


class CoverageObserver(Protocol):
    """Told every step of the computation as it happens, for a picture over time (`ime-segments report`).

    The figures stay Coverage's own; an observer only sees when each copy was up, every uncovered interval
    (Coverage keeps the longest `MAX_GAPS`), and each later copy's lag with its time.
    """

    def connected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None: ...

    def disconnected(self, group: GroupCoverage, copy: int, ts_ns: int) -> None: ...

    def uncovered(self, group: GroupCoverage, start_ns: int, end_ns: int) -> None: ...

    def lag(self, group: GroupCoverage, copy: int, ts_ns: int, lag_ns: int) -> None: ...


@dataclass(slots=True)
class CopyFigures:
    first: int = 0  # messages this copy delivered first (recorded as the message)
    later: int = 0  # copies it delivered after another copy (receipts)
    lag: Histogram = field(default_factory=Histogram)  # how much later, when it was later


@dataclass(slots=True)
class GroupCoverage:
    shard: int
    epoch: int  # worker incarnation within the shard, counted from the records
    group: int
    contracts: tuple[str, ...] = ()
    start_ns: int = 0
    end_ns: int = 0
    open_conns: dict[int, int] = field(default_factory=dict)  # conn → its copy
    uncovered_since: int | None = None
    uncovered_ns: int = 0
    gap_count: int = 0  # uncovered intervals, the wait for the first connection included
    initial_ns: int = 0  # the wait for the first connection (not a drop)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    copies: dict[int, CopyFigures] = field(default_factory=dict)
    ended: bool = False
    observer: CoverageObserver | None = None
    held: set[str] = field(default_factory=set)  # its contracts not yet taken over by other groups or rejected
    from_start: bool = True  # its first uncovered interval is the wait for its first connection (not a window's)

    @property
    def span_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def covered_fraction(self) -> float:
        span = self.span_ns
        return 1.0 - self.uncovered_ns / span if span else 0.0

    def _uncover(self, ts: int) -> None:
        if self.uncovered_since is None:
            self.uncovered_since = ts

    def _cover(self, ts: int) -> None:
        if self.uncovered_since is not None:
            gap = (self.uncovered_since, ts)
            self.uncovered_ns += max(0, ts - self.uncovered_since)
            self.uncovered_since = None
            if self.gap_count == 0 and self.from_start:
                self.initial_ns = gap[1] - gap[0]
            self.gap_count += 1
            self.gaps.append(gap)
            if self.observer is not None:
                self.observer.uncovered(self, *gap)
            if len(self.gaps) > MAX_GAPS:
                self.gaps.sort(key=lambda g: g[0] - g[1])
                del self.gaps[MAX_GAPS:]

    def connect(self, conn: int, copy: int, ts: int) -> None:
        if self.observer is not None and conn not in self.open_conns:
            self.observer.connected(self, copy, ts)
        self.open_conns[conn] = copy
        self._cover(ts)

    def disconnect(self, conn: int, ts: int) -> None:
        copy = self.open_conns.pop(conn)
        if self.observer is not None:
            self.observer.disconnected(self, copy, ts)
        if not self.open_conns:
            self._uncover(ts)

    def end(self, ts: int) -> None:
        if not self.ended:
            self.end_ns = max(self.end_ns, ts)
            if self.observer is not None:
                for copy in self.open_conns.values():
                    self.observer.disconnected(self, copy, self.end_ns)
            self._cover(ts)
            self.ended = True

    def drop_all(self, ts: int) -> None:
        """Every open connection went down at `ts` (the worker died then)."""
        if self.observer is not None:
            for copy in self.open_conns.values():
                self.observer.disconnected(self, copy, ts)
        self.open_conns.clear()
        self._uncover(ts)


@dataclass(slots=True)
class Coverage:
    groups: dict[tuple[int, int, int], GroupCoverage] = field(default_factory=dict)
    _epoch: dict[int, int] = field(default_factory=dict)
    _conns: dict[tuple[int, int, int], tuple[int, int]] = field(default_factory=dict)  # → (group, copy)
    _last_ts: dict[int, int] = field(default_factory=dict)
    observer: CoverageObserver | None = None

    def add(self, ts_ns: int, shard: int, conn: int, kind: int, payload: bytes) -> None:
        previous = self._last_ts.get(shard, ts_ns)
        self._last_ts[shard] = ts_ns
        epoch = self._epoch.get(shard, 0)
        if kind == RecordKind.EVENT:
            self._event(ts_ns, shard, epoch, conn, connection_event(decode_event(payload)), previous)
            return
        where = self._conns.get((shard, epoch, conn))
        if where is None:
            return
        group = self.groups[(shard, epoch, where[0])]
        figures = group.copies.setdefault(where[1], CopyFigures())
        group.end_ns = ts_ns
        if kind == RecordKind.RECEIPT:
            figures.later += 1
            try:
                lag = decode_receipt(payload)[1]
            except RecordError:
                return
            figures.lag.record(lag)
            if self.observer is not None:
                self.observer.lag(group, where[1], ts_ns, lag)
        elif kind in MESSAGE_KINDS:
            figures.first += 1

    def _event(self, ts: int, shard: int, epoch: int, conn: int, event: ConnectionEvent, previous: int) -> None:
        if event.name == "worker_started":
            # A worker that stopped cleanly ended its groups already; one that was killed did not: its
            # connections went down with its last record, and nothing was covered until this restart.
            self._end_shard(shard, epoch, ts, down_since=previous)
            self._epoch[shard] = epoch + 1
        elif event.name == "worker_stopping":
            self._end_shard(shard, epoch, ts)
        elif event.probe:
            return
        elif event.name == "connecting":
            self._connecting(ts, shard, epoch, conn, event)
        elif event.name == "rejected":
            if event.contracts is not None:
                self._release(shard, epoch, ts, event.contracts)
        else:
            group = self.groups.get((shard, epoch, event.group))
            if group is not None and not group.ended:
                self._connection(group, ts, conn, event)

    def _connecting(self, ts: int, shard: int, epoch: int, conn: int, event: ConnectionEvent) -> None:
        """A connection attempt of a group: the group starts with the first one (uncovered until it opens)."""
        self._conns[(shard, epoch, conn)] = (event.group, event.copy)
        key = (shard, epoch, event.group)
        group = self.groups.get(key)
        if group is None:
            held = event.contracts or ()
            # A worker splits a refused group into new ones (bisection): each contract is in one group at a
            # time, so a group whose contracts all moved on is gone, not uncovered until the recording ends
            # (recordings before the `unsubscribed` event say so only this way).
            self._release(shard, epoch, ts, held)
            group = self.groups[key] = GroupCoverage(shard, epoch, event.group, held, start_ns=ts, end_ns=ts,
                                                     observer=self.observer, held=set(held))
            group._uncover(ts)
        elif event.contracts is not None:
            # A reload may resubscribe the group with another list (the connections overlap: no gap).
            group.contracts = event.contracts
            group.held = set(group.contracts)
        group.copies.setdefault(event.copy, CopyFigures())

    @staticmethod
    def _connection(group: GroupCoverage, ts: int, conn: int, event: ConnectionEvent) -> None:
        """An event of a connection of a live group."""
        group.end_ns = max(group.end_ns, ts)
        if event.name == "opened":
            group.connect(conn, event.copy, ts)
        elif event.name == "closed" and conn in group.open_conns:
            group.disconnect(conn, ts)
        elif event.name == "unsubscribed":
            # A reload removed the group's contracts, or a refusal split or excluded it: its connections close for
            # good, which is not a gap.
            group.end(ts)

    def start_at(self, ts: int) -> None:
        """Count from `ts` on, in the state the events so far left (a window's start: `--from`).

        Fed the events before a window, the groups connected then are known at its start: they are counted from
        `ts` (uncovered from `ts` if no copy was connected), and groups that had ended are not in the window.
        """
        for key, group in list(self.groups.items()):
            if group.ended:
                del self.groups[key]
                continue
            group.start_ns = group.end_ns = ts
            group.uncovered_since = None if group.open_conns else ts
            group.uncovered_ns = group.gap_count = group.initial_ns = 0
            group.gaps = []
            group.copies = {copy: CopyFigures() for copy in group.copies}
            group.from_start = False
            group.observer = self.observer
            if self.observer is not None:
                for copy in set(group.open_conns.values()):
                    self.observer.connected(group, copy, ts)
        for shard in self._last_ts:
            self._last_ts[shard] = ts

    def _release(self, shard: int, epoch: int, ts: int, contracts: Iterable[str]) -> None:
        """`contracts` now belong to a new group (or are excluded): end the groups left holding none."""
        moved = set(contracts)
        if not moved:
            return
        for (s, e, _), group in self.groups.items():
            if s == shard and e == epoch and not group.ended and group.held & moved:
                group.held -= moved
                if not group.held and not group.open_conns:
                    group.end(ts)

    def _end_shard(self, shard: int, epoch: int, ts: int, down_since: int | None = None) -> None:
        """End a worker's groups at `ts`; with `down_since`, its open connections died then (a crash)."""
        for (s, e, _), group in self.groups.items():
            if s == shard and e == epoch and not group.ended:
                if down_since is not None and group.open_conns:
                    group.drop_all(down_since)
                group.end(ts)

    def finish(self) -> list[GroupCoverage]:
        """End every group at its shard's last record (a recording that was cut without a clean stop)."""
        for (shard, _, _), group in self.groups.items():
            group.end(self._last_ts.get(shard, group.end_ns))
        return sorted(self.groups.values(), key=lambda g: (g.shard, g.epoch, g.group))


@dataclass(frozen=True, slots=True)
class Interval:
    start_ns: int
    end_ns: int
    contracts: frozenset[str]  # the contracts no input covered during [start_ns, end_ns)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class ContractCoverage:
    """Which contracts were being received when, across recordings; then what no connection covered (see the
    module docstring). Fed each connection's `opened` and `closed` (connection ids unique across the recordings)
    and, per recorder process, the time of its last record (a block at a time)."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[int, frozenset[str]]] = {}  # conn -> (opened ns, contracts)
        self._last: dict[Any, int] = {}  # recorder process -> its last record ns
        self.spans: list[tuple[int, int, frozenset[str]]] = []
        self.contracts: set[str] = set()

    def opened(self, conn: int, ts_ns: int, contracts: frozenset[str]) -> None:
        self.close(conn, ts_ns)  # an `opened` without a `closed` before it: the first one ended here
        self._open[conn] = (ts_ns, contracts)
        self.contracts.update(contracts)

    def close(self, conn: int, ts_ns: int) -> None:
        started = self._open.pop(conn, None)
        if started is not None:
            self.spans.append((started[0], max(ts_ns, started[0]), started[1]))

    def seen(self, process: Any, ts_ns: int) -> None:
        """A record of `process` (one recorder process's connections) at `ts_ns`; called once per block."""
        if ts_ns > self._last.get(process, ts_ns - 1):
            self._last[process] = ts_ns

    def finish(self, process_of: Callable[[int], Any]) -> None:
        """Connections still open at the end end at their process's last record: a worker killed without writing
        `closed` took all its connections down with it."""
        for conn, (opened_ns, _) in list(self._open.items()):
            self.close(conn, max(self._last.get(process_of(conn), opened_ns), opened_ns))

    def uncovered(self, start_ns: int, end_ns: int) -> list[Interval]:
        """Maximal intervals in [start_ns, end_ns) where some contract had no open connection in any input.

        A sweep over the spans' ends, counting open connections per atom of contracts (`_atoms`).
        """
        if not self.contracts or end_ns <= start_ns:
            return []
        atom_contracts, atoms_of = _atoms(self.spans, self.contracts)
        deltas: dict[int, list[tuple[int, set[int]]]] = {}
        for lo, hi, contracts in self.spans:
            lo, hi = max(lo, start_ns), min(hi, end_ns)
            if lo < hi:
                deltas.setdefault(lo, []).append((1, atoms_of[contracts]))
                deltas.setdefault(hi, []).append((-1, atoms_of[contracts]))
        names: dict[frozenset[int], frozenset[str]] = {}
        out = []
        for lo, hi, missing in _missing_runs(deltas, len(atom_contracts), start_ns, end_ns):
            if missing not in names:
                names[missing] = frozenset(c for a in missing for c in atom_contracts[a])
            out.append(Interval(lo, hi, names[missing]))
        return out


def _atoms(spans: list[tuple[int, int, frozenset[str]]],
           contracts: Iterable[str]) -> tuple[list[list[str]], dict[frozenset[str], set[int]]]:
    """Contracts that are in exactly the same connection groups (contract sets) share an atom: with the same
    sharding on every input an atom is a group, so a day of reconnects over thousands of contracts costs
    (changes x atoms per group), not (x contracts). Returns each atom's contracts, and each set's atoms."""
    sets = list(dict.fromkeys(members for _, _, members in spans))
    signature: dict[str, list[int]] = {c: [] for c in contracts}
    for number, members in enumerate(sets):
        for c in members:
            signature[c].append(number)
    atom_of: dict[tuple[int, ...], int] = {}
    atom_contracts: list[list[str]] = []
    for c, numbers in signature.items():
        atom = atom_of.setdefault(tuple(numbers), len(atom_of))
        if atom == len(atom_contracts):
            atom_contracts.append([])
        atom_contracts[atom].append(c)
    atoms_of: dict[frozenset[str], set[int]] = {members: set() for members in sets}
    for numbers, atom in atom_of.items():
        for number in numbers:
            atoms_of[sets[number]].add(atom)
    return atom_contracts, atoms_of


def _missing_runs(deltas: dict[int, list[tuple[int, set[int]]]], atoms: int, start_ns: int,
                  end_ns: int) -> Iterator[tuple[int, int, frozenset[int]]]:
    """Maximal [lo, hi) in [start_ns, end_ns) with the same non-empty set of atoms no span covers; `deltas`: at each
    time, the atoms that gain (+1) or lose (-1) an open connection."""
    counts = [0] * atoms
    missing = set(range(atoms))
    run: tuple[int, int, frozenset[int]] | None = None
    cursor = start_ns
    for t in sorted({*deltas, end_ns}):
        if t > cursor and missing:
            now = frozenset(missing)
            if run is not None and run[1] == cursor and run[2] == now:
                run = (run[0], t, now)
            else:
                if run is not None:
                    yield run
                run = (cursor, t, now)
        cursor = t
        for sign, changed in deltas.get(t, ()):
            for a in changed:
                n = counts[a] = counts[a] + sign
                if n == 0:
                    missing.add(a)
                elif n == 1 and sign > 0:
                    missing.discard(a)
    if run is not None:
        yield run


def summarise(groups: list[GroupCoverage]) -> dict[str, Any]:
    """The JSON-ready figures `ime-segments stats` prints."""
    span = sum(g.span_ns for g in groups)
    uncovered = sum(g.uncovered_ns for g in groups)
    return {
        "connected_fraction": round(1.0 - uncovered / span, 6) if span else None,
        "uncovered_s": round(uncovered / 1e9, 6),
        "groups": [
            {
                "shard": g.shard,
                "worker": g.epoch,
                "group": g.group,
                "contracts": len(g.contracts),
                "span_s": round(g.span_ns / 1e9, 6),
                "uncovered_s": round(g.uncovered_ns / 1e9, 6),
                "gaps": g.gap_count,
                "connected_fraction": round(g.covered_fraction(), 6),
                "longest_gaps": [{"from_ns": a, "to_ns": b, "s": round((b - a) / 1e9, 6)}
                                 for a, b in sorted(g.gaps, key=lambda x: x[0] - x[1])[:5] if b > a],
                "copies": {
                    str(k): {
                        "first": c.first,
                        "later": c.later,
                        # Of all the group's messages, the share this copy delivered before any other.
                        "share_first": round(c.first / firsts, 6) if (firsts := sum(
                            x.first for x in g.copies.values())) else 0.0,
                        "lag_when_later_us": {"p50": c.lag.percentile(50) / 1e3, "p99": c.lag.percentile(99) / 1e3,
                                              "max": c.lag.max / 1e3} if c.lag.count else None,
                    }
                    for k, c in sorted(g.copies.items())
                },
            }
            for g in groups
        ],
    }
