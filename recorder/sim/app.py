"""Embedding ime-sim: `await start_sim(SimConfig(...))` gives a running simulator and its addresses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recorder.feed.endpoints import EndpointKind, build_url
from recorder.server.server import FeedServer, ServerConfig
from recorder.server.tokens import Credentials
from recorder.sim.faults import FaultConfig
from recorder.sim.market import ContractSpec, make_contracts
from recorder.sim.sentlog import PublishedLog, SentLog, TappedSource
from recorder.sim.source import SimSource

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"


@dataclass(slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    contracts: int = 20
    rate: float = 1000.0  # market-wide messages/s (a client gets its contracts' share); 0 = as fast as it reads
    burst: int = 0  # extra messages sent at once every `burst_every` seconds (paced mode)
    burst_every: float = 5.0
    seed: int = 1
    token: str | None = field(default=None, repr=False)  # a fixed token accepted besides issued ones
    username: str = DEMO_USERNAME
    password: str = field(default=DEMO_PASSWORD, repr=False)
    token_ttl: float = 3600.0
    reject: Literal["close", "handshake"] = "close"
    faults: FaultConfig = field(default_factory=FaultConfig)
    batch_bytes: int = 128 * 1024
    write_buffer_high: int = 1 << 20
    use_aiofastnet: bool | None = None
    sent_log: Path | None = None  # write every message sent into a segment file here (tests, benchmarks)
    published_log: Path | None = None  # write every message the market published (ground truth of loss)

    def __post_init__(self) -> None:
        if self.contracts < 1:
            raise ValueError("--contracts must be at least 1")
        if self.rate < 0:
            raise ValueError("--rate must be >= 0")
        if self.burst < 0 or self.burst_every <= 0:
            raise ValueError("--burst must be >= 0 and --burst-every positive")
        if self.token_ttl <= 0:
            raise ValueError("--token-ttl must be positive")
        if not self.username or not self.password:
            raise ValueError("--username and --password must not be empty")
        if self.reject not in ("close", "handshake"):
            raise ValueError("--reject must be close or handshake")
        if self.faults.repeat_every is not None and self.rate == 0:
            raise ValueError("--repeat-every needs a live market (--rate > 0): with --rate 0 there is no market "
                             "publishing to all its subscribers")
        if self.published_log is not None and self.rate == 0:
            raise ValueError("--published-log needs a live market (--rate > 0): with --rate 0 each connection "
                             "has a private market and its sent log is the whole truth")
        if self.batch_bytes < 1024:
            raise ValueError("batch size must be at least 1024 bytes")


class SimHandle:
    """A running simulator. `token` is a ready-made valid token (the fixed one if configured)."""

    def __init__(self, config: SimConfig, server: FeedServer, source: SimSource, token: str,
                 sent_log: SentLog | None = None, published_log: PublishedLog | None = None) -> None:
        self.config = config
        self.server = server
        self.source = source
        self.token = token
        self.sent_log = sent_log
        self.published_log = published_log
        self.contracts: list[ContractSpec] = source.specs

    def __repr__(self) -> str:
        return f"SimHandle(base_url={self.base_url!r}, token_url={self.token_url!r}, contracts={len(self.contracts)})"

    @property
    def username(self) -> str:
        return self.config.username

    @property
    def password(self) -> str:
        return self.config.password

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def token_url(self) -> str:
        return self.server.token_url

    @property
    def stats_url(self) -> str:
        return self.server.stats_url

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.contracts]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contracts]

    def url(self, kind: EndpointKind, contracts: list[str] | None = None) -> str:
        """The subscription URL for `contracts` (default: all of this kind)."""
        chosen = contracts if contracts is not None else (self.ids if kind is EndpointKind.ID else self.names)
        return build_url(self.base_url, kind, chosen)

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def ready_info(self) -> dict[str, Any]:
        """What `--ready-file` holds (JSON): addresses, demo credentials and token, the contracts."""
        return {
            "pid": os.getpid(),
            "host": self.host,
            "port": self.port,
            "http_port": self.http_port,
            "base_url": self.base_url,
            "token_url": self.token_url,
            "stats_url": self.stats_url,
            "username": self.username,
            "password": self.password,
            "token": self.token,
            "ids": self.ids,
            "names": self.names,
            "id_url": self.url(EndpointKind.ID, self.ids[:3]),
            "name_url": self.url(EndpointKind.NAME, self.names[:3]),
            "rate": self.config.rate,
            "seed": self.config.seed,
            "reject": self.config.reject,
        }

    async def close(self) -> None:
        await self.server.close()
        await self.source.close()
        for log in (self.sent_log, self.published_log):
            if log is not None:
                log.close()


async def start_sim(config: SimConfig | None = None) -> SimHandle:
    """Start the simulator's servers on the running loop (bind errors raise OSError)."""
    cfg = config or SimConfig()
    specs = make_contracts(cfg.contracts, cfg.seed)
    server_cfg = ServerConfig(
        host=cfg.host, port=cfg.port, http_port=cfg.http_port, reject=cfg.reject,
        credentials=Credentials(cfg.username, cfg.password), token_ttl=cfg.token_ttl, static_token=cfg.token,
        write_buffer_high=cfg.write_buffer_high, write_buffer_low=cfg.write_buffer_high // 4,
        use_aiofastnet=cfg.use_aiofastnet,
    )
    # The source needs the server (to revoke tokens) and the server the source: tie them after creation.
    published_log = PublishedLog(cfg.published_log, [s.id for s in specs]) if cfg.published_log else None
    source = SimSource(specs, seed=cfg.seed, rate=cfg.rate, burst=cfg.burst, burst_every=cfg.burst_every,
                       faults=cfg.faults, batch_bytes=cfg.batch_bytes, held_limit=cfg.write_buffer_high,
                       on_publish=published_log.published if published_log is not None else None)
    sent_log = SentLog(cfg.sent_log) if cfg.sent_log is not None else None
    server = FeedServer(server_cfg, source if sent_log is None else TappedSource(source, sent_log))
    source.set_revoker(server.revoke)
    try:
        await server.start()
    except BaseException:
        for log in (sent_log, published_log):
            if log is not None:
                log.close()
        raise
    source.start()
    token = cfg.token or server.issue_token(cfg.username)
    return SimHandle(cfg, server, source, token, sent_log, published_log)
