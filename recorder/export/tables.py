"""Arrow tables of one take(): the Python paths' frames and rows, and the C scanner's buffers merged in by arrival."""

from __future__ import annotations

from array import array
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa

from recorder.export import schema as S
from recorder.export.pypaths import FRAME_WIDTH, PAYLOAD, PyPaths
from recorder.feed.message import ID_FIELD, NAME_FIELD

_BASE = [name for name, _ in S.RECORD_COLUMNS + S.MESSAGE_COLUMNS]
_RECORD = [name for name, _ in S.RECORD_COLUMNS]


def frame_columns(frames: list[Any]) -> dict[str, pa.Array]:
    """The record and message columns of every frame, by frame index."""
    recv, shard, conn, segment, record, server, contract, id_field, channel = _columns(frames, FRAME_WIDTH)[:PAYLOAD]
    return {
        "recv_time": _int64(recv).cast(S.TS),
        "shard": pa.array(shard, pa.int32()),
        "conn": _int64(conn),
        "segment": pa.array(segment, pa.string()).dictionary_encode(),
        "record": _int64(record),
        "server_time": _maybe_int64(server).cast(S.TS),
        "contract": pa.array(contract, pa.string()).dictionary_encode(),
        "identifier_field": pa.array(id_field, pa.string()).dictionary_encode(),
        "channel": pa.array(channel, pa.string()).dictionary_encode(),
    }


def section_table(table: str, base: dict[str, pa.Array], cols: list[Any]) -> pa.Table:
    idx = pa.array(cols[0]).cast(pa.int32())
    return _table(table, [base[name].take(idx) for name in _BASE] + cols[1:])


def side_tables(py: PyPaths, base: dict[str, pa.Array], tables: frozenset[str]) -> dict[str, pa.Table]:
    """events, messages and extras, each in record order."""
    out = {}
    rec = [base[name] for name in _RECORD]
    if py.events and "events" in tables:
        fi, event, code, text = _columns(py.events, 4)
        idx = pa.array(fi, pa.int32())
        out["events"] = _table("events", [a.take(idx) for a in rec] + [
            pa.array(event, pa.string()).dictionary_encode(), pa.array(code, pa.int64()), pa.array(text, pa.string())])
    if py.messages and "messages" in tables:
        fi, kind, reason = _in_frame_order(_columns(py.messages, 3))
        idx = pa.array(fi, pa.int32())
        payloads = py.frames[PAYLOAD::FRAME_WIDTH]
        out["messages"] = _table("messages", [a.take(idx) for a in rec] + [
            pa.array(kind, pa.string()).dictionary_encode(), base["server_time"].take(idx),
            base["contract"].take(idx), pa.array(reason, pa.string()),
            pa.array([payloads[i] for i in fi], pa.binary())])
    if py.extras and "extras" in tables:
        fi, section, field, reason, value = _in_frame_order(_columns(py.extras, 5))
        idx = pa.array(fi, pa.int32())
        out["extras"] = _table("extras", [a.take(idx) for a in rec] + [
            base["contract"].take(idx), pa.array(section, pa.string()).dictionary_encode(),
            pa.array(field, pa.string()), pa.array(reason, pa.string()).dictionary_encode(),
            pa.array(value, pa.string())])
    return out


def merge_scanned(out: dict[str, pa.Table], order: dict[str, np.ndarray], got: dict[str, Any], py_seq: list[int],
                  segments: list[str], tables: frozenset[str]) -> None:
    """Add the C scanner's rows to the section tables, merged with the Python paths' rows by arrival."""
    n = got["frames"]
    if not n:
        return
    seq = np.frombuffer(got["seq"], np.int64)
    base = [
        _from_buffer(S.TS, n, got["recv"]),
        _from_buffer(pa.int32(), n, got["shard"]),
        _from_buffer(pa.int64(), n, got["conn"]),
        _dictionary(got["segment"], segments),
        _from_buffer(pa.int64(), n, got["record"]),
        _from_buffer(S.TS, n, got["server"]),
        _dictionary(got["contract"], got["contracts"]),
        _dictionary(got["identifier_field"], [ID_FIELD, NAME_FIELD]),
        _dictionary(got["channel"], got["channels"]),
    ]
    for t, (rows, fi_bytes, cols) in zip(S.SECTION_TABLES, got["tables"], strict=True):
        if not rows or t not in tables:
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
        keys = np.concatenate([seq if fi is None else seq[fi], np.asarray(py_seq, np.int64)[order[t]]])
        merged = pa.concat_tables([table, out[t]]).unify_dictionaries().combine_chunks()
        out[t] = merged.take(pa.array(np.argsort(keys, kind="stable")))


def _in_frame_order(cols: list[list[Any]]) -> list[list[Any]]:
    """Rows sorted by frame index (stably): frames the parser read again at take() added theirs last."""
    fi = cols[0]
    if all(a <= b for a, b in pairwise(fi)):
        return cols
    order = sorted(range(len(fi)), key=fi.__getitem__)
    return [[c[i] for i in order] for c in cols]


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
