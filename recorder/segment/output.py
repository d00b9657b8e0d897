"""Rendering records for people and pipes: JSON lines, or the raw payloads."""

from __future__ import annotations

import base64

import orjson

from recorder.model.record import Record, RecordKind, kind_label
from recorder.timeparse import UTC_LOCALE, TimeLocale


def raw_payload(rec: Record) -> bytes | None:
    """What `--format raw` writes for a record (its payload, a newline follows), or None when it has nothing to
    write: a connection event (not a frame), or a later copy whose original is not among the records read (its
    bytes are unknown; an empty line would read as an empty frame)."""
    if rec.kind == RecordKind.EVENT or (rec.copy is not None and not rec.copy.found):
        return None
    return rec.payload


def jsonl_line(rec: Record, contract: str | None, shown: TimeLocale = UTC_LOCALE) -> bytes:
    """One JSON object: receive time (ns, and ISO-8601 in `shown`'s zone), shard, connection, kind, contract and the
    frame itself.

    A frame that is valid JSON is embedded byte for byte (orjson.Fragment), not re-serialised, so the
    output carries exactly what the server sent; other text goes in "text", binary in "base64".
    """
    out: dict[str, object] = {
        "recv_ns": rec.ts_ns,
        "recv": shown.format(rec.ts_ns),
        "shard": rec.shard,
        "conn": rec.conn,
        "kind": kind_label(rec.kind),
    }
    if rec.kind == RecordKind.TEXT:
        if contract is not None:
            # identifier_of parsed it already, so it is valid JSON.
            out["contract"] = contract
            out["frame"] = orjson.Fragment(rec.payload)
        else:
            _embed(out, "frame", rec.payload, "text")
    elif rec.kind == RecordKind.EVENT:
        _embed(out, "event", rec.payload, "text")
    elif rec.kind == RecordKind.RECEIPT:
        # A later copy (--all-copies): which record it repeats, how much later, and the frame when found.
        orig_conn, lag = (rec.copy.orig_conn, rec.copy.lag_ns) if rec.copy is not None else (-1, 0)
        out["copy_of"] = {"conn": orig_conn, "recv_ns": rec.ts_ns - lag, "lag_ns": lag}
        if contract is not None:
            out["contract"] = contract
        if rec.payload:
            _embed(out, "frame", rec.payload, "base64")
    else:
        out["base64"] = base64.b64encode(rec.payload).decode()
    return orjson.dumps(out) + b"\n"


def _embed(out: dict[str, object], key: str, payload: bytes, otherwise: str) -> None:
    """`payload` as out[key], byte for byte, when it is JSON; else as out[otherwise], "text" or "base64"."""
    try:
        orjson.loads(payload)
        out[key] = orjson.Fragment(payload)
    except orjson.JSONDecodeError:
        text = otherwise == "text"
        out[otherwise] = payload.decode("utf-8", "replace") if text else base64.b64encode(payload).decode()
