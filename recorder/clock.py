"""The wall clock the recorder stamps records, events and file names with.

Everything that writes a time into a recording reads it here, so that one setting moves all of them together:
`IME_RECORDER_CLOCK_SHIFT_S` (seconds, may be negative) shifts this clock for a test that must see a recorder
run across a moment it cannot wait for, such as Tehran midnight (the day folders and the rotation at the day's
end). Unset (always, outside tests) `time_ns` is `time.time_ns` itself: the receive path pays nothing for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

SHIFT_ENV = "IME_RECORDER_CLOCK_SHIFT_S"


def _shifted(shift_ns: int) -> Callable[[], int]:
    real = time.time_ns

    def time_ns() -> int:
        return real() + shift_ns

    return time_ns


_SHIFT_NS = round(float(os.environ.get(SHIFT_ENV) or 0) * 1e9)
time_ns: Callable[[], int] = _shifted(_SHIFT_NS) if _SHIFT_NS else time.time_ns
