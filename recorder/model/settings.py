"""The settings every layer shares, plain data and picklable across processes (the lowest floor: imports nothing of
the recorder's)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """--relay / --publish: what the supervisor, the hub and every worker need to know about live outputs."""

    address: str  # the hub's Unix socket (abstract namespace when it starts with NUL)
    kind: str  # "id" or "name": the endpoint being recorded
    contracts: tuple[str, ...]
    shard: int = 0  # set per worker
    relay_host: str | None = None
    relay_port: int | None = None
    relay_token: str | None = field(default=None, repr=False)
    relay_client_buffer: int = 4 << 20  # bytes a relay client may leave unread before it is cut
    nats_url: str | None = field(default=None, repr=False)  # may carry user:password
    nats_stream: str = "IME"
    nats_max_age_s: float = 24 * 3600.0
    nats_duplicate_window_s: float = 120.0
    nats_replicas: int = 1
    nats_backlog: int = 1_000_000  # messages kept for NATS while it is down or slow
    worker_buffer_bytes: int = 8 << 20  # bytes a worker holds for the hub before it drops
    # The hub's: each shard's contracts (by shard number), so a gap in one shard's stream cuts only the relay
    # clients of its contracts. Empty: unknown, a gap cuts every client.
    shard_contracts: tuple[tuple[str, ...], ...] = ()

    def __repr__(self) -> str:  # never the token, nor a NATS URL's password
        relay = f"{self.relay_host}:{self.relay_port}" if self.relay_port is not None else "off"
        return f"LiveSettings(relay={relay}, nats={'on' if self.nats_url else 'off'}, shard={self.shard})"

    @property
    def enabled(self) -> bool:
        return self.relay_port is not None or self.nats_url is not None
