"""Trading sessions and the stall alarm: silence during a session is an outage, outside one it is normal.

Pure: times are passed in. Sessions are written `sat-wed 10:30-16:00`, several separated by `;`, in
Asia/Tehran time. The default (OpsSettings.sessions, recorder/model/settings.py) covers IME's physical market
floors as IME describes them (industrial 10:30-12:00, gold 12:00-12:30, oil and petrochemicals 13:30-16:00,
Saturday to Wednesday): a default the operator should check against the exchange's current calendar (holidays
are not known here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

from recorder.errors import UserError

TEHRAN = ZoneInfo("Asia/Tehran")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
_SPEC = re.compile(r"^(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+(?P<t1>\d{1,2}:\d{2})-(?P<t2>\d{1,2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class Session:
    days: frozenset[int]  # weekdays, Monday = 0
    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        return local.weekday() in self.days and self.start <= local.time() < self.end


def _clock(text: str, spec: str) -> time:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours == 24 and minutes == 0:
        return time.max
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise UserError(f"--sessions '{spec}': {text} is not a time of day")
    return time(hours, minutes)


def parse_sessions(text: str) -> tuple[Session, ...]:
    """`sat-wed 10:30-16:00; thu 09:00-12:00` → sessions; `none` or empty → no sessions (always quiet)."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    out = []
    for spec in (s.strip() for s in text.split(";")):
        m = _SPEC.match(spec)
        if m is None or m["d1"] not in DAYS or (m["d2"] and m["d2"] not in DAYS):
            raise UserError(f"--sessions '{spec}': write DAY[-DAY] HH:MM-HH:MM with days as mon..sun, "
                            "e.g. 'sat-wed 10:30-16:00'")
        first = DAYS.index(m["d1"])
        last = DAYS.index(m["d2"]) if m["d2"] else first
        days = frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
        start, end = _clock(m["t1"], spec), _clock(m["t2"], spec)
        if end <= start:
            raise UserError(f"--sessions '{spec}': the session ends before it starts")
        out.append(Session(days, start, end))
    return tuple(out)


def session_start_ns(sessions: tuple[Session, ...], now_ns: int, tz: ZoneInfo = TEHRAN) -> int | None:
    """When the session holding `now_ns` began (epoch ns), or None outside every session."""
    local = datetime.fromtimestamp(now_ns / 1e9, tz)
    for s in sessions:
        if s.contains(local):
            began = datetime.combine(local.date(), s.start, tz)
            return int(began.timestamp()) * 1_000_000_000
    return None


def in_session(sessions: tuple[Session, ...], now_ns: int, tz: ZoneInfo = TEHRAN) -> bool:
    return session_start_ns(sessions, now_ns, tz) is not None


@dataclass(slots=True)
class StallAlarm:
    """Raised once when nothing arrived for `after_s` during a session; cleared by the next message.

    Silence is counted from the later of the last message and the session's start, so a quiet night
    does not raise the alarm at the opening bell.
    """

    after_s: float
    sessions: tuple[Session, ...]
    tz: ZoneInfo = TEHRAN
    raised: bool = False
    raised_total: int = 0

    def check(self, now_ns: int, last_message_ns: int, started_ns: int) -> str | None:
        """'raised', 'cleared' or None (no change)."""
        begun = session_start_ns(self.sessions, now_ns, self.tz)
        if begun is None:
            if self.raised:
                self.raised = False
                return "cleared"
            return None
        silent_since = max(last_message_ns, begun, started_ns)
        stalled = now_ns - silent_since >= self.after_s * 1e9
        if stalled and not self.raised:
            self.raised = True
            self.raised_total += 1
            return "raised"
        if not stalled and self.raised:
            self.raised = False
            return "cleared"
        return None

    def silence_s(self, now_ns: int, last_message_ns: int) -> float:
        return (now_ns - last_message_ns) / 1e9 if last_message_ns else float("inf")


def describe(sessions: tuple[Session, ...]) -> str:
    def days(s: Session) -> str:
        return ",".join(DAYS[d] for d in sorted(s.days))

    def end(s: Session) -> str:
        return "24:00" if s.end == time.max else f"{s.end:%H:%M}"

    return "; ".join(f"{days(s)} {s.start:%H:%M}-{end(s)}" for s in sessions) or "none"

