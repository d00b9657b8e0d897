"""A shard's hold on the output directory: one writer per shard (a lock file), and its predecessor's `.open` files."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from recorder.feed.endpoints import EndpointKind
from recorder.record.config import WorkerConfig
from recorder.redact import redact_url
from recorder.segment.files import SegmentWriteError, describe_os_error
from recorder.segment.layout import day_layout
from recorder.segment.naming import open_segments, shard_lock_path
from recorder.segment.recover import RecoveryFailure, recover_each
from recorder.segment.writer import SegmentWriter

log = logging.getLogger("recorder.worker")


class ShardLocked(Exception):
    pass


def lock_shard(out_dir: Path, prefix: str, shard: int) -> int:
    """Take the shard's lock for the life of the process (the fd is kept open); refuse a second recorder."""
    path = shard_lock_path(out_dir, prefix, shard)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:  # restarting cannot fix a directory that went away or turned read-only
        raise SegmentWriteError(describe_os_error(exc, out_dir)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardLocked(f"another recorder is writing shard {shard} in {out_dir}; "
                          "use another --out or stop it first") from None
    return fd


def open_writer(cfg: WorkerConfig, on_backlog: Callable[[bool], None],
                on_error: Callable[[SegmentWriteError], None]) -> tuple[SegmentWriter, list[Path]]:
    """The shard's writer, under its lock (held for the life of the process), and the `.open` files a crashed
    predecessor left (taken under the lock, so none is being written)."""
    storage, settings = cfg.storage, cfg.connection
    lock_shard(storage.out_dir, storage.prefix, cfg.shard)
    stale = open_segments(storage.out_dir, cfg.shard, storage.prefix)
    meta = {"shards": cfg.shards, "endpoint": EndpointKind(settings.kind).value, "contracts": list(cfg.contracts),
            "base_url": redact_url(settings.base_url), "redundancy": settings.redundancy, "run_id": cfg.run_id,
            "worker": {"pid": os.getpid(), "incarnation": cfg.incarnation}}
    writer = SegmentWriter(
        storage.out_dir, shard=cfg.shard, prefix=storage.prefix, level=storage.level, frame_bytes=storage.frame_bytes,
        flush_ms=storage.flush_ms, rotate_bytes=storage.rotate_bytes, rotate_seconds=storage.rotate_seconds,
        max_backlog_bytes=storage.max_backlog_bytes, on_backlog=on_backlog, on_error=on_error, meta=meta,
        fault_enospc_after_bytes=storage.fault_enospc_after_bytes,
        days=day_layout(ZoneInfo(storage.day_tz)) if storage.day_tz else None)
    return writer, stale


def recover_stale(paths: list[Path], shard: int, on_recovered: Callable[[str], None]) -> None:
    """Seal what a crashed predecessor left (on a thread of its own, beside recording: not before it)."""
    try:
        # The routine `ime-segments recover` runs: every file is attempted, and one with no record to keep
        # (empty, header only) is moved aside, so that it is reported once, not at every start.
        results = recover_each(paths)
    except Exception as exc:  # report and carry on: recording matters more than old files
        log.error("shard %d: could not recover %s: %s", shard, ", ".join(map(str, paths)), exc)
        return
    for result in results:
        if isinstance(result, RecoveryFailure):
            log.error("shard %d: %s; run `ime-segments recover` on it once the cause is fixed", shard, result)
        else:
            # One report, by the supervisor: logging here as well printed every recovery twice.
            on_recovered(str(result))
