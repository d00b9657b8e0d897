"""What one worker process is given: its sections of the settings tree and its shard; picklable."""

from __future__ import annotations

from dataclasses import dataclass, field

from recorder.model.settings import ConnectionSettings, LiveSettings, StorageSettings


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    shard: int
    shards: int
    contracts: tuple[str, ...]
    connection: ConnectionSettings
    storage: StorageSettings
    run_id: str
    incarnation: int = 1
    token: str = field(default="", repr=False)
    token_gen: int = 0
    status_interval_s: float = 1.0
    log_level: int = 20
    live: LiveSettings | None = None  # --relay / --publish, with this worker's shard

    def __repr__(self) -> str:  # never show the token, even in a debugger or a crash report
        return f"WorkerConfig(shard={self.shard}, contracts={len(self.contracts)}, incarnation={self.incarnation})"
