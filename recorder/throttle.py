"""Log lines for things that repeat: the first one at once, then at most one line per interval.

A retry loop or a misbehaving client that logs every occurrence floods the log and hides everything else; one
that logs nothing leaves the operator guessing. `Throttle` only decides when a line may be written and counts
what was held back; the caller writes the line (and says how many it summarises).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Throttle:
    interval_s: float = 60.0
    last: float | None = None  # when a line was last allowed (None: never, or since `reset`)
    held: int = 0  # occurrences since that line
    total: int = 0  # every occurrence, ever

    def hit(self, now: float) -> bool:
        """One occurrence at `now` (monotonic seconds): True when a line may be written for it."""
        self.total += 1
        if self.last is None or now - self.last >= self.interval_s:
            self.last = now
            return True
        self.held += 1
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a line may be written again (0: now)."""
        return 0.0 if self.last is None else max(0.0, self.last + self.interval_s - now)

    def take(self, now: float) -> int:
        """The occurrences held back since the last line, now summarised in one (which counts as that line)."""
        held, self.held = self.held, 0
        if held:
            self.last = now
        return held

    def reset(self) -> None:
        """The condition ended: the next occurrence is a first one again."""
        self.last = None
        self.held = 0
