"""Records -> rows of the exported tables: a pure core (no files), fed one decompressed block at a time.

Three paths, one meaning. First, when it is built, the C scanner (recorder/export/_scan.c) takes every TEXT
frame that is strict JSON of exactly the documented shape (integers that fit int64, no escapes, valid UTF-8;
its header comment lists the rules) and writes the values straight into column buffers. It is told the keys
and columns by `scanner_layout()`, from schema.py, so the message format is described in feed/message.py only.
Every frame it refuses, and every frame when it is not built, goes to the Python paths. The Python fast path
takes a frame whose JSON has exactly the shape the API document describes (known keys only, every level
present) and copies its values into row tuples without building any objects. Anything else — an unknown
field or section, a missing level, a number that is not an int64, a mistyped field, invalid JSON — goes
through feed/message.py's parser (`envelope_from_object`), which decides what is known, what is extra and
what is malformed. The fast paths only ever accept frames that the parser would read to the same values;
tests check that all paths give identical tables, in the order the records came in (rows of the C scanner
and of the Python paths are merged by arrival).

Where a frame goes (every TEXT record lands in exactly one place):
- it parses and has at least one known section: one row in each section table it has a section for
  (best_limit is wide: one row per message), plus `extras` rows for whatever did not fit a typed column;
- otherwise (not JSON, not an envelope, a mistyped known field, a bad timestamp, no known section): one
  row in `messages` with the reason and the payload bytes.
BINARY records go to `messages` (kind "binary"), EVENT records to `events`; RECEIPT (kind 4, a redundant
copy of a message already recorded) and unknown kinds are skipped and counted.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter
from types import NoneType
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from recorder.events import decode_event
from recorder.export import schema as S
from recorder.feed.message import (
    ID_FIELD,
    NAME_FIELD,
    Envelope,
    MessageError,
    envelope_from_object,
    identifier_of,
    parse_envelope,
    parse_timestamp_ns,
    timestamp_ns_of,
)
from recorder.segment.format import RecordKind, receipts_in_block

TEXT, BINARY, EVENT = 1, 2, 3
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_LEVEL_SET = frozenset(S.LEVELS)
FRAME_WIDTH = 10
_STR_TYPES = frozenset((str, NoneType))
_INT_TYPES = frozenset((int, NoneType))
# Section rows hold the frame index and the integer columns only (so that one numpy conversion checks them all);
# the string columns (Aggregate's date and time) go to "<table>.str".
WIDTH = {t: 1 + len(S.INT_COLUMNS[t]) for t in S.SECTION_TABLES}
WIDTH |= {f"{t}.str": len(S.STR_COLUMNS[t]) for t in S.STR_COLUMNS}
WIDTH |= {"events": 4, "messages": 3, "extras": 5}
# A message with all four sections (nearly all of them) is one row of "full": its frame index and every integer
# of every section, split into the four tables by take(); one list extend per message instead of four.
FULL_WIDTH = 1 + sum(len(S.INT_COLUMNS[t]) for t in S.SECTION_TABLES)
WIDTH |= {"full": FULL_WIDTH, "full.str": len(S.STR_COLUMNS["aggregate"])}
_POW10 = tuple(10 ** (9 - n) for n in range(10))

try:
    from recorder.export import _scan
except ImportError:  # installed without a C compiler: the Python paths do everything, more slowly
    _scan = None  # type: ignore[assignment]

# Which fast path an export runs: "C" (the built scanner) or "Python"; said in the export's summary.
NATIVE = _scan is not None
ENVELOPE_KEYS = ("channel", ID_FIELD, NAME_FIELD, "timestamp", "data")


def scanner_layout(collect: Iterable[str] = S.SECTION_TABLES) -> list[tuple[str, list[tuple[tuple[str, ...], str]],
                                                                              bool]]:
    """What the C scanner accepts and fills, per section table in SECTION_TABLES order: the section's key under
    `data`, every column's path under it with its kind in schema order (string columns, then integer ones) and
    whether its rows are collected. Its objects must hold exactly these keys."""
    return [(S.SECTION_OF[t], [(path[1:], "str") for _, path in S.STR_COLUMNS.get(t, [])]
             + [(path[1:], "int") for _, path in S.INT_COLUMNS[t]], t in collect) for t in S.SECTION_TABLES]


def _wires(table: str) -> list[str]:
    return [path[-1] for _, path in S.STR_COLUMNS.get(table, []) + S.INT_COLUMNS[table]]


_LEVEL_WIRES = [path[-1] for _, path in S.INT_COLUMNS["best_limit"][:4]]
_level_get = itemgetter(*_LEVEL_WIRES)
_agg_get = itemgetter(*[path[-1] for _, path in S.INT_COLUMNS["aggregate"]])
_agg_str_get = itemgetter(*[path[-1] for _, path in S.STR_COLUMNS["aggregate"]])
_range_get = itemgetter(*_wires("allowed_price_range"))
_info_get = itemgetter(*_wires("contract_info"))
_LEVEL_ATTRS = [name.rsplit("_", 1)[0] for name, _ in S.INT_COLUMNS["best_limit"][:4]]


def json_text(value: Any) -> str:
    """JSON text of a decoded value; integers beyond 64 bits are written with all their digits."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def exact_object(payload: bytes) -> Any:
    """The payload decoded with integers of any size kept exact (orjson turns those past 64 bits into floats)."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


class _Slow(Exception):
    """Raised inside the fast path: this frame is not of the documented shape; the parser takes it."""


class Flattener:
    """Accumulates rows for every table; `take()` turns them into Arrow tables and starts over."""

    def __init__(self, contracts: Iterable[str] = (), tables: Iterable[str] = S.TABLES, native: bool = True) -> None:
        """`native=False` runs the Python paths only, even where the C scanner is built (tests compare them)."""
        self.contracts = frozenset(contracts)
        self.tables = frozenset(tables)
        # Section rows are where non-integers are found: with `extras` selected, every section is collected.
        self._collect = self.tables | frozenset(S.SECTION_TABLES) if "extras" in self.tables else self.tables
        self.counts: Counter[str] = Counter()
        self._ts_cache: dict[str, int] = {}
        self._scanner = _scan.Scanner(ENVELOPE_KEYS, scanner_layout(self._collect),
                                      set(self.contracts) if self.contracts else None) if native and NATIVE else None
        self._reset()

    @property
    def native(self) -> bool:
        """True when the C scanner takes the frames it can (else the Python paths take all)."""
        return self._scanner is not None

    def _reset(self) -> None:
        # Flat lists, WIDTH values per row, so that a column is one C-level slice (`rows[j::WIDTH]`), not a
        # Python-level transpose. A frame: recv_ns, shard, conn, segment, record, server_ns, contract,
        # identifier_field, channel, payload. A table row: the frame's index, then the table's own values.
        self._frames: list[Any] = []
        self._rows: dict[str, list[Any]] = {t: [] for t in WIDTH}
        # With the C scanner: records fed since the last take (a frame's arrival number is `_arrivals` at its
        # block plus its place there), the arrival number of each Python-path frame, and the segment names.
        self._arrivals = 0
        self._py_seq: list[int] = []
        self._segments: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Frames collected since the last take(), on all paths."""
        scanned = self._scanner.pending if self._scanner is not None else 0
        return len(self._frames) // FRAME_WIDTH + scanned

    @property
    def _py_frames(self) -> int:
        return len(self._frames) // FRAME_WIDTH

    # --- feeding ----------------------------------------------------------------------------------

    def add_block(self, records: list[tuple[int, int, int, bytes]], shard: int, segment: str,
                  first_record: int, lo: int = -(1 << 63), hi: int = 1 << 63) -> None:
        """Records (ts_ns, conn, kind, payload) of one block, those received in [lo, hi) only.

        `first_record` is the index of the block's first record in its file (the `record` column).
        """
        scanner = self._scanner
        if scanner is None:
            self._add(records, range(first_record, first_record + len(records)), shard, segment, lo, hi)
            return
        seq = self._arrivals
        self._arrivals += len(records)
        refused = scanner.scan(records, first_record, shard, self._segments.setdefault(segment, len(self._segments)),
                               lo, hi, seq)
        parsed, filtered = scanner.counts()
        counts = self.counts
        if parsed:
            counts["parsed"] += parsed
            counts["parsed_fast"] += parsed
            counts["parsed_c"] += parsed
        if filtered:
            counts["filtered_out"] += filtered
        if refused:
            before = self._py_frames
            self._add([records[i] for i in refused], [first_record + i for i in refused], shard, segment, lo, hi)
            frames = self._frames
            # A record gives at most one frame: its arrival number follows from its `record` value.
            self._py_seq.extend(seq + frames[k * FRAME_WIDTH + 4] - first_record
                                for k in range(before, self._py_frames))

    def _add(self, records: list[tuple[int, int, int, bytes]], numbers: Iterable[int], shard: int, segment: str,
             lo: int, hi: int) -> None:
        """The Python paths: `numbers` are the records' indices in their file."""
        frames = self._frames
        frame = frames.extend
        rows = self._rows
        bl_add = rows["best_limit"].extend
        agg_add = rows["aggregate"].extend
        agg_str_add = rows["aggregate.str"].extend
        rng_add = rows["allowed_price_range"].extend
        info_add = rows["contract_info"].extend
        full_add = rows["full"].extend
        full_str_add = rows["full.str"].extend
        tables = self._collect
        want_bl = "best_limit" in tables
        want_agg = "aggregate" in tables
        want_rng = "allowed_price_range" in tables
        want_info = "contract_info" in tables
        want_all = want_bl and want_agg and want_rng and want_info
        wanted = self.contracts
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        server_ns_of = self._server_ns
        ts_cache_get = self._ts_cache.get
        pow10 = _POW10
        clip = lo > -(1 << 63) or hi < 1 << 63
        # Builtins and globals as locals: this loop runs once per message.
        _len, _type, _str, _dict, width, slow_exc = len, type, str, dict, FRAME_WIDTH, _Slow
        level_get = _level_get
        agg_get, agg_str_get, range_get, info_get = _agg_get, _agg_str_get, _range_get, _info_get
        agg_len, range_len, info_len = len(S.AGGREGATE_KEYS), len(S.RANGE_KEYS), len(S.INFO_KEYS)
        parsed = 0
        for record, (ts_ns, conn, kind, payload) in zip(numbers, records, strict=True):
            if clip and (ts_ns < lo or ts_ns >= hi):
                continue
            if kind != TEXT:
                self._other(ts_ns, shard, conn, segment, record, kind, payload)
                continue
            # The fast path: every test below that fails hands the frame to the parser (`_slow`).
            try:
                obj = loads(payload)
            except decode_error:
                self._slow(ts_ns, shard, conn, segment, record, payload)
                continue
            # The documented shape exactly, tested by sizes and by looking up every known key: a dict of N keys
            # holding the N known ones has nothing else. Anything else raises, and the parser takes the frame.
            try:
                ident = obj.get(ID_FIELD)
                if ident is not None:
                    id_field = ID_FIELD
                else:
                    ident = obj[NAME_FIELD]
                    id_field = NAME_FIELD
                channel = obj["channel"]
                stamp = obj["timestamp"]
                data = obj["data"]
                if (_len(obj) != 4 or _type(ident) is not _str or not ident or _type(channel) is not _str
                        or _type(stamp) is not _str or _type(data) is not _dict):
                    raise slow_exc
                # The whole second from the cache, the fraction by int(): the common `...:SS.ffffffZ` form
                # without a function call; any other form goes through _server_ns (and maybe the parser).
                base = ts_cache_get(stamp[:19])
                frac = stamp[20:-1]
                if (base is not None and stamp[19:20] == "." and stamp[-1:] == "Z" and 0 < _len(frac) < 10
                        and frac.isdigit() and frac.isascii()):
                    server_ns = base + int(frac) * pow10[_len(frac)]
                else:
                    server_ns = server_ns_of(stamp)
                    if server_ns is None:
                        raise slow_exc
                present = 0
                bl = data.get("BestLimit")
                if bl is not None:
                    l1, l2, l3 = bl["1"], bl["2"], bl["3"]
                    if _len(bl) != 3 or _len(l1) != 4 or _len(l2) != 4 or _len(l3) != 4:
                        raise slow_exc
                    bl_row = (*level_get(l1), *level_get(l2), *level_get(l3))
                    present += 1
                agg = data.get("Aggregate")
                if agg is not None:
                    if _len(agg) != agg_len:
                        raise slow_exc
                    agg_row = agg_get(agg)
                    agg_str = agg_str_get(agg)
                    present += 1
                rng = data.get("AllowedPriceRange")
                if rng is not None:
                    if _len(rng) != range_len:
                        raise slow_exc
                    rng_row = range_get(rng)
                    present += 1
                info = data.get("ContractInfo")
                if info is not None:
                    if _len(info) != info_len:
                        raise slow_exc
                    info_row = info_get(info)
                    present += 1
                if not present or present != _len(data):
                    raise slow_exc
            except (slow_exc, KeyError, TypeError, AttributeError):
                self._slow(ts_ns, shard, conn, segment, record, payload)
                continue
            if wanted and ident not in wanted:
                self.counts["filtered_out"] += 1
                continue
            fi = _len(frames) // width
            frame((ts_ns, shard, conn, segment, record, server_ns, ident, id_field, channel, payload))
            parsed += 1
            if present == 4 and want_all:
                full_add((fi, *bl_row, *agg_row, *rng_row, *info_row))
                full_str_add(agg_str)
                continue
            if bl is not None and want_bl:
                bl_add((fi, *bl_row))
            if agg is not None and want_agg:
                agg_add((fi, *agg_row))
                agg_str_add(agg_str)
            if rng is not None and want_rng:
                rng_add((fi, *rng_row))
            if info is not None and want_info:
                info_add((fi, *info_row))
        self.counts["parsed"] += parsed
        self.counts["parsed_fast"] += parsed

    def _server_ns(self, stamp: str) -> int | None:
        """The `timestamp` in ns for the common `YYYY-MM-DDTHH:MM:SS.fffffffffZ` form, None for any other.

        The whole-second part goes through message.py's parse_timestamp_ns once per second and is cached;
        other forms (offsets, no fraction) are left to the parser on the slow path.
        """
        n = len(stamp)
        if n < 22 or n > 30 or stamp[19] != "." or stamp[-1] != "Z":  # 1 to 9 fractional digits
            return None
        frac = stamp[20:-1]
        if not (frac.isascii() and frac.isdigit()):
            return None
        head = stamp[:19]
        base = self._ts_cache.get(head)
        if base is None:
            try:
                base = parse_timestamp_ns(head)
            except MessageError:
                return None
            if not INT64_MIN <= base <= INT64_MAX - 1_000_000_000:
                return None  # beyond timestamp[ns] (before 1677 or after 2262): the parser reports it
            if len(self._ts_cache) > 4096:
                self._ts_cache.clear()
            self._ts_cache[head] = base
        return base + int(frac) * _POW10[len(frac)]

    def _other(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, kind: int,
               payload: bytes) -> None:
        if kind == BINARY:
            if self.contracts:
                self.counts["filtered_out"] += 1
                return
            self.counts["binary"] += 1
            self._message(ts_ns, shard, conn, segment, record, None, None, "binary", "binary frame", payload)
        elif kind == EVENT:
            if self.contracts:
                self.counts["filtered_out"] += 1
                return
            self.counts["events"] += 1
            event = decode_event(payload)
            code = event.get("code")
            fi = self._py_frames
            self._frames.extend((ts_ns, shard, conn, segment, record, None, None, None, None, payload))
            self._rows["events"].extend((fi, str(event.get("event")),
                                         code if type(code) is int and INT64_MIN <= code <= INT64_MAX else None,
                                         payload.decode("utf-8", "replace")))
        elif kind == RecordKind.RECEIPT:
            self.counts["receipts_skipped"] += 1  # a redundant copy: the first arrival is exported
        elif kind in (RecordKind.RECEIPT_BLOCK, RecordKind.RECEIPT_COLUMNS):
            self.counts["receipts_skipped"] += receipts_in_block(kind, payload)
        else:
            self.counts[f"unknown_kind_{kind}_skipped"] += 1

    def _message(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, server_ns: int | None,
                 contract: str | None, kind: str, reason: str, payload: bytes, fi: int | None = None) -> None:
        fi = self._put_frame((ts_ns, shard, conn, segment, record, server_ns, contract, None, None, payload), fi)
        self._rows["messages"].extend((fi, kind, reason))

    def _put_frame(self, frame: tuple[Any, ...], fi: int | None) -> int:
        if fi is None:
            fi = self._py_frames
            self._frames.extend(frame)
        else:
            self._frames[fi * FRAME_WIDTH:(fi + 1) * FRAME_WIDTH] = frame
        return fi

    def _slow(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, payload: bytes,
              fi: int | None = None) -> None:
        """The parser decides: typed rows plus extras, or one `messages` row with the reason."""
        try:
            env = parse_envelope(payload)
            exact = exact_object(payload)
            if exact is not None:
                env = envelope_from_object(exact)
            server_ns = env.timestamp_ns
            if server_ns is not None and not INT64_MIN <= server_ns <= INT64_MAX:
                raise MessageError(f"timestamp {env.timestamp!r:.40} is beyond the ns range of 1677-2262")
        except MessageError as exc:
            self._unparsed(ts_ns, shard, conn, segment, record, payload, str(exc), fi)
            return
        data = env.data
        present = [(t, getattr(data, attr)) for t, attr in _SECTION_ATTRS if getattr(data, attr) is not None]
        if not present:
            unknown = ", ".join(sorted(data.extra)) if data.extra else ""
            reason = f"no known section (unknown: {unknown})" if unknown else "no known section"
            if unknown:
                self.counts["unknown_sections"] += len(data.extra)
            self._unparsed(ts_ns, shard, conn, segment, record, payload, reason, fi,
                           env.identifier, server_ns)
            return
        if self.contracts and env.identifier not in self.contracts:
            self.counts["filtered_out"] += 1
            if fi is not None:
                raise AssertionError("a re-parsed frame was already selected")
            return
        fi = self._put_frame((ts_ns, shard, conn, segment, record, server_ns, env.identifier, env.identifier_field,
                              env.channel, payload), fi)
        self.counts["parsed"] += 1
        rows = self._rows
        tables = self._collect
        for table, section in present:
            if table not in tables:
                continue
            if table == "best_limit":
                values: list[Any] = []
                for lvl in S.LEVELS:
                    level = section.levels.get(lvl)
                    values.extend(getattr(level, a) if level is not None else None for a in _LEVEL_ATTRS)
                rows[table].extend((fi, *values))
            else:
                rows[table].extend((fi, *(getattr(section, name) for name, _ in S.INT_COLUMNS[table])))
                if table in S.STR_COLUMNS:
                    rows[f"{table}.str"].extend(getattr(section, name) for name, _ in S.STR_COLUMNS[table])
        self._extras(fi, env)

    def _unparsed(self, ts_ns: int, shard: int, conn: int, segment: str, record: int, payload: bytes,
                  reason: str, fi: int | None, contract: str | None = None, server_ns: int | None = None) -> None:
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
        self._message(ts_ns, shard, conn, segment, record, server_ns, contract, "text", reason, payload, fi)

    def _extras(self, fi: int, env: Envelope) -> None:
        if "extras" not in self.tables:
            return
        add = self._rows["extras"].extend
        counts = self.counts
        for key, value in env.extra.items():
            add((fi, "envelope", key, S.UNKNOWN_FIELD, json_text(value)))
            counts[S.UNKNOWN_FIELD] += 1
        data = env.data
        for key, value in data.extra.items():
            add((fi, "data", key, S.UNKNOWN_SECTION, json_text(value)))
            counts[S.UNKNOWN_SECTION] += 1
        bl = data.best_limit
        if bl is not None:
            for key, value in bl.extra.items():
                add((fi, "BestLimit", key, S.UNKNOWN_FIELD, json_text(value)))
                counts[S.UNKNOWN_FIELD] += 1
            for key, level in bl.levels.items():
                if key not in _LEVEL_SET:
                    obj = {a: getattr(level, a) for a in _LEVEL_ATTRS if getattr(level, a) is not None}
                    add((fi, "BestLimit", key, S.UNKNOWN_LEVEL, json_text(obj | dict(level.extra))))
                    counts[S.UNKNOWN_LEVEL] += 1
                    continue
                for k, v in level.extra.items():
                    add((fi, f"BestLimit.{key}", k, S.UNKNOWN_FIELD, json_text(v)))
                    counts[S.UNKNOWN_FIELD] += 1
        for table, attr in _SECTION_ATTRS[1:]:
            section = getattr(data, attr)
            if section is not None:
                for k, v in section.extra.items():
                    add((fi, S.SECTION_OF[table], k, S.UNKNOWN_FIELD, json_text(v)))
                    counts[S.UNKNOWN_FIELD] += 1

    # --- building tables ------------------------------------------------------------------------

    def take(self) -> dict[str, pa.Table]:
        """Arrow tables of everything added since the last take (only non-empty, selected tables)."""
        rows = self._rows
        bad: set[int] = set()
        full = self._full_columns()
        columns = {t: self._section_columns(t, bad) for t in S.SECTION_TABLES}
        bad |= self._check_columns(columns)
        for t, cols in full.items():
            columns[t] = _merge(t, cols, columns[t])
        if bad:
            # A mistyped known field in a fast-path frame: the parser gives the reason; drop its rows.
            for t in S.SECTION_TABLES:
                keep = [i for i, fi in enumerate(columns[t][0].tolist()) if fi not in bad]
                taken = pa.array(keep, pa.int32())
                columns[t] = [col.take(taken) if isinstance(col, pa.Array) else [col[i] for i in keep]
                              for col in columns[t]]
            extras = _columns(rows["extras"], WIDTH["extras"])
            keep = [i for i, fi in enumerate(extras[0]) if fi not in bad]
            rows["extras"] = [col[i] for i in keep for col in extras]
            for fi in sorted(bad):
                f = self._frames[fi * FRAME_WIDTH:(fi + 1) * FRAME_WIDTH]
                self.counts["parsed"] -= 1
                self.counts["parsed_fast"] -= 1
                self._slow(f[0], f[1], f[2], f[3], f[4], f[9], fi)
            # Keep `messages` in record order although the re-parsed frames were added last.
            width = WIDTH["messages"]
            msgs = rows["messages"]
            ordered = sorted(range(0, len(msgs), width), key=msgs.__getitem__)
            rows["messages"] = [msgs[i + k] for i in ordered for k in range(width)]
        frames = self._frames
        out: dict[str, pa.Table] = {}
        order: dict[str, np.ndarray] = {}  # frame index of each section row (Python path)
        if frames:
            fcols = _columns(frames, FRAME_WIDTH)
            base = {
                "recv_time": _int64(fcols[0]).cast(S.TS),
                "shard": pa.array(fcols[1], pa.int32()),
                "conn": _int64(fcols[2]),
                "segment": pa.array(fcols[3], pa.string()).dictionary_encode(),
                "record": _int64(fcols[4]),
                "server_time": _maybe_int64(fcols[5]).cast(S.TS),
                "contract": pa.array(fcols[6], pa.string()).dictionary_encode(),
                "identifier_field": pa.array(fcols[7], pa.string()).dictionary_encode(),
                "channel": pa.array(fcols[8], pa.string()).dictionary_encode(),
            }
            payloads = fcols[9]
            for t in S.SECTION_TABLES:
                cols = columns[t]
                if t not in self.tables or not len(cols[0]):
                    continue
                cols = _in_record_order(cols)
                order[t] = cols[0]
                idx = pa.array(cols[0]).cast(pa.int32())
                arrays = [base[name].take(idx) for name, _ in S.RECORD_COLUMNS + S.MESSAGE_COLUMNS]
                names = [name for name, _ in S.STR_COLUMNS.get(t, []) + S.INT_COLUMNS[t]]
                for name, col in zip(names, cols[1:], strict=True):
                    arrays.append(col if isinstance(col, pa.Array) else pa.array(col, S.SCHEMAS[t].field(name).type))
                out[t] = _table(t, arrays)
            rec = [base[name] for name, _ in S.RECORD_COLUMNS]
            if rows["events"] and "events" in self.tables:
                fi, event, code, text = _columns(rows["events"], WIDTH["events"])
                idx = pa.array(fi, pa.int32())
                out["events"] = _table("events", [a.take(idx) for a in rec] + [
                    pa.array(event, pa.string()).dictionary_encode(), pa.array(code, pa.int64()),
                    pa.array(text, pa.string())])
            if rows["messages"] and "messages" in self.tables:
                fi, kind, reason = _columns(rows["messages"], WIDTH["messages"])
                idx = pa.array(fi, pa.int32())
                out["messages"] = _table("messages", [a.take(idx) for a in rec] + [
                    pa.array(kind, pa.string()).dictionary_encode(), base["server_time"].take(idx),
                    base["contract"].take(idx), pa.array(reason, pa.string()),
                    pa.array([payloads[i] for i in fi], pa.binary())])
            if rows["extras"] and "extras" in self.tables:
                fi, section, field, reason, value = _columns(rows["extras"], WIDTH["extras"])
                idx = pa.array(fi, pa.int32())
                out["extras"] = _table("extras", [a.take(idx) for a in rec] + [
                    base["contract"].take(idx), pa.array(section, pa.string()).dictionary_encode(),
                    pa.array(field, pa.string()), pa.array(reason, pa.string()).dictionary_encode(),
                    pa.array(value, pa.string())])
        if self._scanner is not None:
            self._merge_scanned(out, order)
        self._reset()
        return out

    def _merge_scanned(self, out: dict[str, pa.Table], order: dict[str, np.ndarray]) -> None:
        """Add the C scanner's rows to the section tables, merged with the Python paths' rows by arrival."""
        assert self._scanner is not None
        got = self._scanner.take()
        n = got["frames"]
        if not n:
            return
        py_seq = np.asarray(self._py_seq, np.int64)
        seq = np.frombuffer(got["seq"], np.int64)
        base = [
            _from_buffer(S.TS, n, got["recv"]),
            _from_buffer(pa.int32(), n, got["shard"]),
            _from_buffer(pa.int64(), n, got["conn"]),
            _dictionary(got["segment"], list(self._segments)),
            _from_buffer(pa.int64(), n, got["record"]),
            _from_buffer(S.TS, n, got["server"]),
            _dictionary(got["contract"], got["contracts"]),
            _dictionary(got["identifier_field"], [ID_FIELD, NAME_FIELD]),
            _dictionary(got["channel"], got["channels"]),
        ]
        for t, (rows, fi_bytes, cols) in zip(S.SECTION_TABLES, got["tables"], strict=True):
            if not rows or t not in self.tables:
                continue
            # A frame has at most one row per table, added in frame order: as many rows as frames is all of them.
            fi = None if rows == n else np.frombuffer(fi_bytes, np.int32)
            arrays = list(base) if fi is None else [a.take(pa.array(fi)) for a in base]
            kinds = [pa.string()] * len(S.STR_COLUMNS.get(t, [])) + [pa.int64()] * len(S.INT_COLUMNS[t])
            for kind, (values, data, validity, nulls) in zip(kinds, cols, strict=True):
                buffers = [None if validity is None else pa.py_buffer(validity), pa.py_buffer(values)]
                if data is not None:
                    buffers.append(pa.py_buffer(data))
                arrays.append(pa.Array.from_buffers(kind, rows, buffers, null_count=nulls))
            table = _table(t, arrays)
            if t not in out:
                out[t] = table
                continue
            # Rows of both paths: put them back in the order the records came in.
            keys = np.concatenate([seq if fi is None else seq[fi], py_seq[order[t]]])
            merged = pa.concat_tables([table, out[t]]).unify_dictionaries().combine_chunks()
            out[t] = merged.take(pa.array(np.argsort(keys, kind="stable")))

    def _full_columns(self) -> dict[str, list[Any]]:
        """The "full" rows split into the four tables' columns; on anything unusual they are moved to the
        per-table rows instead (and checked there), so the result is only ever clean int64/string columns."""
        flat = self._rows["full"]
        if not flat:
            return {}
        try:
            matrix = np.frombuffer(array("q", flat), np.int64)
            strs = [pa.array(c, pa.string()) for c in _columns(self._rows["full.str"], WIDTH["full.str"])]
            if any(flat[k].__class__ is bool for k in np.flatnonzero((matrix >> 1) == 0).tolist()):
                raise TypeError("a boolean among the numbers")
        except (TypeError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
            self._explode_full()
            return {}
        by_column = np.ascontiguousarray(matrix.reshape(-1, FULL_WIDTH).T)
        out: dict[str, list[Any]] = {}
        j = 1
        for t in S.SECTION_TABLES:
            n = len(S.INT_COLUMNS[t])
            out[t] = [by_column[0], *(strs if t in S.STR_COLUMNS else []), *map(pa.array, by_column[j:j + n])]
            j += n
        self._rows["full"] = []
        self._rows["full.str"] = []
        return out

    def _explode_full(self) -> None:
        rows = self._rows
        flat, strs = rows["full"], rows["full.str"]
        n_str = WIDTH["full.str"]
        for r in range(len(flat) // FULL_WIDTH):
            row = flat[r * FULL_WIDTH:(r + 1) * FULL_WIDTH]
            j = 1
            for t in S.SECTION_TABLES:
                n = len(S.INT_COLUMNS[t])
                rows[t].extend((row[0], *row[j:j + n]))
                j += n
            rows["aggregate.str"].extend(strs[r * n_str:(r + 1) * n_str])
        rows["full"] = []
        rows["full.str"] = []

    def _section_columns(self, t: str, bad: set[int]) -> list[Any]:
        """[frame indices (numpy), string columns..., int columns...] of one section table.

        Frames with a boolean where a number belongs are added to `bad` (the parser refuses them).
        """
        flat = self._rows[t]
        width = WIDTH[t]
        cols: list[Any]
        if not flat:
            cols = [np.zeros(0, np.int64)] + [[] for _ in range(width - 1)]
        else:
            try:
                # The common case in one C call: array('q') takes only integers that fit int64 (None, floats,
                # big integers and strings raise).
                matrix = np.frombuffer(array("q", flat), np.int64)
            except (TypeError, OverflowError):
                cols = _columns(flat, width)
                cols[0] = np.array(cols[0], np.int64)
            else:
                # array('q') also takes True/False as 1/0: look at the few cells that hold 0 or 1.
                for k in np.flatnonzero((matrix >> 1) == 0).tolist():
                    if flat[k].__class__ is bool:
                        bad.add(int(matrix[k - k % width]))
                by_column = np.ascontiguousarray(matrix.reshape(-1, width).T)
                cols = [by_column[0]] + [pa.array(c) for c in by_column[1:]]
        strs = _columns(self._rows[f"{t}.str"], WIDTH[f"{t}.str"]) if t in S.STR_COLUMNS else []
        return [cols[0], *strs, *cols[1:]]

    def _check_columns(self, columns: dict[str, list[Any]]) -> set[int]:
        """Make every typed column exact: report non-int64 numbers in `extras`, return frames to re-parse."""
        bad: set[int] = set()
        extras = self._rows["extras"]
        for t in S.SECTION_TABLES:
            cols = columns[t]
            if not len(cols[0]):
                continue
            strs = S.STR_COLUMNS.get(t, [])
            for j, (_, path) in enumerate(strs + S.INT_COLUMNS[t], start=1):
                col = cols[j]
                if isinstance(col, pa.Array):
                    continue
                is_str = j <= len(strs)
                # Typed conversion is 10x cheaper than pyarrow's inference; the set of types says if it is safe.
                types = set(map(type, col))
                if is_str and types <= _STR_TYPES:
                    continue
                if not is_str and types <= _INT_TYPES:
                    try:
                        cols[j] = _int64(col) if NoneType not in types else pa.array(col, pa.int64())
                        continue
                    except (OverflowError, pa.ArrowInvalid):
                        pass
                col = cols[j] = list(col)
                for i, v in enumerate(col):
                    if v is None:
                        continue
                    tv = type(v)
                    if is_str:
                        if tv is not str:
                            bad.add(int(cols[0][i]))
                            col[i] = None
                        continue
                    if tv is int and INT64_MIN <= v <= INT64_MAX:
                        continue
                    fi = int(cols[0][i])
                    if tv is float or tv is int:
                        # Reported, never cast: the column is null, `extras` has the number as sent.
                        exact = _at(exact_object(self._frames[fi * FRAME_WIDTH + 9]), path)
                        if exact is None:
                            exact = v
                        # orjson reads integers past 64 bits as floats; the exact decode tells them apart.
                        reason = S.OUT_OF_RANGE if type(exact) is int else S.NOT_INTEGER
                        extras.extend((fi, ".".join(path[:-1]), path[-1], reason, json_text(exact)))
                        self.counts[reason] += 1
                    else:
                        bad.add(fi)
                    col[i] = None
        return bad

_SECTION_ATTRS = (
    ("best_limit", "best_limit"),
    ("aggregate", "aggregate"),
    ("allowed_price_range", "allowed_price_range"),
    ("contract_info", "contract_info"),
)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    obj = obj.get("data") if isinstance(obj, dict) else None
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _merge(table: str, full: list[Any], part: list[Any]) -> list[Any]:
    """A table's columns from "full" rows and from its own rows (Arrow arrays; frame indices as numpy)."""
    if not len(part[0]):
        return full
    types = [pa.string()] * len(S.STR_COLUMNS.get(table, [])) + [pa.int64()] * len(S.INT_COLUMNS[table])
    merged: list[Any] = [np.concatenate([full[0], np.asarray(part[0], np.int64)])]
    for a, b, kind in zip(full[1:], part[1:], types, strict=True):
        merged.append(pa.concat_arrays([a, b if isinstance(b, pa.Array) else pa.array(b, kind)]))
    return merged


def _in_record_order(cols: list[Any]) -> list[Any]:
    """Rows sorted by frame index (the order the records were received in), whatever path they took."""
    fi = np.asarray(cols[0], np.int64)
    if len(fi) < 2 or bool((fi[1:] > fi[:-1]).all()):
        return cols
    order = np.argsort(fi, kind="stable")
    taken = pa.array(order)
    return [fi[order], *(c.take(taken) if isinstance(c, pa.Array) else [c[i] for i in order] for c in cols[1:])]


def _columns(flat: list[Any], width: int) -> list[Any]:
    return [flat[j::width] for j in range(width)]


def _from_buffer(kind: pa.DataType, n: int, data: bytes) -> pa.Array:
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(data)])


def _dictionary(indices: bytes, values: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.frombuffer(indices, np.int32)), pa.array(values, pa.string()))


def _int64(values: list[Any]) -> pa.Array:
    """An int64 array of Python ints (no None): through array('q'), which refuses anything out of range."""
    return pa.array(np.frombuffer(array("q", values), np.int64))


def _maybe_int64(values: list[Any]) -> pa.Array:
    """int64 with nulls for None; the fast conversion when there is no None (the common case)."""
    try:
        return _int64(values)
    except TypeError:
        return pa.array(values, pa.int64())


def _table(name: str, arrays: list[pa.Array]) -> pa.Table:
    schema = S.SCHEMAS[name]
    fixed = [a if a.type == f.type else a.cast(f.type) for a, f in zip(arrays, schema, strict=True)]
    return pa.Table.from_arrays(fixed, schema=schema)
