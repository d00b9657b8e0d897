"""Parsing and printing times for --from/--to/--tz/--calendar and for output: pure functions, and `TimeLocale`.

Receive times are epoch nanoseconds, so every digit a user types is kept: no float, no datetime
microseconds in the arithmetic. A time without a zone is in `--tz` (UTC by default, `IME_TZ` from the
environment), and a bare time of day is on the recording's first day in that zone: an operator in
Tehran types `--tz Asia/Tehran --from 09:00`.

Times shown to a person are in the same `--tz`, always with their zone (`Z`, `+03:30`), and with
`--calendar persian` (`IME_CALENDAR`) their dates are in the Solar Hijri calendar, as are the dates typed in
--from/--to: `TimeLocale` is that pair. Machine fields (epoch ns, `--json`, jsonl's `recv`) stay ISO-8601 in
the Gregorian calendar, which every parser reads.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recorder.errors import UserError

TZ_ENV = "IME_TZ"
CALENDAR_ENV = "IME_CALENDAR"
GREGORIAN, PERSIAN = "gregorian", "persian"
CALENDARS = (GREGORIAN, PERSIAN)
# Help texts: a command that shows times only (ime-record) says so; one that also reads --from/--to says both.
TZ_SHOWN_HELP = ("Time zone of the times shown, each with its offset (Z for UTC): an IANA name (Asia/Tehran), UTC, "
                 f"or an offset (+03:30). Also ${TZ_ENV}.")
CALENDAR_SHOWN_HELP = f"Calendar of the dates shown: gregorian, or persian (Solar Hijri). Also ${CALENDAR_ENV}."
TZ_HELP = TZ_SHOWN_HELP + " Machine fields (epoch ns, --json) stay UTC; --from/--to times without a zone are in it."
CALENDAR_HELP = (CALENDAR_SHOWN_HELP + " With persian, --from/--to dates are Solar Hijri too: 1405/09/16, "
                 "1405-09-16, 1405/09/16 09:30, 1405-09-16T09:30:00.5+03:30.")
TIME_HELP = ("ISO-8601 (in --tz unless it has an offset or Z; with --calendar persian a Solar Hijri date, "
             "1405/09/16 or 1405-09-16, with or without a time), HH:MM[:SS[.fraction]] on the recording's first "
             "day, or epoch s/ms/us/ns; fractions to the nanosecond.")
FORMS = "give ISO-8601 like 2026-11-23T12:00:00Z, a time of day like 09:30, or epoch seconds"

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?")
# The fraction of the seconds in an ISO-8601 time, cut out so that datetime never rounds it to µs.
_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)")
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
# The date of an ISO-8601 time (a Solar Hijri one may be written 1405/09/03, as it usually is in Iran).
_DATE = re.compile(r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?=$|[T ])")
# Years a date of the other calendar has: 1405 (Solar Hijri) read as Gregorian is before any recording, 2026 read
# as Solar Hijri is six centuries ahead; either is a mistake, said as one, not an empty selection.
_FIRST_GREGORIAN_YEAR = 1700


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


def parse_time(text: str, tz: tzinfo = UTC, first_ns: int | None = None, calendar: str = GREGORIAN) -> int:
    """Epoch nanoseconds from ISO-8601, a time of day, or an epoch number in s, ms, us or ns.

    ISO-8601 without an offset is in `tz`, its date in `calendar`; `HH:MM[:SS[.f]]` is on the day (in `tz`) of
    `first_ns`, the recording's first record. The unit of a bare number is taken from its size, which is
    unambiguous for any date after 1970-04.
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
    value = _gregorian_date(value, text, calendar)
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


def _gregorian_date(value: str, text: str, calendar: str) -> str:
    """`value` with its date in the Gregorian calendar (a Solar Hijri one converted by jdatetime); a year of the
    other calendar is refused with the option that reads it."""
    m = _DATE.match(value)
    if m is None:
        return value
    year, month, day = int(m[1]), int(m[3]), int(m[4])
    if calendar != PERSIAN:
        if year < _FIRST_GREGORIAN_YEAR:
            raise UserError(f"{text!r} is in the Gregorian year {year}, centuries before any recording; for a Solar "
                            f"Hijri date add --calendar persian (or {CALENDAR_ENV}=persian)")
        return value
    if year >= _FIRST_GREGORIAN_YEAR:
        raise UserError(f"{text!r}: with --calendar persian dates are Solar Hijri (like 1405-09-03), and {year} is a "
                        "Gregorian year; give the Solar Hijri date, or --calendar gregorian")
    import jdatetime  # only here and for Persian output: it takes ~40 ms to import

    try:
        gregorian = jdatetime.date(year, month, day).togregorian()
    except ValueError as exc:
        raise UserError(f"{text!r} is not a date of the Solar Hijri calendar ({exc})") from None
    return gregorian.isoformat() + value[m.end():]


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


def parse_window(start: str | None, end: str | None, tz: TimeLocale | str | None,
                 first_ns: int | None) -> tuple[int | None, int | None]:
    """(--from, --to) in epoch ns; `--from` must be before `--to` (the window is start <= t < end).

    `tz` is the TimeLocale the times are typed in, or a zone name (Gregorian dates)."""
    where = TimeLocale.of(tz)
    lo = where.parse_time(start, first_ns) if start else None
    hi = where.parse_time(end, first_ns) if end else None
    if lo is not None and hi is not None and lo >= hi:
        hint = ""
        if any(_TIME_OF_DAY.fullmatch(t.strip()) for t in (start or "", end or "")) and first_ns is not None:
            hint = f" (a time of day is on the recording's first day, {where.date(first_ns)}; give a date)"
        raise UserError(f"--from {start} is not before --to {end}: the window selects nothing{hint}")
    return lo, hi


class TimeLocale:
    """The zone and the calendar a person reads and types times in (--tz and --calendar, or IME_TZ, IME_CALENDAR).

    Every time it prints carries its zone (`Z` for UTC, else the offset in force then, `+03:30`), so that a time
    copied from any output reads back as the same instant. Each second is formatted once (jsonl output formats
    every record's time): one tuple, replaced whole, so that a reader on another thread never pairs a second with
    another's text.
    """

    __slots__ = ("_second", "calendar", "tz")

    def __init__(self, tz: tzinfo = UTC, calendar: str = GREGORIAN) -> None:
        if calendar not in CALENDARS:
            raise UserError(f"unknown calendar {calendar!r}; give {' or '.join(CALENDARS)}")
        self.tz = tz
        self.calendar = calendar
        self._second: tuple[int, str, str] = (-1 << 70, "", "")

    @classmethod
    def parse(cls, tz_name: str | None, calendar: str | None = None) -> TimeLocale:
        """From the options' text; a usage error names what is wrong."""
        return cls(parse_tz(tz_name), (calendar or GREGORIAN).strip().lower())

    @classmethod
    def of(cls, value: TimeLocale | str | None) -> TimeLocale:
        """`value` itself, or the Gregorian locale of a zone name (as the callers before --calendar gave)."""
        return value if isinstance(value, TimeLocale) else cls.parse(value)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TimeLocale:
        """From IME_TZ and IME_CALENDAR: how ime-record's child processes learn what the command line chose."""
        try:
            return cls.parse(env.get(TZ_ENV), env.get(CALENDAR_ENV))
        except UserError:
            return UTC_LOCALE  # the command line checked both; a log line's stamp is no place to fail

    def environ(self) -> dict[str, str]:
        """IME_TZ and IME_CALENDAR naming this locale, for `from_env` in a child process."""
        return {TZ_ENV: self.zone_name(), CALENDAR_ENV: self.calendar}

    def zone_name(self) -> str:
        key = getattr(self.tz, "key", None)
        if key:
            return str(key)
        if self.tz is UTC:
            return "UTC"
        return self._zone(datetime.now(self.tz)).replace("Z", "UTC")

    @property
    def gregorian(self) -> TimeLocale:
        """The same zone with Gregorian dates: for text that programs read too (jsonl's `recv`, log lines)."""
        return self if self.calendar == GREGORIAN else TimeLocale(self.tz)

    def parse_time(self, text: str, first_ns: int | None = None) -> int:
        return parse_time(text, self.tz, first_ns, self.calendar)

    def format(self, ts_ns: int, digits: int = 9) -> str:
        """`2026-11-24T09:00:00.123+03:30`: the fraction to `digits` places (cut, never rounded up: a time shown is
        never later than the record's), none for 0."""
        seconds, nanos = divmod(ts_ns, _NS)
        cached = self._second
        if cached[0] != seconds:
            cached = self._second = (seconds, *self._seconds_text(seconds))
        if digits == 9:
            return f"{cached[1]}.{nanos:09d}{cached[2]}"
        if digits <= 0:
            return cached[1] + cached[2]
        return f"{cached[1]}.{nanos // 10 ** (9 - digits):0{digits}d}{cached[2]}"

    def exact(self, ts_ns: int) -> str:
        """As `format`, with as many digits as the time has (none for a whole second): how a user writes it."""
        nanos = ts_ns % _NS
        digits = 9 - (len(str(nanos)) - len(str(nanos).rstrip("0"))) if nanos else 0
        return self.format(ts_ns, digits)

    def width(self, digits: int = 9) -> int:
        """The widest `format(…, digits)` can be (an offset is wider than Z): a column's width."""
        return 19 + (digits + 1 if digits > 0 else 0) + (1 if self.tz is UTC else 6)

    def date(self, ts_ns: int) -> str:
        """The day in the zone and calendar: `2026-11-24`, `1405-09-03`."""
        return self._date(datetime.fromtimestamp(ts_ns // _NS, self.tz))

    def clock(self, ts_s: float) -> str:
        """The time of day with its zone, `09:00:00+03:30`, for a moment near now (epoch seconds)."""
        moment = datetime.fromtimestamp(int(ts_s), self.tz)
        return f"{moment:%H:%M:%S}{self._zone(moment)}"

    def _seconds_text(self, seconds: int) -> tuple[str, str]:
        moment = datetime.fromtimestamp(seconds, self.tz)
        return f"{self._date(moment)}T{moment:%H:%M:%S}", self._zone(moment)

    def _date(self, moment: datetime) -> str:
        if self.calendar == PERSIAN:
            import jdatetime

            day = jdatetime.date.fromgregorian(date=moment.date())
            return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"
        return f"{moment:%Y-%m-%d}"

    @staticmethod
    def _zone(moment: datetime) -> str:
        offset = moment.utcoffset()
        if not offset:
            return "Z"
        zone = moment.strftime("%z")
        return f"{zone[:3]}:{zone[3:5]}"


UTC_LOCALE = TimeLocale()


def format_local(ts_ns: int, tz: tzinfo) -> str:
    """`2026-11-24T09:00:00+03:30`: a time as the user wrote it, in their zone; fraction only when there is one."""
    return TimeLocale(tz).exact(ts_ns)


def format_ns(ts_ns: int) -> str:
    """`2026-11-23T12:00:00.123456789Z`: nanoseconds kept, because receive times are taken in ns. Machine fields
    (`stats --json`, the merge report) are in this form whatever --tz says."""
    return UTC_LOCALE.format(ts_ns)


class LogFormatter(logging.Formatter):
    """Log lines stamped `2026-11-24T09:00:00+03:30` in the chosen zone (the process's own local time, without a
    zone, said nothing about which). Gregorian always: log tools sort and parse these."""

    def __init__(self, fmt: str, where: TimeLocale | None = None) -> None:
        super().__init__(fmt)
        self.where = (where or TimeLocale.from_env()).gregorian

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.where.format(int(record.created) * _NS, 0)
