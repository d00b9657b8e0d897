"""recorder/timeparse.py: --from/--to/--tz parsing (issue 13, item 10). Pure functions, exact results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.errors import UserError
from recorder.timeparse import format_local, format_ns, parse_time, parse_tz, parse_window

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
