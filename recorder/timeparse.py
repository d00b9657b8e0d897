"""Parsing and printing times for --from/--to/--tz and for output: pure functions.

Receive times are epoch nanoseconds, so every digit a user types is kept: no float, no datetime
microseconds in the arithmetic. A time without a zone is in `--tz` (UTC by default, `IME_TZ` from the
environment), and a bare time of day is on the recording's first day in that zone: an operator in
Tehran types `--tz Asia/Tehran --from 09:00`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recorder.errors import UserError

TZ_ENV = "IME_TZ"
TZ_HELP = ("Time zone of --from/--to times written without one: an IANA name (Asia/Tehran), UTC, or an offset "
           f"(+03:30). Also ${TZ_ENV}.")
TIME_HELP = ("ISO-8601 (in --tz unless it has an offset or Z), HH:MM[:SS[.fraction]] on the recording's first day, "
             "or epoch s/ms/us/ns; fractions to the nanosecond.")
FORMS = "give ISO-8601 like 2026-11-23T12:00:00Z, a time of day like 09:30, or epoch seconds"

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?")
# The fraction of the seconds in an ISO-8601 time, cut out so that datetime never rounds it to µs.
_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)")
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


def parse_tz(name: str | None) -> tzinfo:
    """UTC, an IANA zone by name, or a fixed `+HH:MM` offset; anything else is a usage error."""
    text = (name or "").strip()
    if text.upper() in ("", "UTC", "Z", "GMT"):
        return UTC
    m = _OFFSET.fullmatch(text)
    if m is not None:
        minutes = int(m[2]) * 60 + int(m[3])
        if minutes < 24 * 60:
            return timezone(timedelta(minutes=-minutes if m[1] == "-" else minutes))
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UserError(f"unknown time zone {text!r}; give an IANA name like Asia/Tehran, UTC, or an offset "
                        "like +03:30") from None


def parse_time(text: str, tz: tzinfo = UTC, first_ns: int | None = None) -> int:
    """Epoch nanoseconds from ISO-8601, a time of day, or an epoch number in s, ms, us or ns.

    ISO-8601 without an offset is in `tz`; `HH:MM[:SS[.f]]` is on the day (in `tz`) of `first_ns`, the
    recording's first record. The unit of a bare number is taken from its size, which is unambiguous
    for any date after 1970-04.
    """
    value = text.strip()
    if not value:
        raise UserError(f"empty time; {FORMS}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite():
        magnitude = abs(number)
        scale = 10**9 if magnitude < 10**11 else 10**6 if magnitude < 10**14 else 10**3 if magnitude < 10**17 else 1
        return int(number * scale)
    clock = _TIME_OF_DAY.fullmatch(value)
    if clock is not None:
        return _time_of_day(text, clock, tz, first_ns)
    fraction = _FRACTION.search(value)
    nanos = 0
    if fraction is not None:
        nanos = _fraction_ns(text, fraction[1])
        value = value[:fraction.start()] + value[fraction.end():]
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise UserError(f"cannot read time {text!r}; {FORMS}") from None
    return _epoch_ns(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)) + nanos


def _time_of_day(text: str, clock: re.Match[str], tz: tzinfo, first_ns: int | None) -> int:
    hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise UserError(f"cannot read time {text!r}; {FORMS}")
    if first_ns is None:
        raise UserError(f"{text!r} is a time of day, taken on the recording's first day, but there are no "
                        "records to take the day from; give a date too")
    day = first_day(first_ns, tz)
    local = datetime.combine(day, time(hour, minute, second), tzinfo=tz)
    return _epoch_ns(local) + (_fraction_ns(text, clock[4]) if clock[4] else 0)


def first_day(first_ns: int, tz: tzinfo) -> date:
    return datetime.fromtimestamp(first_ns // _NS, tz).date()


def _fraction_ns(text: str, digits: str) -> int:
    if len(digits) > 9:
        raise UserError(f"time {text!r} has more than 9 digits after the seconds; receive times are in ns")
    return int(digits.ljust(9, "0"))


def _epoch_ns(moment: datetime) -> int:
    delta = moment.replace(microsecond=0) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + moment.microsecond * 1_000


def parse_window(start: str | None, end: str | None, tz_name: str | None,
                 first_ns: int | None) -> tuple[int | None, int | None]:
    """(--from, --to) in epoch ns; `--from` must be before `--to` (the window is start <= t < end)."""
    tz = parse_tz(tz_name)
    lo = parse_time(start, tz, first_ns) if start else None
    hi = parse_time(end, tz, first_ns) if end else None
    if lo is not None and hi is not None and lo >= hi:
        hint = ""
        if any(_TIME_OF_DAY.fullmatch(t.strip()) for t in (start or "", end or "")) and first_ns is not None:
            hint = f" (a time of day is on the recording's first day, {first_day(first_ns, tz)}; give a date)"
        raise UserError(f"--from {start} is not before --to {end}: the window selects nothing{hint}")
    return lo, hi


def format_local(ts_ns: int, tz: tzinfo) -> str:
    """`2026-11-24T09:00:00+03:30`: a time as the user wrote it, in their zone; fraction only when there is one."""
    seconds, nanos = divmod(ts_ns, _NS)
    moment = datetime.fromtimestamp(seconds, tz)
    fraction = f".{nanos:09d}" if nanos else ""
    offset = moment.utcoffset()
    if not offset:
        return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"
    zone = moment.strftime("%z")
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}{zone[:3]}:{zone[3:5]}"


_last_second: tuple[int, str] = (-1, "")


def format_ns(ts_ns: int) -> str:
    """`2026-11-23T12:00:00.123456789Z`: nanoseconds kept, because receive times are taken in ns."""
    global _last_second
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    # Records arrive thousands per second: format each second once (jsonl output spends its time here).
    # One tuple, replaced whole, so a reader on another thread never pairs a second with another's text.
    cached = _last_second
    if cached[0] != seconds:
        cached = _last_second = (seconds, f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%dT%H:%M:%S}")
    return f"{cached[1]}.{nanos:09d}Z"
