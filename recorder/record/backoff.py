"""Reconnect delays: capped exponential backoff with full jitter, reset after a stable connection."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    base_s: float = 0.25
    cap_s: float = 30.0
    stable_s: float = 30.0  # a connection that lived this long resets the sequence
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Full jitter (uniform in [0, min(cap, base·2^n)]) spreads reconnect storms across clients."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def connection_ended(self, lived_s: float) -> None:
        if lived_s >= self.stable_s:
            self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0
