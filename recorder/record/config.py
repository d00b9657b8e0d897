"""Settings of a recording run and of one worker; plain data, picklable across processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recorder.child import Exit
from recorder.model.settings import LiveSettings

# The worker's names for the child exit codes (recorder/child.py: Exit, the one convention), until the worker
# names Exit itself.
WORKER_EXIT_OK, WORKER_EXIT_FATAL, WORKER_EXIT_REFUSED = Exit.OK, Exit.FATAL, Exit.REFUSED


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    base_url: str
    kind: str  # "id" or "name"
    max_contracts_per_connection: int | None = None
    max_url_length: int = 4096
    max_message_bytes: int = 16 << 20
    handshake_timeout_s: float = 10.0
    ping_interval_s: float = 15.0  # picows pings when nothing arrived for this long
    ping_timeout_s: float = 10.0
    idle_timeout_s: float = 0.0  # 0: off (IME is quiet for hours outside trading sessions)
    probe_s: float = 2.0  # an upgrade still open after this long counts as accepted
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 30.0
    reconnect_jitter_s: float = 0.05  # after a connection that delivered data drops
    ca_file: str | None = None
    receive_slice_us: int = 100  # see timeslice.py; 0: the kernel's default
    writer_nice: int = 0  # added to the writer thread's nice value (--writer-nice; record/timeslice.py)
    redundancy: int = 1  # independent copies of every connection group
    extra_base_urls: tuple[str, ...] = ()  # copy k uses (base_url, *extra_base_urls)[k mod count]
    stagger_s: float = 0.5  # copy k first connects k × stagger_s after copy 0
    dedupe_window_s: float = 2.0

    def url_for_copy(self, copy: int) -> str:
        urls = (self.base_url, *self.extra_base_urls)
        return urls[copy % len(urls)]


@dataclass(frozen=True, slots=True)
class StorageSettings:
    out_dir: Path
    prefix: str = "ime"
    level: int = 3
    frame_bytes: int = 1 << 20
    flush_ms: float = 200.0
    rotate_bytes: int = 1 << 30
    rotate_seconds: float = 3600.0
    max_backlog_bytes: int = 8 << 20
    fault_enospc_after_bytes: int | None = None  # test hook: pretend the disk fills up after this many bytes
    # OPS-WIRING: segments go to OUT/YYYY-MM-DD/ by the date in this zone when the worker passes
    # SegmentWriter(days=layout.day_layout(ZoneInfo(day_tz))); None: the flat layout.
    day_tz: str | None = "Asia/Tehran"


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
