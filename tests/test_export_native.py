"""The export's C scanner (recorder/export/_scan.c) against the pure-Python paths: same tables, same order, same
counts, over simulator frames, hand-made edge cases and byte-wise mutations of valid frames. The scanner may
refuse anything (Python then reads it); what it accepts must come out exactly as Python reads it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from export_util import sim_frames
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recorder.export import flatten as F
from recorder.export.flatten import Flattener, scanner_layout
from recorder.export.schema import INT_COLUMNS, SECTION_OF, STR_COLUMNS, TABLES
from recorder.feed.message import _AGGREGATE, _INFO, _LEVEL, _RANGE

pytestmark = pytest.mark.skipif(not F.NATIVE,
                                reason="the C scanner is not in use (not built, or IME_NATIVE turns it off)")

FRAMES = [p for _, p in sim_frames(30, contracts=4)] + [p for _, p in sim_frames(30, "contractName", contracts=6,
                                                                                   seed=9)]
START = 1_780_000_000_000_000_000


def run(payloads: list[tuple[int, bytes]], native: bool, tables: tuple[str, ...] = TABLES,
        contracts: tuple[str, ...] = (), blocks: int = 1) -> tuple[dict[str, list[dict[str, Any]]], Counter[str]]:
    f = Flattener(contracts, tables, native=native)
    block = [(START + i, 1, kind, p) for i, (kind, p) in enumerate(payloads)]
    step = max(1, -(-len(block) // blocks))
    for i in range(0, len(block), step):
        f.add_block(block[i:i + step], 0, "seg", i)
    out = {t: table.to_pylist() for t, table in f.take().items()}
    for t in out:
        assert f.take().get(t) is None  # take() starts over
    # parsed_c and parsed_fast say which path took a frame: the point of the comparison is that it does not matter
    counts = Counter({k: v for k, v in f.counts.items() if v and k not in ("parsed_c", "parsed_fast")})
    return out, counts


def same(payloads: list[bytes | tuple[int, bytes]], **kw: Any) -> dict[str, list[dict[str, Any]]]:
    records = [p if isinstance(p, tuple) else (1, p) for p in payloads]
    c_tables, c_counts = run(records, True, **kw)
    py_tables, py_counts = run(records, False, **kw)
    assert sorted(c_tables) == sorted(py_tables)
    for t in c_tables:
        if t == "extras":  # the Python paths themselves find extras in another order
            assert sorted(map(str, c_tables[t])) == sorted(map(str, py_tables[t]))
        else:
            assert c_tables[t] == py_tables[t], t
    assert c_counts == py_counts
    return c_tables


def taken_by_c(payload: bytes) -> bool:
    f = Flattener()
    f.add_block([(START, 1, 1, payload)], 0, "seg", 0)
    return f.counts["parsed_c"] == 1


def test_layout_is_the_schema_and_the_parsers_field_tables() -> None:
    """The scanner knows no field names of its own: what it holds is what schema.py / message.py say."""
    f = Flattener()
    keys, tables = f._scanner.layout()
    assert keys == F.ENVELOPE_KEYS
    assert tables == scanner_layout()
    wire = {t: {path for path, _ in cols} for (_, cols, _), t in zip(tables, SECTION_OF, strict=True)}
    assert wire["best_limit"] == {(lvl, k) for lvl in ("1", "2", "3") for k in _LEVEL}
    assert wire["aggregate"] == {(k,) for k in _AGGREGATE}
    assert wire["allowed_price_range"] == {(k,) for k in _RANGE}
    assert wire["contract_info"] == {(k,) for k in _INFO}
    for (section, cols, _), t in zip(tables, SECTION_OF, strict=True):
        assert section == SECTION_OF[t]
        assert [(section, *p) for p, _ in cols] == [path for _, path in STR_COLUMNS.get(t, []) + INT_COLUMNS[t]]


def test_simulator_frames_are_all_taken_by_the_scanner_and_equal() -> None:
    assert all(taken_by_c(p) for p in FRAMES)
    tables = same(FRAMES)
    assert len(tables["best_limit"]) == len(FRAMES)
    same(FRAMES, blocks=7)
    same(FRAMES, tables=("aggregate", "messages"))
    same(FRAMES, contracts=(json.loads(FRAMES[0])["contractId"], json.loads(FRAMES[-1])["contractName"]))


def obj(i: int = 0) -> dict[str, Any]:
    return json.loads(FRAMES[i])


def dumps(o: Any, **kw: Any) -> bytes:
    return json.dumps(o, ensure_ascii=False, separators=(",", ":"), **kw).encode()


def edit(path: tuple[str, ...], value: Any, i: int = 0) -> bytes:
    o = obj(i)
    target = o
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return dumps(o)


def drop(path: tuple[str, ...], i: int = 0) -> bytes:
    o = obj(i)
    target = o
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return dumps(o)


V = FRAMES[0]
NAME = FRAMES[-1]
# Variants the scanner must take itself (else they would be exact but slow).
PLAIN: list[bytes] = [
    json.dumps(obj(), indent=2).encode(),
    json.dumps(obj()).encode(),
    b" \r\n\t" + V + b" \n",
    dumps(dict(reversed(list(obj().items())))),
    dumps({k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in obj().items()}),
    drop(("data", "BestLimit")),
    drop(("data", "Aggregate")),
    edit(("data", "Aggregate", "last_price"), None),
    edit(("data", "Aggregate", "date"), None),
    edit(("data", "BestLimit", "2", "buy_price"), None),
    edit(("data", "ContractInfo", "open_interest"), 999_999_999_999_999_999),
    edit(("data", "ContractInfo", "open_interest"), -999_999_999_999_999_999),
    edit(("data", "ContractInfo", "open_interest"), 0),
    edit(("contractName",), "شمش طلا ۱۲", -1),
    edit(("contractName",), "1001", -1),
    edit(("channel",), ""),
    V.replace(b'"channel":"IME Stream"', b'"channel":"\xd8\xb3\xda\xa9\xd9\x87"', 1),
    edit(("timestamp",), "2026-05-29T20:29:51Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.1Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.123456789Z"),
    edit(("timestamp",), "2026-05-29T20:29:60.5Z"),
    edit(("timestamp",), "2024-02-29T00:00:00.5Z"),
    edit(("timestamp",), "1969-12-31T23:59:59.999999999Z"),
    edit(("timestamp",), "2261-12-31T23:59:59.999999999Z"),
]
# Frames the scanner must leave to Python (a value it cannot hold exactly, or not the documented shape).
REFUSED: list[bytes] = [
    edit(("data", "ContractInfo", "open_interest"), 1 << 63),
    edit(("data", "ContractInfo", "open_interest"), 2.0),
    edit(("data", "ContractInfo", "open_interest"), True),
    edit(("data", "Aggregate", "نرخ"), 1),
    edit(("contractId",), 1001),
    NAME.replace(b'"contractName":"', b'"contractName":"\\u0633', 1),
    V.replace(b'"contractId":"', b'"contractId":"\xed\xa0\x80', 1),
    edit(("timestamp",), "2026-05-29T20:29:51.5+03:30"),
    V + b"x",
    b"",
]
EDGES: list[bytes] = PLAIN + REFUSED + [
    edit(("data", "ContractInfo", "open_interest"), (1 << 63) - 1),
    edit(("data", "ContractInfo", "open_interest"), -(1 << 63)),
    edit(("data", "ContractInfo", "open_interest"), 1 << 63),
    edit(("data", "ContractInfo", "open_interest"), 123456789012345678901234567890),
    edit(("data", "ContractInfo", "open_interest"), 2.0),
    edit(("data", "ContractInfo", "open_interest"), 1e300),
    edit(("data", "ContractInfo", "open_interest"), True),
    edit(("data", "ContractInfo", "open_interest"), "5"),
    edit(("data", "ContractInfo", "open_interest"), [1]),
    edit(("data", "Aggregate", "time"), 120000),
    edit(("data", "Aggregate", "time"), "12:00:00\u200f"),
    edit(("data", "Aggregate", "time"), "ساعت ۱۲"),
    V.replace(b'"open_interest":', b'"open_interest":-0,"x":', 1),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":-0'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":00'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":0.0'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":0e0'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":-'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":+1'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":NaN'),
    V.replace(b'"open_interest_changes":0', b'"open_interest_changes":nul'),
    # shape: missing, extra, duplicate, null sections and levels
    drop(("data", "BestLimit")),
    drop(("data", "Aggregate", "trade_count")),
    drop(("data", "BestLimit", "3")),
    drop(("data",)),
    drop(("channel",)),
    drop(("timestamp",)),
    edit(("data", "BestLimit", "4"), {"buy_price": 1}),
    edit(("data", "Aggregate", "نرخ"), 1),
    edit(("data", "Heartbeat"), {}),
    edit(("v",), 2),
    edit(("data", "ContractInfo"), None),
    edit(("data",), None),
    edit(("data",), {}),
    edit(("data", "BestLimit", "1"), None),
    edit(("contractName",), "1001", -1),
    edit(("contractId",), ""),
    edit(("contractId",), 1001),
    edit(("contractId",), None),
    edit(("channel",), ""),
    edit(("channel",), None),
    V.replace(b'{"channel"', b'{"channel":"x","channel"', 1),
    V.replace(b'"data":{', b'"data":{"ContractInfo":{"open_interest":1,"open_interest_changes":2},', 1),
    V.replace(b'"buy_quantity":', b'"buy_quantity":1,"buy_quantity":', 1),
    V.replace(b'"trade_count":', b'"trade_count":1,"trade_count":', 1),
    # identifiers and strings: Persian, escapes, bad UTF-8, control characters
    edit(("contractName",), "شمش طلا ۱۲", -1),
    edit(("contractName",), "a\"b", -1),
    edit(("contractName",), "tab\there", -1),
    json.dumps(obj(-1)).encode(),  # ensure_ascii: \\u escapes everywhere
    NAME.replace(b'"contractName":"', b'"contractName":"\\u0633', 1),
    V.replace(b'"channel":"', b'"channel":"\\/', 1),
    V.replace(b'"channel":"', b'"chann\\u0065l":"', 1),
    V.replace(b'"contractId":"', b'"contractId":"\xff', 1),
    V.replace(b'"contractId":"', b'"contractId":"\xc0\xaf', 1),  # overlong '/'
    V.replace(b'"contractId":"', b'"contractId":"\xed\xa0\x80', 1),  # a surrogate
    V.replace(b'"contractId":"', b'"contractId":"\xf4\x90\x80\x80', 1),  # beyond U+10FFFF
    V.replace(b'"contractId":"', b'"contractId":"\xe2\x82', 1),  # cut short
    V.replace(b'"contractId":"', b'"contractId":"\x00', 1),
    V.replace(b'"contractId":"', b'"contractId":"\x7f', 1),
    V.replace(b'"channel":"IME Stream"', b'"channel":"\xd8\xb3\xda\xa9\xd9\x87"', 1),
    V.replace(b'"date":"', b'"date":"\xd8\xb3', 1),
    # timestamps: every digit kept; other forms are Python's
    edit(("timestamp",), "2026-05-29T20:29:51Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.1Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.123456789Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.1234567890Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.Z"),
    edit(("timestamp",), "2026-05-29T20:29:60.5Z"),
    edit(("timestamp",), "2026-05-29T20:29:61.5Z"),
    edit(("timestamp",), "2024-02-29T00:00:00.5Z"),
    edit(("timestamp",), "2026-02-29T00:00:00.5Z"),
    edit(("timestamp",), "2000-02-29T00:00:00.5Z"),
    edit(("timestamp",), "1900-02-29T00:00:00.5Z"),
    edit(("timestamp",), "1900-01-01T00:00:00.5Z"),
    edit(("timestamp",), "1969-12-31T23:59:59.999999999Z"),
    edit(("timestamp",), "2261-12-31T23:59:59.999999999Z"),
    edit(("timestamp",), "2262-04-11T23:47:16.854775807Z"),
    edit(("timestamp",), "2262-04-11T23:47:16.854775808Z"),
    edit(("timestamp",), "3000-01-01T00:00:00.5Z"),
    edit(("timestamp",), "1600-01-01T00:00:00.5Z"),
    edit(("timestamp",), "2026-05-29t20:29:51.5z"),
    edit(("timestamp",), "2026-05-29 20:29:51.5Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.5+03:30"),
    edit(("timestamp",), "2026-05-29T20:29:51,5Z"),
    edit(("timestamp",), "2026-05-29T20:29:51.١٢٣Z"),
    edit(("timestamp",), "۲۰۲۶-05-29T20:29:51.5Z"),
    edit(("timestamp",), "2026-13-29T20:29:51.5Z"),
    edit(("timestamp",), "2026-04-31T20:29:51.5Z"),
    edit(("timestamp",), "2026-05-29T24:00:00.5Z"),
    edit(("timestamp",), ""),
    edit(("timestamp",), 5),
    # not JSON, not an object, trailing bytes
    V + b"x",
    V + b"}",
    V + b"\x00",
    V[:-1],
    V[:200],
    b"\xef\xbb\xbf" + V,
    b"[" + V + b"]",
    b"",
    b"null",
    b"{}",
    V.replace(b",", b";", 1),
    V.replace(b":", b"=", 1),
    V.replace(b'{"', b"{'", 1),
]


@pytest.mark.parametrize("payload", EDGES, ids=range(len(EDGES)))
def test_edge_case_equal_on_both_paths(payload: bytes) -> None:
    same([payload])
    same([FRAMES[1], payload, FRAMES[2]])  # and in order among scanned frames


def test_the_scanner_takes_the_plain_variants_only() -> None:
    """Whitespace, key order, nulls, big int64s, Persian names, the short timestamp forms: no detour via Python;
    and what it cannot hold exactly goes to Python."""
    for payload in PLAIN:
        assert taken_by_c(payload), payload
    for payload in REFUSED:
        assert not taken_by_c(payload), payload


def test_a_mixed_stream_keeps_record_order_across_blocks_and_tables() -> None:
    payloads: list[tuple[int, bytes]] = []
    for i, p in enumerate(FRAMES):
        payloads.append((1, p))
        if i % 3 == 0:
            payloads.append((1, EDGES[(7 * i) % len(EDGES)]))
        if i % 11 == 0:
            payloads.append((2, b"\x00\x01"))
            payloads.append((1, drop(("data", "BestLimit"), i)))
    for blocks in (1, 4, 13):
        tables = same(payloads, blocks=blocks)
        for rows in tables.values():
            assert [r["record"] for r in rows] == sorted(r["record"] for r in rows)


def test_window_and_contract_filters_equal() -> None:
    f_c, f_py = Flattener(native=True), Flattener(native=False)
    block = [(START + i, 1, 1, p) for i, p in enumerate(FRAMES + EDGES)]
    for f in (f_c, f_py):
        f.add_block(block, 3, "a", 10, START + 5, START + 70)
    a, b = f_c.take(), f_py.take()
    assert {t: x.to_pylist() for t, x in a.items()} == {t: x.to_pylist() for t, x in b.items()}
    ident = json.loads(FRAMES[-1])["contractName"]
    same(FRAMES + EDGES, contracts=(ident, "nothing"))
    # Contracts filtered out leave no trace, not even in the dictionary of the contract column.
    f = Flattener((ident,), native=True)
    f.add_block(block, 0, "a", 0)
    contract = f.take()["best_limit"].column("contract").combine_chunks()
    assert contract.dictionary.to_pylist() == [ident]


# Byte-wise mutations of valid frames: the bytes a scanner is most likely to misread.
ALPHABET = b'"\\{}[],: \t\n0123456789-+.eEnultrf\x00\x1f\x7f\x80\xbf\xc3\xd8\xed\xf4\xff'
FUZZ_BASE = [FRAMES[0], FRAMES[-1], json.dumps(obj(3), indent=1).encode(), EDGES[5], EDGES[10]]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FUZZ_BASE)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        byte = draw(st.sampled_from(ALPHABET))
        action = draw(st.sampled_from(["replace", "insert", "delete", "digit", "renumber", "space"]))
        # The last two keep most frames valid, so that what the scanner accepts is compared too.
        if action == "renumber":
            digits = [i for i, b in enumerate(data) if 0x30 <= b <= 0x39]
            data[draw(st.sampled_from(digits))] = draw(st.sampled_from(b"0123456789"))
        elif action == "space":
            marks = [i + 1 for i, b in enumerate(data) if b in b',:{}[]"']
            data.insert(draw(st.sampled_from(marks)), draw(st.sampled_from(b" \t\r\n")))
        elif action == "replace":
            data[pos] = byte
        elif action == "insert":
            data.insert(pos, byte)
        elif action == "delete":
            del data[pos]
        else:  # lengthen a number: the int64 edge
            data[pos:pos] = b"9" * draw(st.integers(1, 20))
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=6))
@example([FRAMES[0].replace(b'"buy_price":', b'"buy_price":9999999999', 1)])
@example([FRAMES[0].replace(b'"buy_price":', b'"buy_price":99999999999999', 1)])
def test_byte_mutations_equal_on_both_paths(payloads: list[bytes]) -> None:
    same([FRAMES[5], *payloads, FRAMES[6]])


def test_large_batches_and_string_columns_across_takes() -> None:
    """Buffers grow past their first size, and take() starts every column over (offsets, dictionaries)."""
    frames = [p for _, p in sim_frames(3000, contracts=40, seed=5)]
    f_c, f_py = Flattener(native=True), Flattener(native=False)
    for f in (f_c, f_py):
        f.add_block([(START + i, 1, 1, p) for i, p in enumerate(frames[:2000])], 0, "a", 0)
    first = (f_c.take(), f_py.take())
    for f in (f_c, f_py):
        f.add_block([(START + i, 1, 1, p) for i, p in enumerate(frames[2000:])], 0, "b", 0)
    second = (f_c.take(), f_py.take())
    for c, py in (first, second):
        assert {t: x.to_pylist() for t, x in c.items()} == {t: x.to_pylist() for t, x in py.items()}
        for t, x in c.items():
            assert x.schema == py[t].schema
            assert x.validate(full=True) is None
    assert pa.concat_tables([first[0]["aggregate"], second[0]["aggregate"]]).num_rows == 3000
