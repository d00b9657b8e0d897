"""recorder/timeparse.py: --from/--to/--tz parsing (issue 13, item 10), and times shown in --tz and --calendar
(issue 23). Pure functions, exact results."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.errors import UserError
from recorder.timeparse import (
    PERSIAN,
    LogFormatter,
    TimeLocale,
    format_local,
    format_ns,
    parse_time,
    parse_tz,
    parse_window,
)

S = 1_000_000_000
T0 = 1_795_498_200 * S  # 2026-11-24T05:30:00Z = 09:00 Asia/Tehran
TEHRAN = ZoneInfo("Asia/Tehran")


def test_naive_times_are_utc_by_default_and_in_the_given_zone_otherwise():
    assert parse_time("2026-11-24T05:30:00") == T0
    assert parse_time("2026-11-24 09:00:00", TEHRAN) == T0
    assert parse_time("2026-11-24T09:00", parse_tz("Asia/Tehran")) == T0
    # An explicit offset wins over the zone.
    assert parse_time("2026-11-24T05:30:00Z", TEHRAN) == T0
    assert parse_time("2026-11-24T09:00:00+03:30") == T0


def test_nanosecond_digits_are_kept():
    assert parse_time("2026-11-24T05:30:00.123456789Z") == T0 + 123_456_789
    assert parse_time("2026-11-24T09:00:00.000000001+03:30") == T0 + 1
    assert parse_time("2026-11-24T09:00:00.5", TEHRAN) == T0 + S // 2
    assert parse_time("1795498200.000000007") == T0 + 7
    assert parse_time(str(T0 + 3)) == T0 + 3
    with pytest.raises(UserError, match="9 digits"):
        parse_time("2026-11-24T05:30:00.1234567891Z")


@given(st.integers(0, 4_102_444_800 * S - 1))
def test_printed_receive_times_read_back_exactly(ts):
    assert parse_time(format_ns(ts)) == ts


@given(st.integers(0, 4_102_444_800 * S - 1), st.sampled_from(["UTC", "Asia/Tehran", "+05:45", "America/New_York"]))
def test_times_shown_in_a_zone_read_back_exactly_in_that_zone(ts, zone):
    tz = parse_tz(zone)
    assert parse_time(format_local(ts, tz), tz) == ts
    assert parse_time(format_local(ts, tz)) == ts  # it carries its offset


def test_time_of_day_is_on_the_recordings_first_day_in_the_zone():
    assert parse_time("09:00", TEHRAN, first_ns=T0 + 5 * S) == T0
    assert parse_time("09:00:01.25", TEHRAN, first_ns=T0) == T0 + S + S // 4
    assert parse_time("05:30", first_ns=T0 + 3600 * S) == T0
    # 2026-11-23T21:00Z is already the 24th in Tehran (00:30): 09:00 is on the 24th.
    assert parse_time("09:00", TEHRAN, first_ns=1_795_467_600 * S) == T0
    with pytest.raises(UserError, match="first day"):
        parse_time("09:00", TEHRAN, first_ns=None)
    with pytest.raises(UserError, match="cannot read time"):
        parse_time("25:00", TEHRAN, first_ns=T0)


def test_zones_by_name_offset_and_utc():
    assert parse_tz(None) is UTC and parse_tz("UTC") is UTC and parse_tz("utc") is UTC
    assert parse_tz("Asia/Tehran") == TEHRAN
    assert parse_tz("+03:30") == timezone(timedelta(hours=3, minutes=30))
    with pytest.raises(UserError, match="unknown time zone 'Mars/Olympus'") as info:
        parse_tz("Mars/Olympus")
    assert info.value.exit_code == 2
    with pytest.raises(UserError, match="unknown time zone"):
        parse_tz("../../etc/passwd")


def test_window_refuses_from_after_to():
    assert parse_window("09:00", "09:05", "Asia/Tehran", T0) == (T0, T0 + 300 * S)
    assert parse_window(None, None, None, None) == (None, None)
    with pytest.raises(UserError, match=r"--from .* is not before --to") as info:
        parse_window("09:05", "09:00", "Asia/Tehran", T0)
    assert info.value.exit_code == 2
    with pytest.raises(UserError, match="not before"):
        parse_window(str(T0), str(T0), None, None)


def test_format_local_shows_the_zone_offset():
    assert format_local(T0, TEHRAN) == "2026-11-24T09:00:00+03:30"
    assert format_local(T0 + 1, UTC) == "2026-11-24T05:30:00.000000001Z"
    assert datetime.fromisoformat(format_local(T0 + 1000, TEHRAN)).timestamp() == pytest.approx(T0 / S, abs=1e-5)


# --- times shown: every one with its zone, in --tz, dates in --calendar (issue 23) -----------------------------

def test_times_shown_carry_their_zone_in_the_zone_and_calendar_asked():
    ts = T0 + 123_456_789  # 2026-11-24T05:30:00.123456789Z; 24 November 2026 is 3 Azar 1405
    utc, tehran, persian = (TimeLocale.parse(None), TimeLocale.parse("Asia/Tehran"),
                            TimeLocale.parse("Asia/Tehran", "persian"))
    assert utc.format(ts) == "2026-11-24T05:30:00.123456789Z" == format_ns(ts)
    assert utc.format(ts, 3) == "2026-11-24T05:30:00.123Z" and utc.format(ts, 0) == "2026-11-24T05:30:00Z"
    assert tehran.format(ts, 3) == "2026-11-24T09:00:00.123+03:30"
    assert persian.format(ts) == "1405-09-03T09:00:00.123456789+03:30"
    assert persian.format(ts + 999_999, 3) == "1405-09-03T09:00:00.124+03:30"  # cut, never rounded up
    # The zone decides the date too: 21:00Z on the 24th is already the 25th (4 Azar) in Tehran.
    assert persian.format(T0 + 15 * 3600 * S + 1800 * S, 0) == "1405-09-04T00:30:00+03:30"
    assert TimeLocale.parse("UTC", "PERSIAN").format(T0, 0) == "1405-09-03T05:30:00Z"
    assert persian.gregorian.format(ts, 3) == tehran.format(ts, 3)
    assert persian.date(T0) == "1405-09-03" and tehran.clock(T0 / S) == "09:00:00+03:30"
    for where in (utc, tehran, persian, TimeLocale.parse("Europe/London")):
        assert len(where.format(ts, 3)) <= where.width(3)


@given(st.integers(0, 4_102_444_800 * S - 1), st.sampled_from(["UTC", "Asia/Tehran", "+05:45", "America/New_York"]),
       st.sampled_from(["gregorian", "persian"]))
def test_a_time_shown_reads_back_exactly_in_its_calendar(ts, zone, calendar):
    where = TimeLocale.parse(zone, calendar)
    assert where.parse_time(where.format(ts)) == ts
    assert where.parse_time(where.exact(ts)) == ts
    assert TimeLocale.parse("UTC", calendar).parse_time(where.format(ts)) == ts  # it carries its offset


def test_a_solar_hijri_date_is_the_same_instant_as_its_gregorian_date():
    persian = TimeLocale.parse("Asia/Tehran", "persian")
    assert persian.parse_time("1405-09-03T09:00") == T0 == parse_time("2026-11-24T09:00", TEHRAN)
    assert parse_time("1405-09-03T09:00:00.000000001", TEHRAN, calendar=PERSIAN) == T0 + 1
    assert persian.parse_time("1405/09/03 09:00") == T0  # as dates are usually written in Iran
    assert persian.parse_time("1405-09-03T05:30Z") == T0  # an explicit offset wins over the zone
    assert persian.parse_time("1405-01-01") == parse_time("2026-03-21T00:00", TEHRAN)  # Nowruz 1405
    assert persian.parse_time("1403-12-30") == parse_time("2025-03-20T00:00", TEHRAN)  # 1403 is a leap year
    assert persian.parse_time("09:00", first_ns=T0 + 5 * S) == T0  # a time of day: no calendar in it
    assert persian.parse_time(str(T0)) == T0
    assert parse_window("1405-09-03T09:00", "1405-09-03T09:05", persian, None) == (T0, T0 + 300 * S)


def test_the_issues_example_7_december_2026_is_16_azar_1405_both_ways():
    noon = parse_time("2026-12-07T12:00", TEHRAN)
    persian = TimeLocale.parse("Asia/Tehran", "persian")
    assert persian.date(noon) == "1405-09-16" and persian.format(noon, 0) == "1405-09-16T12:00:00+03:30"
    # Each form --help documents, to the same instants as the Gregorian date.
    midnight = parse_time("2026-12-07", TEHRAN)
    for text in ("1405/09/16", "1405-09-16", "1405/9/16", "1405/09/16 00:00", "1405-09-16T00:00:00.000+03:30"):
        assert persian.parse_time(text) == midnight, text
    assert persian.parse_time("1405/09/16 12:00") == noon


def test_a_date_of_the_other_calendar_is_one_clear_usage_error():
    persian = TimeLocale.parse("Asia/Tehran", "persian")
    with pytest.raises(UserError, match=r"2026 is a Gregorian year.*--calendar gregorian") as info:
        persian.parse_time("2026-11-24T09:00")
    assert info.value.exit_code == 2
    with pytest.raises(UserError, match="not a date of the Solar Hijri calendar"):
        persian.parse_time("1404-12-30")  # 1404 is not a leap year
    with pytest.raises(UserError, match=r"Gregorian year 1405.*--calendar persian"):
        parse_time("1405-09-03T09:00", TEHRAN)
    with pytest.raises(UserError, match="unknown calendar 'julian'"):
        TimeLocale.parse("UTC", "julian")
    with pytest.raises(UserError, match=r"first day, 1405-09-03; give a date"):
        parse_window("09:05", "09:00", persian, T0)


def test_log_lines_are_stamped_with_their_zone_in_the_gregorian_calendar():
    record = logging.LogRecord("recorder.x", logging.INFO, __file__, 1, "hello", None, None)
    record.created = T0 / S + 0.75
    assert LogFormatter("%(asctime)s %(message)s", TimeLocale.parse("Asia/Tehran", "persian")).format(record) == \
        "2026-11-24T09:00:00+03:30 hello"
    assert LogFormatter("%(asctime)s %(message)s", TimeLocale.parse("UTC")).format(record) == \
        "2026-11-24T05:30:00Z hello"
    # ime-record's child processes learn the zone from the environment the command line set.
    env = TimeLocale.parse("+05:45", "persian").environ()
    assert env == {"IME_TZ": "+05:45", "IME_CALENDAR": "persian"}
    assert TimeLocale.from_env(env).format(T0, 0) == "1405-09-03T11:15:00+05:45"
    assert TimeLocale.from_env({"IME_TZ": "Mars/Olympus"}).format(T0, 0) == "2026-11-24T05:30:00Z"
