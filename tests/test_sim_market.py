"""The synthetic market: invariants over many steps, determinism, and well-formed messages."""

from __future__ import annotations

import orjson
import pytest

from recorder.feed.endpoints import EndpointKind
from recorder.feed.message import parse_envelope
from recorder.sim.market import BASE_NAMES, Market, make_contracts, message_prefix
from recorder.sim.source import Clock, oversized_message

TS = b"2026-05-29T12:00:00.123456Z"


def test_contracts_are_unique_and_awkward():
    specs = make_contracts(100, seed=3)
    assert [s.id for s in specs[:3]] == ["1001", "1002", "1003"]
    assert len({s.id for s in specs}) == 100 and len({s.name for s in specs}) == 100
    names = [s.name for s in specs]
    assert any(not n.isascii() for n in names)
    for ch in " /&+%#=":
        assert any(ch in n for n in names), ch
    for s in specs:
        assert s.min_allowed < s.previous_close < s.max_allowed
        assert s.previous_close % s.tick == 0 and (s.max_allowed - s.previous_close) % s.tick == 0
    assert [s.name for s in make_contracts(len(BASE_NAMES))] == list(BASE_NAMES)
    with pytest.raises(ValueError, match="at least one"):
        make_contracts(0)


def test_invariants_hold_over_many_steps():
    specs = make_contracts(12, seed=7)
    market = Market(specs, seed=7, start_ns=1_780_000_000 * 10**9)
    last = [market.state(i) for i in range(len(specs))]
    kinds = {"quote": 0, "trade": 0, "oi": 0}
    for n in range(30_000):
        if n % 1000 == 0:
            market.set_clock(b"2026-05-29", b"12:%02d:00" % (n // 1000 % 60))
        i, tail = market.step()
        s = market.state(i)
        spec = specs[i]
        bid, ask = s["bid"], s["ask"]
        assert bid[0] > bid[1] > bid[2] and ask[0] < ask[1] < ask[2] and bid[0] < ask[0]
        assert spec.min_allowed <= bid[2] and ask[2] <= spec.max_allowed
        assert all(p % spec.tick == 0 for p in bid + ask)
        assert all(q > 0 for q in s["bid_q"] + s["ask_q"])
        assert s["low"] <= s["last"] <= s["high"]
        assert s["low"] <= s["open"] <= s["high"] and s["low"] <= s["closing"] <= s["high"]
        assert spec.min_allowed <= s["low"] and s["high"] <= spec.max_allowed
        p = last[i]
        assert s["trade_count"] >= p["trade_count"] and s["total_volume"] >= p["total_volume"]
        assert s["total_value"] >= p["total_value"] and s["open"] == p["open"]
        assert s["open_interest"] >= 0
        if s["trade_count"] > p["trade_count"]:
            kinds["trade"] += 1
            assert s["total_volume"] > p["total_volume"] and s["last"] in (p["bid"][0], p["ask"][0])
        elif s["open_interest"] != p["open_interest"]:
            kinds["oi"] += 1
        else:
            kinds["quote"] += 1
        if n % 97 == 0:
            # The rendered bytes say the same as the state.
            data = orjson.loads(b'{"timestamp":"' + tail)["data"]
            bl, agg = data["BestLimit"], data["Aggregate"]
            assert [bl[k]["buy_price"] for k in "123"] == bid and [bl[k]["sell_price"] for k in "123"] == ask
            assert [bl[k]["buy_quantity"] for k in "123"] == s["bid_q"]
            assert (agg["last_price"], agg["trade_count"], agg["total_value"], agg["previous_close"]) == \
                (s["last"], s["trade_count"], s["total_value"], spec.previous_close)
            assert data["AllowedPriceRange"] == {"minAllowedPrice": spec.min_allowed,
                                                 "maxAllowedPrice": spec.max_allowed}
            assert data["ContractInfo"]["open_interest"] == s["open_interest"]
        last[i] = s
    assert market.events == 30_000
    assert min(kinds.values()) > 500, kinds  # all three kinds of event happen


def test_trades_carry_the_market_clock():
    market = Market(make_contracts(1), seed=1, start_ns=0)
    market.set_clock(b"2026-05-29", b"12:34:56")
    for _ in range(50):
        _, tail = market.step()
    agg = orjson.loads(b'{"t":"' + tail)["data"]["Aggregate"]
    assert (agg["date"], agg["time"]) == ("2026-05-29", "12:34:56")


def test_same_seed_same_market_other_seed_other_market():
    specs = make_contracts(5, seed=1)

    def run(seed: int) -> list[tuple[int, bytes]]:
        m = Market(specs, seed=seed, start_ns=0)
        return [m.step() for _ in range(2000)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert make_contracts(5, seed=1) == make_contracts(5, seed=1) != make_contracts(5, seed=2)


@pytest.mark.parametrize("kind", list(EndpointKind))
def test_full_message_is_the_documents_envelope(kind):
    specs = make_contracts(20)
    market = Market(specs, seed=1)
    sizes = []
    for _ in range(200):
        i, tail = market.step()
        spec = specs[i]
        ident = spec.id if kind is EndpointKind.ID else spec.name
        message = message_prefix(kind.field, ident) + TS + tail
        sizes.append(len(message))
        env = parse_envelope(message)
        assert (env.channel, env.identifier, env.identifier_field) == ("IME Stream", ident, kind.field)
        assert env.timestamp == TS.decode() and not env.extra and not env.data.extra
        assert list(orjson.loads(message)) == ["channel", kind.field, "timestamp", "data"]
        assert list(orjson.loads(message)["data"]) == ["BestLimit", "Aggregate", "AllowedPriceRange",
                                                       "ContractInfo"]
    assert 600 < sum(sizes) / len(sizes) < 900


def test_names_with_quotes_are_escaped():
    assert orjson.loads(message_prefix("contractName", 'a"b\\c') + TS + b'"}') == \
        {"channel": "IME Stream", "contractName": 'a"b\\c', "timestamp": TS.decode()}


def test_clock_renders_microseconds_in_utc():
    clock = Clock()
    ns = 1_780_056_000_123_456_789  # 2026-05-29T12:00:00.123456789Z
    assert clock.stamp(ns) == b"2026-05-29T12:00:00.123456Z"
    assert clock.stamp(ns + 1_000_000_000) == b"2026-05-29T12:00:01.123456Z"
    assert (clock.date, clock.time) == (b"2026-05-29", b"12:00:01")
    assert len(clock.stamp()) == 27


def test_oversized_message_is_valid_json_of_the_exact_size():
    message = message_prefix("contractId", "1001") + TS + Market(make_contracts(1), 1).tail(0)
    big = oversized_message(message, 100_000)
    assert len(big) == 100_000
    obj = orjson.loads(big)
    assert obj["contractId"] == "1001" and set(obj["padding"]) == {"x"}
    assert oversized_message(message, 10) == message
