"""The envelope model: the API document's example, forward compatibility, and clear errors."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.feed.endpoints import EndpointKind
from recorder.feed.message import (
    MarketData,
    MessageError,
    identifier_of,
    parse_envelope,
    parse_timestamp_ns,
    timestamp_ns_of,
)

# Section 9 of the API document, verbatim.
DOC_EXAMPLE = {
    "channel": "IME Stream",
    "contractId": "1001",
    "timestamp": "2026-05-29T12:00:00.000000Z",
    "data": {
        "BestLimit": {
            "1": {"buy_quantity": 150, "buy_price": 245000, "sell_quantity": 100, "sell_price": 246000},
            "2": {"buy_quantity": 120, "buy_price": 244500, "sell_quantity": 90, "sell_price": 246500},
            "3": {"buy_quantity": 80, "buy_price": 244000, "sell_quantity": 70, "sell_price": 247000},
        },
        "Aggregate": {
            "date": "2026-05-29", "time": "12:00:00", "trade_count": 120, "total_volume": 4500,
            "total_value": 1102500000, "closing_price": 245500, "last_price": 245700, "low_price": 244000,
            "high_price": 247000, "open_price": 244500, "previous_close": 243000,
        },
        "AllowedPriceRange": {"minAllowedPrice": 220000, "maxAllowedPrice": 270000},
        "ContractInfo": {"open_interest": 5400, "open_interest_changes": 120},
    },
}


def doc_payload(**changes: object) -> bytes:
    obj = orjson.loads(orjson.dumps(DOC_EXAMPLE))
    obj.update(changes)
    return orjson.dumps(obj)


def test_the_documents_complete_example():
    env = parse_envelope(doc_payload())
    assert (env.channel, env.identifier, env.identifier_field, env.kind) == \
        ("IME Stream", "1001", "contractId", EndpointKind.ID)
    assert env.timestamp == "2026-05-29T12:00:00.000000Z"
    assert env.timestamp_ns == int(datetime(2026, 5, 29, 12, tzinfo=UTC).timestamp()) * 10**9
    bl = env.data.best_limit
    assert bl is not None and set(bl.levels) == {"1", "2", "3"}
    assert bl.level(1) is not None and bl.level(1).buy_price == 245000 and bl.level(3).sell_quantity == 70
    agg = env.data.aggregate
    assert agg is not None and (agg.date, agg.time, agg.last_price, agg.previous_close) == \
        ("2026-05-29", "12:00:00", 245700, 243000)
    rng = env.data.allowed_price_range
    assert rng is not None and (rng.min_allowed_price, rng.max_allowed_price) == (220000, 270000)
    info = env.data.contract_info
    assert info is not None and (info.open_interest, info.open_interest_changes) == (5400, 120)
    assert not env.extra and not env.data.extra and not agg.extra


def test_name_endpoint_message_and_str_input():
    obj = dict(DOC_EXAMPLE)
    del obj["contractId"]
    obj["contractName"] = "سکه-آزادی 1404/08"
    env = parse_envelope(orjson.dumps(obj).decode())
    assert (env.identifier, env.identifier_field, env.kind) == ("سکه-آزادی 1404/08", "contractName",
                                                                EndpointKind.NAME)


def test_unknown_fields_and_sections_are_kept_not_errors():
    obj = orjson.loads(doc_payload(sequence=42, compression=None))
    obj["data"]["OrderBook"] = {"depth": [1, 2]}
    obj["data"]["Aggregate"]["vwap"] = 245123.5
    obj["data"]["BestLimit"]["4"] = {"buy_quantity": 1, "buy_price": 1, "sell_quantity": 1, "sell_price": 2,
                                     "orders": 3}
    obj["data"]["BestLimit"]["note"] = "x"
    env = parse_envelope(orjson.dumps(obj))
    assert dict(env.extra) == {"sequence": 42, "compression": None}
    assert dict(env.data.extra) == {"OrderBook": {"depth": [1, 2]}}
    assert env.data.aggregate.extra["vwap"] == 245123.5
    assert env.data.best_limit.level(4).extra == {"orders": 3}
    assert env.data.best_limit.extra == {"note": "x"}


def test_missing_sections_and_missing_data():
    env = parse_envelope(b'{"channel":"IME Stream","contractId":"7","data":{"ContractInfo":{"open_interest":1}}}')
    assert env.data.best_limit is None and env.data.aggregate is None and env.data.allowed_price_range is None
    assert env.data.contract_info.open_interest == 1 and env.data.contract_info.open_interest_changes is None
    bare = parse_envelope(b'{"contractName":"GOLD-APR"}')
    assert bare.data == MarketData() and bare.timestamp is None and bare.timestamp_ns is None
    assert parse_envelope(b'{"data":null,"channel":null}').identifier is None


def test_values_are_read_only():
    env = parse_envelope(doc_payload(extra_field=1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.identifier = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        env.extra["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        env.data.best_limit.levels["9"] = None  # type: ignore[index]


@pytest.mark.parametrize(("payload", "match"), [
    (b"", "not valid JSON"),
    (b'{"channel": "IME', "not valid JSON"),
    (b"[1, 2]", "an array, not a JSON object"),
    (b"42", "a number, not a JSON object"),
    (b'{"data": 5}', "data is a number"),
    (b'{"data": {"BestLimit": [1]}}', "data.BestLimit is an array"),
    (b'{"data": {"BestLimit": {"1": {"buy_price": "245000"}}}}', r"data.BestLimit.1.buy_price is a string"),
    (b'{"data": {"Aggregate": {"last_price": true}}}', "data.Aggregate.last_price is a boolean"),
    (b'{"data": {"Aggregate": {"date": 20260529}}}', "data.Aggregate.date is a number, not a string"),
    (b'{"contractId": ["1001"]}', "contractId is an array"),
    (b'{"timestamp": 1}', "timestamp is a number"),
    (b'\xff\xfe', "not valid JSON"),
])
def test_malformed_input_is_one_clear_line(payload, match):
    with pytest.raises(MessageError, match=match) as info:
        parse_envelope(payload)
    assert "\n" not in str(info.value)


def test_identifier_of_follows_the_documents_rule():
    assert identifier_of(doc_payload()) == "1001"
    assert identifier_of(b'{"contractName": "GOLD-APR"}') == "GOLD-APR"
    assert identifier_of('{"contractId": "", "contractName": "N"}') == "N"
    assert identifier_of(b'{"contractId": 1001}') == "1001"
    assert identifier_of(b'{"channel": "IME Stream"}') is None
    assert identifier_of(b"not json") is None
    assert identifier_of(b'["contractId"]') is None
    assert identifier_of(b'{"contractId": {"x": 1}}') is None
    env = parse_envelope(b'{"contractId": "", "contractName": "N"}')
    assert (env.identifier, env.identifier_field) == ("N", "contractName")


def test_timestamps():
    base = int(datetime(2026, 5, 29, 12, tzinfo=UTC).timestamp()) * 10**9
    assert parse_timestamp_ns("2026-05-29T12:00:00.123456Z") == base + 123_456_000
    assert parse_timestamp_ns("2026-05-29T12:00:00.123456789Z") == base + 123_456_789
    assert parse_timestamp_ns("2026-05-29 12:00:00") == base
    assert parse_timestamp_ns("2026-05-29T15:30:00.5+03:30") == base + 500_000_000
    assert parse_timestamp_ns("2026-05-29T08:00:00-0400") == base
    assert timestamp_ns_of(doc_payload(timestamp="2026-05-29T12:00:00.000001Z")) == base + 1000
    assert timestamp_ns_of(b"{}") is None and timestamp_ns_of(b"junk") is None
    assert timestamp_ns_of(doc_payload(timestamp="yesterday")) is None
    for bad in ("2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z", "2026-05-29T24:00:00Z",
                "29/05/2026", "2026-05-29T12:00:00.1234567890Z"):
        with pytest.raises(MessageError):
            parse_timestamp_ns(bad)
    assert parse_timestamp_ns("2024-02-29T00:00:00Z") == int(datetime(2024, 2, 29, tzinfo=UTC).timestamp()) * 10**9


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_timestamp_agrees_with_datetime(dt):
    text = dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected = (dt.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    assert parse_timestamp_ns(text) == expected
