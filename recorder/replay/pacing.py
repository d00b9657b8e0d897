"""Replay pacing: when each record is due, on an absolute schedule. Pure; the clock is the caller's.

due_i = start + v_i / speed, where v is the recording's timeline with idle gaps longer than `max_gap`
shortened to `max_gap` (overnight closes) and backward clock steps flattened to zero. Because every due
time is computed from the start, never from the previous sleep, errors do not accumulate; a replayer
that falls behind emits everything already due at once and is back on schedule as soon as it can be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recorder.errors import UserError

_SPEED = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*x?\s*$", re.IGNORECASE)


def parse_speed(text: str) -> float | None:
    """'1x', '10x', '0.25x', '3' → factor; 'max' → None (as fast as possible)."""
    if text.strip().lower() in ("max", "inf", "unlimited"):
        return None
    m = _SPEED.match(text)
    if m is None:
        raise UserError(f"bad --speed {text!r}: use a factor like 1x, 10x, 0.25x, or max")
    factor = float(m.group(1))
    if factor <= 0:
        raise UserError(f"bad --speed {text!r}: the factor must be greater than 0")
    return factor


@dataclass(slots=True)
class Pacer:
    speed: float | None  # None: no pacing
    max_gap_ns: int | None = None
    _first_ts: int | None = None
    _prev_ts: int = 0
    _virtual_ns: int = 0
    compressed_ns: int = 0  # idle time removed by max_gap

    def offset_s(self, ts_ns: int) -> float:
        """Seconds after the replay's start at which the record with receive time `ts_ns` is due."""
        if self._first_ts is None:
            self._first_ts = self._prev_ts = ts_ns
            return 0.0
        gap = ts_ns - self._prev_ts
        if gap < 0:
            gap = 0
        elif self.max_gap_ns is not None and gap > self.max_gap_ns:
            self.compressed_ns += gap - self.max_gap_ns
            gap = self.max_gap_ns
        self._prev_ts = max(self._prev_ts, ts_ns)
        self._virtual_ns += gap
        if self.speed is None:
            return 0.0
        return self._virtual_ns / 1e9 / self.speed

    @property
    def span_s(self) -> float:
        """Recording time covered so far (after gap compression)."""
        return self._virtual_ns / 1e9
