"""Merging recordings of overlapping contracts (other hosts, other runs) into one, with exact dedupe.

Every input is a set of segment files. All records of all inputs are taken in receive-time order and the
messages (text and binary records) go through the same first-arrival `Deduper` the recorder uses, with the
input as the source: the first copy of a message is written as a normal record; a later copy from another
input becomes a receipt (`keep_receipts`) or is dropped. A message an input really holds twice stays twice
(multiset semantics, see dedupe.py). Receipts already in an input (its own redundant connections) are kept
only with `keep_receipts`, re-pointed at the record that won the merge. Records of unknown kinds are skipped
and counted. Connection events are kept, with the input's number added.

Connection ids restart in every recorder process, so each (input, host, pid, shard, conn) of the inputs gets
a fresh output connection id, unique across the output; events and receipts are rewritten to match. Each
input shard is written to an output shard of its own (see `merge`).

What no input had a connection for (coverage.ContractCoverage) is the only time a message can be missing from the
merge: `MergeResult.uncovered` lists it.

This module knows the segment format and the recorder's connection events, never the IME JSON payloads.
Records are merged a block at a time (ordered.merged), and each run of messages in a batch is deduped
(`Deduper.observe_batch`) and written to each output shard (`Sink.extend`) in one call: a merge reads hundreds of
thousands of records per second, and a Python call per record per step costs more than the step. Blocks come
with their output connection ids in place (`iter_blocks(conns=...)`, in C when _block.c is built).
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import eq
from pathlib import Path
from typing import Any, Protocol

from recorder.events import Event, decode_event, encode_event
from recorder.humanize import human_duration
from recorder.model.record import MESSAGE_KINDS, RecordError, RecordKind, Row, decode_receipt, encode_receipt
from recorder.segment.coverage import ContractCoverage, Interval, connection_event
from recorder.segment.dedupe import DEFAULT_WINDOW_NS, Deduper, digest
from recorder.segment.ordered import merged
from recorder.segment.reader import Damage, SegmentFile, sequences
from recorder.timeparse import format_ns

_NOT_MESSAGE = frozenset(range(256)) - MESSAGE_KINDS



class Sink(Protocol):
    """Where an output shard's records go (a SegmentWriter): one record, or many in order."""

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes, /) -> None: ...

    def extend(self, rows: Sequence[Row], /) -> None: ...


SinkFor = Callable[[int, int], Sink]  # (input number, input shard) -> where that input shard's records go


@dataclass(slots=True)
class InputStats:
    name: str
    files: int = 0
    records: int = 0  # every record read
    messages: int = 0  # text and binary records
    originals: int = 0  # messages of this input that arrived first: written from it
    copies: int = 0  # messages another input had first (dropped, or written as receipts)
    shared: int = 0  # originals of this input that another input also holds
    events: int = 0
    receipts: int = 0  # receipts already in the input (its own redundant connections)
    unknown: int = 0  # records of a kind this version does not know (skipped)
    damage: list[Damage] = field(default_factory=list)

    @property
    def only_here(self) -> int:
        """Messages no other input holds: what the merge would lose without this input."""
        return self.originals - self.shared


@dataclass(slots=True)
class MergeResult:
    inputs: list[InputStats]
    written: int = 0  # records written in all
    messages: int = 0  # messages written as records
    receipts: int = 0  # receipts written (copies across inputs, and the inputs' own with keep_receipts)
    events: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    uncovered: list[Interval] = field(default_factory=list)  # within `window`
    window: tuple[int, int] | None = None  # the first `opened` to the last `closed` of any input
    contracts: frozenset[str] = frozenset()


# --- reading the inputs as time-ordered blocks -----------------------------------------------------------


class _ConnIds(dict[tuple[Any, ...], int]):
    """(input, host, pid, shard, conn) -> output connection id, handed out on first sight, with its sink."""

    def __init__(self, sink_for: SinkFor) -> None:
        super().__init__()
        self.source: list[int] = [-1]  # output conn -> input number (ids start at 1)
        self.keys: list[tuple[Any, ...]] = [()]  # output conn -> its key
        self.shard: list[int] = [-1]  # output conn -> the number of its output shard (index in `outputs`)
        self.outputs: list[Sink] = []
        self._sink_for = sink_for
        self._shards: dict[tuple[int, int], int] = {}

    def __missing__(self, key: tuple[Any, ...]) -> int:
        new = len(self.source)
        self.source.append(key[0])
        self.keys.append(key)
        where = (key[0], key[3])
        number = self._shards.get(where)
        if number is None:
            number = self._shards[where] = len(self.outputs)
            self.outputs.append(self._sink_for(*where))
        self.shard.append(number)
        self[key] = new
        return new


class _SegmentConns(dict[int, int]):
    """One segment's connection ids -> output connection ids, handed out by `ids` on first sight."""

    __slots__ = ("base", "ids")

    def __init__(self, ids: _ConnIds, base: tuple[Any, ...]) -> None:
        super().__init__()
        self.ids, self.base = ids, base

    def __missing__(self, conn: int) -> int:
        new = self[conn] = self.ids[(*self.base, conn)]
        return new


# --- the merge -------------------------------------------------------------------------------------------


def merge(inputs: Sequence[tuple[str, Sequence[SegmentFile]]], sink_for: SinkFor, *, keep_receipts: bool = False,
          window_ns: int = DEFAULT_WINDOW_NS, after_batch: Callable[[], None] | None = None) -> MergeResult:
    """Merge `inputs` (name, opened segments) in receive-time order; see the module docstring.

    Each input shard's records (its first arrivals and its connection events) go to its own output shard,
    `sink_for(input number, input shard)`: a shard's worker restarts and connection groups stay what they were,
    so `ime-segments stats` on the output still reads each input's coverage. A receipt goes to the shard of the
    record it points at (output connection ids are unique across shards), so that it resolves there.

    `after_batch` runs between batches of records: the place for the caller to wait for its writer.
    """
    run = _Merge(inputs, sink_for, keep_receipts, window_ns)
    streams = [run.blocks(number, chain) for number, (_, segs) in enumerate(inputs) for chain in sequences(list(segs))]
    # The loop allocates a tuple per record and the Deduper holds ~10^5 container objects: the cyclic garbage
    # collector would walk them every few thousand records. Nothing here makes cycles; refcounting frees it all.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for batch in merged(streams):
            run.batch(batch)
            if after_batch is not None:
                after_batch()
            run.forget()
        return run.result(inputs)
    finally:
        if gc_was_enabled:
            gc.enable()


class _Merge:
    """A merge's state from batch to batch: the dedupe, what each input had first or shared with another, and
    which record won for each copy (its receipts' new target)."""

    def __init__(self, inputs: Sequence[tuple[str, Sequence[SegmentFile]]], sink_for: SinkFor, keep_receipts: bool,
                 window_ns: int) -> None:
        self.stats = [InputStats(name, files=len(segs)) for name, segs in inputs]
        self.out = MergeResult(self.stats)
        self.ids = _ConnIds(sink_for)
        self.coverage = ContractCoverage()
        self.keep_receipts = keep_receipts
        self.window_ns = window_ns
        self.deduper = Deduper(window_ns=window_ns)
        # Originals another input also had, so that "only in this input" counts each original once however
        # many inputs repeat it. Only copies touch it; entries older than twice the window can no longer match.
        self.shared: dict[tuple[int, int], None] = {}
        # With keep_receipts: which record won for each input record that lost (so that the input's own receipts
        # pointing at it can be re-pointed at the winner), for as long as a receipt may follow its original.
        self.lost: dict[tuple[int, int], tuple[int, int]] = {}
        self.lost_order: deque[tuple[int, int]] = deque()
        self.last_ns = 0

    def blocks(self, number: int, chain: list[SegmentFile]) -> Iterator[list[Row]]:
        """An input shard's blocks with output connection ids (given as each block is split, not by building every
        row again), counted, and each one's last time for its recorder process's coverage."""
        for seg in chain:
            meta = seg.header.meta
            # Connection ids are per recorder process (a restarted worker starts again at 1): host and pid tell
            # them apart.
            process = number, meta.get("host"), meta.get("pid"), seg.shard
            for out in seg.iter_blocks(conns=_SegmentConns(self.ids, process)):
                if out:
                    self.stats[number].records += len(out)
                    self.coverage.seen(process, max(out[0][0], out[-1][0]))
                    yield out

    def batch(self, batch: list[Row]) -> None:
        """A batch of the time-ordered rows: runs of messages a run at a time, the other records one by one, each
        in its place in the output."""
        if self.out.first_ns is None:
            self.out.first_ns = batch[0][0]
        stamps, conns, kinds, payloads = zip(*batch, strict=True)
        n = len(kinds)
        if kinds.count(RecordKind.TEXT) + kinds.count(RecordKind.BINARY) == n:
            self.messages(batch, stamps, conns, payloads)
        else:
            start = 0
            for i in compress(range(n), map(_NOT_MESSAGE.__contains__, kinds)):
                if i > start:
                    self.messages(batch[start:i], stamps[start:i], conns[start:i], payloads[start:i])
                start = i + 1
                self.other(*batch[i])
            if n > start:
                self.messages(batch[start:], stamps[start:], conns[start:], payloads[start:])
        self.last_ns = max(self.last_ns, batch[-1][0])

    def messages(self, batch: list[Row], stamps: Sequence[int], conns: Sequence[int],
                 payloads: Sequence[bytes]) -> None:
        """A run of messages: deduped as a batch, then each output shard's share written in one call."""
        srcs = list(map(self.ids.source.__getitem__, conns))
        copy_at, orig_ts, orig_conns = self.deduper.observe_batch(stamps, srcs, list(map(digest, payloads)), conns)
        route = list(map(self.ids.shard.__getitem__, conns))
        out = batch
        if copy_at:
            self._count_copies(list(map(srcs.__getitem__, copy_at)), orig_ts, orig_conns)
            if self.keep_receipts:
                out = self._as_receipts(batch, route, copy_at, orig_ts, orig_conns)
            else:
                deque(map(route.__setitem__, copy_at, repeat(-1)), maxlen=0)  # dropped (in C: one per copy)
        numbers = set(route)
        for number in numbers:
            if number >= 0:
                self.ids.outputs[number].extend(out if len(numbers) == 1 else
                                                list(compress(out, map(eq, route, repeat(number)))))

    def _count_copies(self, copy_srcs: list[int], orig_ts: list[int], orig_conns: list[int]) -> None:
        orig_srcs = list(map(self.ids.source.__getitem__, orig_conns))
        for number in set(copy_srcs):
            self.stats[number].copies += copy_srcs.count(number)
        if len(self.stats) <= 2:
            # With two inputs an original has at most one copy (dedupe.py: a source never repeats its own
            # original), so it is counted as shared once without remembering it.
            for number in set(orig_srcs):
                self.stats[number].shared += orig_srcs.count(number)
            return
        for original, number in zip(zip(orig_ts, orig_conns, strict=True), orig_srcs, strict=True):
            if original not in self.shared:
                self.shared[original] = None
                self.stats[number].shared += 1

    def _as_receipts(self, batch: list[Row], route: list[int], copy_at: list[int], orig_ts: list[int],
                     orig_conns: list[int]) -> list[Row]:
        """The batch with each copy a receipt, routed where its original went (in receive-time order there)."""
        out = list(batch)
        for i, ots, oconn in zip(copy_at, orig_ts, orig_conns, strict=True):
            ts, conn = batch[i][0], batch[i][1]
            out[i] = (ts, conn, RecordKind.RECEIPT, encode_receipt(oconn, ts - ots))
            route[i] = self.ids.shard[oconn]
            self.lost[(ts, conn)] = (ots, oconn)
            self.lost_order.append((ts, conn))
        self.out.receipts += len(copy_at)
        return out

    def other(self, ts: int, conn: int, kind: int, payload: bytes) -> None:
        """A record that is not a message: a connection event, an input's own receipt, or of an unknown kind."""
        number = self.ids.source[conn]
        if kind == RecordKind.EVENT:
            self.stats[number].events += 1
            self.ids.outputs[self.ids.shard[conn]].append(ts, conn, kind, _event(payload, conn, number, ts,
                                                                                  self.coverage))
        elif kind == RecordKind.RECEIPT:
            self.stats[number].receipts += 1
            body = _repoint(payload, ts, conn, self.ids, self.lost) if self.keep_receipts else None
            if body is not None:
                self.ids.outputs[self.ids.shard[decode_receipt(body)[0]]].append(ts, conn, kind, body)
                self.out.receipts += 1
        else:
            self.stats[number].unknown += 1

    def forget(self) -> None:
        """Drop what no later record can match any more (twice the dedupe window back): memory stays flat."""
        horizon = self.last_ns - 2 * self.window_ns
        if len(self.shared) > 4 * self.deduper.max_entries:
            self.shared = {k: None for k in self.shared if k[0] >= horizon}
        while self.lost_order and self.lost_order[0][0] < horizon:
            self.lost.pop(self.lost_order.popleft(), None)

    def result(self, inputs: Sequence[tuple[str, Sequence[SegmentFile]]]) -> MergeResult:
        for st, (_, segs) in zip(self.stats, inputs, strict=True):
            st.messages = st.records - st.events - st.receipts - st.unknown
            st.originals = st.messages - st.copies
            st.damage = [d for seg in segs for d in seg.damage]
        result = self.out
        result.last_ns = self.last_ns if result.first_ns is not None else None
        result.messages = sum(st.originals for st in self.stats)
        result.events = sum(st.events for st in self.stats)
        result.written = result.messages + result.events + result.receipts
        coverage = self.coverage
        coverage.finish(lambda conn: self.ids.keys[conn][:-1])
        result.contracts = frozenset(coverage.contracts)
        if coverage.spans:
            # From the first connection opened to the last one closed, in any input: start-up before the first
            # `opened` and shutdown after the last `closed` are not gaps in the recording.
            result.window = (min(lo for lo, _, _ in coverage.spans), max(hi for _, hi, _ in coverage.spans))
            result.uncovered = coverage.uncovered(*result.window)
        return result


def _event(payload: bytes, conn: int, number: int, ts_ns: int, coverage: ContractCoverage) -> bytes:
    """The event rewritten for the output (its connection id, the input it came from); feeds coverage."""
    fields = decode_event(payload)
    event = connection_event(fields)
    name = str(fields.pop("event", "unparseable"))
    if event.name == Event.OPENED and not event.probe and event.contracts is not None:
        coverage.opened(conn, ts_ns, frozenset(event.contracts))
    elif event.name == Event.CLOSED:
        coverage.close(conn, ts_ns)
    if "conn" in fields:
        fields["conn"] = conn
    fields["input"] = number
    return encode_event(name, **fields)


def _repoint(payload: bytes, ts_ns: int, conn: int, ids: _ConnIds,
             lost: dict[tuple[int, int], tuple[int, int]]) -> bytes | None:
    """An input's own receipt, pointed at its original's output connection, or at the record that won the merge
    when that original lost to another input's copy. None if the receipt is unreadable."""
    try:
        orig_conn, lag = decode_receipt(payload)
    except RecordError:
        return None
    # The original came on a connection of the same recorder process and shard as this receipt.
    base = ids.keys[conn][:-1]
    target = ids[(*base, orig_conn)]
    orig_ts = ts_ns - lag
    won = lost.get((orig_ts, target))
    if won is not None:
        orig_ts, target = won
    return encode_receipt(target, ts_ns - orig_ts)


# --- for the command line: refusing to overwrite inputs, and the report --------------------------------


def check_paths(inputs: Sequence[Path], out: Path) -> str | None:
    """Why this merge must not run (its output would land in an input, or an input is given twice), or None."""
    resolved = [p.resolve() for p in inputs]
    target = out.resolve()
    for given, real in zip(inputs, resolved, strict=True):
        if target == real or target.is_relative_to(real):
            return (f"--out {out} is inside the input {given}: a merge never writes into its inputs; "
                    "choose an output directory outside every input")
        if real.is_relative_to(target):
            return (f"the input {given} is inside --out {out}: a merge never writes into its inputs; "
                    "choose an output directory outside every input")
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i != j and a.is_relative_to(b):
                return f"the input {inputs[i]} is {'the same as' if a == b else 'inside'} the input {inputs[j]}: " \
                       "give each recording once"
    return None


def report_lines(result: MergeResult, show: int = 10) -> list[str]:
    """The merge report: totals, then per input, then what no input covered (at most `show` intervals)."""
    lines = [f"wrote {result.messages} messages, {result.receipts} receipts and {result.events} connection events "
             f"from {len(result.inputs)} inputs"]
    lines += [_input_line(number, st) for number, st in enumerate(result.inputs, start=1)]
    if result.first_ns is not None:
        lines += _coverage_lines(result, result.first_ns, show)
    return lines


def _input_line(number: int, st: InputStats) -> str:
    extra = []
    if st.receipts:
        extra.append(f"{st.receipts} receipts of its own")
    if st.unknown:
        extra.append(f"{st.unknown} records of an unknown kind skipped")
    if st.damage:
        extra.append(f"{len(st.damage)} damaged frames skipped")
    return (f"input {number} {st.name}: {st.messages} messages in {st.files} files, {st.originals} first here, "
            f"{st.copies} already in an earlier input, {st.only_here} only here"
            + (f"; {', '.join(extra)}" if extra else ""))


def _coverage_lines(result: MergeResult, first_ns: int, show: int) -> list[str]:
    if result.window is None or not result.contracts:
        span = f"{format_ns(first_ns)} – {format_ns(result.last_ns or first_ns)}"
        return [f"coverage: unknown (no connection events in the inputs) for {span}"]
    span = f"{format_ns(result.window[0])} – {format_ns(result.window[1])}"
    if not result.uncovered:
        return [f"coverage: every contract was covered by at least one input from {span}"]
    total = sum(i.seconds for i in result.uncovered)
    lines = [f"not covered by any input: {len(result.uncovered)} intervals, {human_duration(total)} in all "
             f"(within {span})"]
    for iv in result.uncovered[:show]:
        names = sorted(iv.contracts)
        which = "all contracts" if iv.contracts == result.contracts else \
            ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        lines.append(f"  {format_ns(iv.start_ns)} – {format_ns(iv.end_ns)} ({human_duration(iv.seconds)}): {which}")
    if len(result.uncovered) > show:
        lines.append(f"  … and {len(result.uncovered) - show} more")
    return lines
