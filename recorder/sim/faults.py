"""Which faults the simulator injects on a connection, and when: a pure, seeded schedule.

Each periodic fault with period S happens for the k-th time at k*S +/- 10% (jitter drawn from the seed
and the connection number), so runs repeat exactly and different connections do not fail in lockstep.
Drops and delays are spread much wider: the gap before each one is uniform in [0.5 S, 1.5 S], drawn per
connection. Redundant connections to the same contracts open at nearly the same moment; with only +/- 10%
their first drops would still fall within a reconnect of each other, and every copy would miss the same
messages. Delays model hiccups of independent network paths (a retransmission, a congested hop): on the
+/- 10% grid two copies' 20 ms hiccups would overlap about a third of the time for as long as they stayed
connected, a coupling real paths do not have. `revoke_after` happens once, exactly then.

One fault belongs to the market rather than to a connection: `repeat_every` (with `repeat_after` D) makes the
market publish again, now and then, the exact bytes it published D seconds earlier — a feed that repeats itself,
broadcast like any message. Its schedule (`repeat_schedule`) is the market's own, k*S +/- 10% from the seed.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, fields

from recorder.model.settings import DEFAULTS

JITTER = 0.1
DROP_SPREAD = 0.5  # a drop or delay comes after a gap uniform in [(1 - DROP_SPREAD) S, (1 + DROP_SPREAD) S]


class Fault(enum.StrEnum):
    DROP = "drop"  # drain what was sent, then cut TCP without a CLOSE
    CLOSE = "close"  # CLOSE with close_code
    STALL = "stall"  # send nothing for stall_for seconds (what the market published meanwhile is dropped)
    DELAY = "delay"  # hold the messages for delay_for seconds, then send them all at once: none dropped
    MALFORMED = "malformed"  # a text frame that is not valid JSON
    BINARY = "binary"  # a binary frame
    OVERSIZED = "oversized"  # a valid envelope padded to oversized_bytes
    FRAGMENT = "fragment"  # one message as several frames (TEXT, CONTINUATION..., FIN)
    PING = "ping"  # a PING control frame
    REVOKE = "revoke"  # revoke the connection's token and close 1008 "token revoked"

    @property
    def ends_connection(self) -> bool:
        return self in (Fault.DROP, Fault.CLOSE, Fault.REVOKE)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Seconds between faults of each kind per connection (None: never); `repeat_every` is the market's."""

    drop_every: float | None = None
    close_every: float | None = None
    close_code: int = 1011
    stall_every: float | None = None
    stall_for: float = 2.0
    delay_every: float | None = None
    delay_for: float = 0.02
    malformed_every: float | None = None
    binary_every: float | None = None
    oversized_every: float | None = None
    oversized_bytes: int = 2_000_000
    fragment_every: float | None = None
    fragment_parts: int = 3
    ping_every: float | None = None
    revoke_after: float | None = None
    repeat_every: float | None = None  # the market publishes again the bytes it published repeat_after s earlier
    repeat_after: float = DEFAULTS.connection.dedupe_window_s  # the edge these repeats are made to hit

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_every", "_after")) and value is not None and value <= 0:
                raise ValueError(f"{f.name.replace('_', '-')} must be positive")
        if not (1000 <= self.close_code <= 4999) or self.close_code in (1004, 1005, 1006, 1015):
            raise ValueError(f"close code {self.close_code} cannot be sent (use 1000-1014 or 3000-4999)")
        if self.stall_for <= 0:
            raise ValueError("stall-for must be positive")
        if self.delay_for <= 0:
            raise ValueError("delay-for must be positive")
        if self.oversized_bytes < 1:
            raise ValueError("oversized-bytes must be positive")
        if self.fragment_parts < 2:
            raise ValueError("fragment-parts must be at least 2")

    def periods(self) -> dict[Fault, float]:
        every = {
            Fault.DROP: self.drop_every, Fault.CLOSE: self.close_every, Fault.STALL: self.stall_every,
            Fault.DELAY: self.delay_every,
            Fault.MALFORMED: self.malformed_every, Fault.BINARY: self.binary_every,
            Fault.OVERSIZED: self.oversized_every, Fault.FRAGMENT: self.fragment_every,
            Fault.PING: self.ping_every,
        }
        return {k: v for k, v in every.items() if v is not None}

    @property
    def enabled(self) -> bool:
        return bool(self.periods()) or self.revoke_after is not None


class FaultPlan:
    """The faults of one connection, in time order, as seconds since it opened."""

    def __init__(self, config: FaultConfig, seed: int, connection: int) -> None:
        self.config = config
        self.seed = seed
        self.connection = connection

    def _periodic(self, fault: Fault, period: float) -> Iterator[tuple[float, Fault]]:
        rng = random.Random(f"fault:{self.seed}:{self.connection}:{fault.value}")
        if fault in (Fault.DROP, Fault.DELAY):
            at = 0.0
            while True:
                at += period * rng.uniform(1 - DROP_SPREAD, 1 + DROP_SPREAD)
                yield at, fault
        k = 1
        while True:
            yield period * (k + rng.uniform(-JITTER, JITTER)), fault
            k += 1

    def events(self) -> Iterator[tuple[float, Fault]]:
        """(seconds after connect, fault), ascending, endless for periodic faults."""
        streams: list[Iterator[tuple[float, Fault]]] = [
            self._periodic(fault, period) for fault, period in self.config.periods().items()]
        if self.config.revoke_after is not None:
            streams.append(iter([(self.config.revoke_after, Fault.REVOKE)]))
        return heapq.merge(*streams)

    def first(self, n: int) -> list[tuple[float, Fault]]:
        out = []
        for event in self.events():
            if len(out) >= n:
                break
            out.append(event)
        return out


def repeat_schedule(every: float, seed: int) -> Iterator[float]:
    """When the market publishes old bytes again (`repeat_every`): the k-th time at k*S +/- 10%, in seconds after
    the market opened, endless. One market, one schedule: drawn from the seed alone, not per connection."""
    rng = random.Random(f"repeat:{seed}")
    k = 1
    while True:
        yield every * (k + rng.uniform(-JITTER, JITTER))
        k += 1
