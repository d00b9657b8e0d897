"""Parsing and printing times for --from/--to and for output: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from recorder.errors import UserError


def parse_time(text: str) -> int:
    """Epoch nanoseconds from ISO-8601 (naive means UTC) or an epoch number in s, ms, us or ns.

    The unit of a bare number is taken from its size, which is unambiguous for any date after 1970-04.
    """
    value = text.strip()
    if not value:
        raise UserError("empty time; give ISO-8601 like 2026-11-23T12:00:00Z or epoch seconds")
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite():
        magnitude = abs(number)
        scale = 10**9 if magnitude < 10**11 else 10**6 if magnitude < 10**14 else 10**3 if magnitude < 10**17 else 1
        return int(number * scale)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise UserError(f"cannot read time {text!r}; give ISO-8601 like 2026-11-23T12:00:00Z or epoch seconds") \
            from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


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
