"""Property tests of the export's pure core (recorder/export/flatten.py) over simulator frames bent in every
way the feed might: Persian names, missing sections and levels, extra fields, nulls, huge integers, floats,
mistyped fields, malformed JSON and binary frames. The oracle is feed/message.py's parser plus the stdlib's
exact JSON decoder; a second oracle is the exporter's own slow path, which must agree with the fast ones (the C
scanner where it is built, and the Python fast path; tests/test_export_native.py compares those two closely)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest
from export_util import sim_frames
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recorder.export.flatten import Flattener
from recorder.export.reading import SECTIONS as READER_SECTIONS
from recorder.export.reading import FastReader, Slow, value_at
from recorder.export.schema import INT_COLUMNS, SECTION_TABLES, STR_COLUMNS, TABLES
from recorder.feed.message import MessageError, parse_envelope

BASE = [json.loads(p) for _, p in sim_frames(40, contracts=4)] + \
       [json.loads(p) for _, p in sim_frames(40, "contractName", contracts=20, seed=9)]
BASE_RECORDS = [(1, json.dumps(o).encode()) for o in BASE]
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

persian = st.text(alphabet="سکهآزادیطلاشمشزعفراننگین ۱۲۳۴/-&+#%=", min_size=1, max_size=12)
scalar = st.one_of(
    st.none(), st.booleans(), persian, st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.integers(min_value=-1000, max_value=1000), st.floats(allow_nan=False, allow_infinity=False),
)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(persian, inner, max_size=3),
                     max_leaves=6)
SECTIONS = ("BestLimit", "Aggregate", "AllowedPriceRange", "ContractInfo")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    obj = json.loads(json.dumps(BASE[draw(st.integers(0, len(BASE) - 1))]))
    data = obj["data"]
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop_section", "null_section", "extra_top", "extra_section", "extra_field",
                                       "set_field", "drop_level", "extra_level", "persian_name", "drop_data",
                                       "timestamp"]))
        section = draw(st.sampled_from(SECTIONS))
        if action == "drop_section":
            data.pop(section, None)
        elif action == "null_section":
            data[section] = None
        elif action == "extra_top":
            obj[draw(persian)] = draw(value)
        elif action == "extra_section":
            data[draw(persian)] = draw(value)
        elif action == "extra_field" and isinstance(data.get(section), dict):
            data[section][draw(persian)] = draw(value)
        elif action == "set_field" and isinstance(data.get(section), dict) and data[section]:
            target = data[section]
            key = draw(st.sampled_from(sorted(target)))
            if isinstance(target[key], dict) and target[key]:
                target = target[key]
                key = draw(st.sampled_from(sorted(target)))
            target[key] = draw(scalar)
        elif action == "drop_level" and isinstance(data.get("BestLimit"), dict):
            data["BestLimit"].pop(draw(st.sampled_from(["1", "2", "3"])), None)
        elif action == "extra_level" and isinstance(data.get("BestLimit"), dict):
            data["BestLimit"]["4"] = {"buy_price": draw(st.integers(0, 10**6)), "new": 1}
        elif action == "persian_name":
            obj.pop("contractId", None)
            obj["contractName"] = draw(persian)
        elif action == "drop_data":
            obj.pop("data", None)
            data = {}
        elif action == "timestamp":
            obj["timestamp"] = draw(st.sampled_from([
                "2026-05-29T12:00:00Z", "2026-05-29T12:00:00.123456789+03:30", "2026-05-29 12:00:00",
                "29/05/2026", "2026-02-30T00:00:00Z", None, "2026-05-29T20:29:51", "2026-05-29T20:29:51.Z",
                "2026-05-29T20:29:51.1234567890Z", "2026-05-29T20:29:51.١٢٣Z", "2026-05-29T20:29:51,5Z",
                "2026-05-29T20:29:60.5Z"]))
    text = json.dumps(obj, ensure_ascii=False).encode()
    if draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text) - 1))]  # malformed: cut short
    return text


record = st.one_of(
    mutated().map(lambda p: (1, p)),
    st.binary(max_size=20).map(lambda p: (2, p)),
    st.integers(0, len(BASE_RECORDS) - 1).map(BASE_RECORDS.__getitem__),
)


def flatten(records: list[tuple[int, bytes]], slow: bool = False,
            tables: tuple[str, ...] = TABLES, native: bool = True) -> dict[str, pa.Table]:
    f = Flattener(tables=tables, native=native and not slow)
    block = [(1_780_000_000_000_000_000 + i, 1, kind, p) for i, (kind, p) in enumerate(records)]
    if slow:
        for i, (ts, conn, kind, p) in enumerate(block):
            if kind == 1:
                f._py.slow(ts, 0, conn, "seg", i, p)
            else:
                f.add_block([(ts, conn, kind, p)], 0, "seg", i)
    else:
        f.add_block(block, 0, "seg", 0)
    return f.take()


def expected_typed(table: str, obj: dict[str, Any]) -> tuple[dict[str, Any], set[tuple[str, str, str]]]:
    values: dict[str, Any] = {}
    reported: set[tuple[str, str, str]] = set()
    for name, path in STR_COLUMNS.get(table, []) + INT_COLUMNS[table]:
        v: Any = obj.get("data")
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if (name, path) in STR_COLUMNS.get(table, []) or (type(v) is int and INT64_MIN <= v <= INT64_MAX):
            values[name] = v
        else:
            values[name] = None
            if v is not None:
                reason = "out_of_int64_range" if type(v) is int else "not_integer"
                reported.add((".".join(path[:-1]), path[-1], reason))
    return values, reported


def _edit(path: tuple[str, ...], v: Any, base: int = 0) -> tuple[int, bytes]:
    obj = json.loads(json.dumps(BASE[base]))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = v
    return 1, json.dumps(obj, ensure_ascii=False).encode()


EDGES = [
    _edit(("data", "BestLimit", "1", "buy_price"), 123456789012345678901234567890),  # > 64 bits: orjson -> float
    _edit(("data", "BestLimit", "2", "sell_price"), (1 << 63) + 5),  # fits uint64, not int64
    _edit(("data", "Aggregate", "total_value"), -(1 << 63)),  # the smallest int64 is fine
    _edit(("data", "ContractInfo", "open_interest"), 2.0),  # integral float: still reported, never cast
    _edit(("data", "AllowedPriceRange", "minAllowedPrice"), True),  # mistyped: the frame is malformed
    _edit(("data", "Aggregate", "date"), 20260529),  # mistyped string field
    _edit(("data", "Aggregate", "last_price"), None),  # null: an empty cell, nothing to report
    _edit(("contractName",), "شمش طلا ۱۲"),
    _edit(("data", "Aggregate", "نرخ"), {"x": [1, 2.5, None]}),
    (1, b"\xff\xfe not utf-8"),
    (1, b""),
    (2, b"\x00\x01"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, min_size=1, max_size=25))
@example(EDGES)
@example([EDGES[5]])
@example([EDGES[4]])
@example([EDGES[0], *BASE_RECORDS[:3], EDGES[4], EDGES[1]])
def test_every_frame_once_values_exact_and_both_paths_agree(records: list[tuple[int, bytes]]) -> None:
    tables = flatten(records)
    rows_of: dict[str, dict[int, dict[str, Any]]] = {}
    for t, table in tables.items():
        for row in table.to_pylist():
            rows_of.setdefault(t, {}).setdefault(row["record"], row) if t in SECTION_TABLES else None
    messages = {r["record"]: r for r in tables["messages"].to_pylist()} if "messages" in tables else {}
    extras = tables["extras"].to_pylist() if "extras" in tables else []
    for i, (kind, payload) in enumerate(records):
        in_sections = [t for t in SECTION_TABLES if i in rows_of.get(t, {})]
        if kind == 2:
            assert not in_sections and messages[i]["kind"] == "binary" and messages[i]["payload"] == payload
            continue
        try:
            env = parse_envelope(payload)
            env.timestamp_ns  # noqa: B018 - a bad timestamp is a parse failure too
            known = [t for t, s in zip(SECTION_TABLES, (env.data.best_limit, env.data.aggregate,
                                                        env.data.allowed_price_range, env.data.contract_info),
                                       strict=True) if s is not None]
        except MessageError:
            known = []
        if not known:
            assert not in_sections and i in messages and messages[i]["kind"] == "text"
            assert messages[i]["payload"] == payload and messages[i]["reason"]
            continue
        assert i not in messages and in_sections == known
        obj = json.loads(payload)  # the stdlib keeps big integers exact
        my_extras = {(e["section"], e["field"], e["reason"]): e["value"] for e in extras if e["record"] == i}
        for t in known:
            values, reported = expected_typed(t, obj)
            row = rows_of[t][i]
            assert {k: row[k] for k in values} == values
            assert row["contract"] == env.identifier
            for section, field, reason in reported:
                exact = obj["data"]
                for key in [*section.split("."), field]:
                    exact = exact[key]
                assert json.loads(my_extras[(section, field, reason)]) == exact
        for key in env.extra:
            assert ("envelope", key, "unknown_field") in my_extras
        for key in env.data.extra:
            assert ("data", key, "unknown_section") in my_extras
    only = flatten(records, tables=("extras",))  # extras do not depend on which other tables are written
    assert sorted(only) == (["extras"] if "extras" in tables else [])
    if "extras" in tables:
        assert only["extras"].to_pylist() == tables["extras"].to_pylist()
    for other_tables in (flatten(records, slow=True), flatten(records, native=False)):
        assert sorted(other_tables) == sorted(tables)
        for t, table in tables.items():
            other = other_tables[t]
            if t == "extras":  # the paths find extras in another order
                assert sorted(map(str, table.to_pylist())) == sorted(map(str, other.to_pylist()))
            else:
                assert table.to_pylist() == other.to_pylist(), t


def flatten_counted(records: list[tuple[int, bytes]], tables: tuple[str, ...]) -> tuple[dict[str, list[str]],
                                                                                       dict[str, int]]:
    f = Flattener(tables=tables)
    f.add_block([(1_780_000_000_000_000_000 + i, 1, kind, p) for i, (kind, p) in enumerate(records)], 0, "seg", 0)
    out = {t: sorted(map(str, table.to_pylist())) if t == "extras" else list(map(str, table.to_pylist()))
           for t, table in f.take().items()}
    return out, {k: v for k, v in f.counts.items() if v}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, min_size=1, max_size=20), st.sets(st.sampled_from(TABLES), min_size=1))
@example([_edit(("data", "Aggregate", "trade_count"), "many")], {"best_limit", "messages"})
@example([_edit(("data", "BestLimit", "2", "buy_price"), True)], {"aggregate", "messages"})
@example([_edit(("data", "ContractInfo", "open_interest"), 2.5)], {"best_limit"})
def test_what_a_frame_becomes_does_not_depend_on_the_tables_selected(records: list[tuple[int, bytes]],
                                                                      tables: set[str]) -> None:
    """`--tables` chooses which tables are written, never where a frame goes or what is counted: a frame with a
    mistyped field in a section that is not written still goes to `messages`."""
    everything, all_counts = flatten_counted(records, TABLES)
    some, counts = flatten_counted(records, tuple(sorted(tables)))
    assert some == {t: rows for t, rows in everything.items() if t in tables}
    assert counts == all_counts


def test_the_fast_reader_reads_the_schemas_paths_for_every_mix_of_sections() -> None:
    """reading.py writes its section reader from schema.py's tables: every known path is read, in column order,
    whatever sections a message has; an object with a key more or less is left to the parser."""
    obj = json.loads(json.dumps(BASE[0]))
    for n, (_, path) in enumerate(c for t in SECTION_TABLES for c in STR_COLUMNS.get(t, []) + INT_COLUMNS[t]):
        target = obj["data"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = f"s{n}" if isinstance(target[path[-1]], str) else n  # every value its own
    for mask in range(1, 1 << len(READER_SECTIONS)):
        present = [s for s in READER_SECTIONS if mask & s.bit]
        msg = {**obj, "data": {s.key: obj["data"][s.key] for s in present}}
        got = FastReader().read(json.dumps(msg).encode(), 7)
        assert got[4] == mask
        want = [value_at(msg["data"], path) for s in present for _, path in
                STR_COLUMNS.get(s.table, []) + INT_COLUMNS[s.table]]
        assert got[5][0] == 7
        strs, ints = [v for v in want if isinstance(v, str)], [v for v in want if isinstance(v, int)]
        assert list(got[6]) == strs and list(got[5][1:]) == ints
        for s in present:
            for change in ("add", "drop"):
                bent = json.loads(json.dumps(msg))
                target = bent["data"][s.key]
                while isinstance(next(iter(target.values())), dict):
                    target = next(iter(target.values()))
                if change == "add":
                    target["x"] = 1
                else:
                    target.pop(next(iter(target)))
                with pytest.raises(Slow):
                    FastReader().read(json.dumps(bent).encode(), 7)
