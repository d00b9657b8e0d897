"""PROTOTYPE: pyarrow.json as the export's fast path (measuring whether it pays)."""

from __future__ import annotations

from itertools import compress
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from recorder.export import schema as S
from recorder.feed.message import ID_FIELD, NAME_FIELD, MessageError, parse_timestamp_ns

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
TEXT = 1
_TS_FORM = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"


def _section_type(table: str) -> pa.DataType:
    tree: dict[str, Any] = {}
    strs = {name for name, _ in S.STR_COLUMNS.get(table, [])}
    for name, path in S.STR_COLUMNS.get(table, []) + S.INT_COLUMNS[table]:
        node = tree
        for key in path[1:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = pa.string() if name in strs else pa.int64()

    def build(node: dict[str, Any]) -> pa.DataType:
        return pa.struct([(k, build(v) if isinstance(v, dict) else v) for k, v in node.items()])

    return build(tree)


SCHEMA = pa.schema([
    ("channel", pa.string()), (ID_FIELD, pa.string()), (NAME_FIELD, pa.string()), ("timestamp", pa.string()),
    ("data", pa.struct([(S.SECTION_OF[t], _section_type(t)) for t in S.SECTION_TABLES])),
])
PARSE = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="error")


def _read(lines: list[bytes]) -> pa.Table | None:
    buf = b"\n".join(lines)
    try:
        table = pj.read_json(pa.py_buffer(buf), read_options=pj.ReadOptions(use_threads=False,
                                                                             block_size=len(buf) + 1),
                             parse_options=PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(lines) else None


def read_exact(lines: list[bytes]) -> tuple[pa.Table | None, np.ndarray]:
    """Rows of `lines` the reader takes, and a mask of those; bisects around the lines it refuses."""
    table = _read(lines)
    if table is not None:
        return table, np.ones(len(lines), bool)
    if len(lines) <= 1:
        return None, np.zeros(len(lines), bool)
    mid = len(lines) // 2
    a, ma = read_exact(lines[:mid])
    b, mb = read_exact(lines[mid:])
    parts = [t for t in (a, b) if t is not None]
    return (pa.concat_tables(parts) if parts else None), np.concatenate([ma, mb])


def _utf8_valid(col: pa.Array) -> pa.Array:
    try:
        col.validate(full=True)
    except pa.ArrowInvalid:
        def good(v: bytes | None) -> bool:
            try:
                if v is not None:
                    v.decode()
            except UnicodeDecodeError:
                return False
            return True
        return pa.array([good(v) for v in col.cast(pa.binary()).to_pylist()], pa.bool_())
    return pa.array(np.ones(len(col), bool))


class JsonReader:
    def __init__(self, contracts: frozenset[str], collect: frozenset[str]) -> None:
        self.contracts = contracts
        self.collect = collect
        self._wanted = pa.array(sorted(contracts), pa.string()) if contracts else None
        self.parsed = 0
        self.filtered = 0
        self._parts: list[dict[str, Any]] = []
        self.pending = 0
        self._payloads: list[bytes] = []
        self._ts: list[int] = []
        self._conn: list[int] = []
        self._record: list[np.ndarray] = []
        self._seq: list[np.ndarray] = []
        self._shard: list[np.ndarray] = []
        self._segment: list[np.ndarray] = []
        self._ts_cache: dict[str, int | None] = {}

    def counts(self) -> tuple[int, int]:
        out = (self.parsed, self.filtered)
        self.parsed = self.filtered = 0
        return out

    def scan(self, records: list[tuple[int, int, int, bytes]], first: int, shard: int, segment: int, lo: int,
             hi: int, seq: int) -> list[int]:
        """Stash the block's TEXT records in [lo, hi); the others' positions are returned (Python takes them)."""
        n = len(records)
        if not n:
            return []
        ts, conn, kind, payloads = zip(*records, strict=True)
        kind_a = np.fromiter(kind, np.int64, n)
        text = kind_a == TEXT
        if lo > INT64_MIN or hi <= INT64_MAX:
            ts_a = np.fromiter(ts, np.int64, n)
            inside = (ts_a >= lo) & (ts_a < hi)
            text &= inside
        else:
            inside = None
        if text.all():
            self._payloads.extend(payloads)
            self._ts.extend(ts)
            self._conn.extend(conn)
            self._record.append(np.arange(first, first + n))
            self._seq.append(np.arange(seq, seq + n))
        else:
            self._payloads.extend(compress(payloads, text))
            self._ts.extend(compress(ts, text))
            self._conn.extend(compress(conn, text))
            at = np.flatnonzero(text)
            self._record.append(at + first)
            self._seq.append(at + seq)
        self._shard.append(np.full(int(text.sum()), shard, np.int32))
        self._segment.append(np.full(int(text.sum()), segment, np.int32))
        self.pending = len(self._payloads)
        others = ~text if inside is None else inside & ~text
        return np.flatnonzero(others).tolist()

    def flush(self) -> list[tuple[int, int, bytes, int, int, int, int]]:
        """Parse what is stashed; returns the records refused: (ts, conn, payload, record, shard, segment, seq)."""
        payloads = self._payloads
        n = len(payloads)
        if not n:
            return []
        ts = np.array(self._ts, np.int64)
        conn = np.array(self._conn, np.int64)
        record = np.concatenate(self._record)
        seq = np.concatenate(self._seq)
        shard = np.concatenate(self._shard)
        segment = np.concatenate(self._segment)
        self._payloads, self._ts, self._conn, self._record, self._seq, self._shard, self._segment = (
            [], [], [], [], [], [], [])
        self.pending = 0
        cand = self._candidates(payloads)
        lines = payloads if cand.all() else list(compress(payloads, cand))
        idx = np.flatnonzero(cand)
        table, took = read_exact(lines) if lines else (None, np.zeros(0, bool))
        accepted = np.zeros(n, bool)
        if table is not None:
            ok = self._check(table)
            stamp = table.column("timestamp").combine_chunks()
            server = self._server_ns(pc.if_else(pa.array(ok), stamp, pa.scalar(None, pa.string())))
            ok &= pc.is_valid(server).to_numpy(zero_copy_only=False)
            rows = idx[took][ok]
            accepted[rows] = True
            table = table.filter(pa.array(ok))
            server = server.filter(pa.array(ok))
            if len(rows):
                self._collect(table, server, rows, ts, conn, record, shard, segment, seq)
        out = np.flatnonzero(~accepted).tolist()
        return [(int(ts[i]), int(conn[i]), payloads[i], int(record[i]), int(shard[i]), int(segment[i]),
                 int(seq[i])) for i in out]

    @staticmethod
    def _candidates(payloads: list[bytes]) -> np.ndarray:
        # Shape pre-checks on the bytes: an object per line (pyarrow crashes on a top-level null, and a payload
        # with a newline would be two lines), and no escape (a string's bytes are then its value).
        n = len(payloads)
        lens = np.fromiter(map(len, payloads), np.int64, n)
        joined = b"\n".join(payloads)
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(lens + 1, out=starts[1:])
        u8 = np.frombuffer(joined, np.uint8)
        cand = lens > 1
        idx = np.flatnonzero(cand)
        cand[idx] = (u8[starts[idx]] == 0x7B) & (u8[starts[idx] + lens[idx] - 1] == 0x7D)
        for byte in (b"\\", b"\r"):
            at = joined.find(byte)
            while at >= 0:
                cand[np.searchsorted(starts, at, "right") - 1] = False
                at = joined.find(byte, at + 1)
        if joined.count(b"\n") != n - 1:
            for i, p in enumerate(payloads):
                if b"\n" in p:
                    cand[i] = False
        return cand

    def _check(self, table: pa.Table) -> np.ndarray:
        ident = table.column(ID_FIELD).combine_chunks()
        name = table.column(NAME_FIELD).combine_chunks()
        ok = pc.not_equal(pc.is_valid(ident), pc.is_valid(name))
        ok = pc.and_(ok, pc.greater(pc.binary_length(pc.coalesce(ident, name)), 0))
        stamp = table.column("timestamp").combine_chunks()
        data = table.column("data").combine_chunks()
        agg = data.field("Aggregate")
        for col in (ident, name, table.column("channel").combine_chunks(), stamp, agg.field("date"),
                    agg.field("time")):
            ok = pc.and_(ok, _utf8_valid(col))
        ok = pc.and_(ok, pc.fill_null(pc.match_substring_regex(stamp, _TS_FORM), False))
        sections = data.flatten()
        any_section = None
        for t, sec in zip(S.SECTION_TABLES, sections, strict=True):
            valid = pc.is_valid(sec)
            any_section = valid if any_section is None else pc.or_(any_section, valid)
            if t == "best_limit":
                for level in sec.flatten():
                    ok = pc.and_(ok, pc.or_(pc.invert(valid), pc.is_valid(level)))
        ok = pc.and_(ok, any_section)
        return pc.fill_null(ok, False).to_numpy(zero_copy_only=False)

    def _server_ns(self, stamp: pa.Array) -> pa.Array:
        head = pc.utf8_slice_codeunits(stamp, 0, 19)
        uniq = pc.unique(head)
        bases = []
        for h in uniq.to_pylist():
            base = self._ts_cache.get(h, 0) if h is not None else None
            if base == 0:
                try:
                    base = parse_timestamp_ns(h)
                    if not INT64_MIN <= base <= INT64_MAX - 1_000_000_000:
                        base = None
                except MessageError:
                    base = None
                self._ts_cache[h] = base
            bases.append(base)
        base = pa.array(bases, pa.int64()).take(pc.index_in(head, uniq))
        frac = pc.utf8_rpad(pc.utf8_slice_codeunits(stamp, 20, -1), 9, "0").cast(pa.int64())
        return pc.add(base, frac)

    def _collect(self, table: pa.Table, server: pa.Array, rows: np.ndarray, ts: np.ndarray, conn: np.ndarray,
                 record: np.ndarray, shard: np.ndarray, segment: np.ndarray, seq: np.ndarray) -> None:
        ident = table.column(ID_FIELD).combine_chunks()
        name = table.column(NAME_FIELD).combine_chunks()
        contract = pc.coalesce(ident, name)
        if self._wanted is not None:
            wanted = pc.is_in(contract, self._wanted)
            self.filtered += len(rows) - pc.sum(wanted).as_py()
            keep_np = wanted.to_numpy(zero_copy_only=False)
            rows = rows[keep_np]
            table = table.filter(wanted)
            server = server.filter(wanted)
            ident = table.column(ID_FIELD).combine_chunks()
            name = table.column(NAME_FIELD).combine_chunks()
            contract = pc.coalesce(ident, name)
        if not len(rows):
            return
        self.parsed += len(rows)
        base = {
            "recv_time": pa.array(ts[rows]).cast(S.TS),
            "shard": pa.array(shard[rows]),
            "conn": pa.array(conn[rows]),
            "segment": segment[rows],
            "record": pa.array(record[rows]),
            "server_time": server.cast(S.TS),
            "contract": contract,
            "identifier_field": pc.if_else(pc.is_valid(ident), ID_FIELD, NAME_FIELD),
            "channel": table.column("channel").combine_chunks(),
        }
        data = table.column("data").combine_chunks().flatten()
        tables = {}
        for t, sec in zip(S.SECTION_TABLES, data, strict=True):
            if t not in self.collect:
                continue
            present = pc.is_valid(sec)
            cols = []
            if t == "best_limit":
                for level in sec.flatten():
                    cols.extend(level.flatten())
            else:
                cols = sec.flatten()
            tables[t] = (present, cols)
        self._parts.append({"base": base, "seq": seq[rows], "tables": tables})

    def take(self) -> list[dict[str, Any]]:
        parts, self._parts = self._parts, []
        return parts
