"""A synthetic IME market, pure and deterministic: the same seed gives the same sequence of updates.

Each `step()` is one market event on one contract (a quote change, a trade, an open-interest change) and
returns that contract's message tail: everything after the timestamp, already rendered. Sections are
cached as bytes and only the one an event touched is re-rendered, because the simulator must produce
hundreds of thousands of ~750-byte messages per second in Python.

Invariants (tested): buy1 > buy2 > buy3, sell1 < sell2 < sell3, buy1 < sell1, every book price inside
the allowed range; low <= last, open, closing <= high; trade_count, total_volume, total_value never fall.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHANNEL = "IME Stream"

# Real-looking IME contract names: Persian text, spaces, and the characters that break naive URL code.
BASE_NAMES = (
    "سکه-آزادی 1404/08",
    "GOLD-APR",
    "CEMENT & STEEL+",
    "زعفران نگین 1404/09",
    "SAFFRON-NEGIN",
    "COPPER CATHODE 99.99%",
    "پسته اکبری",
    "BITUMEN 60/70",
    "UREA#46",
    "شمش طلا",
    "ZINC INGOT=A",
    "مس کاتد",
    "سیمان تیپ ۲",
    "STEEL BILLET 5SP",
    "پلی اتیلن سبک",
    "میلگرد A3 ۱۲",
)

_TICKS = (1, 5, 10, 50, 100, 500, 1000)


@dataclass(frozen=True, slots=True)
class ContractSpec:
    index: int
    id: str
    name: str
    tick: int
    previous_close: int
    min_allowed: int
    max_allowed: int


def contract_name(i: int) -> str:
    base = BASE_NAMES[i % len(BASE_NAMES)]
    return base if i < len(BASE_NAMES) else f"{base} S{i // len(BASE_NAMES) + 1}"


def make_contracts(n: int, seed: int = 1) -> list[ContractSpec]:
    """N contracts with ids "1001", "1002", ... and the names above; prices drawn from `seed`."""
    if n < 1:
        raise ValueError("need at least one contract")
    rng = random.Random(f"contracts:{seed}")
    specs = []
    for i in range(n):
        price = math.exp(rng.uniform(math.log(20_000), math.log(5_000_000)))
        tick = max(t for t in _TICKS if t <= max(1.0, price / 2000))
        prev = max(200, round(price / tick)) * tick
        band = max(20, round(prev * rng.choice((0.03, 0.05, 0.1)) / tick))  # daily limit, in ticks
        specs.append(ContractSpec(i, str(1001 + i), contract_name(i), tick, prev, prev - band * tick,
                                  prev + band * tick))
    return specs


_LEVEL = b'{"buy_quantity":%d,"buy_price":%d,"sell_quantity":%d,"sell_price":%d}'
_AGGREGATE = (b'{"date":"%b","time":"%b","trade_count":%d,"total_volume":%d,"total_value":%d,'
              b'"closing_price":%d,"last_price":%d,"low_price":%d,"high_price":%d,"open_price":%d,'
              b'"previous_close":%d}')
_RANGE = b'{"minAllowedPrice":%d,"maxAllowedPrice":%d}'
_INFO = b'{"open_interest":%d,"open_interest_changes":%d}'
_TAIL = (b'","data":{"BestLimit":{"1":%b,"2":%b,"3":%b},"Aggregate":%b,"AllowedPriceRange":%b,'
         b'"ContractInfo":%b}}')


def _json_str(text: str) -> bytes:
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return out.encode("utf-8")


def message_prefix(identifier_field: str, identifier: str) -> bytes:
    """The envelope up to the timestamp value: `{"channel":"IME Stream","contractId":"1001","timestamp":"`."""
    return b'{"channel":"%b","%b":"%b","timestamp":"' % (
        _json_str(CHANNEL), identifier_field.encode(), _json_str(identifier))


def _clock_of(ts_ns: int) -> tuple[bytes, bytes]:
    t = time.gmtime(ts_ns // 1_000_000_000)
    return time.strftime("%Y-%m-%d", t).encode(), time.strftime("%H:%M:%S", t).encode()


class _Book:
    """One contract's state and its cached rendered sections."""

    __slots__ = ("agg", "ask", "ask_q", "bid", "bid_q", "ci", "clock", "close", "count", "date", "hi", "last", "lo",
                 "lvl", "oi", "oi_chg", "open", "range_b", "spec", "tail", "time", "value", "volume")

    def __init__(self, spec: ContractSpec, rng: random.Random, clock: list[bytes]) -> None:
        self.spec = spec
        self.clock = clock  # the market's [date, time], shared: trades copy it
        tick = spec.tick
        spread = rng.randint(1, 3)
        gaps = (rng.randint(1, 3), rng.randint(1, 3))
        b1 = spec.previous_close - (spread // 2) * tick + rng.randint(-5, 5) * tick
        self.bid = [b1, b1 - gaps[0] * tick, b1 - (gaps[0] + gaps[1]) * tick]
        a1 = b1 + spread * tick
        self.ask = [a1, a1 + gaps[1] * tick, a1 + (gaps[0] + gaps[1]) * tick]
        self.bid_q = [rng.randint(5, 300) for _ in range(3)]
        self.ask_q = [rng.randint(5, 300) for _ in range(3)]
        price = b1 if rng.random() < 0.5 else a1
        self.count = rng.randint(1, 50)
        self.volume = self.count * rng.randint(1, 40)
        self.value = self.volume * price
        self.last = self.open = self.lo = self.hi = self.close = price
        self.oi = rng.randint(100, 20_000)
        self.oi_chg = 0
        self.date, self.time = clock
        self.range_b = _RANGE % (spec.min_allowed, spec.max_allowed)
        self.lvl = [self._level(k) for k in range(3)]
        self._render_aggregate()
        self.ci = _INFO % (self.oi, self.oi_chg)
        self._render_tail()

    def _level(self, k: int) -> bytes:
        return _LEVEL % (self.bid_q[k], self.bid[k], self.ask_q[k], self.ask[k])

    def _render_aggregate(self) -> None:
        self.agg = _AGGREGATE % (self.date, self.time, self.count, self.volume, self.value, self.close,
                                 self.last, self.lo, self.hi, self.open, self.spec.previous_close)

    def _render_tail(self) -> None:
        lvl = self.lvl
        self.tail = _TAIL % (lvl[0], lvl[1], lvl[2], self.agg, self.range_b, self.ci)

    def quote(self, v: float) -> None:
        if v < 0.2:
            # The whole book moves one tick, unless that would leave the allowed range.
            tick = self.spec.tick if v < 0.1 else -self.spec.tick
            if self.bid[2] + tick >= self.spec.min_allowed and self.ask[2] + tick <= self.spec.max_allowed:
                self.bid = [p + tick for p in self.bid]
                self.ask = [p + tick for p in self.ask]
                self.lvl = [self._level(k) for k in range(3)]
                return
            w = v * 30.0
        else:
            w = (v - 0.2) * 7.5
        # One draw picks the side and level (integer part) and the new quantity (fraction).
        j = int(w)
        qty = 1 + int((w - j) * 400)
        k = j >> 1
        if j & 1:
            self.ask_q[k] = qty
        else:
            self.bid_q[k] = qty
        self.lvl[k] = self._level(k)

    def trade(self, v: float) -> None:
        buyer = v < 0.5
        frac = v * 2 - (0 if buyer else 1)
        qty = 1 + int(frac * 60)
        if buyer:  # a buyer lifts the best offer
            price = self.ask[0]
            left = self.ask_q[0] - qty
            self.ask_q[0] = left if left > 0 else 20 + int(frac * 300)
        else:
            price = self.bid[0]
            left = self.bid_q[0] - qty
            self.bid_q[0] = left if left > 0 else 20 + int(frac * 300)
        self.count += 1
        self.volume += qty
        self.value += qty * price
        self.last = price
        if price > self.hi:
            self.hi = price
        if price < self.lo:
            self.lo = price
        self.close = self.value // self.volume  # VWAP: always within [low, high]
        self.date, self.time = self.clock
        self.lvl[0] = self._level(0)
        self._render_aggregate()

    def open_interest(self, v: float) -> None:
        delta = int((v - 0.5) * 60)
        if self.oi + delta < 0:
            delta = -self.oi
        self.oi += delta
        self.oi_chg = delta
        self.ci = _INFO % (self.oi, self.oi_chg)


class Market:
    """The market over `specs`; `step()` advances one event and returns (position in specs, message tail)."""

    def __init__(self, specs: Sequence[ContractSpec], seed: int = 1, start_ns: int | None = None) -> None:
        if not specs:
            raise ValueError("a market needs at least one contract")
        self.specs = list(specs)
        self._rng = random.Random(f"market:{seed}:{','.join(s.id for s in self.specs)}")
        self._random = self._rng.random
        self._n = len(self.specs)
        self._clock = list(_clock_of(time.time_ns() if start_ns is None else start_ns))
        self.books = [_Book(s, self._rng, self._clock) for s in self.specs]
        self.events = 0

    def set_clock(self, date: bytes, clock: bytes) -> None:
        """The date (`2026-05-29`) and time (`12:00:00`) the next trades carry in Aggregate."""
        self._clock[0] = date
        self._clock[1] = clock

    def step(self) -> tuple[int, bytes]:
        r = self._random() * self._n
        i = int(r)
        u = r - i  # the fraction left over is uniform too: it picks the kind of event
        book = self.books[i]
        v = self._random()
        if u < 0.55:
            book.quote(v)
        elif u < 0.95:
            book.trade(v)
        else:
            book.open_interest(v)
        book._render_tail()
        self.events += 1
        return i, book.tail

    def tail(self, i: int) -> bytes:
        return self.books[i].tail

    def state(self, i: int) -> dict[str, Any]:
        """A contract's current figures as plain numbers (for tests and diagnostics)."""
        b = self.books[i]
        return {
            "bid": list(b.bid), "ask": list(b.ask), "bid_q": list(b.bid_q), "ask_q": list(b.ask_q),
            "trade_count": b.count, "total_volume": b.volume, "total_value": b.value, "last": b.last,
            "low": b.lo, "high": b.hi, "open": b.open, "closing": b.close, "open_interest": b.oi,
        }
