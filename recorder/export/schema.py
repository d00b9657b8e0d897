"""The exported tables: their names, Arrow schemas and where each typed column comes from on the wire.

`best_limit` is wide (one row per message, levels 1-3 side by side) rather than one row per level: a row is
then exactly the book the server sent at one instant, spread and mid are expressions over one row (no
self-join or pivot), the table has a third of the rows, and every parsed frame gives at most one row in
every table. Levels other than 1-3 (the API document names three) go to `extras` and are counted.
"""

from __future__ import annotations

import pyarrow as pa

from recorder.feed.message import _AGGREGATE, _INFO, _LEVEL, _RANGE

TS = pa.timestamp("ns", tz="UTC")
DICT_STR = pa.dictionary(pa.int32(), pa.string())

LEVELS = ("1", "2", "3")

# Columns every row table starts with: when and where the record was received.
RECORD_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("recv_time", TS),
    ("shard", pa.int32()),
    ("conn", pa.int64()),
    ("segment", DICT_STR),
    ("record", pa.int64()),
]
# What a parsed message adds: the server's time and the contract it is about.
MESSAGE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("server_time", TS),
    ("contract", DICT_STR),
    ("identifier_field", DICT_STR),
    ("channel", DICT_STR),
]


def _wire_numbers(spec: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    return [(wire, attr) for wire, (attr, kind) in spec.items() if kind == "number"]


# table -> [(column, wire path under data)] for the integer columns; derived from feed/message.py's field
# tables so that the exporter and the parser never disagree about what a known field is.
INT_COLUMNS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "best_limit": [
        (f"{attr}_{lvl}", ("BestLimit", lvl, wire)) for lvl in LEVELS for wire, attr in _wire_numbers(_LEVEL)
    ],
    "aggregate": [(attr, ("Aggregate", wire)) for wire, attr in _wire_numbers(_AGGREGATE)],
    "allowed_price_range": [(attr, ("AllowedPriceRange", wire)) for wire, attr in _wire_numbers(_RANGE)],
    "contract_info": [(attr, ("ContractInfo", wire)) for wire, attr in _wire_numbers(_INFO)],
}
STR_COLUMNS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "aggregate": [(attr, ("Aggregate", wire)) for wire, (attr, kind) in _AGGREGATE.items() if kind == "string"],
}
SECTION_OF = {
    "best_limit": "BestLimit",
    "aggregate": "Aggregate",
    "allowed_price_range": "AllowedPriceRange",
    "contract_info": "ContractInfo",
}
SECTION_TABLES = tuple(SECTION_OF)

# The wire keys of each known object, for the fast path's "exactly the known shape" test.
LEVEL_KEYS = frozenset(_LEVEL)
AGGREGATE_KEYS = frozenset(_AGGREGATE)
RANGE_KEYS = frozenset(_RANGE)
INFO_KEYS = frozenset(_INFO)


def _section_schema(table: str) -> pa.Schema:
    cols = RECORD_COLUMNS + MESSAGE_COLUMNS
    cols += [(name, pa.string()) for name, _ in STR_COLUMNS.get(table, [])]
    cols += [(name, pa.int64()) for name, _ in INT_COLUMNS[table]]
    return pa.schema(cols)


SCHEMAS: dict[str, pa.Schema] = {t: _section_schema(t) for t in SECTION_TABLES}
SCHEMAS["events"] = pa.schema([*RECORD_COLUMNS, ("event", DICT_STR), ("code", pa.int64()), ("json", pa.string())])
SCHEMAS["messages"] = pa.schema([
    *RECORD_COLUMNS, ("kind", DICT_STR), ("server_time", TS), ("contract", DICT_STR), ("reason", pa.string()),
    ("payload", pa.binary()),
])
# Side table: what did not fit a typed column, exactly as sent (JSON text), with the row it belongs to.
SCHEMAS["extras"] = pa.schema([
    *RECORD_COLUMNS, ("contract", DICT_STR), ("section", DICT_STR), ("field", pa.string()), ("reason", DICT_STR),
    ("value", pa.string()),
])

TABLES = (*SECTION_TABLES, "events", "messages", "extras")

# Reasons in `extras`.
UNKNOWN_FIELD = "unknown_field"
UNKNOWN_SECTION = "unknown_section"
UNKNOWN_LEVEL = "unknown_level"
NOT_INTEGER = "not_integer"
OUT_OF_RANGE = "out_of_int64_range"
