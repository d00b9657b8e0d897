"""The record: the one type every writer, reader, merge, recovery, export and live output of a recording shares.

A record is a receive time (wall-clock ns), the connection it came on, its kind and its payload bytes exactly as
received; readers that merge shards add the shard. On disk a data block holds a record as a 17-byte header and the
payload (`RECORD_HEADER`, docs/FORMAT.md "Data frame"); everywhere in memory a block's records are `Row`s, and a
reader's records are `Record`s. The record kinds are spelled here and nowhere else: every module names them
`RecordKind.X`, C included (tests/test_model.py checks the extensions' constants against these).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple


class RecordKind:
    """The kind byte of a record. Plain ints, not an enum.IntEnum: readers compare the kind of every record, and an
    int class attribute reads and compares in ~25 ns where an enum member took ~70 ns (Python 3.11)."""

    TEXT: Final = 1  # a text WebSocket message
    BINARY: Final = 2  # a binary WebSocket message
    EVENT: Final = 3  # a connection event (JSON, recorder/events.py)
    RECEIPT: Final = 4  # a later copy of a message that arrived first on another redundant connection (format 1.1)
    RECEIPT_BLOCK: Final = 5  # on disk only: the receipts of one data block whose originals are in it, columnar (1.1)
    RECEIPT_COLUMNS: Final = 6  # on disk only: all receipts of one data block, byte-shuffled columns (1.1, replaces 5)


# How readers name the kinds they show (`cat --format jsonl`'s "kind"); the stored-only kinds are never shown.
KIND_LABELS: Final = {RecordKind.TEXT: "text", RecordKind.BINARY: "binary", RecordKind.EVENT: "event",
                      RecordKind.RECEIPT: "receipt"}


# Market data: what the feed sent (first arrivals); what the relay, NATS and `--format raw` carry.
MESSAGE_KINDS = frozenset((RecordKind.TEXT, RecordKind.BINARY))
# Stored only: a data block's receipts in one record, expanded into RECEIPT records by every reader.
RECEIPT_BLOCK_KINDS = frozenset((RecordKind.RECEIPT_BLOCK, RecordKind.RECEIPT_COLUMNS))


def kind_label(kind: int) -> str:
    """`text`, `binary`, `event`, `receipt`, or the number of a kind this version does not know."""
    return KIND_LABELS.get(kind) or str(kind)


# (ts_ns, conn, kind, payload): a record as a data block holds it (a file is one shard's). A plain tuple: blocks
# are split into hundreds of thousands of these a second (in C when recorder/segment/_block.c is built).
Row = tuple[int, int, int, bytes]


class Copy(NamedTuple):
    """What a receipt says about the message it repeats, for readers that show every copy (`--all-copies`)."""

    orig_conn: int
    lag_ns: int  # how much later this copy arrived than the original
    found: bool = True  # the original's payload is in the record (False: not among the records read)


class Record(NamedTuple):
    """A record as readers give it: a row with the shard that recorded it (and, for a shown copy, its original)."""

    ts_ns: int
    shard: int
    conn: int
    kind: int
    payload: bytes
    copy: Copy | None = None


# The header of a record in a decompressed data block: ts_ns, conn, kind, payload length.
RECORD_HEADER = struct.Struct("<qIBI")
# A data block starts with its record count.
BLOCK_COUNT = struct.Struct("<I")
# A receipt's payload: the original's connection and how much later this copy arrived (copy ts − original ts).
RECEIPT_BODY = struct.Struct("<IQ")


class RecordError(ValueError):
    """A record's bytes are not what its kind says (a receipt of the wrong size)."""


def encode_receipt(orig_conn: int, lag_ns: int) -> bytes:
    # A clock step backwards between two copies must not make the lag unrepresentable.
    return RECEIPT_BODY.pack(orig_conn, max(lag_ns, 0))


def decode_receipt(payload: bytes) -> tuple[int, int]:
    """(original conn, lag ns); the original's receive time is the receipt's ts_ns − lag."""
    if len(payload) != RECEIPT_BODY.size:
        raise RecordError(f"receipt payload has {len(payload)} bytes, expected {RECEIPT_BODY.size}")
    conn, lag = RECEIPT_BODY.unpack(payload)
    return conn, lag
