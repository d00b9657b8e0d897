"""Free space on the data disk: warn below one threshold, stop cleanly below another (before ENOSPC)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

GB = 1 << 30


class DiskLevel(enum.Enum):
    OK = "ok"
    LOW = "low"  # below --warn-free-gb: log and metric
    CRITICAL = "critical"  # below --min-free-gb: seal everything and stop


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use (f_bavail: root's reserve does not count)."""
    # --out may not exist yet (it is created by the workers): its nearest existing ancestor is on the same disk.
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


@dataclass(slots=True)
class DiskGuard:
    warn_bytes: int | None = None
    min_bytes: int | None = None
    level: DiskLevel = DiskLevel.OK
    warnings_total: int = 0

    @classmethod
    def from_gb(cls, warn_gb: float | None, min_gb: float | None) -> DiskGuard:
        return cls(int(warn_gb * GB) if warn_gb is not None else None,
                   int(min_gb * GB) if min_gb is not None else None)

    @property
    def enabled(self) -> bool:
        return self.warn_bytes is not None or self.min_bytes is not None

    def classify(self, free: int) -> DiskLevel:
        if self.min_bytes is not None and free < self.min_bytes:
            return DiskLevel.CRITICAL
        if self.warn_bytes is not None and free < self.warn_bytes:
            return DiskLevel.LOW
        return DiskLevel.OK

    def check(self, free: int) -> DiskLevel | None:
        """The new level when it changed, else None (so each crossing is logged once)."""
        level = self.classify(free)
        if level is self.level:
            return None
        self.level = level
        if level is DiskLevel.LOW:
            self.warnings_total += 1
        return level
