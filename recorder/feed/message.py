"""The IME message envelope and its data sections, as typed read-only values parsed with orjson.

The provider promises additions (new channels, sections, fields), so parsing is forward-compatible:
unknown top-level fields land in `Envelope.extra`, unknown sections in `MarketData.extra`, unknown fields
of a known section in that section's `extra`; missing sections are None. Only input that is not a JSON
object, or a known field of the wrong type, is a `MessageError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from recorder.feed.endpoints import EndpointKind

Number = int | float

EMPTY: Mapping[str, Any] = MappingProxyType({})

ID_FIELD = EndpointKind.ID.field
NAME_FIELD = EndpointKind.NAME.field


def _empty() -> Mapping[str, Any]:
    return EMPTY


class MessageError(ValueError):
    """A payload that is not an IME envelope; the message is one line."""


@dataclass(frozen=True, slots=True)
class Level:
    buy_quantity: Number | None = None
    buy_price: Number | None = None
    sell_quantity: Number | None = None
    sell_price: Number | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class BestLimit:
    """Top of book; `levels` is keyed "1", "2", "3" as on the wire (more levels are kept if sent)."""

    levels: Mapping[str, Level] = field(default_factory=_empty)
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    def level(self, n: int) -> Level | None:
        return self.levels.get(str(n))


@dataclass(frozen=True, slots=True)
class Aggregate:
    date: str | None = None
    time: str | None = None
    trade_count: Number | None = None
    total_volume: Number | None = None
    total_value: Number | None = None
    closing_price: Number | None = None
    last_price: Number | None = None
    low_price: Number | None = None
    high_price: Number | None = None
    open_price: Number | None = None
    previous_close: Number | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class AllowedPriceRange:
    min_allowed_price: Number | None = None
    max_allowed_price: Number | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class ContractInfo:
    open_interest: Number | None = None
    open_interest_changes: Number | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class MarketData:
    best_limit: BestLimit | None = None
    aggregate: Aggregate | None = None
    allowed_price_range: AllowedPriceRange | None = None
    contract_info: ContractInfo | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message. `identifier_field` says which of contractId / contractName carried `identifier`."""

    channel: str | None
    identifier: str | None
    identifier_field: str | None
    timestamp: str | None
    data: MarketData
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    @property
    def kind(self) -> EndpointKind | None:
        if self.identifier_field == ID_FIELD:
            return EndpointKind.ID
        if self.identifier_field == NAME_FIELD:
            return EndpointKind.NAME
        return None

    @property
    def timestamp_ns(self) -> int | None:
        """The `timestamp` as epoch nanoseconds (MessageError if it is not ISO-8601), None if absent."""
        return None if self.timestamp is None else parse_timestamp_ns(self.timestamp)


_NUM = "number"
_STR = "string"

# wire name -> (attribute, expected type)
_LEVEL = {k: (k, _NUM) for k in ("buy_quantity", "buy_price", "sell_quantity", "sell_price")}
_AGGREGATE = {"date": ("date", _STR), "time": ("time", _STR)} | {
    k: (k, _NUM)
    for k in ("trade_count", "total_volume", "total_value", "closing_price", "last_price", "low_price",
              "high_price", "open_price", "previous_close")
}
_RANGE = {"minAllowedPrice": ("min_allowed_price", _NUM), "maxAllowedPrice": ("max_allowed_price", _NUM)}
_INFO = {k: (k, _NUM) for k in ("open_interest", "open_interest_changes")}


def _fields(obj: Any, where: str, spec: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MessageError(f"{where} is {_type_name(obj)}, not an object")
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        known = spec.get(key)
        if known is None:
            extra[key] = value
            continue
        attr, expected = known
        if value is not None:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)) if expected is _NUM \
                else isinstance(value, str)
            if not ok:
                raise MessageError(f"{where}.{key} is {_type_name(value)}, not a {expected}")
        kwargs[attr] = value
    if extra:
        kwargs["extra"] = MappingProxyType(extra)
    return kwargs


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _best_limit(obj: Any) -> BestLimit:
    if not isinstance(obj, dict):
        raise MessageError(f"data.BestLimit is {_type_name(obj)}, not an object")
    levels: dict[str, Level] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            levels[key] = Level(**_fields(value, f"data.BestLimit.{key}", _LEVEL))
        else:
            extra[key] = value
    return BestLimit(MappingProxyType(levels), MappingProxyType(extra) if extra else EMPTY)


def _market_data(obj: Any) -> MarketData:
    if obj is None:
        return MarketData()
    if not isinstance(obj, dict):
        raise MessageError(f"data is {_type_name(obj)}, not an object")
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None and key in ("BestLimit", "Aggregate", "AllowedPriceRange", "ContractInfo"):
            continue
        if key == "BestLimit":
            kwargs["best_limit"] = _best_limit(value)
        elif key == "Aggregate":
            kwargs["aggregate"] = Aggregate(**_fields(value, "data.Aggregate", _AGGREGATE))
        elif key == "AllowedPriceRange":
            kwargs["allowed_price_range"] = AllowedPriceRange(**_fields(value, "data.AllowedPriceRange", _RANGE))
        elif key == "ContractInfo":
            kwargs["contract_info"] = ContractInfo(**_fields(value, "data.ContractInfo", _INFO))
        else:
            extra[key] = value
    if extra:
        kwargs["extra"] = MappingProxyType(extra)
    return MarketData(**kwargs)


def _loads(payload: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not valid JSON: {exc}") from None


def _identifier(value: Any, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MessageError(f"{key} is {_type_name(value)}, not a string")


def parse_envelope(payload: bytes | bytearray | memoryview | str) -> Envelope:
    """Parse one message; MessageError (one line) if it is not a JSON object or a known field is mistyped."""
    return envelope_from_object(_loads(payload))


def envelope_from_object(obj: Any) -> Envelope:
    """The envelope of an already decoded JSON value (for callers that decode with exact big integers)."""
    if not isinstance(obj, dict):
        raise MessageError(f"message is {_type_name(obj)}, not a JSON object")
    channel = obj.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise MessageError(f"channel is {_type_name(channel)}, not a string")
    timestamp = obj.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise MessageError(f"timestamp is {_type_name(timestamp)}, not a string")
    # The API document's rule: `contractId or contractName`, so an empty id falls through to the name.
    identifier = _identifier(obj.get(ID_FIELD), ID_FIELD)
    id_field: str | None = ID_FIELD if identifier is not None else None
    if not identifier:
        name = _identifier(obj.get(NAME_FIELD), NAME_FIELD)
        if name is not None:
            identifier, id_field = name, NAME_FIELD
    extra = {k: v for k, v in obj.items() if k not in _ENVELOPE_KEYS}
    return Envelope(
        channel=channel,
        identifier=identifier,
        identifier_field=id_field,
        timestamp=timestamp,
        data=_market_data(obj.get("data")),
        extra=MappingProxyType(extra) if extra else EMPTY,
    )


_ENVELOPE_KEYS = frozenset(("channel", ID_FIELD, NAME_FIELD, "timestamp", "data"))


def identifier_of(payload: bytes | bytearray | memoryview | str) -> str | None:
    """The contract a message is about (`contractId or contractName`), or None for anything else.

    For tools that only route or filter: no envelope is built and no error is raised.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    value = obj.get(ID_FIELD) or obj.get(NAME_FIELD)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def timestamp_ns_of(payload: bytes | bytearray | memoryview | str) -> int | None:
    """The message's own `timestamp` in epoch ns, or None if it has none or is not an envelope."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    text = obj.get("timestamp") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp_ns(text)
    except MessageError:
        return None


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's algorithm: exact for the proleptic Gregorian calendar, no datetime objects.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _in_range(year: int, month: int, day: int, hour: int, minute: int, second: int) -> bool:
    # The regex checks only the digits' count; second 60 is a leap second, which the feed may send.
    if not (1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month - 1] and hour < 24 and minute < 60
            and second < 61):
        return False
    return not (month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)))


def parse_timestamp_ns(text: str) -> int:
    """Epoch ns of an ISO-8601 timestamp as the feed sends it (`2026-05-29T12:00:00.123456Z`).

    Up to 9 fractional digits are kept exactly; a missing zone means UTC; `+03:30` offsets are applied.
    """
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise MessageError(f"timestamp {text[:40]!r} is not ISO-8601")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not _in_range(year, month, day, hour, minute, second):
        raise MessageError(f"timestamp {text[:40]!r} is out of range")
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = m.group(7) or ""
    return seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)
