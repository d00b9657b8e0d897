"""The export's Python paths: every record they are given becomes rows, kept as flat lists until take().

A frame is FRAME_WIDTH values in `frames` (recv ns, shard, conn, segment, record, server ns, contract, identifier
field, channel, payload); its index there is the `fi` every row of it starts with. Section rows are grouped by
the message's mask (reading.py): one flat list of [fi, *integer values] and one of string values per mask, so a
message is one or two list extends whatever sections it has, and a column is one C-level slice at take().

Where a record goes (every TEXT record lands in exactly one place):
- it parses and has at least one known section: its values in its mask's group (one row in each section table
  it has a section for; best_limit is wide, one row per message), plus `extras` rows for what the parser kept
  aside (unknown fields, sections, levels); numbers that are not int64 are found at take();
- otherwise (not JSON, not an envelope, a mistyped known field, a bad timestamp, no known section): one
  row in `messages` with the reason and the payload bytes.
BINARY records go to `messages` (kind "binary"), EVENT records to `events`; receipts (a redundant copy of a
message already recorded) and unknown kinds are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from recorder.events import decode_event
from recorder.export.reading import INT64_MAX, INT64_MIN, FastReader, Slow, extras_of, no_section_reason, parse
from recorder.feed.message import MessageError, identifier_of, timestamp_ns_of
from recorder.model.record import RECEIPT_BLOCK_KINDS, RecordKind, Row
from recorder.segment.format import receipts_in_block

FRAME_WIDTH = 10
PAYLOAD = 9  # a frame's payload, its last value


class PyPaths:
    """Rows of the records given to `add` (and of frames re-parsed by `reparse`) since the last `reset`."""

    def __init__(self, contracts: frozenset[str], counts: Counter[str]) -> None:
        self.contracts = contracts
        self.counts = counts
        self._read = FastReader().read
        self.reset()

    def reset(self) -> None:
        self.frames: list[Any] = []
        self.groups: dict[int, tuple[list[Any], list[Any]]] = {}  # mask -> ([fi, *ints]..., [*strs]...)
        self.events: list[Any] = []  # fi, event, code, text
        self.messages: list[Any] = []  # fi, kind, reason
        self.extras: list[Any] = []  # fi, section, field, reason, value

    @property
    def pending(self) -> int:
        return len(self.frames) // FRAME_WIDTH

    def group(self, mask: int) -> tuple[list[Any], list[Any]]:
        group = self.groups.get(mask)
        if group is None:
            group = self.groups[mask] = ([], [])
        return group

    def add(self, records: Iterable[Row], numbers: Iterable[int], shard: int, segment: str, lo: int,
            hi: int) -> None:
        """Records received in [lo, hi); `numbers` are their indices in their file (the `record` column)."""
        frames = self.frames
        frame = frames.extend
        groups = self.groups
        read, slow, other, slow_exc, width = self._read, self.slow, self.other, Slow, FRAME_WIDTH
        wanted = self.contracts
        clip = lo > INT64_MIN or hi <= INT64_MAX
        parsed = filtered = 0
        text = RecordKind.TEXT
        for record, (ts_ns, conn, kind, payload) in zip(numbers, records, strict=True):
            if clip and not lo <= ts_ns < hi:
                continue
            if kind != text:
                other(ts_ns, shard, conn, segment, record, kind, payload)
                continue
            try:
                ident, id_field, channel, server_ns, mask, row, strs = read(payload, len(frames) // width)
            except slow_exc:
                slow(ts_ns, shard, conn, segment, record, payload)
                continue
            if wanted and ident not in wanted:
                filtered += 1
                continue
            group = groups.get(mask) or self.group(mask)
            group[0].extend(row)
            if strs:
                group[1].extend(strs)
            frame((ts_ns, shard, conn, segment, record, server_ns, ident, id_field, channel, payload))
            parsed += 1
        self.counts["parsed"] += parsed
        self.counts["parsed_fast"] += parsed
        self.counts["filtered_out"] += filtered

    def other(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, kind: int,
              payload: bytes) -> None:
        counts = self.counts
        if kind in (RecordKind.BINARY, RecordKind.EVENT) and self.contracts:
            counts["filtered_out"] += 1  # about no contract, so never selected by one
        elif kind == RecordKind.BINARY:
            counts["binary"] += 1
            self._message((ts_ns, shard, conn, segment, record, None, None, None, None, payload), "binary",
                          "binary frame")
        elif kind == RecordKind.EVENT:
            counts["events"] += 1
            event = decode_event(payload)
            code = event.get("code")
            fi = self._put_frame((ts_ns, shard, conn, segment, record, None, None, None, None, payload))
            self.events.extend((fi, str(event.get("event")),
                                code if type(code) is int and INT64_MIN <= code <= INT64_MAX else None,
                                payload.decode("utf-8", "replace")))
        elif kind == RecordKind.RECEIPT:
            counts["receipts_skipped"] += 1  # a redundant copy: the first arrival is exported
        elif kind in RECEIPT_BLOCK_KINDS:
            counts["receipts_skipped"] += receipts_in_block(kind, payload)
        else:
            counts[f"unknown_kind_{kind}_skipped"] += 1

    def slow(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, payload: bytes,
             fi: int | None = None) -> None:
        """The parser decides: typed rows plus extras, or one `messages` row with the reason.

        With `fi`, the frame there is read again (the fast path took it, a value is mistyped) and replaced.
        """
        try:
            got = parse(payload)
        except MessageError as exc:
            self._unparsed((ts_ns, shard, conn, segment, record, payload), str(exc), fi)
            return
        env = got.env
        if not got.mask:
            self.counts["unknown_sections"] += len(env.data.extra)
            self._unparsed((ts_ns, shard, conn, segment, record, payload), no_section_reason(env), fi,
                           env.identifier, got.server_ns)
            return
        if self.contracts and env.identifier not in self.contracts:
            self.counts["filtered_out"] += 1
            return
        fi = self._put_frame((ts_ns, shard, conn, segment, record, got.server_ns, env.identifier,
                              env.identifier_field, env.channel, payload), fi)
        self.counts["parsed"] += 1
        ints, strs = self.group(got.mask)
        ints.extend((fi, *got.ints))
        strs.extend(got.strs)
        for section, field, reason, value in extras_of(env):
            self.extras.extend((fi, section, field, reason, value))
            self.counts[reason] += 1

    def reparse(self, fi: int) -> None:
        """The fast path's frame at `fi` has a mistyped known field: the parser says why (its rows are gone)."""
        f = self.frames[fi * FRAME_WIDTH:(fi + 1) * FRAME_WIDTH]
        self.counts["parsed"] -= 1
        self.counts["parsed_fast"] -= 1
        self.slow(f[0], f[1], f[2], f[3], f[4], f[PAYLOAD], fi)

    def _unparsed(self, where: tuple[int, int, int, str, int, bytes], reason: str, fi: int | None,
                  contract: str | None = None, server_ns: int | None = None) -> None:
        ts_ns, shard, conn, segment, record, payload = where
        if contract is None:
            contract = identifier_of(payload)
        if server_ns is None:
            server_ns = timestamp_ns_of(payload)
            if server_ns is not None and not INT64_MIN <= server_ns <= INT64_MAX:
                server_ns = None
        if self.contracts and contract not in self.contracts:
            self.counts["filtered_out"] += 1
            return
        self.counts["unparsed"] += 1
        self._message((ts_ns, shard, conn, segment, record, server_ns, contract, None, None, payload), "text",
                      reason, fi)

    def _message(self, frame: tuple[Any, ...], kind: str, reason: str, fi: int | None = None) -> None:
        self.messages.extend((self._put_frame(frame, fi), kind, reason))

    def _put_frame(self, frame: tuple[Any, ...], fi: int | None = None) -> int:
        if fi is None:
            fi = self.pending
            self.frames.extend(frame)
        else:
            self.frames[fi * FRAME_WIDTH:(fi + 1) * FRAME_WIDTH] = frame
        return fi
